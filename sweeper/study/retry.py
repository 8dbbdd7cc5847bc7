"""Ride out a database that is briefly down: storage calls retry with backoff on connection errors.

A PostgreSQL restart (or failover) closes every connection. ``pool_pre_ping`` replaces dead pooled
connections, but while the server is down or still starting a call fails with ``OperationalError``;
here it waits and tries again instead of crashing the worker, for up to ``SWEEPER_DB_RETRY_S``
seconds. Anything else (a constraint, bad data, a wrong password) is raised at once. The retried
calls are Optuna's own storage methods, unchanged; opening the storage is retried the same way
(``make_storage(wait=True)``), so a worker started before its database waits for it.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
from sqlalchemy import exc as sa_exc

from sweeper.errors import StudyError

log = logging.getLogger("sweeper.retry")
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

#: how long a worker keeps retrying before it gives up (seconds); ``SWEEPER_DB_RETRY_S`` overrides
DEFAULT_PATIENCE = 120.0
# the server answered and said no: waiting will not change that
_REFUSED = ("does not exist", "authentication failed", "no password supplied", "no pg_hba.conf entry")


class DatabaseUnreachable(StudyError):
    """The study database stayed unreachable for longer than the retry window."""


def patience() -> float:
    return float(os.environ.get("SWEEPER_DB_RETRY_S", DEFAULT_PATIENCE))


def is_transient(e: BaseException) -> bool:
    """A lost or refused connection (worth retrying), as opposed to a real error."""
    for err in (e, e.__cause__):
        if isinstance(err, sa_exc.DBAPIError) and any(s in str(err.orig) for s in _REFUSED):
            return False
        if isinstance(err, sa_exc.OperationalError | sa_exc.InterfaceError):
            return True
        # a session whose connection died mid-transaction: Optuna rolls it back, the next try runs afresh
        if isinstance(err, sa_exc.PendingRollbackError):
            return True
        if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
            return True
    return False


def _first_line(e: BaseException) -> str:
    """The driver's own words (Optuna wraps a failed commit in a message about invalid data)."""
    err = next((x for x in (e, e.__cause__) if isinstance(x, sa_exc.DBAPIError)), e)
    err = getattr(err, "orig", None) or err
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


_depth = threading.local()
_outages: dict[str, float] = {}  # database -> when this process found it unreachable: one warning per outage
_gave_up: set[str] = set()  # databases this process stopped waiting for: later calls fail at once


def with_retry(call: Callable[[], T], where: str, limit: float | None = None) -> T:
    """``call()``, retried with exponential backoff (0.25 s doubling, at most 5 s apart) while the
    database ``where`` (a masked URL, for messages) is unreachable; its last error after ``limit`` s."""
    limit = patience() if limit is None else limit
    deadline, delay, waited = time.monotonic() + (0 if where in _gave_up else limit), 0.25, False
    while True:
        _depth.n = 1
        try:
            result = call()
        except Exception as e:
            if not is_transient(e):
                _answered(where)
                raise
            if time.monotonic() >= deadline:
                if waited or where in _gave_up:
                    _gave_up.add(where)
                raise
            waited = True
            if where not in _outages:
                _outages[where] = time.monotonic()
                log.warning(
                    "study database %s unreachable (%s); waiting up to %.0f s for it (SWEEPER_DB_RETRY_S)",
                    where,
                    _first_line(e),
                    limit,
                )
        else:
            _answered(where)
            return result
        finally:
            _depth.n = 0
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))  # a last try at the deadline
        delay = min(delay * 2, 5.0)


def _answered(where: str) -> None:
    _gave_up.discard(where)
    since = _outages.pop(where, None)
    if since is not None:
        log.info("study database %s answers again after %.0f s", where, time.monotonic() - since)


def retrying(fn: F) -> F:
    """A storage method retried by ``with_retry``; after the retry window, ``DatabaseUnreachable``."""

    @functools.wraps(fn)
    def wrapper(self: optuna.storages.RDBStorage, *args: Any, **kwargs: Any) -> Any:
        if getattr(_depth, "n", 0):  # a storage method calling another: only the outermost call retries
            return fn(self, *args, **kwargs)
        where = _masked(self.url)

        def call() -> Any:
            try:
                return fn(self, *args, **kwargs)
            except Exception:
                self.scoped_session.remove()  # a session left mid-transaction by a lost connection is not reused
                raise

        try:
            return with_retry(call, where)
        except Exception as e:
            if not is_transient(e):
                raise
            raise DatabaseUnreachable(
                f"the study database {where} has been unreachable for more than {patience():.0f} s "
                f"({_first_line(e)}); giving up (SWEEPER_DB_RETRY_S sets how long to wait)"
            ) from e

    return wrapper  # type: ignore[return-value]


def _heartbeat(fn: F) -> F:
    """A heartbeat that cannot be recorded is skipped: its thread must never die of it (the trial
    would then be failed as stale, and its traceback printed); the trial loop gives up on its own."""
    retried = retrying(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return retried(*args, **kwargs)
        except DatabaseUnreachable:
            return None

    return wrapper  # type: ignore[return-value]


def _masked(url: str) -> str:
    from sweeper.study.storage import mask_url

    return mask_url(url)


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose public methods retry while the database is briefly unreachable."""


for _name in dir(optuna.storages.BaseStorage):
    if not _name.startswith("_") and callable(getattr(optuna.storages.RDBStorage, _name, None)):
        setattr(RetryingRDBStorage, _name, retrying(getattr(optuna.storages.RDBStorage, _name)))
# the private methods Optuna's _CachedStorage calls on its backend (suggest, ask, best trial)
for _name in ("_get_stale_trial_ids", "_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials"):
    if hasattr(optuna.storages.RDBStorage, _name):
        setattr(RetryingRDBStorage, _name, retrying(getattr(optuna.storages.RDBStorage, _name)))
# heartbeats come from a background thread: if it died on a restart, the trial would be failed as stale
RetryingRDBStorage.record_heartbeat = _heartbeat(optuna.storages.RDBStorage.record_heartbeat)  # type: ignore[method-assign]
