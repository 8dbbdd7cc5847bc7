"""The MLflow dashboard: trial runs, the study run's summary and plots, the best model, ``sweeper ui``.

One real tiny study (digits, 2 epochs) tracked to a real SQLite MLflow store, shared by the module.
"""

from __future__ import annotations

import json
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
from mlflow import MlflowClient

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


def test_best_model_predicts_from_raw_inputs_as_scored(tracked: dict[str, Any]) -> None:
    """The logged model takes the data as its source gives it (digits: raw pixels 0-16), not standardized.

    Fed the raw test split, it makes exactly the predictions the recorded test accuracy was computed from.
    """
    import mlflow
    import numpy as np
    import torch

    from sweeper.training.data import load_raw_splits

    (run,) = _by_role(tracked, "study")
    mlflow.set_tracking_uri(tracked["uri"])
    (logged,) = mlflow.search_logged_models(experiment_ids=[tracked["exp"].experiment_id], output_format="list")
    assert logged.name == "best_model" and logged.source_run_id == run.info.run_id
    info = mlflow.models.get_model_info(logged.model_uri)
    assert info.signature is not None and info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 64)
    spec = StudyRecord.open("dash", tracked["storage"]).spec
    assert spec.data.dataset == "digits" and spec.data.standardize  # raw and standardized inputs differ
    raw_x, y = load_raw_splits(spec.data, spec.seed, spec.base_dir).test
    assert raw_x.max() == 16 and raw_x.min() == 0, "raw pixels, not standardized"
    local = mlflow.artifacts.download_artifacts(logged.model_uri)
    example = np.asarray(mlflow.models.Model.load(local).load_input_example(local))
    assert np.array_equal(example, raw_x[: len(example)]), "the input example is raw test inputs"
    x, labels = torch.from_numpy(raw_x), torch.from_numpy(y)
    for uri in (logged.model_uri, f"runs:/{run.info.run_id}/best_model"):
        model = mlflow.pytorch.load_model(uri)
        with torch.no_grad():
            logits = model(x)
        assert logits.shape == (len(x), 10)
        acc = ((logits.argmax(-1) == labels).sum() / len(labels)).item()  # as sweeper's evaluate computes it
        assert acc == run.data.metrics["best.test_accuracy"] == tracked["rep"].test["test_accuracy"]
    assert "mean" in model.state_dict() and "std" in model.state_dict()
    classes = json.loads(Path(tracked["client"].download_artifacts(run.info.run_id, "classes.json")).read_text())
    assert classes == list(range(10))


def test_best_model_of_remapped_labels_records_its_classes(tmp_path: Path) -> None:
    """Labels that are not 0..K-1 are mapped to class indices; classes.json maps the logits back."""
    import mlflow
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    keep = y < 3
    np.savez(tmp_path / "odd.npz", x=x[keep], y=np.array(["one", "three", "five"])[y[keep]])
    storage, uri = f"sqlite:///{tmp_path}/study.db", f"sqlite:///{tmp_path}/mlflow.db"
    spec = parse_spec(
        tiny_spec_dict(
            "odd", trials=1, data={"dataset": "file", "path": str(tmp_path / "odd.npz")}, train={"epochs": 1}
        )
    )
    rep = api.launch(spec, storage=storage, tracking=uri)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("odd").experiment_id], "tags.`sweeper.role` = 'study'")
    classes = json.loads(Path(client.download_artifacts(run.info.run_id, "classes.json")).read_text())
    assert classes == ["five", "one", "three"]  # sorted: logit i is classes[i]
    from sweeper.training.data import load_raw_splits

    raw_x, y_idx = load_raw_splits(spec.data, spec.seed, spec.base_dir).test
    mlflow.set_tracking_uri(uri)
    with torch.no_grad():
        pred = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/best_model")(torch.from_numpy(raw_x)).argmax(-1)
    acc = ((pred == torch.from_numpy(y_idx)).sum() / len(y_idx)).item()
    assert rep.test is not None and acc == rep.test["test_accuracy"]
    assert rep.test["test_accuracy"] > 0.8


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


