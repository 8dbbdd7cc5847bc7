"""One network's training loop, with the data resident on the device for the whole run."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sweeper.errors import DivergedError
from sweeper.study.hparams import Hparams
from sweeper.study.spec import TrainSpec
from sweeper.training.data import Dataset
from sweeper.training.layers import BatchNorm, max_norm_, weight_matrices
from sweeper.training.loss import cross_entropy, divergence, evaluate, l1_penalty, r_drop
from sweeper.training.models import decay_groups

EpochHook = Callable[[int, dict[str, float]], None]
StepHook = Callable[[], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A per-trial seed derived from the study seed, so a trial re-run reproduces its numbers."""
    return int(np.random.SeedSequence([study_seed, trial_number]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Criterion:
    """The training loss of one batch: cross-entropy with label smoothing, mixup and R-Drop as ``hp`` sets them.

    Mixup (Zhang et al. 2018) mixes each batch with a shuffled copy of itself, ``lam ~ Beta(alpha, alpha)``, and
    the loss the same way; R-Drop (Liang et al. 2021) runs two dropout passes: mean CE + alpha * symmetric KL.
    """

    def __init__(self, hp: Hparams, seed: int) -> None:
        self.hp = hp
        self.rng = np.random.default_rng(seed)  # mixup's lam: its own stream, never the data order's

    def __call__(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        hp = self.hp
        lam, y2 = 1.0, yb
        if hp.mixup_alpha:
            lam = float(self.rng.beta(hp.mixup_alpha, hp.mixup_alpha))
            perm = torch.randperm(len(xb), generator=gen, device=xb.device)
            xb, y2 = lam * xb + (1.0 - lam) * xb[perm], yb[perm]

        def ce(logits: torch.Tensor) -> torch.Tensor:
            loss = cross_entropy(logits, yb, hp.label_smoothing)
            if hp.mixup_alpha:
                loss = lam * loss + (1.0 - lam) * cross_entropy(logits, y2, hp.label_smoothing)
            return loss

        logits = model(xb)
        if not hp.r_drop_alpha:
            return ce(logits)
        logits2 = model(xb)
        return 0.5 * (ce(logits) + ce(logits2)) + hp.r_drop_alpha * r_drop(logits, logits2)


def optimizer(model: nn.Module, hp: Hparams, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum and L2 in the gradient, or AdamW with decoupled decay; weight matrices only decay."""
    if hp.optimizer == "adamw":
        groups = decay_groups(model, hp.adamw_weight_decay)
        return torch.optim.AdamW(groups, lr=lr, betas=(hp.adamw_beta1, hp.adamw_beta2))
    return torch.optim.SGD(decay_groups(model, hp.weight_decay), lr=lr, momentum=hp.momentum)


class BestEpoch:
    """Early stopping: the best epoch's metrics and weights so far, and whether patience has run out."""

    def __init__(self, metric: str, patience: int | None) -> None:
        self.metric, self.patience, self.sign = metric, patience, (1.0 if metric == "val_accuracy" else -1.0)
        self.metrics: dict[str, float] = {}
        self.state: dict[str, torch.Tensor] | None = None
        self.since = 0

    def update(self, model: nn.Module, metrics: dict[str, float]) -> bool:
        """Keep ``model``'s weights if this epoch is the best; True when training should stop."""
        if not self.metrics or self.sign * (metrics[self.metric] - self.metrics[self.metric]) > 0:
            self.metrics, self.since = metrics, 0
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.since += 1
        return self.patience is not None and self.since >= self.patience


def train(
    model: nn.Module,
    data: Dataset,
    hp: Hparams,
    settings: TrainSpec,
    seed: int,
    on_epoch: EpochHook | None = None,
    on_step: StepHook | None = None,
    metric: str = "val_accuracy",
) -> dict[str, float]:
    """Train ``model`` in place on ``data`` (already on the model's device); return the last epoch's metrics.

    ``on_epoch(epoch, metrics)`` is called after each epoch; it may raise (e.g. ``optuna.TrialPruned``)
    to stop; ``on_step()`` is called after each optimizer step and may raise too (a stop request).
    Raises ``DivergedError`` when the training loss stops being finite. With ``hp.ema_decay`` the evaluated (and
    in the end, the trained) weights are the moving average; with ``settings.early_stopping_patience`` training
    stops when ``metric`` has not improved for that many epochs, and ``model`` and the returned metrics are
    those of its best epoch.
    """
    x, y = data.train.x, data.train.y
    device = x.device
    opt = optimizer(model, hp, hp.lr(settings.base_lr))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=hp.lr_decay)
    criterion = Criterion(hp, seed)
    ema = None
    if hp.ema_decay is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(hp.ema_decay), use_buffers=True)
    evaluated = ema or model
    best = BestEpoch(metric, settings.early_stopping_patience)
    weights = list(weight_matrices(model).values())
    gen = torch.Generator(device=device).manual_seed(seed)
    n, bs = len(x), settings.batch_size
    min_batch = 2 if any(isinstance(m, nn.modules.batchnorm._BatchNorm | BatchNorm) for m in model.modules()) else 1
    for epoch in range(settings.epochs):
        model.train()
        # accumulate on the device: one host sync per epoch, not per step
        loss_sum = torch.zeros((), device=device)
        steps = 0
        perm = torch.randperm(n, generator=gen, device=device)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            if len(idx) < min_batch:
                continue
            loss = criterion(model, x[idx], y[idx], gen)
            loss_sum += loss.detach()
            if hp.l1:
                loss = loss + hp.l1 * l1_penalty(weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if hp.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
            opt.step()
            if hp.max_norm:
                max_norm_(model, hp.max_norm)
            if ema is not None:
                ema.update_parameters(model)
            steps += 1
            if on_step is not None:
                on_step()
        train_loss = (loss_sum / max(steps, 1)).item()
        val_loss, val_acc = evaluate(evaluated, data.val, settings.eval_batch_size)
        metrics = {
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": opt.param_groups[0]["lr"],
        }
        sched.step()
        if why := divergence(train_loss, val_loss, epoch):
            raise DivergedError(why)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if settings.early_stopping_patience and best.update(evaluated.module if ema else model, metrics):
            break
    if settings.early_stopping_patience is not None and best.state is not None:
        model.load_state_dict(best.state)
        return best.metrics
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    return metrics
