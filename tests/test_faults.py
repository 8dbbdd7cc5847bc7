"""Faults a long sweep meets, each really done: a killed worker, SIGTERM, a database restart,
an unreachable MLflow server, a diverging trial, an out-of-memory trial."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from conftest import PG_ADMIN, tiny_spec_dict
from sweeper import api
from sweeper.study.spec import parse_spec
from sweeper.study.storage import make_storage
from sweeper.workers.local import start_workers
from sweeper.workers.worker import run_worker

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# slow enough (a few hundred steps an epoch) that a signal lands mid-trial
SLOW = {"epochs": 3, "batch_size": 8}


@pytest.fixture(autouse=True)
def _fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPER_HEARTBEAT", "1")
    monkeypatch.setenv("SWEEPER_HEARTBEAT_GRACE", "3")


@pytest.fixture
def pg_db() -> Iterator[str]:
    """A fresh PostgreSQL database whose admin connection survives a server restart (no pooling)."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    name = f"sweeper_fault_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        _pg_ensure_up()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name=None, storage=make_storage(url))


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _mid_trial(url: str) -> Callable[[], FrozenTrial | None]:
    """A running trial that has finished at least one epoch."""

    def check() -> FrozenTrial | None:
        for t in _study(url).get_trials(states=(TrialState.RUNNING,)):
            if t.intermediate_values:
                return t
        return None

    return check


def _one_worker(name: str, url: str, tracking: str = "") -> subprocess.Popen[bytes]:
    return start_workers(name, url, tracking, 1, "none")[0]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def test_killed_worker_trial_is_failed_by_heartbeat_and_retried(pg_db: str) -> None:
    spec = parse_spec(tiny_spec_dict("killed", trials=2, train=SLOW))
    api.create(spec, storage=pg_db, tracking="")
    proc = _one_worker("killed", pg_db)
    try:
        victim = _wait_for("a trial mid-training", _mid_trial(pg_db))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _stop(proc)

    start = time.monotonic()
    run_worker("killed", pg_db, None, worker_id=1)  # the survivor fails the stale trial and runs its retry
    assert time.monotonic() - start < 180

    trials = _study(pg_db).get_trials()
    assert trials[victim.number].state == TrialState.FAIL
    assert len([t for t in trials if t.state in FINISHED]) == 2
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state in FINISHED
    assert retry[0].params == victim.params
    assert retry[0].user_attrs["worker"] == "1"


@pytest.mark.parametrize("population", [None, 2], ids=["one-trial", "population"])
def test_sigterm_stops_worker_cleanly_and_queues_its_trial(
    tmp_path: Path, tracking_uri: str, population: int | None
) -> None:
    from mlflow import MlflowClient

    url = f"sqlite:///{tmp_path}/study.db"
    budget = population or 1
    # ~0.1 s an epoch: the signal lands mid-trial, well before its 30th epoch
    spec = parse_spec(tiny_spec_dict("term", trials=budget, train={"epochs": 30, "batch_size": 8}))
    api.create(spec, storage=url, tracking=tracking_uri)
    proc = start_workers("term", url, tracking_uri, 1, "none", population)[0]
    try:
        _wait_for("a trial mid-training", _mid_trial(url))
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - start < 10
    finally:
        _stop(proc)

    trials = _study(url).get_trials()
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert len(stopped) == budget  # every trial the worker was training, none left RUNNING
    assert all("SIGTERM" in t.user_attrs["end_reason"] for t in stopped)
    waiting = {t.system_attrs["failed_trial"]: t for t in trials if t.state == TrialState.WAITING}
    assert sorted(waiting) == [t.number for t in stopped]
    assert all(waiting[t.number].params == t.params for t in stopped)

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name("term")
    for victim in stopped:
        runs = client.search_runs([exp.experiment_id], f"tags.`optuna.trial_number` = '{victim.number}'")
        assert [r.info.status for r in runs] == ["FAILED"]
        assert "SIGTERM" in runs[0].data.tags["sweeper.end_reason"]

    run_worker("term", url, None, population=population)  # the next worker takes the queued trials as they were
    trials = _study(url).get_trials()
    done = [t for t in trials if t.state in FINISHED]
    assert len(done) == budget
    assert sorted(t.system_attrs["failed_trial"] for t in done) == [t.number for t in stopped]
    assert all(t.params == trials[t.system_attrs["failed_trial"]].params for t in done)


def _pg_cluster() -> tuple[str, str]:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    return version, "main"


def _pg_ensure_up() -> None:
    version, cluster = _pg_cluster()
    status = subprocess.run(["pg_ctlcluster", version, cluster, "status"], capture_output=True)
    if status.returncode != 0:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "start"], timeout=60)


@pytest.mark.skipif(not os.path.isdir("/etc/postgresql"), reason="needs a local PostgreSQL cluster to restart")
def test_worker_survives_postgresql_restart(pg_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # an outage must not look like a dead worker: heartbeats pause while the server is down
    monkeypatch.setenv("SWEEPER_HEARTBEAT_GRACE", "20")
    spec = parse_spec(tiny_spec_dict("restart", trials=4, train={"epochs": 3, "batch_size": 16}))
    api.create(spec, storage=pg_db, tracking="")
    proc = _one_worker("restart", pg_db)
    version, cluster = _pg_cluster()
    try:
        before = _wait_for(
            "a finished trial and one mid-training",
            lambda: _mid_trial(pg_db)() and _study(pg_db).get_trials(states=FINISHED),
        )
        restart = ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "restart"]
        subprocess.run(restart, check=True, timeout=60)
        assert proc.wait(timeout=240) == 0
    finally:
        _stop(proc)
        _pg_ensure_up()

    trials = _study(pg_db).get_trials()
    finished = {t.number: t.value for t in trials if t.state in FINISHED}
    assert len(finished) == 4
    assert all(finished[t.number] == t.value for t in before)  # no finished trial lost
    assert not [t for t in trials if t.state == TrialState.RUNNING]


