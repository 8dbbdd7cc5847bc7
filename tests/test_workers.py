"""Many workers on one study: one shared budget, distinct trial numbers, every trial in MLflow."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from conftest import tiny_spec_dict
from sweeper import api
from sweeper.cli import main
from sweeper.errors import SpecError
from sweeper.launchers.local import run_workers, warn_sqlite
from sweeper.settings import RunSettings, parse_gpus
from sweeper.study.spec import parse_spec
from sweeper.study.storage import make_storage
from sweeper.study.urls import normalize_url
from sweeper.workers.budget import claims

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(autouse=True)
def _fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPER_HEARTBEAT", "1")
    monkeypatch.setenv("SWEEPER_HEARTBEAT_GRACE", "3")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mlflow_server(tmp_path: Any) -> Iterator[str]:
    """A real ``mlflow server`` on localhost (SQLite behind it): safe for several writing processes."""
    from sweeper.tracking.ui import start_server

    port = _free_port()
    proc = start_server(f"sqlite:///{tmp_path}/mlflow-server.db", "127.0.0.1", port, artifacts=str(tmp_path / "art"))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_four_workers_share_one_budget_on_postgresql(pg_url: str, mlflow_server: str) -> None:
    from mlflow import MlflowClient

    budget = 8
    # batches of 32: trials long enough that every worker is up before the budget is claimed
    spec = parse_spec(tiny_spec_dict("four", trials=budget, sampler={"type": "random"}, train={"batch_size": 32}))
    api.create(spec, storage=pg_url, tracking=mlflow_server)

    codes = run_workers("four", RunSettings(storage=pg_url, tracking=mlflow_server, workers=4, gpus="none"))

    assert codes == [0, 0, 0, 0]
    study = optuna.load_study(study_name="four", storage=make_storage(pg_url))
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == budget  # exactly: no overshoot by up to workers - 1
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert {t.user_attrs["worker"] for t in finished} == {"0", "1", "2", "3"}
    assert {t.user_attrs["device"] for t in finished} == {"cpu"}

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("four")
    runs = client.search_runs([exp.experiment_id], "tags.`sweeper.role` = 'trial'", max_results=100)
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in runs}
    for t in finished:
        run = by_number[t.number]
        assert run.info.status == "FINISHED"  # pruned trials too: a normal outcome, told apart by sweeper.state
        assert run.data.tags["sweeper.state"] == t.state.name
        assert run.data.tags["sweeper.worker"] == t.user_attrs["worker"]
        assert "val_accuracy" in run.data.metrics


def test_launch_with_workers_on_sqlite_warns_and_meets_budget(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from sweeper.launchers import local

    monkeypatch.setattr(local, "_warned", set())  # said once per process: an earlier test may have said it

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(tiny_spec_dict("two", trials=4, sampler={"type": "random"})))
    url = f"sqlite:///{tmp_path}/s.db"
    result = CliRunner().invoke(
        main, ["launch", "s.yaml", "--workers", "2", "--gpus", "none", "--storage", url, "--tracking-uri", ""]
    )
    assert result.exit_code == 0, result.output
    assert "2 workers on SQLite" in result.output
    study = optuna.load_study(study_name="two", storage=url)
    assert claims(study) == (4, 0)


def test_sqlite_warning_is_printed_once(capsys: pytest.CaptureFixture[str]) -> None:
    from sweeper.launchers import local as launcher

    launcher._warned.clear()
    warn_sqlite("sqlite:///a.db", 3)
    warn_sqlite("sqlite:///a.db", 3)
    warn_sqlite("postgresql+psycopg://u@h/db", 3)
    assert capsys.readouterr().err.count("3 workers on SQLite") == 1


def test_gpus_option() -> None:
    import torch

    assert parse_gpus("none") == []
    assert parse_gpus("all") == [str(i) for i in range(torch.cuda.device_count())]
    with pytest.raises(SpecError, match=r"--gpus .*'0,x'"):
        parse_gpus("0,x")
    with pytest.raises(SpecError, match="names GPU 99"):
        parse_gpus("99")


def test_bad_gpus_is_a_usage_error_before_the_study_exists(tmp_path: Any) -> None:
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(tiny_spec_dict("gpu")))
    url = f"sqlite:///{tmp_path}/s.db"
    result = CliRunner().invoke(main, ["launch", "s.yaml", "--workers", "2", "--gpus", "99", "--storage", url])
    assert result.exit_code == 2
    assert "names GPU 99" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "s.db").exists()


def test_plain_postgresql_url_uses_psycopg(pg_url: str) -> None:
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    assert normalize_url(plain) == pg_url
    storage = make_storage(plain)
    assert storage.engine.dialect.driver == "psycopg"
    assert storage.engine.pool.size() == 2  # one worker needs its loop and heartbeat connections, no more


def test_workers_seed_their_samplers_differently(tiny_spec: Any) -> None:
    from sweeper.study.strategy import make_sampler, sampler_seed

    spec = parse_spec(tiny_spec_dict(sampler={"type": "random"}))
    assert sampler_seed(spec, fresh=False) == spec.seed  # the one worker of launch: a re-run repeats the search
    seeds = {sampler_seed(spec, fresh=True) for _ in range(4)}
    assert len(seeds) == 4
    draws = []
    for seed in seeds:
        study = optuna.create_study(sampler=make_sampler(spec, seed))
        draws.append(study.ask().suggest_float("x", 0, 1))
    assert len(set(draws)) == 4


def test_an_out_of_memory_trial_lets_go_of_its_tensors_before_memory_is_freed(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.cuda.empty_cache can only return memory no tensor holds: the failed trial's tensors, alive in its
    traceback's frames, must be gone by then (else the other workers on the GPU never get that memory)."""
    import weakref

    import torch

    from sweeper.workers import worker
    from sweeper.workers.shutdown import Shutdown

    refs: list[weakref.ref[torch.Tensor]] = []
    alive_at_free: list[bool] = []

    def objective(trial: optuna.Trial) -> float:
        activations = torch.ones(512, 512)  # what a trial holds when its next allocation fails
        refs.append(weakref.ref(activations))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(worker, "_free_memory", lambda: alive_at_free.append(any(r() is not None for r in refs)))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/oom.db")
    with Shutdown() as stop:
        worker.TrialLoop(study, objective, 1, _protocol(study)).run(stop)
    assert alive_at_free and not any(alive_at_free), alive_at_free


