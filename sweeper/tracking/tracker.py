"""Trial runs in MLflow: one nested run per trial, with its parameters, per-epoch curves and end state.

A thin layer on ``MlflowClient`` (optuna-integration's MLflowCallback is deprecated and serializes
trials). Metrics go out in one ``log_batch`` per epoch, through a ``BackgroundSender``.
"""

from __future__ import annotations

import datetime
import socket
import time
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.study.record import end_reason
from sweeper.tracking.client import client_for
from sweeper.tracking.sender import BackgroundSender
from sweeper.tracking.study_run import log_study_plots, study_summary

if TYPE_CHECKING:
    from mlflow import MlflowClient

PLOT_EVERY_S = 60.0
FLUSH_EVERY_S = 2.0
STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


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
        self.sender = BackgroundSender(uri)
        self.plot_every_s, self.flush_every_s = plot_every_s, flush_every_s
        self._next_plot = time.monotonic() + plot_every_s
        self._last_flush = 0.0

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = client_for(self.uri)
        return self._client

    def _submit(self, job: Any) -> None:
        self.sender.submit(job)

    def flush(self) -> None:
        """Wait until everything submitted so far has reached MLflow (or tracking gave up)."""
        self.sender.flush()

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
        if self.sender.down:
            return
        from mlflow.entities import Metric

        self._request_run(trial.number, dict(trial.params), trial.datetime_start)
        ts = int(time.time() * 1000)
        self._pending.setdefault(trial.number, []).extend(Metric(k, float(v), ts, epoch) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self._send_pending(trial.number)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback at trial end: state, reason, duration, and the study's best so far."""
        if self.sender.down:
            return
        from mlflow.entities import Metric, RunTag

        number = trial.number
        self._request_run(number, dict(trial.params), trial.datetime_start)
        tags = {"sweeper.state": trial.state.name}
        reason = end_reason(trial)
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
            self.client.set_terminated(run_id, status=STATUS.get(trial.state, "FAILED"), end_time=end_ms)
            del self._runs[number]

        self._submit(finish)
        self.flush()  # the trial is complete in MLflow when its callback returns; the study summary may lag
        self._submit(lambda: self.client.log_batch(self.parent_run_id, metrics=summary[0], tags=summary[1]))
        self.sender.safe(lambda: self._maybe_plot(study))

    def _maybe_plot(self, study: optuna.Study) -> None:
        """The study's plots, between trials; at most every ``plot_every_s`` and at most ~5% of the time."""
        if time.monotonic() < self._next_plot:
            return
        start = time.monotonic()
        self.flush()  # one thread at a time on the client
        log_study_plots(self.client, self.parent_run_id, study)
        cost = time.monotonic() - start
        self._next_plot = time.monotonic() + max(self.plot_every_s, 20 * cost)
