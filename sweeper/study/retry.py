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
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import exc as sa_exc

from sweeper.errors import StudyError
from sweeper.study.optuna_internals import CACHED_BACKEND_CALLS, rdb_method, trial_with_system_attr
from sweeper.study.urls import mask_url

log = logging.getLogger("sweeper.retry")
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

#: system attribute of a trial created by a worker: a retried create finds the trial its lost commit made
CREATE_TOKEN = "sweeper:create_token"
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
        return _call_with_retry(self, lambda: fn(self, *args, **kwargs))

    return wrapper  # type: ignore[return-value]


def _call_with_retry(storage: optuna.storages.RDBStorage, fn: Callable[[], T]) -> T:
    if getattr(_depth, "n", 0):  # a storage method calling another: only the outermost call retries
        return fn()
    where = mask_url(storage.url)

    def call() -> T:
        try:
            return fn()
        except Exception:
            storage.scoped_session.remove()  # a session left mid-transaction by a lost connection is not reused
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


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose public methods retry while the database is briefly unreachable.

    Two writes are not safe to send twice, and a lost connection can hide whether the first one was
    committed: creating a trial and ending one. Before sending either again, the database is asked:
    a trial is created with an idempotency token (a system attribute) and a retry returns the trial
    that token already made; an end state that already landed is not written again (Optuna would
    raise ``UpdateFinishedTrialError`` for it).
    """

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        if template_trial is not None:  # a retry or an enqueued trial: made in one go by Optuna
            return _create_new_trial(self, study_id, template_trial)
        token = uuid.uuid4().hex
        template = FrozenTrial(
            number=-1,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=datetime.now(),
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={CREATE_TOKEN: token},
            intermediate_values={},
            trial_id=-1,
        )
        tries = 0

        def create() -> FrozenTrial:
            nonlocal tries
            tries += 1
            if tries > 1:  # the last try may have been committed before its connection was lost
                made = trial_with_system_attr(self, study_id, CREATE_TOKEN, token)
                if made is not None:
                    return self.get_trial(made)
            return optuna.storages.RDBStorage._create_new_trial(self, study_id, template)

        return _call_with_retry(self, create)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        tries = 0

        def write() -> bool:
            nonlocal tries
            tries += 1
            if tries > 1 and state.is_finished():  # landed before the connection was lost?
                if optuna.storages.RDBStorage.get_trial(self, trial_id).state == state:
                    return True
            return optuna.storages.RDBStorage.set_trial_state_values(self, trial_id, state, values)

        return _call_with_retry(self, write)


_create_new_trial = retrying(optuna.storages.RDBStorage._create_new_trial)
_SPECIAL = ("create_new_trial", "_create_new_trial", "set_trial_state_values")  # create_new_trial calls ours
for _name in dir(optuna.storages.BaseStorage):
    if _name.startswith("_") or _name in _SPECIAL or not callable(getattr(optuna.storages.RDBStorage, _name, None)):
        continue
    setattr(RetryingRDBStorage, _name, retrying(rdb_method(_name)))
for _name in CACHED_BACKEND_CALLS:
    if _name not in _SPECIAL:
        setattr(RetryingRDBStorage, _name, retrying(rdb_method(_name)))
# heartbeats come from a background thread: if it died on a restart, the trial would be failed as stale
RetryingRDBStorage.record_heartbeat = _heartbeat(optuna.storages.RDBStorage.record_heartbeat)  # type: ignore[method-assign]
