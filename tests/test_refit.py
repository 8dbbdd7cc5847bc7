"""``sweeper refit``: the best trial's settings trained again on train + validation, scored once on test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import tiny_spec_dict
from sweeper import api
from sweeper.cli import main
from sweeper.study.record import StudyRecord
from sweeper.study.spec import parse_spec
from sweeper.training.objective import prepare_data


def test_refit_trains_on_train_and_validation_and_logs_a_model_for_raw_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import torch

    from sweeper.training.data import load_raw_splits

    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts in ./mlruns next to a SQLite store
    storage, uri = f"sqlite:///{tmp_path}/study.db", f"sqlite:///{tmp_path}/mlflow.db"
    spec = parse_spec(tiny_spec_dict("refit", refit=True))
    rep = api.launch(spec, storage=storage, tracking=uri)  # the default: a refit when the study is done
    assert rep.refit is not None and rep.refit["trial"] == rep.best_trial
    out = CliRunner().invoke(main, ["refit", "refit", "--storage", storage, "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    data = prepare_data(spec)
    n = len(data.train.y) + len(data.val.y)
    assert f"refit on train + validation ({n} samples, 2 epochs)" in out.output
    assert f"the selected trial's own network: test accuracy {rep.test['test_accuracy']:.4f}" in out.output
    assert "this is the stored refit" in out.output and "--trials N" in out.output  # not a new one: it says so
    record = StudyRecord.open("refit", storage)
    # ``sweeper best`` names the models a user loads, in its text and its JSON
    uris = {k: f"runs:/{record.parent_run_id}/{k}_model" for k in ("best", "refit")}
    shown = CliRunner().invoke(main, ["best", "refit", "--storage", storage])
    assert shown.exit_code == 0 and all(u in shown.output for u in uris.values()), shown.output
    shown = CliRunner().invoke(main, ["best", "refit", "--storage", storage, "--json"])
    assert json.loads(shown.output)["models"] == uris, shown.output
    result = record.result("refit")
    assert result == rep.refit and result["train_size"] == n  # the command gave the launch's refit, not a new one
    assert result["fit_accuracy"] > rep.test["val_accuracy"] - 0.05  # it trained as well as the selected network
    # the logged model takes raw inputs and makes the predictions its recorded test accuracy came from
    run = mlflow.MlflowClient(uri).get_run(record.parent_run_id)
    assert run.data.metrics["refit.test_accuracy"] == result["test_accuracy"]
    assert run.data.tags["refit_trial"] == str(rep.best_trial)
    raw_x, y = load_raw_splits(spec.data, spec.seed, spec.base_dir).test
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(uris["refit"])
    with torch.no_grad():
        pred = model(torch.from_numpy(raw_x)).argmax(-1)
    assert (pred == torch.from_numpy(y)).float().mean().item() == pytest.approx(result["test_accuracy"])
    # the selected network stays the study's best model, its score unchanged
    assert record.result("test")["test_accuracy"] == rep.test["test_accuracy"]
    assert run.data.metrics["best.test_accuracy"] == rep.test["test_accuracy"]


def test_launch_without_refit_and_a_changed_refit_setting_resumes(tmp_path: Path) -> None:
    assert parse_spec({"name": "minimal"}).refit is True  # on unless a study file says otherwise
    storage = f"sqlite:///{tmp_path}/off.db"
    rep = api.launch(parse_spec(tiny_spec_dict("off", trials=1)), storage=storage, tracking="")
    assert rep.test is not None and rep.refit is None
    # refit is no part of what a trial computes: turning it on resumes the same study, and refits at its end
    rep = api.launch(parse_spec(tiny_spec_dict("off", trials=2, refit=True)), storage=storage, tracking="")
    assert rep.refit is not None and rep.refit["trial"] == rep.best_trial


def test_refit_with_early_stopping_trains_the_best_trials_epochs(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/es.db"
    noisy = {"lr_scale": 40.0, "momentum": 0.99}  # a high, noisy rate: validation accuracy falls back early
    spec = parse_spec(
        tiny_spec_dict("es", trials=2, pruner="none", space=noisy, train={"epochs": 8, "early_stopping_patience": 1})
    )
    rep = api.launch(spec, storage=storage, tracking="", score_test=False)
    best = StudyRecord.open("es", storage).best_trial()
    values = best.intermediate_values
    result = api.refit("es", storage=storage, tracking="")
    assert result is not None and result["trial"] == rep.best_trial
    assert len(values) < 8, "early stopping ended the best trial"
    assert result["epochs"] == max(values, key=lambda e: values[e]) + 1


def test_refit_of_a_study_without_a_complete_trial_is_a_user_error(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/none.db"
    api.create(parse_spec(tiny_spec_dict("empty")), storage=storage, tracking="")
    for name, said in (("empty", "has no completed trial yet"), ("nope", "nope")):
        out = CliRunner().invoke(main, ["refit", name, "--storage", storage, "--tracking-uri", ""])
        assert out.exit_code == 2 and said in out.output and "Traceback" not in out.output, out.output


def test_cli_launch_prints_each_line_once_and_the_refit_beside_the_selected_network(tmp_path: Path) -> None:
    """The real command in its own process, with a real MLflow store: importing mlflow.pytorch (to log the best
    model) installs a root log handler, which printed every later sweeper line twice ("INFO:sweeper:...")."""
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(tiny_spec_dict("cli", trials=2, refit=True)))
    cmd = [sys.executable, "-m", "sweeper.cli", "launch", "s.yaml", "--storage",
           "sqlite:///s.db", "--tracking-uri", "sqlite:///mlflow.db"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "INFO:sweeper" not in out and out.count("refitting trial #") == 1, out[-3000:]
    assert "best trial's test accuracy" in out and "refit on train + validation: test accuracy" in out


def test_a_refit_that_diverges_is_a_warning_and_the_selected_network_stands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A validation sample the trials only scored (an outlier: 1e30 in every feature) is trained on by the refit,
    whose loss stops being finite: the launch warns, keeps the selected network's test score, and ends well;
    ``sweeper refit`` says why (exit 2, no traceback)."""
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    parts = {"x_train": x[:900], "y_train": y[:900], "x_val": x[900:1200], "y_val": y[900:1200],
             "x_test": x[1200:], "y_test": y[1200:]}  # fmt: skip
    path = tmp_path / "outlier.npz"
    np.savez(path, **parts)
    fixed = {"lr_scale": 1.0, "momentum": 0.9, "max_norm": None, "batch_norm": False}
    d = tiny_spec_dict("div", trials=1, space=fixed, data={"dataset": "file", "path": str(path), "split": "given"})
    storage = f"sqlite:///{tmp_path}/div.db"
    rep = api.launch(parse_spec(d), storage=storage, tracking="")
    assert rep.test is not None and rep.refit is None  # tiny_spec_dict: refit off
    parts["x_val"][0] = 1e30  # the trial is done; the refit trains on this sample (all features: no dropout hides it)
    np.savez(path, **parts)
    with caplog.at_level("WARNING", logger="sweeper"):
        again = api.launch(parse_spec({**d, "refit": True}), storage=storage, tracking="")
    assert again.refit is None and again.test == rep.test
    assert "the refit of trial #0 on train + validation diverged" in caplog.text
    assert "the selected network stays the study's model" in caplog.text
    out = CliRunner().invoke(main, ["refit", "div", "--storage", storage, "--tracking-uri", ""])
    assert out.exit_code == 2 and "diverged" in out.output and "Traceback" not in out.output, out.output