@pytest.mark.skipif(not os.path.isdir("/etc/postgresql"), reason="needs a local PostgreSQL cluster to stop")
def test_every_storage_call_of_a_trial_waits_out_a_database_outage(pg_db: str) -> None:
    """Each call a worker makes (ask, suggest, report, tell, best trial) hits a stopped server and waits.

    Optuna's cached storage calls private backend methods (``_create_new_trial``, ``_set_trial_param``,
    ``_get_trials``, ...): a restart during a suggest once crashed a worker in CI.
    """
    import threading

    version, cluster = _pg_cluster()
    ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster]
    study = optuna.create_study(storage=make_storage(pg_db), study_name="outage", direction="maximize")
    trial: list[optuna.Trial] = []
    calls: dict[str, Callable[[], Any]] = {
        "ask": lambda: trial.append(study.ask()),
        "suggest": lambda: trial[0].suggest_float("dropout.hidden_1", 0.2, 0.5),
        "report": lambda: trial[0].report(0.5, 0),
        "should_prune": lambda: trial[0].should_prune(),
        "tell": lambda: study.tell(trial[0], 0.7),
        "best_trial": lambda: study.best_trial,
    }
    try:
        for what, call in calls.items():
            subprocess.run([*ctl, "stop"], check=True, timeout=60)
            restart = threading.Timer(1.5, lambda: subprocess.run([*ctl, "start"], check=True, timeout=60))
            restart.start()
            start = time.monotonic()
            call()  # raises if the outage is not ridden out
            restart.join()
            assert time.monotonic() - start >= 1.0, f"{what} did not meet the outage"
    finally:
        _pg_ensure_up()
    assert study.best_trial.value == 0.7 and study.best_trial.params["dropout.hidden_1"] >= 0.2


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when we return: nothing listens there


def test_unreachable_mlflow_warns_once_and_training_goes_on(
    tmp_path: Path, tracking_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    spec = parse_spec(tiny_spec_dict("nomlflow", trials=3))
    api.create(spec, storage=url, tracking=tracking_uri)  # the study has a parent run ...
    down = f"http://127.0.0.1:{_closed_port()}"  # ... but the worker's tracking server is down
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="sweeper"):
        run_worker("nomlflow", url, down)
    assert time.monotonic() - start < 60  # no minutes of HTTP retries
    warnings = [r for r in caplog.records if r.name.startswith("sweeper") and "MLflow" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert len(_study(url).get_trials(states=FINISHED)) == 3


def test_launch_without_mlflow_server_still_runs_the_study(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    spec = parse_spec(tiny_spec_dict("nomlflow2", trials=2))
    with caplog.at_level(logging.WARNING, logger="sweeper"):
        rep = api.launch(spec, storage=url, tracking=f"http://127.0.0.1:{_closed_port()}", score_test=False)
    assert rep.counts["complete"] + rep.counts["pruned"] == 2
    assert any("does not answer" in r.getMessage() for r in caplog.records)


def test_diverging_trial_is_pruned_with_its_reason(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    # a huge learning rate, and nothing (max-norm, batch norm) that would rein it in
    space = {"lr_scale": 1e12, "max_norm": False, "batch_norm": False}
    spec = parse_spec(tiny_spec_dict("diverge", trials=2, space=space))
    api.create(spec, storage=url, tracking="")
    run_worker("diverge", url, None)
    trials = _study(url).get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert all("loss became" in t.user_attrs["end_reason"] for t in trials)


OOM_NET = """
import torch
from torch import nn

calls = 0


def build(in_features, num_classes, dropout, batch_norm):
    global calls
    calls += any(dropout)  # trials only: sweeper's own check before the study builds it with dropout off
    if calls == 2:  # the second trial's network does not fit
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    return nn.Sequential(nn.Dropout(dropout[0]), nn.Linear(in_features, 32), nn.ReLU(),
                         nn.Dropout(dropout[1]), nn.Linear(32, num_classes))
"""


def test_out_of_memory_trial_fails_with_reason_and_worker_goes_on(tmp_path: Path) -> None:
    (tmp_path / "oom_net.py").write_text(OOM_NET)
    url = f"sqlite:///{tmp_path}/study.db"
    d = tiny_spec_dict("oom", trials=3, network={"type": "python", "factory": "oom_net.py:build", "hidden_layers": 1})
    api.create(parse_spec(d, base_dir=tmp_path), storage=url, tracking="")
    run_worker("oom", url, None)
    trials = _study(url).get_trials()
    assert [t.state for t in trials][:2] == [TrialState.COMPLETE, TrialState.FAIL]
    assert "OutOfMemoryError" in trials[1].user_attrs["end_reason"]
    assert len([t for t in trials if t.state in FINISHED]) == 3  # the worker took the next trials
