"""Faults a long sweep meets, each really done: a killed worker, SIGTERM, a database restart,
an unreachable MLflow server, a diverging trial, an out-of-memory trial."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState

from conftest import PrivatePostgres, tiny_spec_dict
from sweeper import api
from sweeper.launchers.local import start_workers, worker_env
from sweeper.settings import RunSettings
from sweeper.study.spec import parse_spec
from sweeper.study.storage import make_storage
from sweeper.workers.worker import run_worker

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# slow enough (a few hundred steps an epoch) that a signal lands mid-trial
SLOW = {"epochs": 10, "batch_size": 8}  # 3 epochs ended before a poll saw one mid-trial on a quiet CI machine
# worker processes draw their own sampler seeds: a space that cannot diverge, so a trial is still training when
# the test looks for one mid-training (a diverged trial ends in a moment)
SAFE = {"lr_scale": [1.0, 3.0]}


@pytest.fixture(autouse=True)
def _fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPER_HEARTBEAT", "1")
    monkeypatch.setenv("SWEEPER_HEARTBEAT_GRACE", "3")


@pytest.fixture
def pg_db(private_pg: PrivatePostgres) -> Iterator[str]:
    """A fresh database on the session's own PostgreSQL server (the one outage tests stop and start)."""
    with private_pg.database("sweeper_fault") as name:
        yield private_pg.url(name)


@pytest.fixture
def pg_ctl(private_pg: PrivatePostgres) -> Iterator[Callable[[str], None]]:
    """``pg_ctl("stop")`` / ``pg_ctl("start")`` on the session's own server; it is up again afterwards."""
    try:
        yield lambda action: private_pg.stop() if action == "stop" else private_pg.start()
    finally:
        private_pg.ensure_up()


_storages: dict[str, optuna.storages.BaseStorage] = {}


def _study(url: str) -> optuna.Study:
    """The one study in ``url``, on one storage per database: polling must not open connections by the hundred."""
    storage = _storages.get(url) or _storages.setdefault(url, make_storage(url))
    return optuna.load_study(study_name=None, storage=storage)


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _mid_trial(url: str) -> Callable[[], FrozenTrial | None]:
    """A running trial that has finished at least one epoch."""

    def check() -> FrozenTrial | None:
        try:
            running = _study(url).get_trials(states=(TrialState.RUNNING,))
        except ValueError:  # no study yet (``sweeper launch`` is still creating it)
            return None
        for t in running:
            if t.intermediate_values:
                return t
        return None

    return check


def _one_worker(name: str, url: str, tracking: str = "") -> subprocess.Popen[bytes]:
    return start_workers(name, RunSettings(storage=url, tracking=tracking, gpus="none"))[0]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def test_killed_worker_trial_is_failed_by_heartbeat_and_retried(pg_db: str) -> None:
    spec = parse_spec(tiny_spec_dict("killed", trials=2, train=SLOW, space=SAFE))
    api.create(spec, storage=pg_db, tracking="")
    proc = _one_worker("killed", pg_db)
    try:
        victim = _wait_for("a trial mid-training", _mid_trial(pg_db))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _stop(proc)

    start = time.monotonic()
    # the survivor fails the stale trial and runs its retry
    run_worker("killed", RunSettings(storage=pg_db, tracking=""), worker_id=1)
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
    spec = parse_spec(tiny_spec_dict("term", trials=budget, train={"epochs": 30, "batch_size": 8}, space=SAFE))
    api.create(spec, storage=url, tracking=tracking_uri)
    proc = start_workers("term", RunSettings(storage=url, tracking=tracking_uri, gpus="none", population=population))[0]
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

    # the next worker takes the queued trials as they were
    run_worker("term", RunSettings(storage=url, tracking="", population=population))
    trials = _study(url).get_trials()
    done = [t for t in trials if t.state in FINISHED]
    assert len(done) == budget
    assert sorted(t.system_attrs["failed_trial"] for t in done) == [t.number for t in stopped]
    assert all(t.params == trials[t.system_attrs["failed_trial"]].params for t in done)


def _sweeper(args: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``sweeper ARGS`` as a user runs it, its stdout and stderr (workers' too) in ``log``."""
    with open(log, "ab") as out:
        cmd = [sys.executable, "-m", "sweeper.cli", *args]
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})


def _worker(name: str, log: Path, storage: str, tracking: str) -> subprocess.Popen[bytes]:
    """``sweeper worker NAME`` as ``sweeper launch`` starts it (URLs in the environment, on the CPU)."""
    return _sweeper(["worker", name, "--no-progress", "--device", "cpu"], log, **worker_env(storage, tracking, None))