def test_a_trial_taken_over_between_its_last_report_and_its_end_is_dropped_not_a_crash(tmp_path: Any) -> None:
    """Another worker fails a trial as stale (its worker was cut off from the database longer than the grace)
    after the trial's last report: this worker's end-of-trial writes are refused; it says so and goes on."""
    from optuna.storages import RDBStorage

    from sweeper.study.optuna_internals import trial_id
    from sweeper.workers import worker
    from sweeper.workers.shutdown import Shutdown

    url = f"sqlite:///{tmp_path}/taken.db"
    study = optuna.create_study(storage=url, study_name="taken")
    other = RDBStorage(url)  # the worker that reaped it

    class Objective:
        def __call__(self, trial: optuna.Trial) -> float:
            trial.report(0.5, 0)
            if trial.number == 0:
                other.set_trial_state_values(trial_id(trial), TrialState.FAIL)
            return 0.5

    with Shutdown() as stop:
        ran = worker.TrialLoop(study, Objective(), 1, _protocol(study)).run(stop)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE] and ran == 1, states


def _protocol(study: optuna.Study) -> Any:
    """The trial protocol of a worker with no tracking, for a test's own objective."""
    from conftest import tiny_spec_dict
    from sweeper.study.spec import parse_spec
    from sweeper.workers.protocol import TrialProtocol

    return TrialProtocol(study, parse_spec(tiny_spec_dict()), where={})
