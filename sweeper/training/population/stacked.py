"""K copies of the built-in MLP stacked along a member axis: one batched matmul trains them all.

Every per-member tensor lives in one dict with the member axis first, so dropping a pruned member
(``select``) or adding new ones (``extend``) is one ``index_select`` / ``cat`` per tensor and the freed
compute is really gone. Weights are ``[K, in, out]`` (``x @ W``), biases ``[K, 1, out]``; the
per-member hyperparameters ride along as ``[K]`` tensors and broadcast as ``[K, 1, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from sweeper.study.space import Hparams
from sweeper.training.models import MLP
from sweeper.training.train import seed_everything

_ACT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh}
BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # nn.BatchNorm1d's defaults


def dropout(h: torch.Tensor, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Inverted dropout with one rate per member (``p`` is ``[K]``): kept units are scaled by 1/(1-p).

    A member with p=0 keeps every unit unscaled (``rand < 1`` always holds), bit for bit.
    """
    keep = (1.0 - p).view(-1, 1, 1)
    mask = torch.rand(h.shape, generator=gen, device=h.device) < keep
    return h * (mask.to(h.dtype) / keep.to(h.dtype))


class StackedMLP:
    """The weights, batch-norm state, optimizer buffers and hyperparameters of K MLP members."""

    def __init__(self, hidden: Sequence[int], activation: str, t: dict[str, torch.Tensor]) -> None:
        self.hidden, self.activation, self.t = tuple(hidden), activation, t
        self.n_linear = len(self.hidden) + 1
        for name in self.param_names:
            t[name].requires_grad_(True)
        self._flags()

    @classmethod
    def build(
        cls,
        hps: Sequence[Hparams],
        seeds: Sequence[int],
        in_features: int,
        num_classes: int,
        hidden: Sequence[int],
        activation: str,
        base_lr: float,
        device: torch.device,
    ) -> StackedMLP:
        """Initialize each member exactly as ``objective.fit`` would (same seed -> same weights)."""
        per: list[dict[str, torch.Tensor]] = []
        for hp, seed in zip(hps, seeds, strict=True):
            seed_everything(seed)
            net = MLP(in_features, num_classes, tuple(hidden), hp.dropout, False, activation)
            linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
            d: dict[str, torch.Tensor] = {}
            for i, lin in enumerate(linears):
                d[f"w{i}"] = lin.weight.detach().t().contiguous()
                d[f"b{i}"] = lin.bias.detach().view(1, -1).clone()
                d[f"mom_w{i}"] = torch.zeros_like(d[f"w{i}"])
                d[f"mom_b{i}"] = torch.zeros_like(d[f"b{i}"])
            for i, h in enumerate(hidden):
                d[f"gamma{i}"], d[f"beta{i}"] = torch.ones(1, h), torch.zeros(1, h)
                d[f"mom_gamma{i}"], d[f"mom_beta{i}"] = torch.zeros(1, h), torch.zeros(1, h)
                d[f"rmean{i}"], d[f"rvar{i}"] = torch.zeros(1, h), torch.ones(1, h)
            d["p"] = torch.tensor(hp.dropout, dtype=torch.float32)
            d["lr"] = torch.tensor(base_lr * hp.lr_scale, dtype=torch.float64)
            d["momentum"] = torch.tensor(hp.momentum)
            d["weight_decay"] = torch.tensor(hp.weight_decay)
            d["lr_decay"] = torch.tensor(hp.lr_decay, dtype=torch.float64)
            d["max_norm"] = torch.tensor(hp.max_norm if hp.max_norm else math.inf)
            d["l1"] = torch.tensor(hp.l1 or 0.0)
            d["r_drop"] = torch.tensor(hp.r_drop_alpha or 0.0)
            d["smooth"] = torch.tensor(hp.label_smoothing or 0.0)
            d["clip"] = torch.tensor(hp.grad_clip if hp.grad_clip else math.inf)
            d["bn"] = torch.tensor(hp.batch_norm)
            per.append(d)
        t = {k: torch.stack([d[k] for d in per]).to(device) for k in per[0]}
        return cls(hidden, activation, t)

    # --- the member axis ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return int(self.t["lr"].shape[0])

    @property
    def param_names(self) -> list[str]:
        names = [f"{k}{i}" for i in range(self.n_linear) for k in ("w", "b")]
        return names + [f"{k}{i}" for i in range(len(self.hidden)) for k in ("gamma", "beta")]

    def _flags(self) -> None:
        """Host-side facts about the members, computed when the stack changes, never per step."""
        t = self.t
        self.any_dropout = [bool(v) for v in (t["p"] > 0).any(0).tolist()] if self.size else []
        self.any_bn = bool(t["bn"].any()) if self.size else False
        self.any_max_norm = bool(torch.isfinite(t["max_norm"]).any()) if self.size else False
        self.any_l1 = bool((t["l1"] > 0).any()) if self.size else False
        self.any_r_drop = bool((t["r_drop"] > 0).any()) if self.size else False
        self.any_clip = bool(torch.isfinite(t["clip"]).any()) if self.size else False
        self.any_smooth = bool((t["smooth"] > 0).any()) if self.size else False

    def select(self, idx: Sequence[int]) -> None:
        """Keep only the members at ``idx`` (in that order)."""
        index = torch.tensor(list(idx), dtype=torch.long, device=self.t["lr"].device)
        self.t = {k: v.detach().index_select(0, index) for k, v in self.t.items()}
        for name in self.param_names:
            self.t[name].requires_grad_(True)
        self._flags()

    def extend(self, other: StackedMLP) -> None:
        """Append ``other``'s members after ours."""
        if self.size == 0:
            self.t = other.t
        else:
            self.t = {k: torch.cat([v.detach(), other.t[k].detach()]) for k, v in self.t.items()}
            for name in self.param_names:
                self.t[name].requires_grad_(True)
        self._flags()

    # --- compute -----------------------------------------------------------------------------------

    def _batch_norm(self, i: int, h: torch.Tensor, train: bool, update: torch.Tensor | None = None) -> torch.Tensor:
        """Batch norm per member; a training pass moves the running statistics of the ``update`` members (None: all)."""
        t = self.t
        x = h.float()
        if train:
            mean = x.mean(1, keepdim=True)
            var = x.var(1, unbiased=False, keepdim=True)
            with torch.no_grad():
                n = x.shape[1]
                stats = ((f"rmean{i}", mean.detach()), (f"rvar{i}", var.detach() * (n / max(n - 1, 1))))
                for name, batch in stats:
                    if update is None:
                        t[name].lerp_(batch, BN_MOMENTUM)
                    else:  # the others keep theirs bit for bit
                        t[name].copy_(torch.where(update.view(-1, 1, 1), t[name].lerp(batch, BN_MOMENTUM), t[name]))
        else:
            mean, var = t[f"rmean{i}"], t[f"rvar{i}"]
        return (x - mean) * torch.rsqrt(var + BN_EPS) * t[f"gamma{i}"] + t[f"beta{i}"]

    def forward(
        self,
        x: torch.Tensor,
        train: bool,
        gens: Sequence[torch.Generator] = (),
        bn_update: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` is ``[K, B, in]`` (each member's own batch) or ``[B, in]`` (one batch for all).

        ``gens`` holds one mask generator per dropout layer (input first), so whether one layer draws
        masks (some member has p > 0 there) never shifts the masks of the other layers. ``bn_update``
        (``[K]`` bool, default all): the members whose batch-norm running statistics this training pass
        updates; the others' stay as they are (e.g. R-Drop's second pass, for members without R-Drop).
        """
        t, k = self.t, self.size
        h = x if x.dim() == 3 else x.unsqueeze(0).expand(k, -1, -1)
        if train and self.any_dropout[0]:
            h = dropout(h, t["p"][:, 0], gens[0])
        bn = t["bn"].view(-1, 1, 1)
        act = _ACT[self.activation]
        for i in range(len(self.hidden)):
            h = torch.baddbmm(t[f"b{i}"], h, t[f"w{i}"])
            if self.any_bn:
                h = torch.where(bn, self._batch_norm(i, h, train, bn_update).to(h.dtype), h)
            h = act(h)
            if train and self.any_dropout[i + 1]:
                h = dropout(h, t["p"][:, i + 1], gens[i + 1])
        last = len(self.hidden)
        return torch.baddbmm(t[f"b{last}"], h, t[f"w{last}"])

    def member(self, i: int, in_features: int, num_classes: int) -> MLP:
        """Member ``i`` as the one-trial network (``models.MLP``) with its trained weights and batch-norm state."""
        t = self.t
        net = MLP(in_features, num_classes, self.hidden, tuple(t["p"][i].tolist()), bool(t["bn"][i]), self.activation)
        linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
        norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d)]
        with torch.no_grad():
            for j, lin in enumerate(linears):
                lin.weight.copy_(t[f"w{j}"][i].t())
                lin.bias.copy_(t[f"b{j}"][i].view(-1))
            for j, norm in enumerate(norms):
                for mine, theirs in ((norm.weight, "gamma"), (norm.bias, "beta")):
                    mine.copy_(t[f"{theirs}{j}"][i].view(-1))
                norm.running_mean.copy_(t[f"rmean{j}"][i].view(-1))
                norm.running_var.copy_(t[f"rvar{j}"][i].view(-1))
        return net.eval()

    def weights(self) -> list[torch.Tensor]:
        return [self.t[f"w{i}"] for i in range(self.n_linear)]
