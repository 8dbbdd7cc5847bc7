"""The study's run in MLflow: the study file as params, best value and parameters, counts, plots, best model."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import TrialState

from sweeper.errors import StudyError, TrackingError
from sweeper.study.record import StudyRecord, end_reason
from sweeper.study.spec import StudySpec
from sweeper.study.urls import mask_url
from sweeper.tracking.client import client_for

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger("sweeper.tracking")
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # MLflow's runs page loads ?viewStateShareKey=KEY from this tag
TRIALS_VIEW = "sweeper-trials"
STORAGE_TAG = "sweeper.storage"  # on the experiment: the study database it belongs to
MODEL_TRIAL_TAG = "sweeper.trial"  # on a logged best_model / refit_model: the trial it is the network of


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numeric(v: Any) -> float:
    return float(v) if v is not None else float("nan")


def storage_id(storage: str) -> str:
    """The study database as the experiment records it: password masked, an SQLite file by its absolute path.

    ``sqlite:///sweeper.db`` in two folders is two databases; relative and absolute paths to one file are one.
    """
    from sqlalchemy.engine import make_url

    from sweeper.study.urls import normalize_url

    try:
        url = make_url(normalize_url(storage))
    except Exception:  # not an SQLAlchemy URL: compared as given
        return mask_url(storage)
    if url.drivername.startswith("sqlite") and url.database and url.database != ":memory:":
        url = url.set(database=os.path.abspath(url.database))
    return url.render_as_string(hide_password=True)


def check_experiment_storage(uri: str, name: str, storage: str) -> None:
    """Refuse a study whose name is already the MLflow experiment of a study in another database.

    Both studies' trial runs would land in one experiment and mix; the fix is another name or store.
    """
    _check_storage(client_for(uri).get_experiment_by_name(name), uri, name, storage)


def _check_storage(exp: Any, uri: str, name: str, storage: str) -> None:
    other = exp.tags.get(STORAGE_TAG) if exp is not None else None
    if other is not None and other != storage_id(storage):
        raise StudyError(
            f"the MLflow experiment {name!r} in {mask_url(uri)} already holds the study {name!r} of another "
            f"study database ({other}); this one is in {storage_id(storage)}, and their trial runs would mix. "
            "Give this study a different 'name' in its study file, or track it elsewhere with --tracking-uri"
        )


def setup_study_run(uri: str, record: StudyRecord, storage: str) -> str:
    """Create (or find) the study's experiment and parent run; return the parent run id.

    The experiment records its study's database (``sweeper.storage``): a study of the same name in
    another database is refused (``StudyError``) rather than mixed into it.
    """
    if record.parent_run_id:
        return record.parent_run_id
    study = record.study
    client = client_for(uri)
    exp = client.get_experiment_by_name(study.study_name)
    _check_storage(exp, uri, study.study_name, storage)
    if exp is None:
        exp_id = client.create_experiment(study.study_name, tags={STORAGE_TAG: storage_id(storage)})
    else:
        exp_id = exp.experiment_id
        if STORAGE_TAG not in exp.tags:  # made by an older sweeper (or by hand): this study claims it
            client.set_experiment_tag(exp_id, STORAGE_TAG, storage_id(storage))
    # shows the experiment in the MLflow UI's model-training (not GenAI) view
    client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
    client.set_experiment_tag(exp_id, f"{SHARED_VIEW_TAG}{TRIALS_VIEW}", json.dumps(trials_view(record.spec)))
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


def trials_view(spec: StudySpec) -> dict[str, Any]:
    """The MLflow runs page as a user wants it first: the trial runs, best first, a column per searched parameter.

    Stored as one of MLflow's shared views (an experiment tag), opened by ``sweeper ui``'s link.
    """
    params = spec.space.param_names(spec.network.n_hidden, spec.network.n_conv)
    metric = spec.metric
    return {
        "searchFilter": "tags.`sweeper.role` = 'trial'",
        "orderByKey": "metrics.`objective`",
        "orderByAsc": spec.direction == "minimize",
        "selectedColumns": [
            "metrics.`objective`",
            *(f"params.`{p}`" for p in params),
            f"metrics.`{metric}`" if metric != "val_accuracy" else "metrics.`val_loss`",
            "tags.`sweeper.state`",
        ],
    }


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
        # every parameter any trial searched: one the best trial lacks (max_norm with max-norm off) is
        # "off" (NaN), never the value left from an earlier best trial
        names = sorted({k for t in trials for k in t.params})
        params = {k: best.params.get(k, "off") for k in names}
        metrics.append(Metric("best_value", float(best.value or 0.0), ts, finished))
        # a named choice (optimizer: adamw) is no metric: it is in the best_params tag
        numeric = [k for k in names if not isinstance(best.params.get(k), str)]
        metrics += [Metric(f"best.{k}", _numeric(best.params.get(k)), ts, finished) for k in numeric]
        tags.append(RunTag("best_trial", str(best.number)))
        tags.append(RunTag("best_params", json.dumps(params)[:5000]))
    return metrics, tags


def log_study_plots(client: MlflowClient, parent_run_id: str, study: optuna.Study) -> None:
    """Optuna's plots (HTML and PNG) under ``plots/`` on the study's parent run; each upload replaces the last."""
    import tempfile

    from sweeper.tracking.plots import write_study_plots

    with tempfile.TemporaryDirectory(prefix="sweeper-plots-") as tmp:
        if write_study_plots(study, tmp):
            client.log_artifacts(parent_run_id, tmp, artifact_path="plots")


def log_study_dashboard(uri: str, record: StudyRecord, strict: bool = False) -> None:
    """Summary and plots on the parent run; the run ends once the budget is met. A tracking failure is a
    warning (it must never fail a study), or with ``strict`` a ``TrackingError`` (the end steps say so)."""
    parent, study, done = record.parent_run_id, record.study, record.done
    if not parent:
        return
    try:
        client = client_for(uri)
        log_study_summary(client, str(parent), study)
        log_study_plots(client, str(parent), study)
        if done:  # the study ended when its last trial did, whoever logs it and whenever
            end_orphaned_runs(client, str(parent), study)
            ends = [t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete]
            end_ms = int(max(ends).timestamp() * 1000) if ends else None
            client.set_terminated(str(parent), status="FINISHED", end_time=end_ms)
    except Exception as e:  # tracking must never fail a finished study
        if strict:
            raise TrackingError(f"MLflow at {mask_url(uri)} failed ({type(e).__name__})") from None
        log.warning(
            "MLflow tracking at %s failed (%s); results stay in the study database", mask_url(uri), type(e).__name__
        )


def end_orphaned_runs(client: MlflowClient, parent_run_id: str, study: optuna.Study) -> None:
    """Trial runs left RUNNING by a worker that died (its trial failed by heartbeat, and retried, resumed from its
    checkpoint: the retry's run holds the whole curve) end as FAILED, when their trial ended, with why."""
    exp = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    trials = study.get_trials(deepcopy=False)
    for run in client.search_runs([exp], query, max_results=1000):
        number = int(run.data.tags.get("optuna.trial_number", -1))
        trial = trials[number] if 0 <= number < len(trials) else None
        if trial is None or trial.state != TrialState.FAIL:
            continue
        why = end_reason(trial) or "its worker died (no heartbeat); the trial was failed"
        client.set_tag(run.info.run_id, "sweeper.state", trial.state.name)
        client.set_tag(run.info.run_id, "sweeper.end_reason", str(why)[:5000])
        end = int(trial.datetime_complete.timestamp() * 1000) if trial.datetime_complete else None
        client.set_terminated(run.info.run_id, status="FAILED", end_time=end)


def log_best_model(
    uri: str,
    parent_run_id: str,
    model: Any,
    raw_example: Any,
    classes: Sequence[Any],
    result: dict[str, Any],
    kind: str = "best",
) -> None:
    """The best trial's network as an MLflow model on the study run (``<kind>_model``), with its test score
    (metrics ``<kind>.*``): kind "best" is the selected network, "refit" its settings retrained on train + val.

    ``model`` takes raw inputs (the network wrapped in its data's standardization, see
    ``models.for_raw_inputs``); ``raw_example`` is a few raw test inputs, the model's input example.
    ``classes`` (the data's labels in logit order) go to the study run as ``classes.json``.
    """
    import mlflow
    import torch
    from mlflow.entities import Metric, RunTag

    client = client_for(uri)
    if logged_model_ready(uri, parent_run_id, f"{kind}_model", result["trial"]):
        return  # logged by a finisher that then died before it stored the result: not logged twice
    ts = int(time.time() * 1000)
    client.log_batch(
        parent_run_id,
        metrics=[Metric(f"{kind}.{k}", float(v), ts, 0) for k, v in result.items() if _is_number(v) and k != "trial"],
        tags=[RunTag(f"{kind}_trial", str(result["trial"]))],
    )
    # logit column i is the class classes[i]: the data's labels were mapped to 0..K-1 in sorted order
    client.log_dict(parent_run_id, list(classes), "classes.json")
    model = model.cpu().eval()
    example = np.ascontiguousarray(np.asarray(raw_example, dtype=np.float32)[:5])
    mlflow.set_tracking_uri(uri)
    # Saved as a torch.export graph (MLflow's default): loading it runs no pickled code and needs no sweeper
    # install; it was traced in eval mode, so dropout is already off (such a graph has no .eval() to call).
    # The requirements are given, not inferred: inferring them loads the model in a subprocess (~10 s).
    requirements = [f"torch=={torch.__version__.split('+')[0]}"]
    with mlflow.start_run(run_id=parent_run_id):
        # the signature (float32 [-1, features] -> [-1, classes]) is inferred from the raw input example
        mlflow.pytorch.log_model(
            model,
            name=f"{kind}_model",
            input_example=example,
            pip_requirements=requirements,
            tags={MODEL_TRIAL_TAG: str(result["trial"])},
        )


def logged_model_ready(uri: str, run_id: str, name: str, trial: int) -> bool:
    """Whether the study run already has the model ``name`` of this trial, whole; a model left half-logged
    (PENDING or FAILED: its logger died mid-upload) is deleted, so the run ends with exactly one."""
    from mlflow.entities import LoggedModelStatus

    client = client_for(uri)
    exp_id = client.get_run(run_id).info.experiment_id
    where = f"name = '{name}' AND source_run_id = '{run_id}' AND tags.`{MODEL_TRIAL_TAG}` = '{trial}'"
    found = client.search_logged_models([exp_id], filter_string=where)
    ready = False
    for model in found:
        if model.status == LoggedModelStatus.READY:
            ready = True
        else:
            client.delete_logged_model(model.model_id)
    return ready
