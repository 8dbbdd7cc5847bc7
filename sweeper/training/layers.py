"""The network math sweeper writes itself, once, with a member axis first: K networks side by side.

One trial's network is K = 1 (``models.MLP`` on a ``[B, in]`` batch); the population trainer stacks K trials
(``models.MLP.stack``) and trains them with one batched matmul. The same layers, the same formulas, either way:

- ``Linear``: ``h @ W + b`` with ``W`` ``[K, in, out]``, initialized as ``nn.Linear`` is;
- ``Dropout``: inverted dropout, Bernoulli or Gaussian, one rate per member, the identity in eval mode;
- ``BatchNorm``: ``nn.BatchNorm1d``'s arithmetic per member, switched on or off per member;
- ``max_norm_``: each unit's incoming weight vector to L2 norm <= c (Srivastava et al. 2014, sec. 5.1);
- ``weight_matrices``: what L2, L1 and max-norm act on (never biases, never normalization parameters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # nn.BatchNorm1d's defaults


def per_member(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``[K]`` tensor shaped to broadcast over ``like`` (member axis first), in its dtype unless ``v`` is a mask."""
    v = v if v.dtype == torch.bool else v.to(like.dtype)
    return v.view(-1, *([1] * (like.dim() - 1)))


def dropout(
    h: torch.Tensor, p: torch.Tensor, gen: torch.Generator | None = None, gaussian: torch.Tensor | bool = False
) -> torch.Tensor:
    """Inverted dropout with one rate per member (``p`` is ``[K]``, ``h`` has the member axis first).

    Bernoulli (the default): kept units are scaled by 1/(1-p); a member with p=0 keeps every unit unscaled
    (``rand < 1`` always holds), bit for bit. Gaussian, for the members ``gaussian`` (``[K]`` bool) marks
    (Srivastava et al. 2014, sec. 10; ``True``: every member): each unit times noise drawn from N(1, p/(1-p)), the
    same mean and variance as Bernoulli's inverted mask; p=0 is the identity. Both kinds come from one uniform
    draw per unit (the normal noise by its inverse CDF), so a member's noise never depends on its neighbours'
    kinds. ``gen``: the draws' generator (None: torch's default one).
    """
    keep = per_member(1.0 - p, h)
    u = torch.rand(h.shape, generator=gen, device=h.device)
    if gaussian is False:
        return h * ((u < keep).to(h.dtype) / keep)
    sigma = per_member((p / (1.0 - p)).sqrt(), h)
    noisy = h * (1.0 + sigma * torch.special.ndtri(u.clamp(_U_MIN, 1.0 - _U_MIN))).to(h.dtype)
    if gaussian is True:
        return noisy
    return torch.where(per_member(gaussian, h), noisy, h * ((u < keep).to(h.dtype) / keep))


_U_MIN = 2.0**-24  # torch.rand's resolution: 0 would be an infinite normal quantile


