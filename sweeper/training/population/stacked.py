"""K trials of the built-in MLP side by side: one ``models.MLP`` with K members, their SGD state and settings.

The network math is ``models.MLP``'s (``training.layers``), the one-trial network's own; what this module adds is
what differs per member during training: the hyperparameters (``hp``, ``[K]`` tensors, broadcast along the member
axis) and SGD's momentum buffers (``momentum``, shaped as the parameters). Dropping a pruned member (``select``) or
adding new ones (``extend``) is one ``index_select`` / ``cat`` per tensor, so the freed compute is really gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sweeper.study.hparams import Hparams, stack_settings
from sweeper.training.layers import weight_matrices
from sweeper.training.models import MLP
from sweeper.training.train import seed_everything

MemberState = dict[str, Any]


def _settings(hp: Hparams, base_lr: float) -> dict[str, torch.Tensor]:
    """One member's training settings, by the table's keys (``hparams.stack_settings``), and its learning rate."""
    settings = {"lr": torch.tensor(hp.lr(base_lr), dtype=torch.float64)}
    for key, (value, float64) in stack_settings(hp).items():
        settings[key] = torch.tensor(value, dtype=torch.float64 if float64 else torch.float32)
    return settings


class Stack:
    """The network (``net``, K members), each member's settings (``hp``) and SGD momentum (``momentum``)."""

    def __init__(self, net: MLP, hp: dict[str, torch.Tensor], momentum: dict[str, torch.Tensor]) -> None:
        self.net, self.hp, self.momentum = net, hp, momentum
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
        saved: Sequence[MemberState | None] = (),
    ) -> Stack:
        """Initialize each member exactly as ``objective.fit`` would (same seed -> same weights), or as it was
        saved (``saved[i]``: a ``member_state``, a resumed trial's)."""
        nets = []
        saved = list(saved) or [None] * len(hps)
        for hp, seed, state in zip(hps, seeds, saved, strict=True):
            seed_everything(seed)
            gaussian = hp.dropout_kind == "gaussian"
            nets.append(MLP(in_features, num_classes, tuple(hidden), hp.dropout, hp.batch_norm, activation, gaussian))
            if state is not None:
                nets[-1].load_state_dict(state["model"])
        net = MLP.stack(nets).to(device)
        per = [_settings(hp, base_lr) for hp in hps]
        settings = {k: torch.stack([d[k] for d in per]).to(device) for k in per[0]}
        momentum = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
        for i, state in enumerate(saved):
            if state is not None:
                settings["lr"][i] = state["lr"]  # where its learning-rate decay had got to
                for n, buf in state["momentum"].items():
                    if n in momentum:
                        momentum[n][i] = buf
        return cls(net, settings, momentum)

    def member_state(self, i: int) -> MemberState:
        """Member ``i``'s weights, momentum and learning rate: what ``build(saved=...)`` takes back."""
        return {
            "model": self.net.member(i).state_dict(),
            "momentum": {n: m[i].clone() for n, m in self.momentum.items()},
            "lr": float(self.hp["lr"][i]),
        }

    @property
    def size(self) -> int:
        return self.net.members

    def _flags(self) -> None:
        """Host-side facts about the members, computed when the stack changes, never per step."""
        hp, on = self.hp, self.size > 0
        self.any_bn = on and bool(self.net.batch_norm.any())
        self.any_max_norm = on and bool(torch.isfinite(hp["max_norm"]).any())
        self.any_l1 = on and bool((hp["l1"] > 0).any())
        self.any_r_drop = on and bool((hp["r_drop_alpha"] > 0).any())
        self.any_clip = on and bool(torch.isfinite(hp["grad_clip"]).any())
        self.any_smooth = on and bool((hp["label_smoothing"] > 0).any())
        self.params = dict(self.net.named_parameters())  # looked up per step: collected once per change
        self.weights = weight_matrices(self.net)  # what L2, L1 and max-norm act on, by name

    def select(self, idx: Sequence[int]) -> None:
        """Keep only the members at ``idx`` (in that order)."""
        index = torch.tensor(list(idx), dtype=torch.long, device=self.hp["lr"].device)
        self.net.select_(idx)
        self.hp = {k: v.index_select(0, index) for k, v in self.hp.items()}
        self.momentum = {k: v.index_select(0, index) for k, v in self.momentum.items()}
        self._flags()

    def extend(self, other: Stack) -> None:
        """Append ``other``'s members after ours (a member without batch norm gets zero momentum for its layers)."""
        net = MLP.stack([self.net, other.net])
        parts = [(self.momentum, self.size), (other.momentum, other.size)]
        self.momentum = {
            n: torch.cat([m[n] if n in m else torch.zeros_like(p[:k]) for m, k in parts]).detach()
            for n, p in net.named_parameters()
        }
        self.hp = {k: torch.cat([v, other.hp[k]]) for k, v in self.hp.items()}
        self.net = net
        self._flags()
