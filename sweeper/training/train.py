"""One network's training loop, with the data resident on the device for the whole run."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sweeper.errors import DivergedError
from sweeper.study.space import Hparams
from sweeper.study.spec import TrainSpec
from sweeper.training.data import Dataset, Split
from sweeper.training.layers import BatchNorm, max_norm_, weight_matrices
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


def symmetric_kl(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """R-Drop's consistency term (Liang et al. 2021): the mean of KL(p1 || p2) and KL(p2 || p1), per sample."""
    lp1, lp2 = F.log_softmax(logits1, -1), F.log_softmax(logits2, -1)
    return 0.5 * (
        F.kl_div(lp1, lp2, log_target=True, reduction="batchmean")
        + F.kl_div(lp2, lp1, log_target=True, reduction="batchmean")
    )


class Criterion:
    """The training loss of one batch: cross-entropy with label smoothing, mixup and R-Drop as ``hp`` sets them.

    Mixup (Zhang et al. 2018) mixes each batch with a shuffled copy of itself, ``lam ~ Beta(alpha, alpha)``, and
    the loss the same way; R-Drop (Liang et al. 2021) runs two dropout passes: mean CE + alpha * symmetric KL.
    """

    def __init__(self, hp: Hparams, seed: int) -> None:
        self.hp = hp
        self.rng = np.random.default_rng(seed)  # mixup's lam: its own stream, never the data order's

    def __call__(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        hp, smooth = self.hp, self.hp.label_smoothing or 0.0
        lam, y2 = 1.0, yb
        if hp.mixup_alpha:
            lam = float(self.rng.beta(hp.mixup_alpha, hp.mixup_alpha))
            perm = torch.randperm(len(xb), generator=gen, device=xb.device)
            xb, y2 = lam * xb + (1.0 - lam) * xb[perm], yb[perm]

        def ce(logits: torch.Tensor) -> torch.Tensor:
            loss = F.cross_entropy(logits, yb, label_smoothing=smooth)
            if hp.mixup_alpha:
                loss = lam * loss + (1.0 - lam) * F.cross_entropy(logits, y2, label_smoothing=smooth)
            return loss

        logits = model(xb)
        if not hp.r_drop_alpha:
            return ce(logits)
        logits2 = model(xb)
        return 0.5 * (ce(logits) + ce(logits2)) + hp.r_drop_alpha * symmetric_kl(logits, logits2)


def optimizer(model: nn.Module, hp: Hparams, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum and L2 in the gradient, or AdamW with decoupled decay; weight matrices only decay."""
    groups = decay_groups(model, hp.weight_decay)
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=hp.betas)
    return torch.optim.SGD(groups, lr=lr, momentum=hp.momentum)


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
    opt = optimizer(model, hp, settings.base_lr * hp.lr_scale)
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
                loss = loss + hp.l1 * sum(w.abs().sum() for w in weights)
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
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss became {train_loss} in epoch {epoch}")
        val_loss, val_acc = evaluate(evaluated, data.val, settings.eval_batch_size)
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
        if settings.early_stopping_patience and best.update(evaluated.module if ema else model, metrics):
            break
    if settings.early_stopping_patience is not None and best.state is not None:
        model.load_state_dict(best.state)
        return best.metrics
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    return metrics
