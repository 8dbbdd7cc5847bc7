"""SGD with momentum for a stacked population: each member's settings are ``[K]`` tensors along the member axis.

The update is ``torch.optim.SGD``'s (dampening 0, no Nesterov), the one-trial trainer's optimizer:
``d = g + wd * w`` (weight matrices only, ``layers.weight_matrices``), ``buf = momentum * buf + d``,
``w -= lr * buf``; a zero buffer makes the first step ``buf = d`` exactly as SGD's lazy buffer does.
One loop over the few parameter tensors, none over members.
"""

from __future__ import annotations

import torch

from sweeper.training.layers import per_member
from sweeper.training.population.stacked import Stack


@torch.no_grad()
def sgd_step(stack: Stack, grads: dict[str, torch.Tensor], active: torch.Tensor | None = None) -> None:
    """One SGD step for every member, or (``active``, ``[K]`` bool) for those only: the rest skip it entirely."""
    hp, params = stack.hp, stack.params
    for name, g in grads.items():
        p, buf = params[name], stack.momentum[name]
        if name in stack.weights:
            g = g + p * per_member(hp["weight_decay"], p)
        if active is None:
            buf.mul_(per_member(hp["momentum"], buf)).add_(g)
            p.sub_(buf * per_member(hp["lr"], p))
        else:  # the same arithmetic; members not in ``active`` keep their weights and momentum bit for bit
            on = per_member(active, p)
            buf.copy_(torch.where(on, buf * per_member(hp["momentum"], buf) + g, buf))
            p.copy_(torch.where(on, p - buf * per_member(hp["lr"], p), p))


def decay_lr(stack: Stack) -> None:
    """One epoch of each member's exponential learning-rate decay."""
    stack.hp["lr"].mul_(stack.hp["lr_decay"])
