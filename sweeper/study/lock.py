"""One lock per study, shared by every worker: held while a worker checks the budget and creates a trial.

Ordering trials after the fact (by start time or id) cannot make the budget exact: a trial's start
time is taken before its insert waits for the database's write lock, and a queued trial that is
popped later keeps its old id, so two workers can each see themselves first and both train the
last slot. Checking and creating under one lock can: every trial created is created after its
worker saw a free slot, and every earlier trial was committed (visible) by then.

- PostgreSQL: a transaction-level advisory lock (``pg_try_advisory_xact_lock``), released at commit or
  when the connection is lost, so a killed worker never holds it. It is tried, not waited for: a
  worker that finds it taken ends its transaction and tries again after a short random pause, so a
  waiting worker holds no server connection. Through a transaction pooler (PgBouncer) a blocking wait
  would hold one each, and once the waiters held the whole server pool the holder could not run its
  claim's queries: every worker would stall (``tests/test_pooler.py`` fails so with a blocking wait).
  A claim is one statement that tries the lock and writes (``sweeper.study.pg_claim``), or, where that
  function cannot be made, one transaction that does (``locked_write``): one connection either way.
- SQLite: an ``flock`` on a file beside the database (``<db>.lock``); SQLite is one machine's file.
- MySQL: ``GET_LOCK``. Anything else (in-memory storage): a lock of this process.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage
from sqlalchemy.orm import Session

from sweeper.study.optuna_internals import rdb_backend
from sweeper.study.retry import with_retry
from sweeper.study.urls import mask_url

T = TypeVar("T")
_local = threading.Lock()
# a taken PostgreSQL lock is tried again after a random pause of up to this, doubling: a claim holds it for a
# few ms (~15 ms as Optuna's calls), so a lone waiter gets it within a try or two; a waiter's pause grows with its
# wait, so hundreds of waiting workers try a few hundred times a second, not thousands (256 workers starting at
# once on 2 cores: with pauses of at most 0.2 s the tries took half the workers' CPU and the holder waited for the CPU;
# at most 2 s, a claim held the lock 64 ms instead of 217 ms and the server spent half the CPU per trial)
_FIRST_PAUSE, _LONGEST_PAUSE = 0.01, 2.0


def lock_key(name: str, of: str = "sweeper") -> int:
    """A signed 64-bit advisory-lock key for a study name: its claims' lock, or another (``of``) of the study's."""
    return int.from_bytes(hashlib.sha256(f"{of}:{name}".encode()).digest()[:8], "big", signed=True)


def try_reapers_lock(session: Session, name: str) -> bool:
    """Take the study's reapers' lock (PostgreSQL) until ``session``'s transaction ends, if no other worker's
    reaper holds it: one reaper at a time, apart from the claims' lock (``sweeper.workers.heartbeat``)."""
    key = lock_key(name, of="sweeper-reapers")
    return bool(session.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar())


@contextmanager
def study_lock(study: optuna.Study) -> Iterator[None]:
    """Hold the study's lock (blocking until it is free)."""
    rdb = rdb_backend(study)
    dialect = rdb.engine.dialect.name if rdb is not None else ""
    if rdb is not None and dialect == "postgresql":
        with _advisory(rdb.engine, study.study_name, "SELECT pg_try_advisory_xact_lock(:k)", None):
            yield
    elif rdb is not None and dialect == "mysql":
        with _advisory(rdb.engine, study.study_name, "SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"):
            yield
    elif rdb is not None and dialect == "sqlite" and rdb.engine.url.database not in (None, "", ":memory:"):
        with _file_lock(Path(str(rdb.engine.url.database)).with_suffix(".lock")):
            yield
    else:
        with _local:
            yield


Stop = Callable[[], bool]


