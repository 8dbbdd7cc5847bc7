"""Inverted dropout per layer, max-norm and weight-decay groups."""

import pytest
import torch

from sweeper.training.layers import BatchNorm, Dropout, max_norm_
from sweeper.training.models import MLP, decay_groups


def _dropouts(model: MLP) -> list[Dropout]:
    return [m for m in model.modules() if isinstance(m, Dropout)]


def test_each_layer_gets_its_own_rate() -> None:
    model = MLP(10, 3, hidden=(8, 6), dropout=(0.1, 0.3, 0.5))
    assert [d.rate.item() for d in _dropouts(model)] == pytest.approx([0.1, 0.3, 0.5])


def test_rate_count_must_match_layers() -> None:
    with pytest.raises(ValueError, match="need 3 dropout rates"):
        MLP(10, 3, hidden=(8, 6), dropout=(0.1, 0.3))


def test_inverted_dropout_scales_in_training_and_is_identity_in_eval() -> None:
    torch.manual_seed(0)
    p = 0.4
    drop = MLP(1000, 2, hidden=(4,), dropout=(p, 0.0)).drops[0]
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
    w = model.linears[0].weight[0].t()  # [out, in]: one row per unit, its incoming weights
    with torch.no_grad():
        w.mul_(100)
        w[0].fill_(0.01)
    small = w[0].clone()
    max_norm_(model, 3.0)
    norms = w.norm(dim=1)
    assert torch.all(norms <= 3.0 + 1e-5)
    assert torch.allclose(norms[1:], torch.full_like(norms[1:], 3.0), atol=1e-4)
    assert torch.equal(w[0], small)  # rows under the cap are untouched


def test_weight_decay_applies_to_weights_not_biases_or_batch_norm() -> None:
    model = MLP(5, 2, hidden=(4,), dropout=(0.0, 0.0), batch_norm=True)
    decayed, rest = decay_groups(model, 1e-3)
    assert decayed["weight_decay"] == 1e-3 and rest["weight_decay"] == 0.0
    weights = [lin.weight for lin in model.linears]
    assert [id(p) for p in decayed["params"]] == [id(w) for w in weights]  # type: ignore[attr-defined]
    n_bn = sum(p.numel() for m in model.modules() if isinstance(m, BatchNorm) for p in m.parameters())
    assert n_bn > 0 and sum(p.numel() for p in rest["params"]) >= n_bn  # type: ignore[attr-defined]


def test_stacked_members_compute_what_each_network_computes_alone() -> None:
    """One network math: K networks stacked give each one's logits; a member taken out is that network again."""
    torch.manual_seed(0)
    nets = [
        MLP(6, 3, hidden=(5, 4), dropout=(0.0, 0.2, 0.5)),
        MLP(6, 3, hidden=(5, 4), dropout=(0.1, 0.0, 0.3), batch_norm=True),
        MLP(6, 3, hidden=(5, 4), dropout=(0.2, 0.5, 0.5), activation="relu"),
    ]
    x = torch.randn(3, 32, 6)
    for net, xb in zip(nets, x, strict=True):  # train-mode passes move batch-norm statistics away from 0/1
        net(xb)
    stack = MLP.stack(nets).eval()
    assert stack.members == 3 and stack.batch_norm.tolist() == [False, True, False]
    out = stack(x)
    for k, net in enumerate(nets):
        assert torch.allclose(out[k], net.eval()(x[k]), atol=1e-6)
        alone = stack.member(k)
        assert (alone.norms is None) == (net.norms is None)  # batch-norm layers only where the trial has them
        assert alone.state_dict().keys() == net.state_dict().keys()
        for name, t in net.state_dict().items():
            assert torch.equal(alone.state_dict()[name], t), name
    kept = MLP.stack(nets).select_([2, 0])
    assert torch.allclose(kept.eval()(x[[2, 0]]), out[[2, 0]], atol=1e-6)
    assert kept.members == 2 and kept.norms is not None and not kept.batch_norm.any()


def test_max_norm_caps_a_user_networks_torch_layers_too() -> None:
    """A ``network.factory`` network built from torch's nn.Linear / nn.Conv1d gets the same constraint."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(50)
    max_norm_(net, 2.0)
    conv, lin = net[0].weight, net[2].weight
    assert torch.allclose(conv.flatten(1).norm(dim=1), torch.full((4,), 2.0), atol=1e-4)  # per filter
    assert torch.allclose(lin.norm(dim=1), torch.full((3,), 2.0), atol=1e-4)  # per unit: its incoming weights
