"""SGD with momentum and max-norm for a stacked population: each member's settings are [K, 1, 1] tensors.

The update is ``torch.optim.SGD``'s (dampening 0, no Nesterov): ``d = g + wd * w`` (weights only),
``buf = momentum * buf + d``, ``w -= lr * buf``; a zero buffer makes the first step ``buf = d``
exactly as SGD's lazy buffer does. One loop over the few parameter tensors, none over members.
"""

from __future__ import annotations

import torch

from sweeper.training.population.stacked import StackedMLP


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def sgd_step(net: StackedMLP, grads: dict[str, torch.Tensor], active: torch.Tensor | None = None) -> None:
    """One SGD step for every member, or (``active``, ``[K]`` bool) for those only: the rest skip it entirely."""
    t = net.t
    for name, g in grads.items():
        p, buf = t[name], t[f"mom_{name}"]
        if name.startswith("w"):  # L2 on weight matrices only, like models.decay_groups
            g = g + p * _col(t["weight_decay"], p)
        if active is None:
            buf.mul_(_col(t["momentum"], buf)).add_(g)
            p.sub_(buf * _col(t["lr"], p))
        else:  # the same arithmetic; members not in ``active`` keep their weights and momentum bit for bit
            on = active.view(-1, *([1] * (p.dim() - 1)))
            buf.copy_(torch.where(on, buf * _col(t["momentum"], buf) + g, buf))
            p.copy_(torch.where(on, p - buf * _col(t["lr"], p), p))


@torch.no_grad()
def max_norm_(net: StackedMLP, active: torch.Tensor | None = None) -> None:
    """Each unit's incoming weight vector to L2 norm <= c, the way ``torch.renorm`` does it (``active``: those only)."""
    c = net.t["max_norm"].view(-1, 1, 1)
    for w in net.weights():
        norm = w.norm(dim=1, keepdim=True)  # [K, 1, out]: one norm per unit, over its inputs
        scale = torch.where(norm > c, c / (norm + 1e-7), torch.ones_like(norm))
        if active is not None:
            scale = torch.where(active.view(-1, 1, 1), scale, torch.ones_like(scale))
        w.mul_(scale)


def decay_lr(net: StackedMLP) -> None:
    """One epoch of each member's exponential learning-rate decay."""
    net.t["lr"].mul_(net.t["lr_decay"])
