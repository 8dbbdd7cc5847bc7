"""MLflow at the edge: one experiment per study, a parent run, one nested run per trial.

A thin layer on ``MlflowClient`` (optuna-integration's MLflowCallback is deprecated and serializes
trials). Metrics go out in one ``log_batch`` per epoch. If the tracking server cannot be reached,
training goes on: a warning is printed once and the study's results stay in the study database.
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.storage import mask_url

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger("sweeper.tracking")
T = TypeVar("T")

PARENT_ATTR = "sweeper.mlflow_parent_run"
PLOT_EVERY_S = 60.0
FLUSH_EVERY_S = 2.0
_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


def _client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient  # heavy: only where tracking is used

    if uri.startswith(("http://", "https://")):
        # MLflow's HTTP client retries for minutes by default; a worker should not stall that long
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        if not reachable(uri):
            raise ConnectionError(f"nothing answers at {mask_url(uri)}")
    return MlflowClient(tracking_uri=uri)


def reachable(uri: str, timeout: float = 3.0) -> bool:
    """Whether a tracking server accepts connections (always True for a local store)."""
    from urllib.parse import urlsplit

    if not uri.startswith(("http://", "https://")):
        return True
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "localhost", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _numeric(v: Any) -> float:
    return float(v) if v is not None else float("nan")


def setup_study_run(uri: str, study: optuna.Study, spec_dict: dict[str, Any], storage: str) -> str:
    """Create (or find) the study's experiment and parent run; return the parent run id."""
    existing = study.user_attrs.get(PARENT_ATTR)
    if existing:
        return str(existing)
    client = _client(uri)
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

    flat = _flatten(spec_dict)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in flat.items()])
    study.set_user_attr(PARENT_ATTR, run.info.run_id)
    return run.info.run_id


