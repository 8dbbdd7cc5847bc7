"""What the tracker sends to MLflow, and how: each trial's run as far as it is still to be sent (kept through a
tracking-server outage), and the sender thread's protocol that creates and completes those runs.

``MlflowTracker`` (``sweeper.tracking.tracker``) records on the training thread; the methods here run on
its ``BackgroundSender`` thread. A failure that passes (the server is down) is raised, and everything
kept is sent again on the next try; a request the server refuses is dropped with a warning.
"""

from __future__ import annotations

import datetime
import logging
import shutil
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweeper.study.urls import mask_url
from sweeper.tracking.client import client_for, describe, not_mlflow, worth_resending

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

log = logging.getLogger("sweeper.tracking")
WEIGHTS_DIR, WEIGHTS_FILE = "weights", "state_dict.pt"  # a selected trial's network, an artifact of its run


@dataclass
class _Run:
    """One trial's MLflow run, as far as it is still to be sent."""

    number: int
    params: dict[str, Any]
    start_ms: int | None
    metrics: list[Metric] = field(default_factory=list)
    run_id: str | None = None
    params_sent: bool = False
    tried: bool = False  # a create request went out: it may have made the run before failing
    end: tuple[list[RunTag], str, int | None] | None = None  # tags, status, end time: set when the trial ends
    dropped: int = 0  # epoch metrics not kept (the server was down for long)
    weights: str | None = None  # a folder holding the trained network's state_dict.pt, uploaded with the end


class Outbox:
    """The runs, study summary and plots kept for MLflow, and the sender thread's side of sending them."""

    def __init__(self, uri: str, parent_run_id: str, where: dict[str, str]) -> None:
        self.uri, self.parent_run_id, self.where = uri, parent_run_id, where
        self._client: MlflowClient | None = None  # the sender thread's alone
        self._exp_id: str | None = None
        self._lock = threading.Lock()  # guards what both threads touch: the runs, the summary, the plots
        self._runs: dict[int, _Run] = {}  # trial number -> its run still to send, in trial order
        self._kept = 0  # epoch metrics kept in self._runs
        self._summary: tuple[list[Any], list[Any]] | None = None  # the study run's latest, unsent
        self._plots: str | None = None  # a folder of plots to upload, unsent
        self.off: str | None = None  # why tracking stopped for good (the server is not MLflow)

    def _run(self, number: int, params: dict[str, Any], started: datetime.datetime | None) -> _Run:
        """Trial ``number``'s run still to send, made on its first record (the caller holds the lock)."""
        run = self._runs.get(number)
        if run is None:
            start_ms = int(started.timestamp() * 1000) if started else None
            run = self._runs[number] = _Run(number, params, start_ms)
        return run

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = client_for(self.uri)
        return self._client

    # -- the sender thread: send what is kept; a failure that passes is raised (sent again later) -----
    def _send(self) -> None:
        if self.off:
            return
        try:
            if self._exp_id is None:
                self._exp_id = self.client.get_run(self.parent_run_id).info.experiment_id
        except Exception as e:
            if worth_resending(e):
                raise
            self._stop(e)
            return
        with self._lock:
            numbers = list(self._runs)
        for number in numbers:
            if self.off:
                return
            run = self._runs[number]
            if not self._attempt(f"trial {number}'s run", lambda run=run: self._send_run(run)):
                with self._lock:
                    self._runs.pop(number, None)
                    self._kept -= len(run.metrics)
        with self._lock:
            summary, self._summary = self._summary, None
            plots, self._plots = self._plots, None  # the sender's now: the training thread will not delete them
        try:
            if summary:
                self._attempt("the study's summary", lambda: self._log_summary(summary))
                summary = None
            if plots:
                self._attempt(
                    "the study's plots", lambda: self.client.log_artifacts(self.parent_run_id, plots, "plots")
                )
        except Exception:
            self._keep(summary, plots)
            raise
        if plots:
            shutil.rmtree(plots, ignore_errors=True)

    def _attempt(self, what: str, send: Any) -> bool:
        """``send()``; False if the server refused it, with a warning: one bad request must not hold up
        the rest. A failure that passes is raised: the sender sends it all again later."""
        try:
            send()
            return True
        except Exception as e:
            if worth_resending(e):
                raise
            if not_mlflow(e):
                self._stop(e)
            else:
                log.warning("MLflow tracking at %s: %s not sent: %s", mask_url(self.uri), what, describe(e))
            return False

    def _keep(self, summary: tuple[list[Any], list[Any]] | None, plots: str | None) -> None:
        """What was not sent is kept for the next try, unless something newer came meanwhile."""
        with self._lock:
            self._summary = self._summary or summary
            if plots and self._plots is None:
                self._plots, plots = plots, None
        if plots:
            shutil.rmtree(plots, ignore_errors=True)

    def _log_summary(self, summary: tuple[list[Any], list[Any]]) -> None:
        self.client.log_batch(self.parent_run_id, metrics=summary[0], tags=summary[1])

    def _stop(self, e: BaseException) -> None:
        """The server will not take runs at all: tracking is off for this worker, with one warning."""
        self.off = describe(e)
        with self._lock:
            self._runs.clear()
            self._kept = 0
        log.warning(
            "MLflow tracking at %s %s; this worker goes on without tracking (results stay in the study database)",
            mask_url(self.uri),
            self.off,
        )

    def _send_run(self, run: _Run) -> None:
        """Create the run (once), then its metrics in batches, then its end: each step kept until sent."""
        from mlflow.entities import Param

        client = self.client
        if run.run_id is None:
            if run.tried:  # the request that failed may have created it: do not make a second run
                run.run_id = self._find_run(run.number)
            if run.run_id is None:
                run.tried = True
                run.run_id = client.create_run(
                    self._exp_id,
                    run_name=f"trial-{run.number}",
                    start_time=run.start_ms,
                    tags={
                        "mlflow.parentRunId": self.parent_run_id,
                        "sweeper.role": "trial",
                        "optuna.trial_number": str(run.number),
                        **{f"sweeper.{k}": v for k, v in self.where.items()},
                    },
                ).info.run_id
        if not run.params_sent:
            client.log_batch(run.run_id, params=[Param(k, str(v)) for k, v in run.params.items()])
            run.params_sent = True
        while True:
            with self._lock:
                batch, end = run.metrics[:1000], run.end
                last = len(run.metrics) <= 1000  # the end goes with the last batch: one request
            if not batch and (end is None or not last):
                return
            client.log_batch(run.run_id, metrics=batch, tags=end[0] if end and last else [])
            with self._lock:
                del run.metrics[: len(batch)]  # only the sender removes metrics: these are the ones sent
                self._kept -= len(batch)
            if end and last:
                if run.weights:
                    client.log_artifacts(run.run_id, run.weights, WEIGHTS_DIR)
                    shutil.rmtree(run.weights, ignore_errors=True)
                    run.weights = None
                client.set_terminated(run.run_id, status=end[1], end_time=end[2])
                with self._lock:
                    self._runs.pop(run.number, None)
                return

    def _find_run(self, number: int) -> str | None:
        found = self.client.search_runs(
            [self._exp_id],
            f"tags.`optuna.trial_number` = '{number}' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
            max_results=1,
        )
        return found[0].info.run_id if found else None
