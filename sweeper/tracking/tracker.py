"""Trial runs in MLflow: one nested run per trial, with its parameters, per-epoch curves and end state.

A thin layer on ``MlflowClient`` (optuna-integration's MLflowCallback is deprecated and serializes
trials). The training thread only records what is to be sent (its ``Outbox``); a ``BackgroundSender``
thread sends it (``sweeper.tracking.outbox``), in ``log_batch`` requests of up to 1000 metrics. While
the tracking server is down nothing is lost: trials go on, their runs are kept (epoch metrics up to
``MAX_KEPT_METRICS``) and created, with their start and end times, once it answers again.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.study.record import end_reason, resumed_from
from sweeper.study.urls import mask_url
from sweeper.tracking.outbox import WEIGHTS_FILE, Outbox
from sweeper.tracking.sender import BackgroundSender
from sweeper.tracking.study_run import study_summary

log = logging.getLogger("sweeper.tracking")

PLOT_EVERY_S = 60.0
FLUSH_EVERY_S = 2.0
TRIAL_END_WAIT_S = 10.0  # at most this long a trial's end waits for its run to reach MLflow
MAX_KEPT_METRICS = 200_000  # epoch metrics kept while the server is down (~50 MB); later epochs' are dropped
# a pruned trial is a normal outcome: FINISHED in MLflow (a red ✗ reads as failure), PRUNED in sweeper.state
STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "FINISHED", TrialState.FAIL: "FAILED"}


class MlflowTracker(Outbox):
    """Optuna callback (trial end) and objective hook (each epoch) writing to MLflow.

    An epoch never waits on the tracking server: its metrics are kept and sent at most every
    ``flush_every_s`` (live curves lag by that much). At trial end the run is sent and waited for
    (at most ``TRIAL_END_WAIT_S``, not at all while the server is down), so a trial is normally
    complete in MLflow when this callback returns. ``close()`` sends what is left at the end.
    See benchmarks/tracking_overhead.py for what this saves.
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

        super().__init__(uri, parent_run_id, where or {"host": socket.gethostname()})
        self._warned_full = False
        self.sender = BackgroundSender(uri, self._send)
        self.plot_every_s, self.flush_every_s = plot_every_s, flush_every_s
        self._next_plot = time.monotonic() + plot_every_s
        self._last_poke = 0.0

    # -- the training thread: record, poke, never wait long -------------------------------------
    def on_epoch(self, trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> None:
        """Objective hook: keep the epoch's metrics; the sender thread ships them."""
        if self.off:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        with self._lock:
            run = self._run(trial.number, dict(trial.params), trial.datetime_start)
            if self._kept + len(metrics) > MAX_KEPT_METRICS:
                if not self._warned_full:
                    self._warned_full = True
                    log.warning(
                        "MLflow tracking at %s: more than %d epoch metrics kept while it is down; later "
                        "epochs' metrics are dropped (trial results and their runs are still sent)",
                        mask_url(self.uri),
                        MAX_KEPT_METRICS,
                    )
                run.dropped += len(metrics)
            else:
                run.metrics += [Metric(k, float(v), ts, epoch) for k, v in metrics.items()]
                self._kept += len(metrics)
        if time.monotonic() - self._last_poke >= self.flush_every_s:
            self._last_poke = time.monotonic()
            self.sender.poke()

    def keep_weights(self, trial: FrozenTrial, state_dict: Mapping[str, Any]) -> None:
        """The trained network of a trial that was the study's best when it finished: uploaded with its run
        (``weights/state_dict.pt``), so the best model logged at the end is the network that was selected."""
        if self.off:
            return
        import torch

        folder = tempfile.mkdtemp(prefix="sweeper-weights-")
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, os.path.join(folder, WEIGHTS_FILE))
        with self._lock:
            run = self._run(trial.number, dict(trial.params), trial.datetime_start)
            old, run.weights = run.weights, folder
        if old:
            shutil.rmtree(old, ignore_errors=True)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback at trial end: state, reason, duration, and the study's best so far."""
        if self.off:
            return
        from mlflow.entities import Metric, RunTag

        tags = {"sweeper.state": trial.state.name}
        reason = end_reason(trial)
        if reason:
            tags["sweeper.end_reason"] = str(reason)[:5000]
        resumed = resumed_from(trial)
        if resumed:  # this run replays the earlier try's epochs: one whole curve; that try's run ended FAILED
            tags["sweeper.resumed_from"] = f"trial {resumed['trial']}, epoch {resumed['epoch']}, step {resumed['step']}"
        ts = int(time.time() * 1000)
        final = []
        if trial.duration is not None:
            final.append(Metric("duration_s", trial.duration.total_seconds(), ts, 0))
        if trial.value is not None:
            final.append(Metric("objective", trial.value, ts, 0))
        end_ms = int(trial.datetime_complete.timestamp() * 1000) if trial.datetime_complete else None
        summary = study_summary(study)  # read here: the storage belongs to this thread
        with self._lock:
            run = self._run(trial.number, dict(trial.params), trial.datetime_start)
            if run.dropped:
                tags["sweeper.metrics_dropped"] = str(run.dropped)
            run.metrics += final
            self._kept += len(final)
            run.end = ([RunTag(k, v) for k, v in tags.items()], STATUS.get(trial.state, "FAILED"), end_ms)
            self._summary = summary
        if not self.sender.down:
            try:
                self._maybe_plot(study)
            except Exception as e:  # plots must never stop a study
                log.info("study plots skipped: %s: %s", type(e).__name__, e)
        self._last_poke = time.monotonic()
        self.sender.poke()
        self.sender.wait(TRIAL_END_WAIT_S)

    def _maybe_plot(self, study: optuna.Study) -> None:
        """The study's plots, between trials; at most every ``plot_every_s`` and at most ~5% of the time."""
        if time.monotonic() < self._next_plot:
            return
        from sweeper.tracking.plots import write_study_plots

        start, drawn = time.monotonic(), False
        folder = tempfile.mkdtemp(prefix="sweeper-plots-")  # the sender uploads it, then deletes it
        try:
            drawn = bool(write_study_plots(study, folder))
        finally:
            if not drawn:
                shutil.rmtree(folder, ignore_errors=True)
        cost = time.monotonic() - start
        self._next_plot = time.monotonic() + max(self.plot_every_s, 20 * cost)
        if drawn:
            with self._lock:
                old, self._plots = self._plots, folder
            if old:  # never sent: the new plots replace them
                shutil.rmtree(old, ignore_errors=True)

    def close(self, timeout: float = 60.0) -> None:
        """At the worker's end: send what is left; say which trials' runs could not be sent."""
        if self.sender.close(timeout):
            return
        with self._lock:
            unsent = sorted(self._runs)
        if unsent:
            log.warning(
                "MLflow tracking at %s: the runs of trial(s) %s were not sent (it does not answer); "
                "their results are in the study database",
                mask_url(self.uri),
                ", ".join(map(str, unsent)),
            )
