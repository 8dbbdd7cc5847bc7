"""Networks: the built-in MLP with per-layer inverted dropout, and user-supplied builders."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from sweeper.errors import SpecError
from sweeper.training.loader import load_callable

if TYPE_CHECKING:
    from sweeper.study.spec import NetworkSpec

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """Input dropout, then per hidden layer: Linear -> [BatchNorm] -> activation -> Dropout.

    ``dropout[0]`` is the input layer's rate, ``dropout[i]`` the i-th hidden layer's. ``nn.Dropout``
    is inverted dropout: kept units are scaled by 1/(1-p) in training, and it is the identity in
    ``eval()``, so no rescaling is needed at test time.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: tuple[int, ...],
        dropout: tuple[float, ...],
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if len(dropout) != len(hidden) + 1:
            raise ValueError(f"need {len(hidden) + 1} dropout rates (input + hidden), got {len(dropout)}")
        layers: list[nn.Module] = [nn.Dropout(dropout[0])]
        width = in_features
        for h, p in zip(hidden, dropout[1:], strict=True):
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers += [_ACTIVATIONS[activation](), nn.Dropout(p)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN1d(nn.Module):
    """A 1-D convolutional network: input dropout, conv blocks, then the MLP head with its per-layer dropout.

    Each block is Conv1d (same padding) -> [BatchNorm1d] -> activation -> Dropout1d -> MaxPool1d(2): dropout
    per block drops whole channels (neighbouring positions of one feature map are correlated, so dropping single
    values would barely regularize; Tompson et al. 2015). Inputs are rows of ``in_features`` values, one channel.
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
    ) -> None:
        super().__init__()
        if len(dropout) != 1 + len(channels) + len(hidden):
            raise ValueError(
                f"need {1 + len(channels) + len(hidden)} dropout rates (input + conv + hidden), got {len(dropout)}"
            )
        blocks: list[nn.Module] = [nn.Dropout(dropout[0])]
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
        self.head = MLP(width * length, num_classes, hidden, head_rates, batch_norm, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.unsqueeze(1))  # [B, L] -> [B, 1, L]
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


def build_network(
    spec: NetworkSpec, in_features: int, num_classes: int, dropout: tuple[float, ...], batch_norm: bool, base_dir: str
) -> nn.Module:
    """The study's network for one trial's dropout rates."""
    if spec.type == "mlp":
        return MLP(in_features, num_classes, spec.hidden, dropout, batch_norm, spec.activation)
    if spec.type == "cnn1d":
        return CNN1d(
            in_features, num_classes, spec.channels, spec.kernel_size, spec.hidden, dropout, batch_norm, spec.activation
        )
    assert spec.factory is not None
    fn = load_callable(spec.factory, base_dir, "network.factory")
    model = fn(in_features=in_features, num_classes=num_classes, dropout=list(dropout), batch_norm=batch_norm)
    if not isinstance(model, nn.Module):
        raise SpecError(
            f"network.factory {spec.factory!r} must return a torch.nn.Module, but got {type(model).__name__}"
        )
    return model


@torch.no_grad()
def apply_max_norm(model: nn.Module, c: float) -> None:
    """Constrain each unit's incoming weight vector (a conv filter's, too) to L2 norm <= c (Srivastava et al. 2014,
    sec. 5.1)."""
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv1d):
            m.weight.copy_(torch.renorm(m.weight, p=2, dim=0, maxnorm=c))


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Optimizer groups: L2 on weight matrices only, never on biases or batch-norm parameters."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
