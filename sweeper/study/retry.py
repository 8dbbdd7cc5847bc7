"""Ride out a database that is briefly down: storage calls retry with backoff on connection errors.

A PostgreSQL restart (or failover) closes every connection. ``pool_pre_ping`` replaces dead pooled
connections, but while the server is down or still starting a call fails with ``OperationalError``;
here it waits and tries again instead of crashing the worker, for up to ``SWEEPER_DB_RETRY_S``
seconds. Which errors are worth waiting for depends on the database (``sweeper.study.db_errors``): a
permanent one (no such table, a read-only file, a permission) is one message at once. The retried
calls are Optuna's own storage methods, unchanged; opening the storage is retried the same way
(``make_storage(wait=True)``), so a worker started before its database waits for it.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.errors import StudyError
from sweeper.study.db_errors import driver_words, is_permanent, is_transient, permanent
from sweeper.study.exactly_once import create_table, once
from sweeper.study.optuna_internals import (
    CACHED_BACKEND_CALLS,
    NewTrialRDBStorage,
    add_trial,
    check_schema,
    lock_study,
    lock_trial,
    rdb_method,
    record_heartbeat,
)
from sweeper.study.urls import mask_url

log = logging.getLogger("sweeper.retry")
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

#: how long a worker keeps retrying before it gives up (seconds); ``SWEEPER_DB_RETRY_S`` overrides
DEFAULT_PATIENCE = 120.0


class DatabaseUnreachable(StudyError):
    """The study database stayed unreachable for longer than the retry window."""


def patience() -> float:
    return float(os.environ.get("SWEEPER_DB_RETRY_S", DEFAULT_PATIENCE))


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
                    driver_words(e),
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
        return call_with_retry(self, lambda: fn(self, *args, **kwargs))

    return wrapper  # type: ignore[return-value]


def call_with_retry(storage: optuna.storages.RDBStorage, fn: Callable[[], T]) -> T:
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
        if is_permanent(e):
            raise permanent(e, where) from e
        if not is_transient(e):
            raise
        raise DatabaseUnreachable(
            f"the study database {where} has been unreachable for more than {patience():.0f} s "
            f"({driver_words(e)}); giving up (SWEEPER_DB_RETRY_S sets how long to wait)"
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


class RetryingRDBStorage(NewTrialRDBStorage):
    """Optuna's RDBStorage whose public methods retry while the database is briefly unreachable, and whose
    writes that cannot be sent twice (creating a trial, popping a WAITING one, ending one) land exactly
    once although the answer to their commit may be lost (``sweeper.study.exactly_once``)."""

    def __init__(self, *args: Any, skip_compatibility_check: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, skip_compatibility_check=True, **kwargs)
        if not skip_compatibility_check:
            check_schema(self)
        create_table(self.engine)
        from sweeper.study import pg_claim  # it imports the lock, which retries through this module

        self.pg_claim = pg_claim.install(self.engine)  # claims in one statement (PostgreSQL)

    def new_trial(self, study_id: int, template_trial: FrozenTrial | None) -> FrozenTrial:
        attempt = once(self, lambda s: lock_study(s, study_id), lambda s: add_trial(s, self, study_id, template_trial))
        return call_with_retry(self, lambda: optuna.storages.RDBStorage.get_trial(self, _made(attempt())))

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        def write(session: Any) -> int | None:  # Optuna's own update, in the transaction ``once`` holds
            done = optuna.storages.RDBStorage.set_trial_state_values(self, trial_id, state, values)
            return trial_id if done else None

        attempt = once(self, lambda s: lock_trial(s, trial_id), write)
        return call_with_retry(self, attempt) is not None


def _made(trial_id: int | None) -> int:
    assert trial_id is not None, "a new trial always has an id"
    return trial_id


#: Optuna's storage API (``BaseStorage``'s public methods, Optuna 5.1), each retried as it is. Not here: the two
#: written out above (``create_new_trial`` makes its trial in our ``new_trial``) and ``record_heartbeat`` (below).
RETRIED = (
    "check_trial_is_updatable",
    "create_new_study",
    "delete_study",
    "get_all_studies",
    "get_all_trials",
    "get_best_trial",
    "get_n_trials",
    "get_study_directions",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_system_attrs",
    "get_study_user_attrs",
    "get_trial",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "get_trial_params",
    "get_trial_system_attrs",
    "get_trial_user_attrs",
    "remove_session",
    "set_study_system_attr",
    "set_study_user_attr",
    "set_trial_intermediate_value",
    "set_trial_param",
    "set_trial_system_attr",
    "set_trial_user_attr",
)
for _name in (*RETRIED, *CACHED_BACKEND_CALLS):
    setattr(RetryingRDBStorage, _name, retrying(rdb_method(_name)))
# heartbeats come from a background thread: if it died on a restart, the trial would be failed as stale
RetryingRDBStorage.record_heartbeat = _heartbeat(record_heartbeat)  # type: ignore[method-assign]