def test_ui_link_text_says_what_the_link_shows(tracked: dict[str, Any]) -> None:
    from sweeper.tracking.ui import experiment_url, link_hint

    hint = link_hint(experiment_url(tracked["uri"], "http://127.0.0.1:5000", "dash"))
    assert "a column per searched parameter" in hint and "'Columns'" not in hint, hint
    old = "http://127.0.0.1:5000/#/experiments/1/runs?searchFilter=x"  # an experiment without sweeper's view
    assert "'Columns'" in link_hint(old)


def test_one_study_name_in_two_study_databases_is_refused(tmp_path: Path, pg_url: str) -> None:
    """Two studies of one name but different databases would share one experiment: the second is refused."""
    import yaml

    from sweeper.study.record import sweeper_study_names

    uri, lite = f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///{tmp_path}/study.db"
    study_file = tmp_path / "same.yaml"
    study_file.write_text(yaml.safe_dump(tiny_spec_dict("same", trials=1, train={"epochs": 1})))
    args = ["launch", str(study_file), "--tracking-uri", uri]
    first = CliRunner().invoke(main, [*args, "--storage", lite])
    assert first.exit_code == 0, first.output
    exp = MlflowClient(uri).get_experiment_by_name("same")
    assert exp.tags["sweeper.storage"] == lite
    second = CliRunner().invoke(main, [*args, "--storage", pg_url])
    assert second.exit_code == 2, second.output
    text = " ".join(second.output.split())
    assert lite in text and pg_url.replace("postgresql+psycopg://", "") in text, text  # both databases named
    assert "different 'name'" in text and "--tracking-uri" in text and "Traceback" not in text, text
    assert sweeper_study_names(pg_url) == []  # refused before the study was created
    runs = MlflowClient(uri).search_runs([exp.experiment_id])
    assert {r.data.tags["sweeper.storage"] for r in runs if "sweeper.storage" in r.data.tags} == {lite}
    # the same database by another path is the same study: it resumes
    again = CliRunner().invoke(main, [*args, "--storage", lite.replace(str(tmp_path), f"{tmp_path}/.")])
    assert again.exit_code == 0, again.output
    # and another tracking store takes the second one
    other = CliRunner().invoke(
        main, ["launch", str(study_file), "--storage", pg_url, "--tracking-uri", f"sqlite:///{tmp_path}/other.db"]
    )
    assert other.exit_code == 0, other.output


def test_the_best_model_is_the_selected_network_not_a_retrain(tracked: dict[str, Any]) -> None:
    """The worker kept the best trial's weights with its run; the test score and the logged model are that network."""
    study = StudyRecord.open("dash", tracked["storage"]).study
    best = study.best_trial
    assert tracked["rep"].test["model"] == "selected"
    assert tracked["rep"].test["val_accuracy"] == best.value  # the very network that was selected, bit for bit
    kept = [
        r.data.tags["optuna.trial_number"]
        for r in _by_role(tracked, "trial")
        if tracked["client"].list_artifacts(r.info.run_id, "weights")
    ]
    assert str(best.number) in kept  # kept when it finished as the best so far
    assert len(kept) < len(study.trials) or study.trials[-1].number == best.number  # not every trial's


def test_without_tracking_the_best_trial_is_retrained_with_its_seed(tmp_path: Path) -> None:
    spec = parse_spec(tiny_spec_dict("untracked", trials=2))
    rep = api.launch(spec, storage=f"sqlite:///{tmp_path}/s.db", tracking="")
    best = StudyRecord.open("untracked", f"sqlite:///{tmp_path}/s.db").study.best_trial
    assert rep.test["model"] == "retrained"
    assert rep.test["val_accuracy"] == pytest.approx(best.value, abs=1e-9)  # same seed, same numbers on the CPU