def _finished(url: str) -> list[FrozenTrial]:
    return _study(url).get_trials(states=FINISHED)


@pytest.mark.parametrize("outage_s", [1, 8], ids=["shorter-than-grace", "longer-than-grace"])
def test_launch_with_two_workers_rides_out_a_database_outage(
    pg_db: str,
    pg_ctl: Callable[[str], None],
    tracking_uri: str,
    tmp_path: Path,
    outage_s: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``sweeper launch --workers 2`` through a real PostgreSQL stop and start (heartbeat grace 3 s):
    exit 0, no traceback, the budget met, every finished trial in MLflow."""
    from mlflow import MlflowClient

    monkeypatch.setenv("SWEEPER_DB_RETRY_S", "60")
    study_file = tmp_path / "outage.yaml"
    study_file.write_text(yaml.safe_dump(tiny_spec_dict("outage", trials=4, train={"epochs": 12, "batch_size": 16})))
    log = tmp_path / "launch.log"
    args = ["launch", str(study_file), "--storage", pg_db, "--tracking-uri", tracking_uri, "--workers", "2"]
    proc = _sweeper([*args, "--gpus", "none"], log)
    try:
        _wait_for("a trial mid-training", _mid_trial(pg_db), timeout=180)
        pg_ctl("stop")
        time.sleep(outage_s)  # the outage itself: how long the database is away
        pg_ctl("start")
        assert proc.wait(timeout=300) == 0, log.read_text()
    finally:
        _stop(proc)
    output = log.read_text()
    assert "Traceback" not in output, output
    trials = _study(pg_db).get_trials()
    assert len([t for t in trials if t.state in FINISHED]) == 4, output
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("outage").experiment_id], "tags.`sweeper.role` = 'trial'")
    status = {int(r.data.tags["optuna.trial_number"]): r.info.status for r in runs}
    for t in trials:
        if t.state in FINISHED:
            assert status[t.number] == "FINISHED"  # pruned trials too: a normal outcome, told apart by sweeper.state
        elif t.number in status:  # failed (taken from its worker after the outage): so is its run
            assert status[t.number] == "FAILED"


def test_worker_whose_trial_was_taken_during_an_outage_drops_it_and_goes_on(
    pg_db: str, pg_ctl: Callable[[str], None], tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database is down for longer than the heartbeat grace; another worker fails the running trial
    as stale and queues it again. The worker that ran it drops it in one line and goes on.

    The worker is paused (SIGSTOP) while the database is away, so that its heartbeat cannot win the
    race with the stale check when the database returns: the take happens every time.
    """
    from mlflow import MlflowClient

    monkeypatch.setenv("SWEEPER_DB_RETRY_S", "60")
    spec = parse_spec(tiny_spec_dict("taken", trials=2, train={"epochs": 30, "batch_size": 16}, space=SAFE))
    api.create(spec, storage=pg_db, tracking=tracking_uri)
    log = tmp_path / "worker.log"
    proc = _worker("taken", log, pg_db, tracking_uri)
    try:
        victim = _wait_for("a trial mid-training", _mid_trial(pg_db), timeout=180)
        pg_ctl("stop")
        proc.send_signal(signal.SIGSTOP)
        pg_ctl("start")
        # what another worker's stale check does (heartbeats on, 3 s grace): fail it, queue it again
        other = optuna.load_study(study_name="taken", storage=make_storage(pg_db, heartbeat_interval=1, grace_period=3))

        def taken() -> bool:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna; sweeper relies on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(other)
            return other._storage.get_trial(victim._trial_id).state == TrialState.FAIL

        _wait_for("the paused worker's trial failed as stale", taken, timeout=60)
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=240) == 0, log.read_text()
    finally:
        proc.send_signal(signal.SIGCONT)
        _stop(proc)
    output = log.read_text()
    assert "Traceback" not in output and "Cannot tell" not in output, output
    assert f"trial {victim.number} taken over" in output, output
    trials = _study(pg_db).get_trials()
    assert len([t for t in trials if t.state in FINISHED]) == 2
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state in FINISHED and retry[0].params == victim.params
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("taken").experiment_id
    (run,) = client.search_runs([exp], f"tags.`optuna.trial_number` = '{victim.number}'")
    assert run.info.status == "FAILED" and "taken over" in run.data.tags["sweeper.end_reason"]


