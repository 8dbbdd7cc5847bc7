"""The objective: one trial's hyperparameters in, its validation metric out. No tracking here."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import optuna
import torch
from torch import nn

from sweeper.errors import DivergedError
from sweeper.study.hparams import Hparams
from sweeper.study.spec import StudySpec
from sweeper.training.data import Dataset, load_dataset
from sweeper.training.models import build_network
from sweeper.training.train import EpochHook, StepHook, Training, resolve_device, seed_everything, trial_seed

log = logging.getLogger("sweeper")


def fit(
    spec: StudySpec,
    data: Dataset,
    hp: Hparams,
    seed: int,
    on_epoch: EpochHook | None = None,
    on_step: StepHook | None = None,
) -> tuple[nn.Module, dict[str, float]]:
    """Build the study's network for ``hp`` and train it; the same seed gives the same network."""
    training = start(spec, data, hp, seed)
    return training.model, training.run(on_epoch, on_step)


def start(spec: StudySpec, data: Dataset, hp: Hparams, seed: int) -> Training:
    """The study's network for ``hp``, built from ``seed`` on the data's device, ready to train."""
    seed_everything(seed)
    model = build_network(spec.network, data.in_features, data.num_classes, hp, spec.base_dir)
    model.to(data.train.x.device)
    return Training(model, data, hp, spec.train, seed, spec.metric)


def prepare_data(spec: StudySpec, device: torch.device | str | None = None) -> Dataset:
    """Load the study's data once per worker and move it to the device for all its trials."""
    return load_dataset(spec.data, spec.seed, spec.base_dir).to(device or resolve_device(spec.train.device))


def trial_value(history: Sequence[float], last_epochs: int) -> float:
    """A complete trial's value from its metric per epoch: the mean over its last ``last_epochs`` epochs."""
    window = history[-last_epochs:]
    return sum(window) / len(window)


class Diverged(optuna.TrialPruned):
    """A trial whose loss stopped being finite: pruned (its region of the space says something), with why."""


class TrialHooks:
    """What a trial's training tells the world around it, and what it asks of it: its hyperparameters once
    drawn, the try whose seed it repeats and the checkpoint it continues from (a retried trial), its training
    (which may then be saved), each epoch's metrics (a hook may raise ``optuna.TrialPruned`` to stop it there)
    and its trained network. These do nothing; a worker's trial protocol (``sweeper.workers.protocol``) reports,
    prunes, tracks, checkpoints and keeps the network."""

    def started(self, trial: optuna.Trial, hp: Hparams) -> None:
        pass

    def first_try(self, trial: optuna.Trial) -> int:
        """The number of the trial's first try, where its seed comes from (itself, unless it is a retry)."""
        return trial.number

    def checkpoint(self, trial: optuna.Trial) -> dict[str, Any] | None:
        """A ``Training.state_dict`` to continue from (the newest checkpoint of the trial's earlier tries)."""
        return None

    def training(self, trial: optuna.Trial, training: Training) -> None:
        """The trial trains with ``training`` from here on (its ``curve`` holds the epochs it resumed with)."""

    def step(self, trial: optuna.Trial) -> None:
        """After each training step (the training's state is one a checkpoint can save)."""

    def epoch(self, trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def trained(self, trial: optuna.Trial, model: nn.Module) -> None:
        pass


class Objective:
    """``objective(trial) -> float``: trains one network and returns ``spec.metric`` on validation.

    It only computes: ``hooks`` (a ``TrialHooks``) are where the trial is reported, pruned, tracked,
    checkpointed and its network kept. ``on_step`` runs after every training step (the worker's stop check).
    """

    def __init__(
        self, spec: StudySpec, data: Dataset, hooks: TrialHooks | None = None, on_step: StepHook | None = None
    ) -> None:
        self.spec, self.data, self.hooks, self.on_step = spec, data, hooks or TrialHooks(), on_step

    def __call__(self, trial: optuna.Trial) -> float:
        hp = self.spec.hparams(trial)
        self.hooks.started(trial, hp)
        seed = trial_seed(self.spec.seed, self.hooks.first_try(trial))
        training = start(self.spec, self.data, hp, seed)
        saved = self.hooks.checkpoint(trial)
        if saved is not None:
            try:
                training.load_state_dict(saved)
            except Exception as e:  # fits the fingerprint but not this network: start over, never fail on it
                log.warning("trial %d: its checkpoint does not load (%s: %s); it starts over",
                            trial.number, type(e).__name__, str(e)[:200])  # fmt: skip
                training = start(self.spec, self.data, hp, seed)
        try:
            self.hooks.training(trial, training)

            def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
                self.hooks.epoch(trial, epoch, metrics)

            def on_step() -> None:
                if self.on_step is not None:
                    self.on_step()  # the worker's stop check first: a stop checkpoints there anyway
                self.hooks.step(trial)

            metrics = training.run(on_epoch, on_step)
        except DivergedError as e:
            # a diverged trial says something about its region of the space: keep it as pruned, with why
            raise Diverged(str(e)) from None
        self.hooks.trained(trial, training.model)
        if self.spec.train.early_stopping_patience is not None:
            return metrics[self.spec.metric]  # its best epoch's
        return trial_value([m[self.spec.metric] for m in training.curve], self.spec.metric_epochs)
