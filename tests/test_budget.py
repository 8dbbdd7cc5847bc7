"""The shared budget is exact, nothing holds a slot forever, retried writes never duplicate, workers never repeat."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import tiny_spec_dict
from sweeper import api
from sweeper.study import optuna_internals as internals
from sweeper.study import optuna_reads as reads
from sweeper.study.storage import make_storage
from sweeper.workers import budget
from sweeper.workers.budget import claims, try_claim
from sweeper.workers.heartbeat import Heartbeat

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(autouse=True)
def _fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    # worker processes: beat every second, and a grace a loaded machine cannot starve a live worker past (the
    # grace tests below set their own, 2 s)
    monkeypatch.setenv("SWEEPER_HEARTBEAT", "1")
    monkeypatch.setenv("SWEEPER_HEARTBEAT_GRACE", "6")


def test_racing_claims_never_create_a_trial_past_the_budget(storage_url: str) -> None:
    """Eight workers (each its own connection pool, as processes have) claim at once, with queued trials too."""
    budget = 5
    optuna.create_study(study_name="race", storage=make_storage(storage_url))
    first = optuna.load_study(study_name="race", storage=make_storage(storage_url))
    for _ in range(3):  # queued trials (a retry, a literature start point) are claimed like new ones
        first.enqueue_trial({})
    start, made, errors = threading.Barrier(8), [], []

    def worker() -> None:
        study = optuna.load_study(study_name="race", storage=make_storage(storage_url, heartbeat_interval=1))
        start.wait()
        try:
            for _ in range(4):
                trial = try_claim(study, budget, beat=lambda tid: None)
                if trial:
                    made.append(trial.number)
        except Exception as e:  # pragma: no cover - shown by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(made) == budget == len(set(made))
    assert claims(first) == (0, budget)
    assert len(first.get_trials(states=(TrialState.WAITING,))) == 0  # the queued ones were claimed first


def test_a_trial_that_never_beat_is_failed_after_the_grace_period_and_retried(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed between creating its trial and its first heartbeat: the slot is freed, the trial retried."""
    monkeypatch.setenv("SWEEPER_HEARTBEAT_GRACE", "2")  # the reaper's grace for trials that never beat
    study = optuna.load_study(
        study_name=optuna.create_study(storage=make_storage(storage_url)).study_name,
        storage=make_storage(storage_url, heartbeat_interval=1, grace_period=2),
    )
    orphan = study.ask()  # no heartbeat is ever recorded for it
    orphan.suggest_float("x", 0, 1)
    heartbeat = Heartbeat(study, lambda: [])
    heartbeat.reap()
    assert internals.frozen(study, internals.trial_id(orphan)).state == TrialState.RUNNING  # not before the grace
    time.sleep(2.2)
    heartbeat.reap()
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == TrialState.FAIL
    assert [t.state for t in trials[1:]] == [TrialState.WAITING]  # its retry, same parameters
    assert trials[1].params == trials[0].params


def test_the_heartbeat_thread_recovers_a_dead_workers_trials_within_the_grace(storage_url: str) -> None:
    """Stale trials are failed from the heartbeat thread, not only between another worker's trials."""
    url = storage_url
    name = optuna.create_study(storage=make_storage(url)).study_name
    dead = optuna.load_study(study_name=name, storage=make_storage(url, heartbeat_interval=1, grace_period=2))
    for _ in range(3):  # a population worker's members, beaten once, then the worker dies
        t = dead.ask()
        dead._storage.record_heartbeat(internals.trial_id(t))
    alive = optuna.load_study(study_name=name, storage=make_storage(url, heartbeat_interval=1, grace_period=2))
    began = time.monotonic()
    with Heartbeat(alive, lambda: []):
        while claims(alive)[1] and time.monotonic() - began < 15:
            time.sleep(0.2)
    assert claims(alive) == (0, 0)
    assert time.monotonic() - began < 6  # grace 2 s + a beat interval or two, not a trial's length


def test_a_worker_never_reaps_its_own_stale_trials(storage_url: str) -> None:
    """A worker stopped past the grace (SIGSTOP, a long pause) wakes with its trials stale: its reaper, on its own
    thread, may look before its beats are recorded again, and must leave them to it (a lone worker failed and
    retried its own live trial so). Another worker's reaper fails them."""
    name = optuna.create_study(storage=make_storage(storage_url)).study_name
    study = optuna.load_study(study_name=name, storage=make_storage(storage_url, heartbeat_interval=1, grace_period=2))
    tid = internals.trial_id(study.ask())
    study._storage.record_heartbeat(tid)
    deadline = time.monotonic() + 30
    while not reads.dead_trials(study).stale and time.monotonic() < deadline:  # past the grace (database clock)
        time.sleep(0.2)
    Heartbeat(study, lambda: [tid]).reap()  # its own
    assert internals.frozen(study, tid).state == TrialState.RUNNING
    Heartbeat(study, lambda: []).reap()  # another worker's
    assert internals.frozen(study, tid).state == TrialState.FAIL