def test_worker_and_launch_wait_for_a_database_that_is_not_up_yet(
    pg_db: str, pg_ctl: Callable[[str], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker started before its database (Docker, Kubernetes) waits for it, saying so; so does the end
    of ``sweeper launch`` (``api.finish``), which once exited 2 after its workers had ridden out an outage."""
    import threading

    monkeypatch.setenv("SWEEPER_DB_RETRY_S", "120")
    api.create(parse_spec(tiny_spec_dict("early", trials=2)), storage=pg_db, tracking="")
    log = tmp_path / "worker.log"
    reports: list[Any] = []
    pg_ctl("stop")
    proc = _worker("early", log, pg_db, "")
    try:
        finish = threading.Thread(
            target=lambda: reports.append(api.finish("early", storage=pg_db, tracking="", score_test=False))
        )
        finish.start()
        _wait_for("the worker saying what it waits for", lambda: "unreachable" in log.read_text(), timeout=180)
        assert proc.poll() is None and finish.is_alive()
        pg_ctl("start")
        assert proc.wait(timeout=240) == 0, log.read_text()
        finish.join(timeout=240)
    finally:
        _stop(proc)
    output = log.read_text()
    assert "Traceback" not in output and "waiting up to 120 s" in output, output
    assert "127.0.0.1" in output and "ran 2 trial(s)" in output, output
    assert len(reports) == 1 and reports[0].name == "early"
    assert len(_finished(pg_db)) == 2


def test_database_gone_for_longer_than_the_retry_window_is_one_message(
    pg_db: str, pg_ctl: Callable[[str], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``SWEEPER_DB_RETRY_S`` a worker gives up, mid-trial or at its start: one message, exit 2,
    the URL's password masked (PostgreSQL here trusts local connections and ignores it)."""
    from click.testing import CliRunner

    from sweeper.cli import main

    monkeypatch.setenv("SWEEPER_DB_RETRY_S", "3")
    spec = parse_spec(tiny_spec_dict("gone", trials=2, train={"epochs": 40, "batch_size": 16}, space=SAFE))
    api.create(spec, storage=pg_db, tracking="")
    log, secret = tmp_path / "worker.log", pg_db.replace("postgres@", "postgres:s3cret@")
    proc = _worker("gone", log, secret, "")
    try:
        _wait_for("a trial mid-training", _mid_trial(pg_db), timeout=180)
        pg_ctl("stop")
        assert proc.wait(timeout=120) == 2, log.read_text()
        start = time.monotonic()
        result = CliRunner().invoke(main, ["worker", "gone", "--storage", secret])
        assert time.monotonic() - start >= 2.5  # it waited before giving up
    finally:
        _stop(proc)
    output = log.read_text()
    assert "Traceback" not in output and "has been unreachable for more than 3 s" in output, output
    assert result.exit_code == 2 and "cannot open the study database" in result.output, result.output
    assert "waiting up to 3 s" in result.output and "Traceback" not in result.output, result.output
    assert "s3cret" not in output + result.output and "postgres:***@" in output + result.output


def test_every_storage_call_of_a_trial_waits_out_a_database_outage(pg_db: str, pg_ctl: Callable[[str], None]) -> None:
    """Each call a worker makes (ask, suggest, report, tell, best trial) hits a stopped server and waits.

    Optuna's cached storage calls private backend methods (``_create_new_trial``, ``_set_trial_param``,
    ``_get_trials``, ...): a restart during a suggest once crashed a worker in CI.
    """
    import threading

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
    for what, call in calls.items():
        pg_ctl("stop")
        restart = threading.Timer(1.5, lambda: pg_ctl("start"))
        restart.start()
        start = time.monotonic()
        call()  # raises if the outage is not ridden out
        restart.join()
        assert time.monotonic() - start >= 1.0, f"{what} did not meet the outage"
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
        run_worker("nomlflow", RunSettings(storage=url, tracking=down))
    assert time.monotonic() - start < 60  # no minutes of HTTP retries, no waiting for the server at the end
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("sweeper") and "MLflow" in r.getMessage()]
    assert len([w for w in warnings if "does not answer" in w and "kept" in w]) == 1, warnings  # not one a trial
    assert len(warnings) == 2 and "runs of trial(s) 0, 1, 2 were not sent" in warnings[1], warnings
    assert len(_study(url).get_trials(states=FINISHED)) == 3


@pytest.fixture
def not_mlflow() -> Iterator[str]:
    """A real web server on 127.0.0.1 that is not MLflow: it answers 404 to everything."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_tracking_uri_that_is_not_mlflow_is_one_warning_and_the_study_runs(
    not_mlflow: str, tmp_path: Path, tracking_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    from click.testing import CliRunner

    from sweeper.cli import main

    url, not_mlflow = f"sqlite:///{tmp_path}/study.db", not_mlflow.replace("//", "//sweeper:s3cret@")
    study_file = tmp_path / "web.yaml"
    study_file.write_text(yaml.safe_dump(tiny_spec_dict("web", trials=2)))
    result = CliRunner().invoke(main, ["launch", str(study_file), "--storage", url, "--tracking-uri", not_mlflow])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "MlflowException" not in result.output, result.output
    assert result.output.count("is not an MLflow tracking server") == 1, result.output
    assert "runs without tracking" in result.output and "web: 2 complete" in result.output, result.output

    # a worker pointed at it, on a study whose run is in a real store: one warning, every trial runs
    api.create(parse_spec(tiny_spec_dict("web2", trials=2)), storage=url, tracking=tracking_uri)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sweeper"):
        assert run_worker("web2", RunSettings(storage=url, tracking=not_mlflow)) == 2
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("sweeper") and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "not an MLflow tracking server" in warnings[0], warnings
    assert "s3cret" not in result.output + warnings[0] and "sweeper:***@" in warnings[0]


def test_mlflow_server_restarted_mid_study_gets_every_trial_run(tmp_path: Path) -> None:
    """A real ``mlflow server`` stopped mid-study and started again (same port, same store): the trials
    that finished meanwhile get their runs, with every epoch's metrics, their times and end states."""
    from mlflow import MlflowClient

    from sweeper.tracking.ui import start_server, stop_server

    store, port, url = f"sqlite:///{tmp_path}/mlflow.db", _closed_port(), f"sqlite:///{tmp_path}/study.db"
    uri = f"http://127.0.0.1:{port}"
    server = start_server(store, port=port)
    spec = parse_spec(tiny_spec_dict("restart", trials=6, train={"epochs": 6, "batch_size": 16}))
    api.create(spec, storage=url, tracking=uri)
    log = tmp_path / "worker.log"
    proc = _worker("restart", log, url, uri)
    try:
        _wait_for("a trial finished", lambda: _finished(url), timeout=180)
        stop_server(server)
        n = len(_finished(url))
        _wait_for("two trials finished while the server is down", lambda: len(_finished(url)) >= n + 2, timeout=180)
        proc.send_signal(signal.SIGSTOP)  # the worker waits while the server starts, however long that takes
        server = start_server(store, port=port)
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=300) == 0, log.read_text()
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("restart").experiment_id
        runs = client.search_runs([exp], "tags.`sweeper.role` = 'trial'")
        history = {r.info.run_id: client.get_metric_history(r.info.run_id, "val_accuracy") for r in runs}
    finally:
        proc.send_signal(signal.SIGCONT)
        _stop(proc)
        stop_server(server)
    output = log.read_text()
    assert "Traceback" not in output, output
    assert output.count("trial runs are kept") == 1 and "answers again" in output, output
    trials = _study(url).get_trials()
    assert len(trials) == 6 and all(t.state in FINISHED for t in trials)
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in runs}
    assert len(runs) == len(by_number) == 6  # one run a trial, none made twice
    for t in trials:
        run = by_number[t.number]
        assert run.info.status == "FINISHED"  # pruned trials too: a normal outcome, told apart by sweeper.state
        assert run.data.tags["sweeper.state"] == t.state.name
        assert run.info.start_time == int(t.datetime_start.timestamp() * 1000)
        assert run.info.end_time == int(t.datetime_complete.timestamp() * 1000)
        assert run.data.params and run.data.params.keys() == t.params.keys()
        curve = {m.step: m.value for m in history[run.info.run_id]}
        assert curve == pytest.approx(t.intermediate_values), t.number  # every epoch, as the study database has it


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
    run_worker("diverge", RunSettings(storage=url, tracking=""))
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
    run_worker("oom", RunSettings(storage=url, tracking=""))
    trials = _study(url).get_trials()
    assert [t.state for t in trials][:2] == [TrialState.COMPLETE, TrialState.FAIL]
    assert "OutOfMemoryError" in trials[1].user_attrs["end_reason"]
    assert len([t for t in trials if t.state in FINISHED]) == 3  # the worker took the next trials
