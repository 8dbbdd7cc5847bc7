"""The MLflow dashboard: trial runs, the study run's summary and plots, the best model, ``sweeper ui``.

One real tiny study (digits, 2 epochs) tracked to a real SQLite MLflow store, shared by the module.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner

from conftest import tiny_spec_dict
from sweeper import api
from sweeper.cli import main
from sweeper.study.record import StudyRecord
from sweeper.study.spec import parse_spec

SEARCHED = {"dropout.input", "dropout.hidden_1", "weight_decay", "momentum", "lr_scale"}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A finished 3-trial study with its best model scored on test, and its MLflow store."""
    root = tmp_path_factory.mktemp("dashboard")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MLflow puts artifacts in ./mlruns next to a SQLite store
        storage, uri = f"sqlite:///{root}/study.db", f"sqlite:///{root}/mlflow.db"
        spec = parse_spec(tiny_spec_dict("dash"))
        rep = api.launch(spec, storage=storage, tracking=uri)
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("dash")
        runs = client.search_runs([exp.experiment_id])
        yield {"root": root, "storage": storage, "uri": uri, "rep": rep, "client": client, "exp": exp, "runs": runs}


def _by_role(tracked: dict[str, Any], role: str) -> list[Any]:
    return [r for r in tracked["runs"] if r.data.tags.get("sweeper.role") == role]


def test_trial_runs_carry_params_curves_tags_and_duration(tracked: dict[str, Any]) -> None:
    (study_run,) = _by_role(tracked, "study")
    trials = sorted(_by_role(tracked, "trial"), key=lambda r: int(r.data.tags["optuna.trial_number"]))
    assert [r.info.run_name for r in trials] == ["trial-0", "trial-1", "trial-2"]
    study = StudyRecord.open("dash", tracked["storage"]).study
    for run, trial in zip(trials, study.trials, strict=True):
        tags, params = run.data.tags, run.data.params
        assert SEARCHED <= set(params), sorted(params)
        assert float(params["dropout.input"]) == pytest.approx(trial.params["dropout.input"])
        assert tags["optuna.trial_number"] == str(trial.number)
        assert tags["mlflow.parentRunId"] == study_run.info.run_id
        assert tags["sweeper.state"] == trial.state.name == "COMPLETE"
        assert tags["sweeper.host"] == socket.gethostname() and tags["sweeper.device"] == "cpu"
        assert run.info.status == "FINISHED"
        seconds = trial.duration.total_seconds()
        assert run.data.metrics["duration_s"] == pytest.approx(seconds, rel=1e-6)
        assert (run.info.end_time - run.info.start_time) / 1000 == pytest.approx(seconds, abs=0.01)
        curve = tracked["client"].get_metric_history(run.info.run_id, "val_accuracy")
        assert len(curve) == 2, "one point per epoch"
        assert curve[-1].value == pytest.approx(trial.value)


def test_study_run_holds_best_counts_and_plots(tracked: dict[str, Any]) -> None:
    (run,) = _by_role(tracked, "study")
    rep = tracked["rep"]
    m, tags = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    assert m["best_value"] == pytest.approx(rep.best_value)
    assert m["trials.complete"] == 3 and m["trials.fail"] == 0
    assert tags["best_trial"] == str(rep.best_trial)
    assert m["best.dropout.input"] == pytest.approx(rep.best_params["dropout.input"])
    assert '"dropout.input"' in tags["best_params"]
    names = {Path(a.path).name for a in tracked["client"].list_artifacts(run.info.run_id, "plots")}
    for plot in (
        "optimization_history",
        "param_importances",
        "parallel_coordinate",
        "intermediate_values",
        "slice_dropout.input",
        "slice_dropout.hidden_1",
    ):
        assert {f"{plot}.html", f"{plot}.png"} <= names, sorted(names)


