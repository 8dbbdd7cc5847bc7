"""Ride out a database that is briefly down: storage calls retry with backoff on connection errors.

A PostgreSQL restart (or failover) closes every connection. ``pool_pre_ping`` replaces dead pooled
connections, but while the server is still starting a call fails with ``OperationalError``; here it
waits and tries again instead of crashing the worker. Anything else (a constraint, bad data) is
raised at once. The retried calls are Optuna's own storage methods, unchanged.
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

log = logging.getLogger("sweeper.retry")
F = TypeVar("F", bound=Callable[..., Any])

#: how long a worker keeps retrying before it gives up (seconds); ``SWEEPER_DB_RETRY_S`` overrides
DEFAULT_PATIENCE = 120.0


def is_transient(e: BaseException) -> bool:
    """A lost or refused connection (worth retrying), as opposed to a real error."""
    for err in (e, e.__cause__):
        if isinstance(err, sa_exc.OperationalError | sa_exc.InterfaceError):
            return True
        if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
            return True
    return False


_depth = threading.local()


def retrying(fn: F, patience: float | None = None) -> F:
    """``fn`` retried with exponential backoff (0.25 s doubling, at most 5 s apart) on transient errors."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if getattr(_depth, "n", 0):  # a storage method calling another: only the outermost call retries
            return fn(*args, **kwargs)
        limit = patience if patience is not None else float(os.environ.get("SWEEPER_DB_RETRY_S", DEFAULT_PATIENCE))
        deadline, delay, warned = time.monotonic() + limit, 0.25, False
        while True:
            _depth.n = 1
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                if not is_transient(e) or time.monotonic() + delay > deadline:
                    raise
                if not warned:
                    log.warning("study database unreachable (%s); retrying for up to %.0f s", type(e).__name__, limit)
                    warned = True
            finally:
                _depth.n = 0
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    return wrapper  # type: ignore[return-value]


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose public methods retry while the database is briefly unreachable."""


for _name in dir(optuna.storages.BaseStorage):
    if not _name.startswith("_") and callable(getattr(optuna.storages.RDBStorage, _name, None)):
        setattr(RetryingRDBStorage, _name, retrying(getattr(optuna.storages.RDBStorage, _name)))
# heartbeats come from a background thread: if it died on a restart, the trial would be failed as stale;
# the others are the private methods Optuna's _CachedStorage calls on its backend (suggest, ask, best trial)
for _name in (
    "record_heartbeat",
    "_get_stale_trial_ids",
    "_create_new_trial",
    "_set_trial_param",
    "_get_best_trial_id",
    "_get_trials",
):
    if hasattr(optuna.storages.RDBStorage, _name):
        setattr(RetryingRDBStorage, _name, retrying(getattr(optuna.storages.RDBStorage, _name)))
