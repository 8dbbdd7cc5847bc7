"""The loss and evaluation math of both trainers, for one network or K stacked ones.

One network gives ``[B, C]`` logits and a scalar loss (the one-trial trainer, ``training.train``); a stack gives
``[K, B, C]`` and one value per member, ``[K]`` (the population, ``training.population.trainer``). Each formula is
written once here; where both shapes have a kernel of their own (torch's fused cross-entropy for one network), it
is the same formula (checked by tests/test_population.py: a population of one trains as the one-trial trainer).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sweeper.training.data import Split


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, smoothing: Any = None) -> torch.Tensor:
    """Mean cross-entropy, with label smoothing ``smoothing`` (off: None or 0).

    ``[B, C]`` logits: a scalar, torch's fused kernel (``smoothing`` a float). ``[K, B, C]``: one per member,
    ``[K]``, each with its own ``smoothing`` (``[K]``); ``F.cross_entropy(label_smoothing=e)``'s formula,
    ``(1 - e) * nll + e * mean over classes of -log p``.
    """
    if logits.dim() == 2:
        return F.cross_entropy(logits, y, label_smoothing=smoothing or 0.0)
    k, b = y.shape
    if smoothing is None:  # no member smooths: the fused kernel
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view(k, b).mean(1)
    logp = F.log_softmax(logits.float(), -1)
    nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    e = smoothing.view(-1, 1)
    return ((1 - e) * nll - e * logp.mean(-1)).mean(1)


def r_drop(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """R-Drop's consistency term (Liang et al. 2021): the mean of KL(p1 || p2) and KL(p2 || p1) per sample, averaged
    over the batch; a scalar for ``[B, C]`` logits, ``[K]`` for ``[K, B, C]``."""
    lp1, lp2 = F.log_softmax(logits1.float(), -1), F.log_softmax(logits2.float(), -1)
    kl12 = F.kl_div(lp1, lp2, log_target=True, reduction="none").sum(-1).mean(-1)
    kl21 = F.kl_div(lp2, lp1, log_target=True, reduction="none").sum(-1).mean(-1)
    return 0.5 * (kl12 + kl21)


def l1_penalty(weights: Iterable[torch.Tensor], members: bool = False) -> Any:
    """The L1 norm of the weight matrices (``layers.weight_matrices``); per member, ``[K]``, for stacked weights."""
    if members:
        return torch.stack([w.abs().flatten(1).sum(1) for w in weights]).sum(0)
    return sum(w.abs().sum() for w in weights)


def _loss_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.dim() == 2:
        return F.cross_entropy(logits, y, reduction="sum")
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y).sum(-1)


def evaluate(model: nn.Module, split: Split, batch_size: int = 4096) -> tuple[float, float]:
    """One network's mean cross-entropy and accuracy on ``split``, in eval mode (dropout off)."""
    loss, accuracy = scores(model, split, batch_size)
    return loss.item(), accuracy.item()


@torch.no_grad()
def scores(
    model: nn.Module,
    split: Split,
    batch_size: int,
    members: int = 0,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy on ``split`` in eval mode (dropout off, batch-norm running statistics), on
    the device: two scalars for one network; ``members`` > 0: a stack of that many, each on the whole split, ``[K]``.
    """
    was_training = model.training
    model.eval()
    shape = (members,) if members else ()
    loss_sum = torch.zeros(shape, device=split.x.device)
    correct = torch.zeros(shape, device=split.x.device)
    for i in range(0, len(split.x), batch_size):
        x, y = split.x[i : i + batch_size], split.y[i : i + batch_size]
        with autocast():
            logits = model(x.unsqueeze(0).expand(members, -1, -1) if members else x).float()
        if members:
            y = y.expand(members, -1)
        loss_sum += _loss_sum(logits, y)
        correct += (logits.argmax(-1) == y).sum(-1)
    model.train(was_training)
    n = len(split.x)
    return loss_sum / n, correct / n


def divergence(train_loss: float, val_loss: float, epoch: int) -> str | None:
    """Why a trial diverged in ``epoch`` (a loss stopped being finite), or None."""
    if not math.isfinite(train_loss):
        return f"training loss became {train_loss} in epoch {epoch}"
    if not math.isfinite(val_loss):
        return f"validation loss became {val_loss} in epoch {epoch}"
    return None
