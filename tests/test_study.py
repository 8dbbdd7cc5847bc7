"""A study end to end on each storage backend: trials in the database and in MLflow, resume, spec changes."""

import optuna
import pytest
from mlflow import MlflowClient

from conftest import tiny_spec_dict
from sweeper import api
from sweeper.errors import StudyError
from sweeper.study.spec import parse_spec


def _mlflow_trial_runs(uri: str, study: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(study)
    assert exp is not None
    return client.search_runs([exp.experiment_id], "tags.`sweeper.role` = 'trial'")


def test_study_end_to_end(storage_url: str, tracking_uri: str) -> None:
    spec = parse_spec(tiny_spec_dict(trials=3))
    rep = api.launch(spec, storage=storage_url, tracking=tracking_uri)
    assert rep.counts["complete"] + rep.counts["pruned"] == 3
    assert rep.best_value is not None and rep.test is not None
    assert 0.5 < rep.test["test_accuracy"] <= 1

    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert study.metric_names == ["val_accuracy"]  # optuna-dashboard's name for the objective
    for t in study.trials:
        assert {"dropout.input", "dropout.hidden_1", "weight_decay", "momentum", "lr_scale"} <= set(t.params)
        assert t.user_attrs["device"] == "cpu"

    runs = _mlflow_trial_runs(tracking_uri, "tiny")
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == [0, 1, 2]
    client = MlflowClient(tracking_uri=tracking_uri)
    for r in runs:
        assert r.data.params["dropout.hidden_1"]
        assert r.data.tags["sweeper.state"] in ("COMPLETE", "PRUNED")
        history = client.get_metric_history(r.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(len(history))) and history
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["best_value"] == pytest.approx(rep.best_value)
    assert parent.data.metrics["best.test_accuracy"] == pytest.approx(rep.test["test_accuracy"])


def test_objective_is_named_after_the_metric(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    api.create_study(parse_spec(tiny_spec_dict("loss", metric="val_loss")), url)
    assert optuna.load_study(study_name="loss", storage=url).metric_names == ["val_loss"]
    api.create_study(parse_spec(tiny_spec_dict("acc")), url)
    assert optuna.load_study(study_name="acc", storage=url).metric_names == ["val_accuracy"]


def test_relaunch_resumes_to_new_budget(storage_url: str) -> None:
    spec = parse_spec(tiny_spec_dict(trials=2))
    api.launch(spec, storage=storage_url, tracking="", score_test=False)
    rep = api.launch(spec, trials=4, storage=storage_url, tracking="", score_test=False)
    assert rep.counts["complete"] + rep.counts["pruned"] == 4
    numbers = [t.number for t in optuna.load_study(study_name="tiny", storage=storage_url).trials]
    assert numbers == [0, 1, 2, 3]
    again = api.launch(spec, trials=4, storage=storage_url, tracking="", score_test=False)
    assert sum(again.counts.values()) == 4  # budget met: nothing more runs


def test_changed_spec_is_refused_unless_allowed(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    api.launch(parse_spec(tiny_spec_dict(trials=1)), storage=url, tracking="", score_test=False)
    changed = parse_spec(tiny_spec_dict(trials=2, space={"momentum": 0.95}))
    with pytest.raises(StudyError, match="different study file"):
        api.launch(changed, storage=url, tracking="")
    rep = api.launch(changed, storage=url, tracking="", allow_changed=True, score_test=False)
    assert rep.counts["complete"] + rep.counts["pruned"] == 2


def test_worker_joins_by_name_alone(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    api.create_study(parse_spec(tiny_spec_dict(trials=2)), url)
    assert api.join("tiny", storage=url, tracking="") == 2
    with pytest.raises(StudyError, match="no study named 'nope'"):
        api.join("nope", storage=url, tracking="")


def test_test_score_is_reproducible(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    rep = api.launch(parse_spec(tiny_spec_dict(trials=2)), storage=url, tracking="")
    assert rep.test is not None
    # retraining the best trial reproduces its validation score exactly: same seed, same numbers
    assert rep.test["val_accuracy"] == pytest.approx(rep.best_value)


def test_user_network_and_data_example(tmp_path) -> None:
    from pathlib import Path

    from sweeper.study.spec import load_spec

    spec = load_spec(Path(__file__).parents[1] / "studies" / "custom.yaml")
    rep = api.launch(spec, trials=2, storage=f"sqlite:///{tmp_path}/s.db", tracking="")
    # 2 trials, fewer than the median pruner's 5 startup trials: none can be pruned, both complete
    assert rep.counts["complete"] == 2 and rep.counts["pruned"] == rep.counts["fail"] == 0, rep.counts
    assert rep.best_trial is not None and 0.1 <= rep.best_params["r_drop.alpha"] <= 1.0  # R-Drop is searched
    assert rep.test is not None and rep.test["trial"] == rep.best_trial
    assert rep.test["test_accuracy"] > 0.5  # 3 classes: chance is 1/3
