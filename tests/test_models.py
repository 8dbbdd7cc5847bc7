"""Inverted dropout per layer, max-norm and weight-decay groups."""

import pytest
import torch
from torch import nn

from sweeper.training.models import MLP, apply_max_norm, decay_groups


def _dropouts(model: MLP) -> list[nn.Dropout]:
    return [m for m in model.modules() if isinstance(m, nn.Dropout)]


def test_each_layer_gets_its_own_rate() -> None:
    model = MLP(10, 3, hidden=(8, 6), dropout=(0.1, 0.3, 0.5))
    assert [d.p for d in _dropouts(model)] == [0.1, 0.3, 0.5]


def test_rate_count_must_match_layers() -> None:
    with pytest.raises(ValueError, match="need 3 dropout rates"):
        MLP(10, 3, hidden=(8, 6), dropout=(0.1, 0.3))


def test_inverted_dropout_scales_in_training_and_is_identity_in_eval() -> None:
    torch.manual_seed(0)
    p = 0.4
    drop = MLP(1000, 2, hidden=(4,), dropout=(p, 0.0)).net[0]
    x = torch.ones(200, 1000)
    drop.train()
    y = drop(x)
    kept = y != 0
    # kept units are scaled by 1/(1-p) so the expected activation is unchanged
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert abs(1 - kept.float().mean().item() - p) < 0.01
    assert abs(y.mean().item() - 1.0) < 0.02
    drop.eval()
    assert torch.equal(drop(x), x)


def test_eval_mode_is_deterministic_training_mode_is_not() -> None:
    torch.manual_seed(0)
    model = MLP(20, 3, hidden=(64,), dropout=(0.2, 0.5))
    x = torch.randn(16, 20)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_max_norm_caps_each_units_incoming_weights() -> None:
    model = MLP(5, 2, hidden=(4,), dropout=(0.0, 0.0))
    lin = model.net[1]
    with torch.no_grad():
        lin.weight.mul_(100)
        lin.weight[0].fill_(0.01)
    small = lin.weight[0].clone()
    apply_max_norm(model, 3.0)
    norms = lin.weight.norm(dim=1)
    assert torch.all(norms <= 3.0 + 1e-5)
    assert torch.allclose(norms[1:], torch.full_like(norms[1:], 3.0), atol=1e-4)
    assert torch.equal(lin.weight[0], small)  # rows under the cap are untouched


def test_weight_decay_applies_to_weights_not_biases_or_batch_norm() -> None:
    model = MLP(5, 2, hidden=(4,), dropout=(0.0, 0.0), batch_norm=True)
    decayed, rest = decay_groups(model, 1e-3)
    assert decayed["weight_decay"] == 1e-3 and rest["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decayed["params"])  # type: ignore[attr-defined]
    n_bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm1d) for p in m.parameters())
    assert n_bn > 0 and sum(p.numel() for p in rest["params"]) >= n_bn  # type: ignore[attr-defined]