def test_best_model_loads_back_and_scores_its_recorded_test_accuracy(tracked: dict[str, Any]) -> None:
    import mlflow
    import torch

    from sweeper.training.objective import prepare_data

    (run,) = _by_role(tracked, "study")
    mlflow.set_tracking_uri(tracked["uri"])
    (logged,) = mlflow.search_logged_models(experiment_ids=[tracked["exp"].experiment_id], output_format="list")
    assert logged.name == "best_model" and logged.source_run_id == run.info.run_id
    info = mlflow.models.get_model_info(logged.model_uri)
    assert info.signature is not None and info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 64)
    spec = StudyRecord.open("dash", tracked["storage"]).spec
    test = prepare_data(spec, "cpu").test
    for uri in (logged.model_uri, f"runs:/{run.info.run_id}/best_model"):
        model = mlflow.pytorch.load_model(uri)
        with torch.no_grad():
            logits = model(test.x)
        assert logits.shape == (len(test.x), 10)
        acc = (logits.argmax(-1) == test.y).float().mean().item()
        assert acc == pytest.approx(run.data.metrics["best.test_accuracy"], abs=1e-6)
        assert acc == pytest.approx(tracked["rep"].test["test_accuracy"], abs=1e-6)


def _toy(trial: optuna.Trial) -> float:
    a, b = trial.suggest_float("dropout.input", 0, 0.5), trial.suggest_float("dropout.hidden_1", 0, 0.5)
    for step in range(2):
        trial.report(a + b + step, step)
    return a - b


def test_plots_skip_what_cannot_be_drawn_yet(tmp_path: Path) -> None:
    from sweeper.tracking.plots import write_study_plots

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert write_study_plots(study, tmp_path / "none") == []
    study.optimize(_toy, n_trials=1)
    names = {p.name for p in write_study_plots(study, tmp_path / "one")}
    assert "optimization_history.png" in names and "slice_dropout.input.html" in names
    assert not any(n.startswith("param_importances") for n in names), "importances need two completed trials"


def test_tracker_uploads_plots_during_the_study(tracking_uri: str) -> None:
    from mlflow import MlflowClient

    from sweeper.study.record import StudyRecord
    from sweeper.tracking.study_run import setup_study_run
    from sweeper.tracking.tracker import MlflowTracker

    study = optuna.create_study(study_name="toy", sampler=optuna.samplers.RandomSampler(seed=0))
    parent = setup_study_run(tracking_uri, StudyRecord(study, parse_spec({"name": "toy"})), "sqlite:///toy.db")
    tracker = MlflowTracker(tracking_uri, parent, plot_every_s=0)
    study.optimize(_toy, n_trials=2, callbacks=[tracker])
    names = {Path(a.path).name for a in MlflowClient(tracking_uri).list_artifacts(parent, "plots")}
    assert "optimization_history.png" in names, sorted(names)
    assert not tracker.sender.down


def test_ui_refuses_unknown_study_and_servers(tracked: dict[str, Any]) -> None:
    r = CliRunner().invoke(main, ["ui", "nope", "--tracking-uri", tracked["uri"]])
    assert r.exit_code == 2 and "no MLflow experiment named 'nope'" in r.output, r.output
    r = CliRunner().invoke(main, ["ui", "--tracking-uri", "http://u:secret@example.com:5000"])
    assert r.exit_code == 2 and "already a server" in r.output and "secret" not in r.output, r.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_ui(study: str, uri: str, cwd: Path) -> tuple[subprocess.Popen[str], str]:
    """``sweeper ui STUDY`` as a user runs it; returns the process and the URL it printed."""
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "sweeper"), "ui", study, "--tracking-uri", uri, "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once the server answers
    if not line.startswith("MLflow UI on"):
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        pytest.fail(f"sweeper ui printed {line!r}, not its URL")
    return proc, line.rsplit(": ", 1)[1].strip()


def stop_ui(proc: subprocess.Popen[str], url: str) -> None:
    """SIGTERM stops ``sweeper ui`` and the server under it."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    base = url.split("/#", 1)[0]
    time.sleep(0.5)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/health", timeout=2)


def test_ui_serves_the_store_and_stops_on_sigterm(tracked: dict[str, Any]) -> None:
    proc, url = start_ui("dash", tracked["uri"], tracked["root"])
    try:
        assert f"/#/experiments/{tracked['exp'].experiment_id}/runs?" in url, url
        base = url.split("/#", 1)[0]
        body = urllib.request.urlopen(f"{base}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=dash").read()
        assert b'"dash"' in body
    finally:
        stop_ui(proc, url)
