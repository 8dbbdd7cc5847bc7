"""Networks: the built-in MLP with per-layer inverted dropout, and user-supplied builders."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING

import torch
from torch import nn

from sweeper.errors import SpecError
from sweeper.training.layers import BatchNorm, Dropout, Linear, weight_matrices
from sweeper.training.loader import load_callable

if TYPE_CHECKING:
    from sweeper.study.hparams import Hparams
    from sweeper.study.spec import NetworkSpec

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """Input dropout, then per hidden layer: Linear -> [BatchNorm] -> activation -> Dropout; K members side by side.

    Built, it is one network (K = 1): ``dropout[0]`` is the input layer's rate, ``dropout[i]`` the i-th hidden
    layer's (Gaussian dropout with ``gaussian``), and a ``[B, in]`` batch gives ``[B, classes]`` logits.
    ``MLP.stack`` puts K such networks (each with its own rates and kind, batch norm on or off) side by side for
    the population trainer: a ``[K, B, in]`` batch (each member's own) gives ``[K, B, classes]``. The layers are
    ``training.layers``'s: dropout is inverted (kept units scaled by 1/(1-p) in training, the identity in
    ``eval()``), so no rescaling is needed at test time.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: tuple[int, ...],
        dropout: tuple[float, ...],
        batch_norm: bool = False,
        activation: str = "relu",
        gaussian: bool = False,
    ) -> None:
        super().__init__()
        if len(dropout) != len(hidden) + 1:
            raise ValueError(f"need {len(hidden) + 1} dropout rates (input + hidden), got {len(dropout)}")
        self.hidden, self.activation = tuple(hidden), activation
        self.act = _ACTIVATIONS[activation]()
        self.linears = nn.ModuleList(Linear(a, b) for a, b in pairwise((in_features, *hidden, num_classes)))
        self.drops = nn.ModuleList(Dropout([p], [gaussian]) for p in dropout)
        self.norms: nn.ModuleList | None = nn.ModuleList(BatchNorm(h) for h in hidden) if batch_norm else None

    @property
    def members(self) -> int:
        return int(self.linears[0].weight.shape[0])

    @property
    def batch_norm(self) -> torch.Tensor:
        """Which members use batch norm, ``[K]`` bool."""
        if self.norms is None:
            return torch.zeros(self.members, dtype=torch.bool, device=self.linears[0].weight.device)
        return self.norms[0].enabled

    def forward(
        self, x: torch.Tensor, gens: Sequence[torch.Generator] = (), bn_update: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits of ``x``: ``[B, in]`` for one network, ``[K, B, in]`` for K members, each on its own batch.

        ``gens``: one mask generator per dropout layer, input first (default: torch's); ``bn_update`` (``[K]``
        bool, default all): the members whose batch-norm running statistics a training pass moves.
        """
        one = x.dim() == 2
        h = x.unsqueeze(0) if one else x
        h = self.drops[0](h, gens[0] if gens else None)
        for i in range(len(self.hidden)):
            h = self.linears[i](h)
            if self.norms is not None:
                h = self.norms[i](h, bn_update)
            h = self.drops[i + 1](self.act(h), gens[i + 1] if gens else None)
        out = self.linears[-1](h)
        return out[0] if one else out

    # --- the member axis ---------------------------------------------------------------------------

    @classmethod
    def stack(cls, nets: Sequence[MLP]) -> MLP:
        """``nets`` side by side, in order (same widths and activation); with batch-norm layers where any has them,
        switched off for the members that had none."""
        if any(n.norms is not None for n in nets):
            nets = [n if n.norms is not None else n._with_idle_batch_norm() for n in nets]
        states = [n.state_dict() for n in nets]
        out = copy.deepcopy(nets[0])
        out._replace_(lambda name: torch.cat([s[name] for s in states]))
        return out

    def select_(self, idx: Sequence[int]) -> MLP:
        """Keep only the members at ``idx``, in that order (the dropped members' memory and compute are freed)."""
        index = torch.tensor(list(idx), dtype=torch.long, device=self.linears[0].weight.device)
        state = self.state_dict()
        self._replace_(lambda name: state[name].index_select(0, index))
        return self

    def member(self, i: int) -> MLP:
        """Member ``i`` alone, as the one-trial network ``MLP(...)`` builds (batch-norm layers only if it uses them)."""
        net = copy.deepcopy(self).select_([i])
        if net.norms is not None and not net.norms[0].all_on:
            net.norms = None
        return net.eval()

    def _with_idle_batch_norm(self) -> MLP:
        """A copy with batch-norm layers that pass every member through (for stacking beside ones that use them)."""
        net = copy.deepcopy(self)
        device = net.linears[0].weight.device
        net.norms = nn.ModuleList(BatchNorm(h, [False] * self.members) for h in self.hidden).to(device)
        return net

    def _replace_(self, new: Callable[[str], torch.Tensor]) -> None:
        """Every parameter and buffer replaced by ``new(its state_dict name)`` (any member count)."""
        for prefix, module in self.named_modules():
            own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            for name, old in own:
                t = new(f"{prefix}.{name}" if prefix else name).detach().clone()
                setattr(module, name, nn.Parameter(t) if isinstance(old, nn.Parameter) else t)
            if isinstance(module, Dropout | BatchNorm):
                module.refresh()


class CNN1d(nn.Module):
    """A 1-D convolutional network: input dropout, conv blocks, then the MLP head with its per-layer dropout.

    Each block is Conv1d (same padding) -> [BatchNorm1d] -> activation -> Dropout1d -> MaxPool1d(2): dropout
    per block drops whole channels (neighbouring positions of one feature map are correlated, so dropping single
    values would barely regularize; Tompson et al. 2015); ``gaussian`` makes the input's and the head's dropout
    Gaussian, the blocks' channel dropout stays Bernoulli. Inputs are rows of ``in_features`` values, one channel.
    ``dropout`` is the input's rate, then one per conv block, then one per hidden layer of the head.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        channels: tuple[int, ...],
        kernel_size: int,
        hidden: tuple[int, ...],
        dropout: tuple[float, ...],
        batch_norm: bool = False,
        activation: str = "relu",
        gaussian: bool = False,
    ) -> None:
        super().__init__()
        if len(dropout) != 1 + len(channels) + len(hidden):
            raise ValueError(
                f"need {1 + len(channels) + len(hidden)} dropout rates (input + conv + hidden), got {len(dropout)}"
            )
        blocks: list[nn.Module] = [Dropout([dropout[0]], [gaussian])]
        width, length = 1, in_features
        for c, p in zip(channels, dropout[1 : 1 + len(channels)], strict=True):
            blocks.append(nn.Conv1d(width, c, kernel_size, padding=kernel_size // 2))
            if batch_norm:
                blocks.append(nn.BatchNorm1d(c))
            blocks += [_ACTIVATIONS[activation](), nn.Dropout1d(p)]
            if length >= 2:
                blocks.append(nn.MaxPool1d(2))
                length //= 2
            width = c
        self.features = nn.Sequential(*blocks)
        head_rates = (0.0, *dropout[1 + len(channels) :])  # the head's input is the last block's (already dropped)
        self.head = MLP(width * length, num_classes, hidden, head_rates, batch_norm, activation, gaussian)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.unsqueeze(1))  # [B, L] -> [B, 1, L] (one member of the input dropout: [1, 1, 1] rates)
        return self.head(h.flatten(1))


class Standardized(nn.Module):
    """``net`` on raw inputs: standardizes with the training split's ``mean`` and ``std`` first.

    The network is trained on ``(raw - mean) / std`` (``data.standardize``); wrapped, it maps raw
    features to logits, so the model sweeper exports predicts from the data as its source gives it.
    The statistics are buffers: they are in the exported graph and in ``state_dict()``.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, net: nn.Module) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def for_raw_inputs(net: nn.Module, mean: torch.Tensor | None, std: torch.Tensor | None) -> nn.Module:
    """``net`` wrapped to take raw inputs when its data was standardized (``mean``, ``std``), else ``net``."""
    if mean is None or std is None:
        return net
    return Standardized(mean, std, net)


def build_network(spec: NetworkSpec, in_features: int, num_classes: int, hp: Hparams, base_dir: str) -> nn.Module:
    """The study's network for one trial's dropout rates, dropout kind and batch norm."""
    gaussian = hp.dropout_kind == "gaussian"
    if spec.type == "mlp":
        return MLP(in_features, num_classes, spec.hidden, hp.dropout, hp.batch_norm, spec.activation, gaussian)
    if spec.type == "cnn1d":
        return CNN1d(
            in_features, num_classes, spec.channels, spec.kernel_size, spec.hidden, hp.dropout, hp.batch_norm,
            spec.activation, gaussian,
        )  # fmt: skip
    assert spec.factory is not None
    fn = load_callable(spec.factory, base_dir, "network.factory")
    model = fn(in_features=in_features, num_classes=num_classes, dropout=list(hp.dropout), batch_norm=hp.batch_norm)
    if not isinstance(model, nn.Module):
        raise SpecError(
            f"network.factory {spec.factory!r} must return a torch.nn.Module, but got {type(model).__name__}"
        )
    return model


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Optimizer groups: L2 on weight matrices only (``layers.weight_matrices``), never on biases or batch norm."""
    decay = list(weight_matrices(model).values())
    chosen = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in chosen]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
