"""The trial protocol: what happens to a trial around its training, the same whether it trains alone
(``sweeper.workers.worker.TrialLoop``) or stacked in a population (``sweeper.workers.population``).

A claimed trial is tagged with where it runs (``begin``) and records its learning rate (``started``); each
epoch is reported to Optuna and the tracking hooks, and the study's pruner may stop it there (``epoch``); its
trained network waits (``trained``) until it ends: ``finish`` stores why, tells Optuna, keeps the network if
the trial is the study's best so far, and runs the end-of-trial callbacks. A trial another worker failed as
stale meanwhile (the database was out of reach longer than the heartbeat grace) is dropped with one line
(``drop_taken``); a worker that stops (SIGTERM, Ctrl-C) fails its running trials and queues them again with the
same parameters (``stop``), after checkpointing each one's training (``sweeper.workers.checkpoints``): its retry,
on whichever worker, continues from there (``checkpoint``, ``training``), with the epochs before replayed to
Optuna and the tracking hooks, so the retry's trial and MLflow run show one whole learning curve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from sweeper.study import optuna_internals as internals
from sweeper.study.hparams import Hparams
from sweeper.study.lock import study_lock
from sweeper.study.record import (
    is_best_so_far,
    resumed_from,
    set_end_reason,
    set_lr,
    set_resumed,
    tag_trial,
    tries_before,
    with_end_reason,
)
from sweeper.study.spec import StudySpec
from sweeper.training.objective import TrialHooks, trial_value
from sweeper.training.train import Training
from sweeper.workers.checkpoints import Checkpoints, fingerprint
from sweeper.workers.shutdown import WorkerStopped, requeue

log = logging.getLogger("sweeper")
TAKEN = (
    "taken over: no heartbeat for longer than the grace period (the study database was unreachable), "
    "so another worker failed it and queued it again"
)
EpochHook = Callable[[optuna.Trial, int, dict[str, float]], None]
Callback = Callable[[optuna.Study, FrozenTrial], None]
Keep = Callable[[FrozenTrial, Mapping[str, Any]], None]


class TrialProtocol(TrialHooks):
    """A worker's trials from claim to end. ``hooks`` see every epoch's metrics (tracking); ``callbacks`` every
    trial's end (tracking, progress); ``keep`` the weights of a trial that ends as the study's best so far;
    ``checkpoints`` (None: off) the training of a trial, so that its retry can resume it."""

    def __init__(
        self,
        study: optuna.Study,
        spec: StudySpec,
        where: Mapping[str, str],
        hooks: Sequence[EpochHook] = (),
        callbacks: Sequence[Callback] = (),
        keep: Keep | None = None,
        checkpoints: Checkpoints | None = None,
    ) -> None:
        self.study, self.spec, self.where = study, spec, dict(where)
        self.hooks, self.callbacks, self.keep = list(hooks), list(callbacks), keep
        self.checkpoints = checkpoints
        self._spec_fingerprint = spec.fingerprint()  # what a checkpoint must match, with the trial's parameters
        self.history: dict[int, list[float]] = {}  # each running trial's metric per epoch, as reported
        self.weights: dict[int, Mapping[str, Any]] = {}  # a trained network, from its last epoch to its end
        self.tries: dict[int, list[int]] = {}  # each running trial's earlier tries (a retry), oldest first
        self.trainings: dict[int, Training] = {}  # each running trial's training, which a checkpoint saves
        self._replaying: set[int] = set()

    def begin(self, trial: optuna.Trial) -> None:
        tag_trial(trial, self.where)
        frozen = internals.frozen(self.study, internals.trial_id(trial))
        self.tries[trial.number] = tries_before(frozen)
        if resumed_from(frozen):  # inherited from the try it repeats (Optuna's retry copies the attributes)
            set_resumed(trial, None)

    def first_try(self, trial: optuna.Trial) -> int:
        return (self.tries.get(trial.number) or [trial.number])[0]

    def checkpoint(self, trial: optuna.Trial, kind: str = "trial") -> dict[str, Any] | None:
        """The newest checkpoint of the trial's earlier tries, written by the same ``kind`` of trainer (``trial``:
        one network, ``member``: a population's), or None."""
        tries = self.tries.get(trial.number)
        if self.checkpoints is None or not tries:
            return None
        found = self.checkpoints.newest(tries, self._fingerprint(trial, kind))
        if found is None:
            return None
        number, state = found
        epoch, step = int(state["epoch"]), int(state["steps"]) if state.get("perm") is not None else 0
        set_resumed(trial, number, epoch, step)
        log.info("trial %d resumes trial %d from its checkpoint at epoch %d%s", trial.number, number, epoch,
                 f", step {step}" if step else "")  # fmt: skip
        return state

    def training(self, trial: optuna.Trial, training: Training) -> None:
        """Keep the trial's training for its checkpoints; replay the epochs it resumed with (reports, hooks)."""
        self.trainings[trial.number] = training
        self.replay(trial, training.curve)

    def replay(self, trial: optuna.Trial, curve: Sequence[dict[str, float]]) -> None:
        """A trial starts training, resumed after the epochs of ``curve``: those are reported again (Optuna, the
        tracking hooks), so the retry shows one whole learning curve; raises ``optuna.TrialPruned`` if the pruner
        now stops it."""
        if self.checkpoints is not None:
            self.checkpoints.started(trial.number)
        self._replaying.add(trial.number)
        try:
            for epoch, metrics in enumerate(curve):
                self.epoch(trial, epoch, metrics)
        finally:
            self._replaying.discard(trial.number)

    def step(self, trial: optuna.Trial) -> None:
        """``checkpoint_every: auto`` checkpoints at the first step due, mid-epoch too (one clock read a step)."""
        if self.checkpoints is not None and self.checkpoints.due(trial.number):  # (N epochs: never mid-epoch)
            training = self.trainings.get(trial.number)
            if training is not None:
                self.save(trial, training.state_dict())

    def save(self, trial: optuna.Trial, state: dict[str, Any], kind: str = "trial") -> None:
        """Checkpoint a trial's training ``state`` (a warning if it cannot be written)."""
        if self.checkpoints is not None:
            self.checkpoints.save(trial.number, self._fingerprint(trial, kind), state)

    def due(self, trial: optuna.Trial, epochs_done: int) -> bool:
        """Whether a trial that has trained ``epochs_done`` epochs is due a checkpoint."""
        return self.checkpoints is not None and self.checkpoints.due(trial.number, epochs_done)

    def started(self, trial: optuna.Trial, hp: Hparams) -> None:
        set_lr(trial, hp.lr(self.spec.train.base_lr))

    def epoch(self, trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> None:
        """Report the epoch, show it to the hooks; raise ``optuna.TrialPruned`` when the pruner stops the trial."""
        value = metrics[self.spec.metric]
        self.history.setdefault(trial.number, []).append(value)
        trial.report(value, epoch)
        for hook in self.hooks:
            hook(trial, epoch, metrics)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")
        training = self.trainings.get(trial.number)
        if (
            training is not None
            and trial.number not in self._replaying
            and epoch + 1 < self.spec.train.epochs  # the last epoch's end is the trial's
            and self.due(trial, epoch + 1)
        ):
            self.save(trial, training.state_dict())

    def trained(self, trial: optuna.Trial, model: nn.Module) -> None:
        self.trained_weights(trial.number, model.state_dict())

    def trained_weights(self, number: int, weights: Mapping[str, Any]) -> None:
        if self.keep is not None:
            self.weights[number] = weights

    def value(self, trial: optuna.Trial) -> float:
        """A complete trial's value from its reported epochs (``StudySpec.metric_epochs``)."""
        return trial_value(self.history[trial.number], self.spec.metric_epochs)

    def finish(
        self,
        trial: optuna.Trial,
        state: TrialState,
        value: float | None = None,
        reason: str | None = None,
        requeued: bool = False,
    ) -> FrozenTrial | None:
        """Store why the trial ended, tell Optuna, keep its network if it is the best so far, run the callbacks;
        delete its checkpoints and its earlier tries' (unless it is ``requeued``: its retry continues from them).

        None when another worker failed the trial as stale meanwhile: it is not ours to tell any more.
        """
        frozen = self._tell(trial, state, value, reason, requeued)
        if frozen is not None:
            self._ended(frozen)
        return frozen

    def _tell(
        self, trial: optuna.Trial, state: TrialState, value: float | None, reason: str | None, requeued: bool
    ) -> FrozenTrial | None:
        """``finish`` but the callbacks."""
        self.history.pop(trial.number, None)
        weights = self.weights.pop(trial.number, None)
        self.trainings.pop(trial.number, None)
        tries = self.tries.pop(trial.number, [])
        if self.checkpoints is not None and not requeued and (tries or self.checkpoints.saved(trial.number)):
            self.checkpoints.drop([*tries, trial.number])  # (a first try that never saved has none to look for)
        try:
            if reason:
                set_end_reason(trial, reason)
            frozen = self.study.tell(trial, value, state=None if value is not None else state)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):  # "Cannot tell a FAIL trial"
            if internals.frozen(self.study, internals.trial_id(trial)).state != TrialState.FAIL:
                raise
            self.drop_taken(trial)
            return None
        if weights is not None and self.keep is not None and frozen.state == TrialState.COMPLETE:
            if is_best_so_far(self.study, frozen):  # the network a user gets if it stays the best
                self.keep(frozen, weights)
        return frozen

    def drop_taken(self, trial: optuna.Trial) -> None:
        """A trial another worker failed as stale: say so in one line, end its tracking as failed, go on."""
        self.history.pop(trial.number, None)
        self.weights.pop(trial.number, None)
        self.trainings.pop(trial.number, None)  # its checkpoints stay: the retry continues from them
        self.tries.pop(trial.number, None)
        log.warning("trial %d %s; this worker drops it and goes on", trial.number, TAKEN)
        self._ended(with_end_reason(internals.frozen(self.study, internals.trial_id(trial)), TAKEN))

    def stop(self, trials: Sequence[optuna.Trial], error: BaseException) -> None:
        """The worker stops with ``trials`` running: each ends as FAIL with why; on a stop request (SIGTERM,
        Ctrl-C) each is checkpointed first and queued again with the same parameters, in one line."""
        stopped = isinstance(error, WorkerStopped)
        queued = []
        for trial in trials:
            if internals.frozen(self.study, internals.trial_id(trial)).state != TrialState.RUNNING:
                continue
            training = self.trainings.get(trial.number)
            if stopped and training is not None:
                self.save(trial, training.state_dict())
            reason = f"{error}; queued again" if stopped else f"{type(error).__name__}: {error}"
            if not stopped:
                self.finish(trial, TrialState.FAIL, reason=reason)
                continue
            # under the study's lock, as a claim is: no claim sees the slot free before the retry is queued in it
            with study_lock(self.study):
                frozen = self._tell(trial, TrialState.FAIL, None, reason, requeued=True)
                if frozen is not None:
                    requeue(self.study, internals.trial_id(trial))
            if frozen is not None:
                self._ended(frozen)
                queued.append(str(trial.number))
        if queued:
            log.warning("trial(s) %s stopped (%s): queued again with the same parameters", ", ".join(queued), error)

    def _fingerprint(self, trial: optuna.Trial, kind: str = "trial") -> str:
        return fingerprint(self._spec_fingerprint, trial.params, kind)

    def _ended(self, frozen: FrozenTrial) -> None:
        for callback in self.callbacks:
            callback(self.study, frozen)
