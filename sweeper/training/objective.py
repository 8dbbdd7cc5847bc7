"""The objective: one trial's hyperparameters in, its validation metric out. No tracking here."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import optuna
import torch
from torch import nn

from sweeper.errors import DivergedError
from sweeper.study.space import Hparams
from sweeper.study.spec import StudySpec
from sweeper.training.data import Dataset, load_dataset
from sweeper.training.models import build_network
from sweeper.training.train import EpochHook, StepHook, resolve_device, seed_everything, train, trial_seed

TrialHook = Callable[[optuna.Trial, int, dict[str, float]], None]


def fit(
    spec: StudySpec,
    data: Dataset,
    hp: Hparams,
    seed: int,
    on_epoch: EpochHook | None = None,
    on_step: StepHook | None = None,
) -> tuple[nn.Module, dict[str, float]]:
    """Build the study's network for ``hp`` and train it; the same seed gives the same network."""
    seed_everything(seed)
    model = build_network(spec.network, data.in_features, data.num_classes, hp.dropout, hp.batch_norm, spec.base_dir)
    model.to(data.train.x.device)
    return model, train(model, data, hp, spec.train, seed, on_epoch, on_step, spec.metric)


def prepare_data(spec: StudySpec, device: torch.device | str | None = None) -> Dataset:
    """Load the study's data once per worker and move it to the device for all its trials."""
    return load_dataset(spec.data, spec.seed, spec.base_dir).to(device or resolve_device(spec.train.device))


def trial_value(history: Sequence[float], last_epochs: int) -> float:
    """A complete trial's value from its metric per epoch: the mean over its last ``last_epochs`` epochs."""
    window = history[-last_epochs:]
    return sum(window) / len(window)


class Diverged(optuna.TrialPruned):
    """A trial whose loss stopped being finite: pruned (its region of the space says something), with why."""


class Objective:
    """``objective(trial) -> float``: trains one network and returns ``spec.metric`` on validation.

    It only computes: what a trial records (its learning rate, why it ended) is written by the worker.

    ``hooks`` see every epoch's metrics (tracking lives there, at the edge); pruning is decided
    by the study's pruner from what is reported here. ``on_step`` runs after every training step
    (the worker's stop check).
    """

    def __init__(
        self, spec: StudySpec, data: Dataset, hooks: Sequence[TrialHook] = (), on_step: StepHook | None = None
    ) -> None:
        self.spec, self.data, self.hooks, self.on_step = spec, data, list(hooks), on_step
        self.model: nn.Module | None = None  # the last trial's trained network (the worker may keep it)
        self.lr: float | None = None  # the last trial's learning rate (the worker records it)

    def __call__(self, trial: optuna.Trial) -> float:
        hp = self.spec.space.suggest(trial, self.spec.network.n_hidden, self.spec.network.n_conv)
        self.lr = self.spec.train.base_lr * hp.lr_scale
        history: list[float] = []

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            history.append(metrics[self.spec.metric])
            trial.report(history[-1], epoch)
            for hook in self.hooks:
                hook(trial, epoch, metrics)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        self.model = None
        try:
            self.model, metrics = fit(
                self.spec, self.data, hp, trial_seed(self.spec.seed, trial.number), on_epoch, self.on_step
            )
        except DivergedError as e:
            # a diverged trial says something about its region of the space: keep it as pruned, with why
            raise Diverged(str(e)) from None
        if self.spec.train.early_stopping_patience is not None:
            return metrics[self.spec.metric]  # its best epoch's
        return trial_value(history, self.spec.metric_epochs)