def locked_write(study: optuna.Study, write: Callable[[], int | None], stop: Stop = lambda: False) -> int | None:
    """``write()`` (it stores a trial and returns its id, or None when it stores nothing) under the study's lock,
    exactly once: what it returns was stored.

    On PostgreSQL the lock is the transaction's own and ``write``'s storage calls run in that transaction
    (``optuna_internals.one_transaction``), committed with the lock's release: the whole write takes one
    server connection, so a worker holding the lock never waits for a second one (past the server's
    ``max_connections``, 96 workers once waited so for 93 holding none, for ``SWEEPER_DB_RETRY_S``), and
    through a transaction pooler a claim uses one server connection, not two. A commit whose answer is lost
    is tried again and finds its token (``sweeper.study.exactly_once``). Elsewhere the lock is held around
    ``write``, whose calls each are Optuna's own. ``stop()`` true while the lock is taken: None, nothing written
    (a worker asked to stop does not queue behind hundreds for a trial it will not train)."""
    rdb = rdb_backend(study)
    if rdb is None or rdb.engine.dialect.name != "postgresql":
        with study_lock(study):
            return write()
    from sweeper.study.exactly_once import once

    key = lock_key(study.study_name)

    def take(session: Session) -> None:
        if not session.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar():
            raise Taken  # the transaction ends: a waiting worker holds no server connection

    return until_taken(rdb, once(rdb, take, lambda _session: write()), stop)


def until_taken(rdb: RDBStorage, attempt: Callable[[], T], stop: Stop) -> T | None:
    """``attempt()`` (it raises ``Taken`` when the study's PostgreSQL lock is held by another worker), tried again
    after a pause while the lock is taken and retried through outages; None if ``stop()`` comes true meanwhile."""
    from sweeper.study.retry import call_with_retry

    pause = _FIRST_PAUSE
    while True:
        try:
            return call_with_retry(rdb, attempt)
        except Taken:
            if stop():
                return None
            pause = _wait(pause)


def _wait(pause: float) -> float:
    """Wait before trying a taken lock again; the next pause."""
    time.sleep(random.uniform(0, pause))  # random: waiting workers do not try again in step
    return min(pause * 2, _LONGEST_PAUSE)


class Taken(Exception):
    """The study's lock is held by another worker."""


@contextmanager
def _advisory(engine: sa.Engine, name: str, take: str, release: str | None) -> Iterator[None]:
    key: int | str = lock_key(name) if release is None else f"sweeper:{name}"[:64]

    def acquire() -> sa.Connection | None:
        conn = engine.connect()
        try:
            taken = conn.execute(sa.text(take), {"k": key}).scalar()
        except Exception:
            conn.close()
            raise
        if taken is False:  # a try-lock held by another worker: give the connection back while waiting
            conn.rollback()
            conn.close()
            return None
        return conn

    where = mask_url(engine.url.render_as_string(hide_password=False))
    pause = _FIRST_PAUSE
    while (conn := with_retry(acquire, where)) is None:
        pause = _wait(pause)
    try:
        yield
    finally:
        try:
            if release is not None:
                conn.execute(sa.text(release), {"k": key})
            conn.commit()  # ends the transaction: an xact lock is released here
        except Exception:  # the connection died: the server released the lock with it
            pass
        finally:
            conn.close()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no flock (Windows): workers of one process only
        with _local:
            yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def db_now(study: optuna.Study) -> float:
    """The study database's clock, in seconds since the epoch: one clock for every worker's leases, whatever
    their hosts' clocks say (Optuna's stale-trial check reads the database's clock too). A storage without a
    server (in memory) has this process's clock."""
    from datetime import UTC, datetime

    rdb = rdb_backend(study)
    if rdb is None:
        return time.time()

    def read() -> float:
        with rdb.engine.connect() as conn:
            now = conn.execute(sa.select(sa.func.current_timestamp())).scalar_one()
        if isinstance(now, str):  # SQLite without a DateTime result type: 'YYYY-MM-DD HH:MM:SS', UTC
            now = datetime.fromisoformat(now)
        if now.tzinfo is None:  # SQLite's CURRENT_TIMESTAMP is UTC
            now = now.replace(tzinfo=UTC)
        return now.timestamp()

    return with_retry(read, mask_url(rdb.engine.url.render_as_string(hide_password=False)))
