"""A worker's loop for population training: ask up to K trials, train them stacked, report each one.

Each member is a trial of the trial protocol (``sweeper.workers.protocol``), as a trial trained alone is: it
reports every epoch and is pruned by the study's pruner (or when it diverges, with the reason). A member
that leaves frees its slot and the slot is refilled with a new trial from ``study.ask``, until the
study's running plus finished trials reach the budget (claimed from the budget as ``sweeper.workers.budget`` does).
MLflow hooks, Optuna reports, pruning decisions and trial-end callbacks run on one background
thread while the device trains the next epoch, so storage and tracking I/O never stall it; a
pruning decision lands one epoch late and the pruned member's extra epoch is dropped.
SIGTERM / Ctrl-C (a ``sweeper.workers.shutdown.Shutdown``) stop the population after its current step:
every running member ends as FAIL and is queued again, as a single trial is.
"""

from __future__ import annotations

from collections.abc import Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeper.errors import SpecError
from sweeper.study import optuna_internals as internals
from sweeper.study.hparams import Hparams
from sweeper.training.data import Dataset
from sweeper.training.objective import Diverged
from sweeper.training.population.trainer import EpochResult, PopulationTrainer
from sweeper.training.train import trial_seed
from sweeper.workers.budget import claim, try_claim
from sweeper.workers.heartbeat import Heartbeat
from sweeper.workers.protocol import TrialProtocol
from sweeper.workers.shutdown import Shutdown, WorkerStopped


class PopulationRunner:
    """``PopulationRunner(study, data, K, budget, protocol).run()`` trains until ``budget`` trials finished."""

    def __init__(
        self, study: optuna.Study, data: Dataset, size: int, budget: int, protocol: TrialProtocol, poll: float = 2.0
    ) -> None:
        self.study, self.size, self.budget, self.protocol, self.poll = study, size, budget, protocol, poll
        self.spec = protocol.spec
        self.trainer = PopulationTrainer(data, self.spec.train, self.spec.network, mask_seed=self.spec.seed)
        self.active: dict[int, optuna.Trial] = {}
        self.curves: dict[int, list[dict[str, float]]] = {}  # each member's metrics per epoch, for its checkpoints
        self.ran = 0
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweeper-io")
        self.heartbeat = Heartbeat(study, lambda: [internals.trial_id(t) for t in list(self.active.values())])

    def _refill(self, trial: optuna.Trial | None = None) -> None:
        """Fill the free slots with new trials, each claimed from the shared budget (``sweeper.workers.budget``);
        ``trial``: one already claimed (after waiting for a slot)."""
        keys: list[Hashable] = []
        hps: list[Hparams] = []
        seeds: list[int] = []
        saved: list[dict[str, Any] | None] = []
        while self.trainer.size + len(keys) < self.size:
            trial = trial or try_claim(self.study, self.budget, self.heartbeat.beat)
            if trial is None:  # the budget is met, or every free slot is another running trial's
                break
            self.protocol.begin(trial)
            try:
                hp = self.spec.hparams(trial)
            except ValueError as e:  # the study file's space does not fit its network: every trial would fail
                self.protocol.finish(trial, TrialState.FAIL, reason=str(e))
                self.trainer.add(keys, hps, seeds)
                raise SpecError(str(e)) from None
            self.protocol.started(trial, hp)
            state = self.protocol.checkpoint(trial, kind="member")  # a retry continues its earlier try's epochs
            curve = list(state["curve"]) if state else []
            try:
                self.protocol.replay(trial, curve)
            except optuna.TrialPruned:
                self.protocol.finish(trial, TrialState.PRUNED)
                self.ran, trial = self.ran + 1, None
                continue
            self.active[trial.number] = trial
            self.curves[trial.number] = curve
            keys.append(trial.number)
            hps.append(hp)
            seeds.append(trial_seed(self.spec.seed, self.protocol.first_try(trial)))
            saved.append(state)
            trial = None
        self.trainer.add(keys, hps, seeds, saved)

    def _decide(self, results: list[EpochResult]) -> list[Hashable]:
        """On the I/O thread: report each member's epoch (the trial protocol), prune or finish; return who left."""
        leaving = []
        last = self.spec.train.epochs - 1
        for r in results:
            trial = self.active[r.key]  # type: ignore[index]
            try:
                if r.error:
                    raise Diverged(r.error)
                self.protocol.epoch(trial, r.epoch, r.metrics)
                if r.epoch < last:
                    continue
                self.protocol.finish(trial, TrialState.COMPLETE, self.protocol.value(trial))
            except Diverged as e:
                self.protocol.finish(trial, TrialState.PRUNED, reason=str(e))
            except optuna.TrialPruned:
                self.protocol.finish(trial, TrialState.PRUNED)
            except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale by another worker meanwhile
                self.protocol.drop_taken(trial)
            leaving.append(r.key)
        return leaving

    def _apply(self, decided: Future[list[Hashable]]) -> None:
        for key in decided.result():
            self.active.pop(key, None)  # type: ignore[call-overload]
            self.curves.pop(key, None)  # type: ignore[call-overload]
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
            self._checkpoint(results)
            if self.protocol.keep is not None:  # a finishing member's trained network, kept until it is told
                for r in results:
                    if r.epoch >= last:
                        self.protocol.trained_weights(r.key, self.trainer.member(r.key).state_dict())  # type: ignore
            self.trainer.remove([r.key for r in results if r.error or r.epoch >= last])
            pending = self._io.submit(self._decide, results)

    def _checkpoint(self, results: list[EpochResult]) -> None:
        """Each going-on member's epoch joins its curve; those due a checkpoint are saved (at an epoch's end only:
        the members move through an epoch together, so half an epoch of one cannot join another stack)."""
        last = self.spec.train.epochs - 1
        for r in results:
            self.curves[r.key].append(r.metrics)  # type: ignore[index]
            if r.error or r.epoch >= last or not self.protocol.due(self.active[r.key], r.epoch + 1):  # type: ignore
                continue
            state = {**self.trainer.member_state(r.key), "curve": self.curves[r.key]}  # type: ignore[index]
            self.protocol.save(self.active[r.key], state, kind="member")  # type: ignore[index]

    def run(self, stop: Shutdown | None = None) -> int:
        """Train until the budget is met or ``stop`` is asked for; return how many trials this worker finished."""
        stop = stop or Shutdown()  # not entered: no handlers, never asks to stop
        try:
            with self.heartbeat:
                self.heartbeat.reap()  # what optimize does first: requeue the trials of dead workers
                self._loop(stop)
        except BaseException as e:
            self._io.shutdown(wait=True)  # let the last decisions land before failing the rest
            self.protocol.stop(list(self.active.values()), e)
            if not isinstance(e, WorkerStopped):
                raise
        finally:
            self._io.shutdown(wait=True)
        return self.ran