def _flatten(d: dict[str, Any], prefix: str = "spec.") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class MlflowTracker:
    """Optuna callback (trial end) and objective hook (each epoch) writing to MLflow.

    Every MLflow call goes, in order, through one background thread, so an epoch never waits on the
    tracking server: epoch metrics are buffered and sent at most every ``flush_every_s`` (live curves
    lag by that much). At trial end the rest is sent and waited for, so a trial is complete in MLflow
    when this callback returns. See benchmarks/tracking_overhead.py for what this saves.
    """

    def __init__(
        self,
        uri: str,
        parent_run_id: str,
        where: dict[str, str] | None = None,
        plot_every_s: float = PLOT_EVERY_S,
        flush_every_s: float = FLUSH_EVERY_S,
    ) -> None:
        import mlflow.entities  # noqa: F401  (seconds of import: pay it here, not in a trial's first epoch)

        self.uri, self.parent_run_id = uri, parent_run_id
        self.where = where or {"host": socket.gethostname()}
        self._client: MlflowClient | None = None
        self._exp_id: str | None = None
        self._runs: dict[int, str] = {}  # trial number -> run id, written by the sender thread
        self._requested: set[int] = set()
        self._pending: dict[int, list[Any]] = {}
        self._down = False
        self.plot_every_s, self.flush_every_s = plot_every_s, flush_every_s
        self._next_plot = time.monotonic() + plot_every_s
        self._last_flush = 0.0
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = _client(self.uri)
        return self._client

    def _safe(self, fn: Callable[[], T]) -> T | None:
        if self._down:
            return None
        try:
            return fn()
        except Exception as e:  # tracking must never stop training
            self._down = True
            log.warning(
                "MLflow tracking at %s failed (%s); training goes on, results stay in the study database",
                mask_url(self.uri),
                type(e).__name__,
            )
            return None

    def _submit(self, job: Callable[[], None]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._send_forever, name="sweeper-mlflow", daemon=True)
            self._thread.start()
            atexit.register(self.flush)  # what is still queued reaches MLflow before the process ends
        self._jobs.put(job)

    def _send_forever(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                self._safe(job)
            finally:
                self._jobs.task_done()

    def flush(self) -> None:
        """Wait until everything submitted so far has reached MLflow (or tracking gave up)."""
        if self._thread is not None:
            self._jobs.join()

    def _request_run(self, number: int, params: dict[str, Any], started: datetime.datetime | None) -> None:
        if number in self._requested:
            return
        self._requested.add(number)
        start_ms = int(started.timestamp() * 1000) if started else None
        self._submit(lambda: self._create_run(number, params, start_ms))

    def _create_run(self, number: int, params: dict[str, Any], start_ms: int | None) -> None:
        from mlflow.entities import Param

        if self._exp_id is None:
            self._exp_id = self.client.get_run(self.parent_run_id).info.experiment_id
        run = self.client.create_run(
            self._exp_id,
            run_name=f"trial-{number}",
            start_time=start_ms,
            tags={
                "mlflow.parentRunId": self.parent_run_id,
                "sweeper.role": "trial",
                "optuna.trial_number": str(number),
                **{f"sweeper.{k}": v for k, v in self.where.items()},
            },
        )
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self._runs[number] = run.info.run_id

    def _send_pending(self, number: int) -> None:
        metrics = self._pending.pop(number, [])
        self._last_flush = time.monotonic()
        if metrics:
            self._submit(lambda: self._log_metrics(number, metrics))

    def _log_metrics(self, number: int, metrics: list[Any]) -> None:
        for i in range(0, len(metrics), 1000):  # MLflow's limit per batch
            self.client.log_batch(self._runs[number], metrics=metrics[i : i + 1000])

    def on_epoch(self, trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> None:
        """Objective hook: buffer the epoch's metrics; the sender thread ships them."""
        if self._down:
            return
        from mlflow.entities import Metric

        self._request_run(trial.number, dict(trial.params), trial.datetime_start)
        ts = int(time.time() * 1000)
        self._pending.setdefault(trial.number, []).extend(Metric(k, float(v), ts, epoch) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self._send_pending(trial.number)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback at trial end: state, reason, duration, and the study's best so far."""
        if self._down:
            return
        from mlflow.entities import Metric, RunTag

        number = trial.number
        self._request_run(number, dict(trial.params), trial.datetime_start)
        tags = {"sweeper.state": trial.state.name}
        reason = trial.user_attrs.get("end_reason") or trial.system_attrs.get("fail_reason")
        if reason:
            tags["sweeper.end_reason"] = str(reason)[:5000]
        ts = int(time.time() * 1000)
        metrics = self._pending.pop(number, [])  # the last epochs go with the final batch: one request
        if trial.duration is not None:
            metrics.append(Metric("duration_s", trial.duration.total_seconds(), ts, 0))
        if trial.value is not None:
            metrics.append(Metric("objective", trial.value, ts, 0))
        end_ms = int(trial.datetime_complete.timestamp() * 1000) if trial.datetime_complete else None
        summary = study_summary(study)  # read here: the storage belongs to this thread

        def finish() -> None:
            run_id = self._runs[number]
            self._log_metrics(number, metrics[:-1000] if len(metrics) > 1000 else [])
            self.client.log_batch(run_id, metrics=metrics[-1000:], tags=[RunTag(k, v) for k, v in tags.items()])
            self.client.set_terminated(run_id, status=_STATUS.get(trial.state, "FAILED"), end_time=end_ms)
            del self._runs[number]

        self._submit(finish)
        self.flush()  # the trial is complete in MLflow when its callback returns; the study summary may lag
        self._submit(lambda: self.client.log_batch(self.parent_run_id, metrics=summary[0], tags=summary[1]))
        self._safe(lambda: self._maybe_plot(study))

    def _maybe_plot(self, study: optuna.Study) -> None:
        """The study's plots, between trials; at most every ``plot_every_s`` and at most ~5% of the time."""
        if time.monotonic() < self._next_plot:
            return
        start = time.monotonic()
        self.flush()  # one thread at a time on the client
        log_study_plots(self.client, self.parent_run_id, study)
        cost = time.monotonic() - start
        self._next_plot = time.monotonic() + max(self.plot_every_s, 20 * cost)


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

    from sweeper.plots import write_study_plots

    with tempfile.TemporaryDirectory(prefix="sweeper-plots-") as tmp:
        if write_study_plots(study, tmp):
            client.log_artifacts(parent_run_id, tmp, artifact_path="plots")


def log_study_dashboard(uri: str, study: optuna.Study, done: bool = False) -> None:
    """Summary and plots on the parent run at the end of a worker's run (``done``: the study met its budget)."""
    parent = study.user_attrs.get(PARENT_ATTR)
    if not parent:
        return
    try:
        client = _client(uri)
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

    client = _client(uri)
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
