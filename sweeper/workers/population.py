"""A worker's loop for population training: ask up to K trials, train them stacked, report each one.

Each member reports to its own Optuna trial every epoch and is pruned by the study's pruner
(or when it diverges, with the reason in ``end_reason`` as in ``objective.Objective``). A member
that leaves frees its slot and the slot is refilled with a new trial from ``study.ask``, until the
study's running plus finished trials reach the budget (claimed from the budget as ``sweeper.workers.budget`` does).
MLflow hooks, Optuna reports, pruning decisions and trial-end callbacks run on one background
thread while the device trains the next epoch, so storage and tracking I/O never stall it; a
pruning decision lands one epoch late and the pruned member's extra epoch is dropped.
SIGTERM / Ctrl-C (a ``sweeper.workers.shutdown.Shutdown``) stop the population after its current step:
every running member ends as FAIL and is queued again, as a single trial is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.errors import SpecError
from sweeper.study import optuna_internals as internals
from sweeper.study.record import is_best_so_far, set_end_reason, set_lr, tag_trial
from sweeper.study.space import Hparams
from sweeper.study.spec import StudySpec
from sweeper.training.data import Dataset
from sweeper.training.objective import trial_value
from sweeper.training.population.trainer import EpochResult, PopulationTrainer
from sweeper.training.train import trial_seed
from sweeper.workers.budget import claim, try_claim
from sweeper.workers.heartbeat import Heartbeat
from sweeper.workers.shutdown import Shutdown, WorkerStopped, requeue

log = logging.getLogger("sweeper")
TrialHook = Callable[[optuna.Trial, int, dict[str, float]], None]
StudyCallback = Callable[[optuna.Study, FrozenTrial], None]


class PopulationRunner:
    """``PopulationRunner(study, spec, data, K, budget, ...).run()`` trains until ``budget`` trials finished."""

    def __init__(
        self,
        study: optuna.Study,
        spec: StudySpec,
        data: Dataset,
        size: int,
        budget: int,
        where: dict[str, str] | None = None,
        hooks: Sequence[TrialHook] = (),
        callbacks: Sequence[StudyCallback] = (),
        keep: Callable[[FrozenTrial, dict[str, Any]], None] | None = None,
        poll: float = 2.0,
    ) -> None:
        if size < 1:
            raise ValueError(f"population size must be >= 1, got {size}")
        self.study, self.spec, self.size, self.budget = study, spec, size, budget
        self.where, self.hooks, self.callbacks = where or {}, list(hooks), list(callbacks)
        self.poll, self.keep = poll, keep
        self.finals: dict[Hashable, dict[str, Any]] = {}  # a member's trained weights, from its last epoch to its end
        self.trainer = PopulationTrainer(data, spec.train, spec.network, mask_seed=spec.seed)
        self.active: dict[int, optuna.Trial] = {}
        self.history: dict[int, list[float]] = {}  # each active member's metric per epoch
        self.ran = 0
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweeper-io")
        self.heartbeat = Heartbeat(study, lambda: [internals.trial_id(t) for t in list(self.active.values())])

    def _refill(self, trial: optuna.Trial | None = None) -> None:
        """Fill the free slots with new trials, each claimed from the shared budget (``sweeper.workers.budget``);
        ``trial``: one already claimed (after waiting for a slot)."""
        keys: list[Hashable] = []
        hps: list[Hparams] = []
        seeds: list[int] = []
        while self.trainer.size + len(keys) < self.size:
            trial = trial or try_claim(self.study, self.budget, self.heartbeat.beat)
            if trial is None:  # the budget is met, or every free slot is another running trial's
                break
            tag_trial(trial, self.where)
            try:
                hp: Hparams = self.spec.space.suggest(trial, self.spec.network.n_hidden, self.spec.network.n_conv)
            except ValueError as e:  # the study file's space does not fit its network: every trial would fail
                self._finish(trial, TrialState.FAIL, reason=str(e))
                self.trainer.add(keys, hps, seeds)
                raise SpecError(str(e)) from None
            set_lr(trial, self.spec.train.base_lr * hp.lr_scale)
            self.active[trial.number] = trial
            keys.append(trial.number)
            hps.append(hp)
            seeds.append(trial_seed(self.spec.seed, trial.number))
            trial = None
        self.trainer.add(keys, hps, seeds)

    def _finish(self, trial: optuna.Trial, state: TrialState, value: float | None = None, reason: str = "") -> None:
        if reason:
            set_end_reason(trial, reason)
        frozen = self.study.tell(trial, value, state=state)
        self.history.pop(trial.number, None)
        weights = self.finals.pop(trial.number, None)
        if (
            weights is not None
            and self.keep is not None
            and state == TrialState.COMPLETE
            and is_best_so_far(self.study, frozen)
        ):
            self.keep(frozen, weights)  # the study's best so far: the network a user gets if it stays best
        for cb in self.callbacks:
            cb(self.study, frozen)

    def _decide(self, results: list[EpochResult]) -> list[Hashable]:
        """On the I/O thread: report each member's epoch, run the hooks, prune or finish; return who left."""
        leaving = []
        last = self.spec.train.epochs - 1
        for r in results:
            trial = self.active[r.key]  # type: ignore[index]
            if r.error:
                self._finish(trial, TrialState.PRUNED, reason=r.error)
            else:
                history = self.history.setdefault(trial.number, [])
                history.append(r.metrics[self.spec.metric])
                trial.report(history[-1], r.epoch)
                for hook in self.hooks:
                    hook(trial, r.epoch, r.metrics)
                if trial.should_prune():
                    self._finish(trial, TrialState.PRUNED)
                elif r.epoch >= last:
                    self._finish(trial, TrialState.COMPLETE, trial_value(history, self.spec.metric_epochs))
                else:
                    continue
            leaving.append(r.key)
        return leaving

    def _apply(self, decided: Future[list[Hashable]]) -> None:
        for key in decided.result():
            self.active.pop(key, None)  # type: ignore[call-overload]
            self.ran += 1
        self.trainer.remove([k for k in self.trainer.keys if k not in self.active])

    def _loop(self, stop: Shutdown) -> None:
        """Train epoch e+1 on the device while the I/O thread reports epoch e.

        A member the pruner stops at epoch e has trained epoch e+1 by the time the decision lands;
        that epoch is dropped (never reported). A member's last epoch or divergence needs no
        decision: it leaves the stack at once.
        """
        last = self.spec.train.epochs - 1
        pending: Future[list[Hashable]] | None = None
        waited: optuna.Trial | None = None
        while True:
            self._refill(waited)
            waited = None
            if self.trainer.size == 0:
                if pending is not None:
                    self._apply(pending)
                    pending = None
                    continue
                # every slot is claimed by other workers' running trials: wait for one to end
                waited = claim(self.study, self.budget, self.heartbeat.beat, self.poll, stop)
                if waited is None:
                    return
                continue
            results = self.trainer.train_epoch(stop.check)
            if pending is not None:
                self._apply(pending)
                results = [r for r in results if r.key in self.active]
            if self.keep is not None:
                self.finals.update({r.key: self.trainer.member(r.key).state_dict() for r in results if r.epoch >= last})
            self.trainer.remove([r.key for r in results if r.error or r.epoch >= last])
            pending = self._io.submit(self._decide, results)

    def run(self, stop: Shutdown | None = None) -> int:
        """Train until the budget is met or ``stop`` is asked for; return how many trials this worker finished."""
        stop = stop or Shutdown()  # not entered: no handlers, never asks to stop
        try:
            with self.heartbeat:
                self.heartbeat.reap()  # what optimize does first: requeue the trials of dead workers
                self._loop(stop)
        except BaseException as e:
            self._io.shutdown(wait=True)  # let the last decisions land before failing the rest
            stopped = isinstance(e, WorkerStopped)
            queued = []
            for trial in list(self.active.values()):
                if internals.frozen(self.study, internals.trial_id(trial)).state == TrialState.RUNNING:
                    reason = f"{e}; queued again" if stopped else f"{type(e).__name__}: {e}"[:2000]
                    self._finish(trial, TrialState.FAIL, reason=reason)
                    if stopped:
                        requeue(self.study, internals.trial_id(trial))
                        queued.append(str(trial.number))
            if not stopped:
                raise
            if queued:
                log.warning("trial(s) %s stopped (%s): queued again with the same parameters", ", ".join(queued), e)
        finally:
            self._io.shutdown(wait=True)
        return self.ran
