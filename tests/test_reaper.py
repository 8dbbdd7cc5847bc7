"""Reaping a dead worker's trials: one reaper at a time, never in the claims' way, each trial failed and queued once."""

from __future__ import annotations

import threading
import time
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from sweeper.study import optuna_internals as internals
from sweeper.study import optuna_reads as reads
from sweeper.study.lock import lock_key
from sweeper.study.storage import make_storage
from sweeper.workers.heartbeat import Heartbeat, requeue_dead


def _dead_worker(url: str, trials: int) -> tuple[str, list[int]]:
    """A study with ``trials`` RUNNING trials of a worker that beat once and died; their ids, once stale."""
    name = optuna.create_study(storage=make_storage(url)).study_name
    dead = optuna.load_study(study_name=name, storage=make_storage(url, heartbeat_interval=1, grace_period=2))
    ids = [internals.trial_id(dead.ask()) for _ in range(trials)]
    for tid in ids:
        dead._storage.record_heartbeat(tid)
    deadline = time.monotonic() + 30
    while len(reads.dead_trials(dead).stale) < trials and time.monotonic() < deadline:  # the database's clock
        time.sleep(0.2)
    return name, ids


def _alive(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=make_storage(url, heartbeat_interval=1, grace_period=2))


def test_a_reap_holds_neither_the_claims_lock_nor_waits_for_another_reaper(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one worker's reaper is writing (its first retry held back here), the claims' lock is free and a second
    worker's reaper leaves at once; the first then fails and queues both dead trials, each once."""
    name, dead = _dead_worker(pg_url, 2)
    writing, go_on = threading.Event(), threading.Event()
    queue_retry = optuna.storages.RetryHeartbeatStaleTrialCallback.__call__

    def held_retry(self: Any, study: optuna.Study, trial: Any) -> None:
        writing.set()
        assert go_on.wait(60)
        queue_retry(self, study, trial)

    monkeypatch.setattr(optuna.storages.RetryHeartbeatStaleTrialCallback, "__call__", held_retry)
    first = threading.Thread(target=Heartbeat(_alive(pg_url, name), lambda: []).reap)
    first.start()
    try:
        assert writing.wait(60)
        with sa.create_engine(pg_url).connect() as conn:  # a claim would take the lock now
            assert conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": lock_key(name)}).scalar()
            conn.rollback()
        second = _alive(pg_url, name)
        Heartbeat(second, lambda: []).reap()  # returns: it found the reapers' lock taken
        assert [t.state for t in second.get_trials(deepcopy=False)] == [TrialState.RUNNING] * 2
    finally:
        go_on.set()
        first.join(60)
    trials = _alive(pg_url, name).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.WAITING] * 2
    assert sorted(t.system_attrs["failed_trial"] for t in trials[2:]) == [0, 1]


def test_a_trial_that_ended_before_its_reap_is_left_as_it_is(storage_url: str) -> None:
    """A trial listed as dead that ends before its reap (a slow worker's tell) is neither failed nor queued again;
    the reap goes on to the next one."""
    name, (ended, dead) = _dead_worker(storage_url, 2)
    study = _alive(storage_url, name)
    study.tell(study.trials[0].number, 0.5)
    assert requeue_dead(study, lambda: [ended, dead], lambda: False) == [dead]
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert trials[2].system_attrs["failed_trial"] == 1


def test_a_beat_is_one_statement_that_optunas_check_reads(storage_url: str) -> None:
    """On PostgreSQL a heartbeat is one statement (Optuna's takes four round trips); Optuna's own stale-trial check
    reads it as its own: stale once the grace has passed without one, fresh again after the next."""
    name = optuna.create_study(storage=make_storage(storage_url)).study_name
    study = _alive(storage_url, name)
    tid = internals.trial_id(study.ask())
    rdb, statements = internals.rdb_backend(study), []
    sa.event.listen(rdb.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    study._storage.record_heartbeat(tid)  # the row made
    study._storage.record_heartbeat(tid)  # the row set
    if rdb.engine.dialect.name == "postgresql":
        assert len(statements) == 2, statements
    deadline = time.monotonic() + 30
    while tid not in rdb._get_stale_trial_ids(internals.study_id(study)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tid in rdb._get_stale_trial_ids(internals.study_id(study))
    study._storage.record_heartbeat(tid)
    assert tid not in rdb._get_stale_trial_ids(internals.study_id(study))