def test_a_worker_says_when_its_heartbeats_come_late(storage_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Beats later than a third of the grace (here one beat takes 4 s: grace 6 s, interval 1 s) are a warning: a
    little later the other workers would fail this worker's live trials as dead."""
    name = optuna.create_study(storage=make_storage(storage_url)).study_name
    storage = make_storage(storage_url, heartbeat_interval=1)
    study = optuna.load_study(study_name=name, storage=storage)
    tid = internals.trial_id(study.ask())
    beats, record = [], storage.record_heartbeat

    def slow_second_beat(trial_id: int) -> None:
        beats.append(trial_id)
        if len(beats) == 2:
            time.sleep(4)
        record(trial_id)

    storage.record_heartbeat = slow_second_beat  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="sweeper"), Heartbeat(study, lambda: [tid]):
        deadline = time.monotonic() + 20
        while len(beats) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
    late = [r.getMessage() for r in caplog.records if "heartbeats came" in r.getMessage()]
    assert len(beats) >= 4 and len(late) == 1, (beats, late)
    assert "SWEEPER_HEARTBEAT_GRACE" in late[0]


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_started_without_an_id_never_repeat_a_trial(pg_url: str, tmp_path: Any, workers: int) -> None:
    """What ``docker compose up --scale worker=N`` does: N identical ``sweeper worker NAME`` commands."""
    budget = 12
    spec = tiny_spec_dict(
        f"noid{workers}", trials=budget, sampler={"type": "tpe", "n_startup_trials": 10}, warm_start="literature"
    )  # queued start points and the sampler's own, shared by the workers
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    api.create(str(tmp_path / "s.yaml"), storage=pg_url, tracking="")
    env = {**os.environ, "SWEEPER_STORAGE": pg_url, "MLFLOW_TRACKING_URI": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sweeper.cli", "worker", spec["name"], "--no-progress", "--device", "cpu"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(workers)]
    outputs = [p.communicate(timeout=240)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, outputs
    study = optuna.load_study(study_name=spec["name"], storage=make_storage(pg_url))
    trials = study.get_trials(deepcopy=False)
    assert len([t for t in trials if t.state in FINISHED]) == budget
    assert [t for t in trials if t.state == TrialState.FAIL] == []  # no surplus trial in a fault-free run
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(params) == len(set(params)), "two workers trained the same parameters"


def test_a_claim_racing_the_reaper_takes_the_retry_not_a_new_trial(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reaper fails a dead worker's trial and queues its retry as one write (one transaction on PostgreSQL,
    under the study lock on SQLite): a claim in between would see the slot free, make a new trial in it and leave
    the retry waiting past the budget (the dead trial's work, and its checkpoint, lost). A claim during the reap
    finds the slot taken (PostgreSQL: it sees the trial still RUNNING) or waits for it (SQLite), then takes the
    retry."""
    url = storage_url
    name = optuna.create_study(storage=make_storage(url)).study_name
    dead = optuna.load_study(study_name=name, storage=make_storage(url, heartbeat_interval=1, grace_period=2))
    dead._storage.record_heartbeat(internals.trial_id(dead.ask()))  # the budget's one slot; then the worker dies
    alive = optuna.load_study(study_name=name, storage=make_storage(url, heartbeat_interval=1, grace_period=2))
    deadline = time.monotonic() + 30
    while not reads.dead_trials(alive).stale and time.monotonic() < deadline:  # past the grace (database clock)
        time.sleep(0.2)

    failed, queue_retry = threading.Event(), optuna.storages.RetryHeartbeatStaleTrialCallback.__call__

    def slow_retry(self: Any, study: optuna.Study, trial: Any) -> None:
        failed.set()  # the trial is FAIL now; its retry is not queued yet
        time.sleep(1.0)
        queue_retry(self, study, trial)

    monkeypatch.setattr(optuna.storages.RetryHeartbeatStaleTrialCallback, "__call__", slow_retry)
    reaper = threading.Thread(target=Heartbeat(alive, lambda: []).reap)
    reaper.start()
    assert failed.wait(30)
    claimer = optuna.load_study(study_name=name, storage=make_storage(url))
    during = try_claim(claimer, 1, lambda tid: None)
    reaper.join()
    trial = during or try_claim(claimer, 1, lambda tid: None)
    assert trial is not None
    trials = claimer.get_trials(deepcopy=False)
    assert trials[trial.number].system_attrs.get("failed_trial") == 0  # the claim took the retry
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING]  # and made no trial past the budget


def test_a_worker_waiting_for_a_slot_looks_less_often(storage_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every slot claimed by another worker's running trial: the waiting worker looks again after ``poll``, then after
    pauses doubling up to ``LONGEST_POLL`` polls (random within half of each), not every ``poll`` (hundreds of
    workers at a study's tail would each send a claim and a count every 2 s)."""
    study = optuna.create_study(storage=make_storage(storage_url))
    assert try_claim(study, 1, lambda tid: None) is not None  # the one slot, another worker's
    pauses: list[float] = []
    monkeypatch.setattr(budget, "_sleep", lambda seconds, stop: pauses.append(seconds))
    assert budget.claim(study, 1, lambda tid: None, poll=1.0, stop=lambda: len(pauses) >= 8) is None
    longest = [min(2**i, budget.LONGEST_POLL) for i in range(8)]
    assert all(cap / 2 <= pause <= cap for pause, cap in zip(pauses, longest, strict=True)), pauses
    assert claims(study) == (0, 1)  # and it made no trial
