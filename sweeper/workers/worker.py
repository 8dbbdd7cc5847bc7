"""A worker: joins a study by name through the storage alone and trains trials until the budget is met."""

from __future__ import annotations

import gc
import socket
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.study.record import StudyRecord, heartbeat_settings, n_finished, set_end_reason, tag_trial
from sweeper.study.spec import StudySpec
from sweeper.tracking.tracker import MlflowTracker
from sweeper.training.objective import Objective, prepare_data
from sweeper.workers.budget import Surplus, check_claim, wait_for_slot
from sweeper.workers.shutdown import Shutdown, WorkerStopped, requeue


class _StopAfterFailures:
    """Stop this worker when its trials keep failing (a broken network or data, not bad luck)."""

    def __init__(self, limit: int = 3) -> None:
        self.limit, self.streak = limit, 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.streak = self.streak + 1 if trial.state == TrialState.FAIL else 0
        if self.streak >= self.limit:
            study.stop()


class _Progress:
    """A bar of finished trials (all workers) against the budget, with the best value so far."""

    def __init__(self, study: optuna.Study, budget: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=budget, initial=min(n_finished(study), budget), desc=study.study_name, unit="trial")

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.bar.n = min(n_finished(study), self.bar.total)
        try:
            self.bar.set_postfix(best=f"{study.best_value:.4f}")
        except ValueError:
            pass
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


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
        return 0
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
        return _run_population(study, spec, data, size, budget, where, hooks, rest, progress)
    poll = min(2.0, heartbeat_settings()[0] / 2)
    stop = Shutdown()
    objective = Objective(spec, data, hooks, on_step=stop.check)
    current: list[int] = []  # the trial id this worker is running, for the clean-up after a stop
    oom: list[bool] = [False]

    def tagged(trial: optuna.Trial) -> float:
        current[:] = [trial._trial_id]
        check_claim(trial, budget, poll, stop)
        tag_trial(trial, where)
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
    bar = _Progress(study, budget) if progress else None
    if bar:
        callbacks.append(bar)
    try:
        with stop:
            while wait_for_slot(study, budget, poll, stop):
                try:
                    study.optimize(tagged, n_trials=1, callbacks=callbacks, catch=(RuntimeError,))
                except Surplus:
                    break
                except WorkerStopped:
                    _requeue(study, current[0], tracker)
                    break
                ran += 1
                if oom[0]:  # only now: until optimize returns, its traceback still holds the trial's tensors
                    _free_memory()
                    oom[:] = [False]
                if failures.streak >= failures.limit:
                    break
    finally:
        if bar:
            bar.close()
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

    bar = _Progress(study, budget) if progress else None
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


def _requeue(study: optuna.Study, trial_id: int, tracker: MlflowTracker | None) -> None:
    """A trial stopped by a signal: queue it again and end its MLflow run."""
    frozen = requeue(study, trial_id)
    if tracker is not None:
        tracker(study, frozen)
