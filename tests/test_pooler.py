"""Workers through a transaction pooler (a real PgBouncer before a real PostgreSQL, fewer server connections
than clients): the budget exact, a killed worker's trial failed by heartbeat and retried, no worker stalled."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState
from sqlalchemy.pool import NullPool
from test_faults import SAFE, SLOW, _finished, _mid_trial, _stop, _study, _sweeper, _wait_for

from conftest import PrivatePgBouncer, PrivatePostgres, pgbouncer_binary, tiny_spec_dict
from sweeper import api
from sweeper.launchers.local import worker_env
from sweeper.study.lock import study_lock
from sweeper.study.optuna_internals import rdb_backend
from sweeper.study.optuna_reads import dead_trials
from sweeper.study.spec import parse_spec
from sweeper.study.storage import make_storage
from sweeper.workers.budget import claims, try_claim

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(autouse=True)
def _fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPER_HEARTBEAT", "1")
    monkeypatch.setenv("SWEEPER_HEARTBEAT_GRACE", "3")


@pytest.fixture
def pooled_url(private_pg: PrivatePostgres, private_pgbouncer: PrivatePgBouncer) -> Iterator[str]:
    """A fresh database, reached through the session's PgBouncer (4 server connections)."""
    with private_pg.database("sweeper_pool") as name:
        yield private_pgbouncer.url(name)


def test_workers_through_pgbouncer_meet_the_budget_and_recover_a_killed_worker(pooled_url: str, tmp_path: Path) -> None:
    """Three ``sweeper worker`` processes (each with its heartbeat thread and pooled connections) share 4 server
    connections; one is SIGKILLed mid-trial: its trial is failed by heartbeat and retried with its parameters,
    and the study ends with exactly its budget, nothing left running, no traceback."""
    spec = parse_spec(tiny_spec_dict("pooled", trials=6, train=SLOW, space=SAFE))
    api.create(spec, storage=pooled_url, tracking="")
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    env = worker_env(pooled_url, "", None)
    args = ["worker", "pooled", "--no-progress", "--device", "cpu", "--worker-id"]
    procs = [_sweeper([*args, str(i)], log, **env) for i, log in enumerate(logs)]
    try:
        victim = _wait_for("a trial mid-training", _mid_trial(pooled_url), timeout=180)
        killed = procs[int(victim.user_attrs["worker"])]
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        for p in procs:
            if p is not killed:
                assert p.wait(timeout=300) == 0, "".join(log.read_text() for log in logs)
    finally:
        for p in procs:
            _stop(p)
    output = "".join(log.read_text() for log in logs)
    assert "Traceback" not in output, output
    trials = _study(pooled_url).get_trials()
    assert len(_finished(pooled_url)) == 6, output
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert trials[victim.number].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state in FINISHED and retry[0].params == victim.params
    assert len([t for t in trials if t.state == TrialState.FAIL]) == 1  # no surplus trial, no other failure


def test_waiting_for_the_study_lock_holds_no_server_connection(private_pg: PrivatePostgres) -> None:
    """Through a pool of 2 server connections, 4 workers wait for the study lock while its holder runs its
    claim's queries on another connection. A blocking lock wait holds a server connection per waiter: the
    holder's query would find none free and fail after PgBouncer's query_wait_timeout (here 10 s)."""
    if pgbouncer_binary() is None:
        pytest.skip("no pgbouncer found (Debian: apt-get install pgbouncer): the pooled-path tests need one")
    bouncer = PrivatePgBouncer(private_pg, pool_size=2, query_wait_timeout=10)
    try:
        with private_pg.database("sweeper_pool") as name:
            _lock_waiters_and_holder(bouncer.url(name), lambda: _lock_tries(private_pg, name) >= 1)
    finally:
        bouncer.remove()


def test_a_worker_needs_one_server_connection_at_a_time(
    private_pg: PrivatePostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a pool of ONE server connection a worker opens the study and claims trials until the budget is met.

    Opening: Optuna's schema check holds a transaction on one connection while it reads the schema's revision on
    a second (256 workers opening at once through 40 server connections all stalled so). Claiming: the study
    lock, the count, the new trial and its first beat are one transaction; with the lock on one connection and
    the queries on another, a holder waits for a second server connection, and past a server's
    ``max_connections`` 93 of 96 direct workers waited so for a holder. Here either wait ends in PgBouncer's
    query_wait_timeout (5 s), retried for 10 s, and the test fails."""
    if pgbouncer_binary() is None:
        pytest.skip("no pgbouncer found (Debian: apt-get install pgbouncer): the pooled-path tests need one")
    monkeypatch.setenv("SWEEPER_DB_RETRY_S", "10")
    bouncer = PrivatePgBouncer(private_pg, pool_size=1, query_wait_timeout=5)
    try:
        with private_pg.database("sweeper_open") as name:
            url = bouncer.url(name)  # the study is created directly (Optuna's first set-up of a database nests too)
            api.create(parse_spec(tiny_spec_dict("open1", trials=2)), storage=private_pg.url(name), tracking="")
            storage = make_storage(url, heartbeat_interval=1)  # a worker's
            study = optuna.load_study(study_name="open1", storage=storage)
            assert claims(study) == (0, 0)
            made = [try_claim(study, 2, storage.record_heartbeat) for _ in range(3)]
            assert made[2] is None and [t.number for t in made[:2] if t is not None] == [0, 1]
            assert claims(study) == (0, 2) and not dead_trials(study).unbeaten  # each beat with its trial
            storage.engine.dispose()
    finally:
        bouncer.remove()


def _lock_waiters_and_holder(url: str, waiters_tried: Callable[[], bool]) -> None:
    studies = [optuna.create_study(study_name="lock", storage=make_storage(url))]
    studies += [optuna.load_study(study_name="lock", storage=make_storage(url)) for _ in range(4)]
    held, got = threading.Event(), []

    def wait_for_lock(study: optuna.Study) -> None:
        held.wait()
        with study_lock(study):
            got.append(study)

    waiters = [threading.Thread(target=wait_for_lock, args=(s,)) for s in studies[1:]]
    for t in waiters:
        t.start()
    try:
        with study_lock(studies[0]):
            held.set()
            _wait_for("the waiters to try the lock", waiters_tried, timeout=60)
            assert claims(studies[0]) == (0, 0)  # a query on a second server connection, the lock held
    finally:
        held.set()
        for t in waiters:
            t.join(timeout=120)
    assert len(got) == 4
    for s in studies:
        backend = rdb_backend(s)
        assert backend is not None
        backend.engine.dispose()


def _lock_tries(server: PrivatePostgres, database: str) -> int:
    """How many sessions of ``database`` have asked for an advisory lock (their last statement)."""
    admin = sa.create_engine(server.admin_url, poolclass=NullPool)
    with admin.connect() as c:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = :d AND query LIKE '%advisory%'"
        return int(c.execute(sa.text(query), {"d": database}).scalar_one())


def test_storage_sends_no_prepared_statements(pg_url: str) -> None:
    """psycopg 3 prepares a query server-side after 5 runs; through a transaction pooler the next transaction
    may land on a server connection that never saw it. Sweeper's connections never prepare."""
    storage = make_storage(pg_url)
    with storage.engine.connect() as conn:
        assert conn.connection.dbapi_connection.prepare_threshold is None  # type: ignore[union-attr]
    storage.engine.dispose()
