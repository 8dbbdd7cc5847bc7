"""The study's run in MLflow: the study file as params, best value and parameters, counts, plots, best model."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from sweeper.study.record import StudyRecord
from sweeper.study.storage import mask_url
from sweeper.tracking.client import client_for

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger("sweeper.tracking")


def _numeric(v: Any) -> float:
    return float(v) if v is not None else float("nan")


def setup_study_run(uri: str, record: StudyRecord, storage: str) -> str:
    """Create (or find) the study's experiment and parent run; return the parent run id."""
    if record.parent_run_id:
        return record.parent_run_id
    study = record.study
    client = client_for(uri)
    exp = client.get_experiment_by_name(study.study_name)
    exp_id = exp.experiment_id if exp else client.create_experiment(study.study_name)
    # shows the experiment in the MLflow UI's model-training (not GenAI) view
    client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
    run = client.create_run(
        exp_id,
        run_name=f"study:{study.study_name}",
        tags={"sweeper.role": "study", "sweeper.study": study.study_name, "sweeper.storage": mask_url(storage)},
    )
    from mlflow.entities import Param

    flat = _flatten(record.spec.to_dict())
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in flat.items()])
    record.set_parent_run_id(run.info.run_id)
    return run.info.run_id


def _flatten(d: dict[str, Any], prefix: str = "spec.") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def log_study_summary(client: MlflowClient, parent_run_id: str, study: optuna.Study) -> None:
    """Best value and parameters, trial counts by state, on the study's parent run."""
    metrics, tags = study_summary(study)
    client.log_batch(parent_run_id, metrics=metrics, tags=tags)


def study_summary(study: optuna.Study) -> tuple[list[Any], list[Any]]:
    """The parent run's metrics and tags: best value and parameters, trial counts by state."""
    from mlflow.entities import Metric, RunTag

    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        counts[t.state.name.lower()] += 1
    finished = counts["complete"] + counts["pruned"]
    ts = int(time.time() * 1000)
    metrics = [Metric(f"trials.{k}", v, ts, finished) for k, v in counts.items()]
    tags: list[RunTag] = []
    if counts["complete"]:
        best = study.best_trial
        metrics.append(Metric("best_value", float(best.value or 0.0), ts, finished))
        metrics += [Metric(f"best.{k}", _numeric(v), ts, finished) for k, v in best.params.items()]
        tags.append(RunTag("best_trial", str(best.number)))
        tags.append(RunTag("best_params", json.dumps(best.params)[:5000]))
    return metrics, tags


def log_study_plots(client: MlflowClient, parent_run_id: str, study: optuna.Study) -> None:
    """Optuna's plots (HTML and PNG) under ``plots/`` on the study's parent run; each upload replaces the last."""
    import tempfile

    from sweeper.tracking.plots import write_study_plots

    with tempfile.TemporaryDirectory(prefix="sweeper-plots-") as tmp:
        if write_study_plots(study, tmp):
            client.log_artifacts(parent_run_id, tmp, artifact_path="plots")


def log_study_dashboard(uri: str, record: StudyRecord) -> None:
    """Summary and plots on the parent run at the end of a worker's run; the run ends once the budget is met."""
    parent, study, done = record.parent_run_id, record.study, record.done
    if not parent:
        return
    try:
        client = client_for(uri)
        log_study_summary(client, str(parent), study)
        log_study_plots(client, str(parent), study)
        if done:
            client.set_terminated(str(parent), status="FINISHED")
    except Exception as e:  # tracking must never fail a finished study
        log.warning(
            "MLflow tracking at %s failed (%s); results stay in the study database", mask_url(uri), type(e).__name__
        )


def log_best_model(
    uri: str, parent_run_id: str, study: optuna.Study, model: Any, data: Any, result: dict[str, Any]
) -> None:
    """The best trial's retrained network as an MLflow model on the study run, with its test score."""
    import mlflow
    from mlflow.entities import Metric, RunTag

    client = client_for(uri)
    ts = int(time.time() * 1000)
    client.log_batch(
        parent_run_id,
        metrics=[Metric(f"best.{k}", float(v), ts, 0) for k, v in result.items() if k != "trial"],
        tags=[RunTag("best_trial", str(result["trial"]))],
    )
    model = model.cpu().eval()
    example = data.test.x[:5].cpu().numpy()
    mlflow.set_tracking_uri(uri)
    # MLflow warns that it drops torch's "+cpu" label from the pinned requirement: expected, not the user's concern
    quiet = logging.getLogger("mlflow.utils.requirements_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with mlflow.start_run(run_id=parent_run_id):
            # the signature (float32 [-1, features] -> [-1, classes]) is inferred from the input example
            mlflow.pytorch.log_model(model, name="best_model", input_example=example)
    finally:
        quiet.setLevel(level)
