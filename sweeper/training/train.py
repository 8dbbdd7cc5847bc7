"""One network's training loop, with the data resident on the device for the whole run."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sweeper.errors import DivergedError
from sweeper.study.space import Hparams
from sweeper.study.spec import TrainSpec
from sweeper.training.data import Dataset, Split
from sweeper.training.models import apply_max_norm, decay_groups

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


def r_drop_loss(logits1: torch.Tensor, logits2: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """R-Drop (Liang et al. 2021): mean CE of two dropout passes + alpha * symmetric KL between them."""
    ce = 0.5 * (F.cross_entropy(logits1, y) + F.cross_entropy(logits2, y))
    lp1, lp2 = F.log_softmax(logits1, -1), F.log_softmax(logits2, -1)
    kl = 0.5 * (
        F.kl_div(lp1, lp2, log_target=True, reduction="batchmean")
        + F.kl_div(lp2, lp1, log_target=True, reduction="batchmean")
    )
    return ce + alpha * kl


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 4096) -> tuple[float, float]:
    """Mean cross-entropy and accuracy, in eval mode (dropout off)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=split.x.device)
    correct = torch.zeros((), device=split.x.device)
    for i in range(0, len(split.x), batch_size):
        logits = model(split.x[i : i + batch_size])
        y = split.y[i : i + batch_size]
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(-1) == y).sum()
    model.train(was_training)
    n = len(split.x)
    return (loss_sum / n).item(), (correct / n).item()


def train(
    model: nn.Module,
    data: Dataset,
    hp: Hparams,
    settings: TrainSpec,
    seed: int,
    on_epoch: EpochHook | None = None,
    on_step: StepHook | None = None,
) -> dict[str, float]:
    """Train ``model`` in place on ``data`` (already on the model's device); return the last epoch's metrics.

    ``on_epoch(epoch, metrics)`` is called after each epoch; it may raise (e.g. ``optuna.TrialPruned``)
    to stop; ``on_step()`` is called after each optimizer step and may raise too (a stop request).
    Raises ``DivergedError`` when the training loss stops being finite.
    """
    x, y = data.train.x, data.train.y
    device = x.device
    lr = settings.base_lr * hp.lr_scale
    opt = torch.optim.SGD(decay_groups(model, hp.weight_decay), lr=lr, momentum=hp.momentum)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=hp.lr_decay)
    weights = [p for p in model.parameters() if p.ndim >= 2]
    gen = torch.Generator(device=device).manual_seed(seed)
    n, bs = len(x), settings.batch_size
    min_batch = 2 if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) else 1
    metrics: dict[str, float] = {}
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
            xb, yb = x[idx], y[idx]
            if hp.r_drop_alpha:
                loss = r_drop_loss(model(xb), model(xb), yb, hp.r_drop_alpha)
            else:
                loss = F.cross_entropy(model(xb), yb)
            loss_sum += loss.detach()
            if hp.l1:
                loss = loss + hp.l1 * sum(w.abs().sum() for w in weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if hp.max_norm:
                apply_max_norm(model, hp.max_norm)
            steps += 1
            if on_step is not None:
                on_step()
        train_loss = (loss_sum / max(steps, 1)).item()
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss became {train_loss} in epoch {epoch}")
        val_loss, val_acc = evaluate(model, data.val, settings.eval_batch_size)
        metrics = {
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": opt.param_groups[0]["lr"],
        }
        sched.step()
        if not math.isfinite(val_loss):
            raise DivergedError(f"validation loss became {val_loss} in epoch {epoch}")
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return metrics