class Dropout(nn.Module):
    """Inverted dropout with a rate per member (``rate`` ``[K]``), Bernoulli or Gaussian per member (``gaussian``
    ``[K]`` bool); the identity in eval mode."""

    def __init__(self, rate: Sequence[float] | torch.Tensor, gaussian: Sequence[bool] | torch.Tensor = ()) -> None:
        super().__init__()
        self.register_buffer("rate", torch.as_tensor(rate, dtype=torch.float32).reshape(-1).clone())
        kinds = torch.as_tensor(gaussian, dtype=torch.bool).reshape(-1)
        self.register_buffer("gaussian", kinds.clone() if len(kinds) else torch.zeros_like(self.rate, dtype=torch.bool))
        self.refresh()

    def refresh(self) -> None:
        """Host-side facts, read when the rates change, never per step: a layer nobody drops draws no masks."""
        self.active = bool((self.rate > 0).any())
        self.all_gaussian, self.any_gaussian = bool(self.gaussian.all()), bool(self.gaussian.any())

    def forward(self, h: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        if not (self.training and self.active):
            return h
        if not self.any_gaussian:
            return dropout(h, self.rate, gen)
        return dropout(h, self.rate, gen, True if self.all_gaussian else self.gaussian)

    def extra_repr(self) -> str:
        kinds = f", gaussian={self.gaussian.tolist()}" if self.any_gaussian else ""
        return f"rate={[round(p, 4) for p in self.rate.tolist()]}{kinds}"


class Linear(nn.Module):
    """K fully connected layers: ``weight`` ``[K, in, out]`` (``h @ W``), ``bias`` ``[K, 1, out]``.

    A new layer has one member, initialized exactly as ``nn.Linear(in, out)`` is (same draws, same order).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        w = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_features) if in_features > 0 else 0.0
        b = torch.empty(out_features).uniform_(-bound, bound)
        self.weight = nn.Parameter(w.t().contiguous().unsqueeze(0))
        self.bias = nn.Parameter(b.view(1, 1, -1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, h, self.weight)


class BatchNorm(nn.Module):
    """Batch normalization over the batch axis, per member, with ``nn.BatchNorm1d``'s arithmetic.

    ``enabled`` (``[K]`` bool) says which members use it: the others pass through unchanged. Training uses the
    batch's mean and biased variance and moves the running statistics (unbiased variance, momentum 0.1) of the
    ``update`` members (None: all); evaluation uses the running statistics.
    """

    def __init__(self, width: int, enabled: Sequence[bool] | torch.Tensor = (True,)) -> None:
        super().__init__()
        on = torch.as_tensor(enabled, dtype=torch.bool).reshape(-1).clone()
        k = len(on)
        self.weight = nn.Parameter(torch.ones(k, 1, width))
        self.bias = nn.Parameter(torch.zeros(k, 1, width))
        self.register_buffer("running_mean", torch.zeros(k, 1, width))
        self.register_buffer("running_var", torch.ones(k, 1, width))
        self.register_buffer("enabled", on)
        self.refresh()

    def refresh(self) -> None:
        """Host-side facts about ``enabled``, read when it changes, never per step."""
        self.all_on, self.any_on = bool(self.enabled.all()), bool(self.enabled.any())

    def forward(self, h: torch.Tensor, update: torch.Tensor | None = None) -> torch.Tensor:
        if not self.any_on:
            return h
        x = h.float()
        if self.training:
            mean = x.mean(1, keepdim=True)
            var = x.var(1, unbiased=False, keepdim=True)
            with torch.no_grad():
                n = x.shape[1]
                stats = ((self.running_mean, mean.detach()), (self.running_var, var.detach() * (n / max(n - 1, 1))))
                for running, batch in stats:
                    if update is None:
                        running.lerp_(batch, BN_MOMENTUM)
                    else:  # the others keep theirs bit for bit
                        moved = running.lerp(batch, BN_MOMENTUM)
                        running.copy_(torch.where(per_member(update, running), moved, running))
        else:
            mean, var = self.running_mean, self.running_var
        out = ((x - mean) * torch.rsqrt(var + BN_EPS) * self.weight + self.bias).to(h.dtype)
        return out if self.all_on else torch.where(per_member(self.enabled, out), out, h)


def weight_matrices(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters L2, L1 and max-norm act on, by name: weights of at least 2 dimensions, never a bias or a
    batch-norm parameter."""
    return {
        f"{prefix}.{name}" if prefix else name: p
        for prefix, module in model.named_modules()
        if not isinstance(module, BatchNorm)
        for name, p in module.named_parameters(recurse=False)
        if p.ndim >= 2 and name != "bias"
    }


@torch.no_grad()
def max_norm_(model: nn.Module, c: float | torch.Tensor, active: torch.Tensor | None = None) -> None:
    """Scale each unit's incoming weight vector (a conv filter's, too) to L2 norm <= ``c``, as ``torch.renorm`` does.

    ``c`` is one bound, or one per member (``[K]``, ``inf`` for none); ``active`` (``[K]`` bool): those members only.
    """
    for m in model.modules():
        if isinstance(m, Linear):
            w, dims = m.weight, (1,)  # [K, in, out]: a unit's inputs along dim 1
        elif isinstance(m, nn.Linear | nn.Conv1d):  # a user network's: [out, in] or [out, in, kernel]
            w = m.weight
            dims = tuple(range(1, w.dim()))
        else:
            continue
        norm = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
        bound = per_member(c, norm) if isinstance(c, torch.Tensor) else c
        scale = torch.where(norm > bound, bound / (norm + 1e-7), torch.ones_like(norm))
        if active is not None:
            scale = torch.where(per_member(active, scale), scale, torch.ones_like(scale))
        w.mul_(scale)
