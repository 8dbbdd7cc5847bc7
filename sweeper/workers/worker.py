"""A worker: joins a study by name through the storage alone and trains trials until the budget is met."""

from __future__ import annotations

import gc
import logging
import socket
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.study.record import StudyRecord, heartbeat_settings, set_end_reason, tag_trial
from sweeper.study.spec import StudySpec
from sweeper.tracking.tracker import MlflowTracker
from sweeper.training.objective import Objective, prepare_data
from sweeper.workers.budget import Surplus, check_claim, wait_for_slot
from sweeper.workers.progress import ProgressBar, quiet_trial_tracebacks
from sweeper.workers.shutdown import Shutdown, WorkerStopped, requeue

log = logging.getLogger("sweeper")
TAKEN = (
    "taken over: no heartbeat for longer than the grace period (the study database was unreachable), "
    "so another worker failed it and queued it again"
)


class TrialTaken(BaseException):
    """Another worker failed this worker's trial as stale (e.g. after a database outage longer than the
    heartbeat grace): the trial is dropped and the worker goes on. A ``BaseException``, so that Optuna's
    ``optimize`` passes it on instead of telling the trial, which is no longer this worker's."""


class _StopAfterFailures:
    """Stop this worker when its trials keep failing (a broken network or data, not bad luck)."""

    def __init__(self, limit: int = 3) -> None:
        self.limit, self.streak = limit, 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.streak = self.streak + 1 if trial.state == TrialState.FAIL else 0
        if self.streak >= self.limit:
            study.stop()


def run_worker(
    study_name: str,
    storage: str,
    tracking_uri: str | None,
    worker_id: int = 0,
    progress: bool = False,
    device: str | None = None,
    population: int | None = None,
    labels: Mapping[str, str] | None = None,
) -> int:
    """Run trials of an existing study until it has its budget of finished trials; return how many this worker ran.

    Each trial records where it ran (host, worker id, device, plus ``labels`` such as a cluster node)
    as trial attributes and MLflow tags.

    The budget is shared by every worker (see ``sweeper.workers.budget``). SIGTERM or Ctrl-C ends the running
    trial as FAIL, queues it again and returns (see ``sweeper.workers.shutdown``).
    """
    record = StudyRecord.open(study_name, storage, worker_id, heartbeat=True)
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
    hooks: list[Any] = []
    failures = _StopAfterFailures()
    callbacks: list[Any] = [failures]
    parent = record.parent_run_id
    tracker = None
    if tracking_uri and parent:
        tracker = MlflowTracker(tracking_uri, parent, where)
        hooks.append(tracker.on_epoch)
        callbacks.append(tracker)
    size = population or spec.train.population
    if size > 1 and spec.network.type == "mlp":  # user networks cannot be stacked: they run one at a time
        rest = [c for c in callbacks if c is not failures]
        try:
            return _run_population(study, spec, data, size, budget, where, hooks, rest, progress)
        finally:
            if tracker is not None:
                tracker.close()
    poll = min(2.0, heartbeat_settings()[0] / 2)
    stop = Shutdown()
    objective = Objective(spec, data, hooks, on_step=stop.check)
    current: list[int] = []  # the trial id this worker is running, for the clean-up after a stop
    oom: list[bool] = [False]
    trained: list[bool] = [False]  # the objective returned: what fails now is recording the trial's end

    def tagged(trial: optuna.Trial) -> float:
        current[:] = [trial._trial_id]
        try:
            value = train(trial)
        except optuna.exceptions.UpdateFinishedTrialError:  # the trial is no longer ours to update
            raise TrialTaken from None
        trained[:] = [True]
        return value

    def train(trial: optuna.Trial) -> float:
        tag_trial(trial, where)
        try:
            check_claim(trial, budget, poll, stop)
        except Surplus as e:  # ends FAIL untrained: say why, so no one takes it for a lost trial
            set_end_reason(trial, str(e))
            raise
        try:
            stop.check()  # the signal came between ask() and here
            return objective(trial)
        except WorkerStopped as e:
            set_end_reason(trial, f"{e}; queued again")
            raise
        except optuna.TrialPruned:
            raise
        except Exception as e:
            set_end_reason(trial, f"{type(e).__name__}: {e}")
            oom[:] = [_is_oom(e)]
            raise

    ran = 0
    bar = ProgressBar(study, budget) if progress else None
    if bar:
        callbacks.append(bar)
    try:
        with stop:
            while wait_for_slot(study, budget, poll, stop):
                trained[:] = [False]
                try:
                    study.optimize(tagged, n_trials=1, callbacks=callbacks, catch=(RuntimeError,))
                except Surplus:
                    break
                except WorkerStopped as e:
                    number = _requeue(study, current[0], tracker)
                    log.warning("trial %d stopped (%s): queued again with the same parameters", number, e)
                    break
                except TrialTaken:
                    _drop_taken(study, current[0], tracker)
                    continue
                except Exception:  # taken while its end was being recorded: Optuna cannot tell it
                    if not (trained[0] and study._storage.get_trial(current[0]).state == TrialState.FAIL):
                        raise
                    _drop_taken(study, current[0], tracker)
                    continue
                ran += 1
                if oom[0]:  # only now: until optimize returns, its traceback still holds the trial's tensors
                    _free_memory()
                    oom[:] = [False]
                if failures.streak >= failures.limit:
                    break
    finally:
        if bar:
            bar.close()
        if tracker is not None:
            tracker.close()
    return ran


def _run_population(
    study: optuna.Study,
    spec: StudySpec,
    data: Any,
    size: int,
    budget: int,
    where: dict[str, str],
    hooks: list[Any],
    callbacks: list[Any],
    progress: bool,
) -> int:
    """K trials at a time, stacked on one device (see ``sweeper.training.population``)."""
    from sweeper.workers.population import PopulationRunner

    bar = ProgressBar(study, budget) if progress else None
    runner = PopulationRunner(study, spec, data, size, budget, where, hooks, callbacks + ([bar] if bar else []))
    try:
        with Shutdown() as stop:
            return runner.run(stop)
    finally:
        if bar:
            bar.close()


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError)


def _free_memory() -> None:
    """After an out-of-memory trial: drop its tensors so the next trial gets the memory back."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _drop_taken(study: optuna.Study, trial_id: int, tracker: MlflowTracker | None) -> None:
    """A trial another worker failed: say so in one line, end its MLflow run as failed, go on."""
    frozen = study._storage.get_trial(trial_id)
    log.warning("trial %d %s; this worker drops it and goes on", frozen.number, TAKEN)
    if tracker is not None:
        tracker(study, frozen, reason=TAKEN)


def _requeue(study: optuna.Study, trial_id: int, tracker: MlflowTracker | None) -> int:
    """A trial stopped by a signal: queue it again and end its MLflow run; return its number."""
    frozen = requeue(study, trial_id)
    if tracker is not None:
        tracker(study, frozen)
    return frozen.number
