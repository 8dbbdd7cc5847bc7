"""A worker: joins a study by name through the storage alone and trains trials until the budget is met.

One trial at a time (``TrialLoop.run``): claim a slot of the shared budget and create the trial in it
(``sweeper.workers.budget``), train it with the heartbeat thread beating for it (``sweeper.workers.heartbeat``),
finish it as the trial protocol says (``sweeper.workers.protocol``: tell Optuna, keep the best network, the
end-of-trial callbacks); stop on SIGTERM / Ctrl-C (``sweeper.workers.shutdown``), when the budget is met, or
when trials keep failing. A population of trials stacked on one device: ``sweeper.workers.population``.
"""

from __future__ import annotations

import gc
import logging
import socket
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.settings import RunSettings
from sweeper.study import optuna_internals as internals
from sweeper.study.record import StudyRecord, heartbeat_settings
from sweeper.tracking.tracker import MlflowTracker
from sweeper.training.objective import Diverged, Objective, prepare_data
from sweeper.training.population.trainer import unstackable
from sweeper.workers.budget import claim
from sweeper.workers.checkpoints import make_checkpoints
from sweeper.workers.heartbeat import Heartbeat
from sweeper.workers.progress import ProgressBar, TrialLines, quiet_trial_tracebacks
from sweeper.workers.protocol import TrialProtocol
from sweeper.workers.shutdown import Shutdown, WorkerStopped

log = logging.getLogger("sweeper")
FAILURES_IN_A_ROW = 3  # a worker whose trials keep failing stops: a broken network or data, not bad luck


def run_worker(
    study_name: str,
    settings: RunSettings,
    *,
    worker_id: int = 0,
    device: str | None = None,
    labels: Mapping[str, str] | None = None,
    reproducible: bool = False,
    trial_lines: bool = False,
) -> int:
    """Run trials of an existing study until it has its budget of finished trials; return how many this worker ran.

    The study is in ``settings.storage``, its MLflow runs go to ``settings.tracking`` ('' for none);
    ``settings.population`` trials train together (default: the study file's ``train.population``).
    Each trial records where it ran (host, worker id, device, plus ``labels`` such as a cluster node)
    as trial attributes and MLflow tags. ``worker_id`` is only that label: every worker's sampler gets
    a seed of its own, so scaled workers never repeat each other's trials; ``reproducible`` seeds it
    with the study seed instead (the one worker of ``sweeper launch``: a re-run repeats the search).
    ``settings.progress`` shows a bar of the shared budget; ``trial_lines`` (without a bar) a line per trial it ends.
    """
    storage, tracking_uri, population = settings.storage, settings.tracking, settings.population
    progress = settings.progress
    record = StudyRecord.open(study_name, storage, heartbeat=True, fresh_sampler_seed=not reproducible)
    study, spec, budget = record.study, record.spec, record.budget
    if record.done:
        log.info(
            "study %r has met its budget (%d/%d trials finished): nothing to run",
            study_name,
            record.n_finished(),
            budget,
        )
        return 0
    quiet_trial_tracebacks()
    log.info("worker %d: loading %s data", worker_id, spec.data.dataset)
    data = prepare_data(spec, device)
    where = {"host": socket.gethostname(), "worker": str(worker_id), "device": str(data.train.x.device)}
    where.update(labels or {})
    tracker = (
        MlflowTracker(tracking_uri, record.parent_run_id, where) if tracking_uri and record.parent_run_id else None
    )
    bar = ProgressBar(study, budget) if progress else TrialLines(study, budget) if trial_lines else None
    callbacks: list[Any] = [c for c in (tracker, bar) if c is not None]
    hooks = [tracker.on_epoch] if tracker is not None else []
    keep = tracker.keep_weights if tracker is not None else None  # the selected network goes with its run
    checkpoints = make_checkpoints(
        spec.train.checkpoint_every, study_name, settings.checkpoint_dir, tracking_uri, record.parent_run_id
    )
    protocol = TrialProtocol(study, spec, where, hooks, callbacks, keep, checkpoints)
    try:
        size = population or spec.train.population
        why_not = unstackable(spec)
        if size > 1 and why_not:
            log.info("training one trial at a time, not %d stacked: %s", size, why_not)
        if size > 1 and not why_not:
            from sweeper.workers.population import PopulationRunner

            with Shutdown() as stop:
                return PopulationRunner(study, data, size, budget, protocol).run(stop)
        with Shutdown() as stop:
            objective = Objective(spec, data, protocol, on_step=stop.check)
            return TrialLoop(study, objective, budget, protocol).run(stop)
    finally:
        if bar is not None:
            bar.close()
        if tracker is not None:
            tracker.close()


class TrialLoop:
    """One trial at a time: claim, train, finish (``sweeper.workers.protocol``); until the budget is met, the
    worker stops, or trials keep failing."""

    def __init__(
        self, study: optuna.Study, objective: Callable[[optuna.Trial], float], budget: int, protocol: TrialProtocol
    ) -> None:
        self.study, self.objective, self.budget, self.protocol = study, objective, budget, protocol
        self.running: int | None = None  # the id of the trial being trained, for the heartbeat
        self.ran = self.failures = 0
        self.poll = min(2.0, heartbeat_settings()[0] / 2)

    def run(self, stop: Shutdown) -> int:
        """Train trials until the budget is met, a stop is asked for, or trials keep failing; return how many ran."""
        with Heartbeat(self.study, lambda: [] if self.running is None else [self.running]) as heartbeat:
            heartbeat.reap()  # what optimize does first: requeue the trials of dead workers
            while self.failures < FAILURES_IN_A_ROW:
                trial = claim(self.study, self.budget, heartbeat.beat, self.poll, stop)
                if trial is None:
                    break
                self.running = internals.trial_id(trial)
                try:
                    frozen = self._train(trial)
                except (WorkerStopped, Exception) as e:  # a stop request (queued again), or a bug every trial hits
                    self.protocol.stop([trial], e)
                    if isinstance(e, WorkerStopped):
                        break
                    raise
                finally:
                    self.running = None
                if frozen is None:  # another worker took it
                    continue
                self.ran += 1
                self.failures = self.failures + 1 if frozen.state == TrialState.FAIL else 0
        return self.ran

    def _train(self, trial: optuna.Trial) -> FrozenTrial | None:
        """Train one trial and finish it; None if it was taken over (it is not ours to tell)."""
        self.protocol.begin(trial)
        value, state, error, reason = None, TrialState.COMPLETE, None, None
        try:
            value = self.objective(trial)
        except Diverged as e:
            state, reason = TrialState.PRUNED, str(e)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale by another worker meanwhile
            self.protocol.drop_taken(trial)
            return None
        except RuntimeError as e:  # a trial's own failure (out of memory, a bad shape): the next may do better
            state, error, reason = TrialState.FAIL, e, f"{type(e).__name__}: {e}"
        frozen = self.protocol.finish(trial, state, value, reason)
        if error is not None:
            log.warning("trial %d failed: %s: %s", trial.number, type(error).__name__, str(error)[:300])
            if _is_oom(error):
                # the traceback's frames hold the failed trial's tensors: drop them first, or the memory stays
                # in this process's cache, out of reach of the other workers on the GPU
                traceback.clear_frames(error.__traceback__)
                error = None
                _free_memory()
        return frozen


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError)


def _free_memory() -> None:
    """After an out-of-memory trial: drop its tensors so the next trial gets the memory back."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
