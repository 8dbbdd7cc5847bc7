"""Gaussian dropout (Srivastava et al. 2014, sec. 10): multiplicative N(1, rate / (1 - rate)) noise, per member."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
from optuna.trial import TrialState

from conftest import tiny_spec_dict
from sweeper import api
from sweeper.errors import SpecError
from sweeper.study.hparams import Hparams
from sweeper.study.spec import parse_spec
from sweeper.training.layers import dropout
from sweeper.training.models import MLP
from sweeper.training.objective import fit, prepare_data
from sweeper.training.population.trainer import PopulationTrainer, unstackable


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.5, 0.8])
def test_noise_has_mean_one_and_variance_rate_over_keep(rate: float) -> None:
    h = torch.ones(1, 1000, 1000)
    noise = dropout(h, torch.tensor([rate]), torch.Generator().manual_seed(0), True)
    assert noise.mean().item() == pytest.approx(1.0, abs=0.005 * (1 + rate / (1 - rate)))
    assert noise.var().item() == pytest.approx(rate / (1 - rate), rel=0.01)
    assert len(noise.unique()) > 100_000  # continuous noise, not a mask's two values
    bernoulli = dropout(h, torch.tensor([rate]), torch.Generator().manual_seed(0))
    assert bernoulli.var().item() == pytest.approx(noise.var().item(), rel=0.02)  # the same variance as Bernoulli's


def test_rate_zero_is_the_identity_and_each_member_keeps_its_own_kind() -> None:
    h = torch.randn(3, 64, 32)
    rates, kinds = torch.tensor([0.0, 0.3, 0.3]), torch.tensor([True, True, False])
    out = dropout(h, rates, torch.Generator().manual_seed(1), kinds)
    assert torch.equal(out[0], h[0])  # rate 0: the identity, bit for bit
    assert (out[2] == 0).any() and not (out[1] == 0).any()  # Bernoulli drops units; Gaussian scales every one
    alone = dropout(h, rates, torch.Generator().manual_seed(1))  # the same draws, every member Bernoulli
    assert torch.equal(out[2], alone[2])  # a neighbour's kind never moves a member's draws


def test_identity_in_evaluation_and_the_stack_computes_what_one_network_does() -> None:
    torch.manual_seed(0)
    net = MLP(20, 5, (16, 16), (0.2, 0.5, 0.5), gaussian=True)
    x = torch.randn(8, 20)
    net.eval()
    plain = MLP(20, 5, (16, 16), (0.0, 0.0, 0.0))
    plain.load_state_dict(net.state_dict())
    plain.eval()
    assert torch.equal(net(x), plain(x))  # evaluation: no noise (inverted: no rescaling either)
    net.train()
    gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    alone = net(x, gens)
    other = MLP(20, 5, (16, 16), (0.1, 0.3, 0.3))  # Bernoulli, other rates
    stack = MLP.stack([net, other]).train()
    gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    both = stack(torch.stack([x, x]), gens)
    assert torch.equal(both[0], alone)  # member 0's noise is drawn first: the same numbers as alone
    assert not torch.equal(net(x, gens), alone)  # the noise really changes the output


def test_a_gaussian_member_trains_beside_bernoulli_ones_as_it_would_beside_its_kind() -> None:
    spec = parse_spec(tiny_spec_dict(train={"epochs": 3}))
    data = prepare_data(spec, "cpu")
    gauss = Hparams(dropout=(0.1, 0.4), momentum=0.9, lr_scale=3.0, dropout_kind="gaussian")
    bern = dataclasses.replace(gauss, dropout_kind="bernoulli")

    def population(hps: list[Hparams]) -> list[list[dict[str, float]]]:
        trainer = PopulationTrainer(data, spec.train, spec.network, mask_seed=3)
        trainer.add(list(range(len(hps))), hps, [7] * len(hps))
        return [[r.metrics for r in trainer.train_epoch()] for _ in range(3)]

    beside_gauss, beside_bern = population([gauss, gauss]), population([gauss, bern])
    assert [e[0] for e in beside_gauss] == [e[0] for e in beside_bern]  # bit for bit: a neighbour's kind is its own
    assert beside_bern[-1][0] != beside_bern[-1][1]  # the kind changed training
    assert beside_gauss[-1][0]["train_loss"] < beside_gauss[0][0]["train_loss"]  # it learns
    # the one-trial trainer: same network math (above), its own draws; it learns as well
    seq: list[dict[str, float]] = []
    fit(spec, data, gauss, 7, lambda e, m: seq.append(m))
    assert seq[-1]["train_loss"] < seq[0]["train_loss"] and seq[-1]["val_accuracy"] > 0.5


def test_a_study_searches_the_kind_per_trial_in_a_population(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/kind.db"
    spec = parse_spec(tiny_spec_dict("kind", trials=6, space={"dropout_kind": ["bernoulli", "gaussian"]}))
    assert unstackable(spec) is None
    api.launch(spec, storage=url, tracking="", population=3, score_test=False)
    trials = optuna.load_study(study_name="kind", storage=url).get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 6
    assert {t.params["dropout.kind"] for t in trials} == {"bernoulli", "gaussian"}


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"space": {"dropout_kind": "uniform"}}, ["dropout_kind", "bernoulli", "gaussian", "uniform"]),
        ({"space": {"dropout_kind": "gaussian"}, "network": {"type": "python", "factory": "net.py:build"}},
         ["dropout_kind", "python", "bernoulli"]),
    ],
)  # fmt: skip
def test_bad_dropout_kind_is_named(over: dict, words: list[str]) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(tiny_spec_dict(**over))
    for w in words:
        assert w in str(e.value)
