"""The objective with optuna.trial.FixedTrial and tiny seeded data."""

import math
from typing import Any

import optuna
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_spec_dict
from sweeper.study.space import Hparams
from sweeper.study.spec import parse_spec
from sweeper.training.layers import BatchNorm, weight_matrices
from sweeper.training.objective import Diverged, Objective, TrialHooks, fit, prepare_data

PARAMS = {
    "dropout.input": 0.1,
    "dropout.hidden_1": 0.3,
    "weight_decay": 1e-4,
    "momentum": 0.9,
    "lr_scale": 10.0,
    "max_norm.enabled": True,
    "max_norm": 4.0,
    "batch_norm": False,
    "lr_decay": 0.97,
}


class Epochs(TrialHooks):
    """Hooks that keep what each epoch showed."""

    def __init__(self, keep: Any) -> None:
        self.keep = keep

    def epoch(self, trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> None:
        self.keep(epoch, metrics)


def test_objective_trains_and_returns_validation_accuracy(tiny_spec) -> None:
    data = prepare_data(tiny_spec)
    seen: list[tuple[int, dict]] = []
    value = Objective(tiny_spec, data, Epochs(lambda e, m: seen.append((e, m))))(optuna.trial.FixedTrial(PARAMS))
    assert 0.5 < value <= 1.0  # digits is easy: far above the 10% of chance after 2 epochs
    assert [e for e, _ in seen] == [0, 1]
    assert set(seen[-1][1]) == {"train_loss", "val_loss", "val_accuracy", "lr"}
    assert seen[-1][1]["val_accuracy"] == value
    assert seen[1][1]["lr"] == pytest.approx(0.01 * 10 * 0.97)  # base_lr * lr_scale, decayed once


def test_same_trial_number_reproduces_numbers(tiny_spec) -> None:
    data = prepare_data(tiny_spec)
    obj = Objective(tiny_spec, data)
    a = obj(optuna.trial.FixedTrial(PARAMS, number=3))
    b = obj(optuna.trial.FixedTrial(PARAMS, number=3))
    c = obj(optuna.trial.FixedTrial(PARAMS, number=4))
    assert a == b
    assert a != c  # another trial number is another seed


def test_metric_epochs_returns_the_mean_of_the_last_epochs() -> None:
    spec = parse_spec(tiny_spec_dict(metric_epochs=3, train={"epochs": 5}))
    seen: list[float] = []
    value = Objective(spec, prepare_data(spec), Epochs(lambda e, m: seen.append(m["val_accuracy"])))(
        optuna.trial.FixedTrial(PARAMS)
    )
    assert len(seen) == 5 and len(set(seen[-3:])) > 1  # the last three epochs differ, so the mean is not one of them
    assert value == pytest.approx(sum(seen[-3:]) / 3) and value != seen[-1]


def test_val_loss_metric_is_minimized() -> None:
    spec = parse_spec(tiny_spec_dict(metric="val_loss"))
    assert spec.direction == "minimize"
    value = Objective(spec, prepare_data(spec))(optuna.trial.FixedTrial(PARAMS))
    assert 0 < value < math.log(10)  # better than a uniform guess over 10 classes


def test_divergence_prunes_with_reason() -> None:
    # every parameter fixed (no batch norm or max-norm to tame the step) and the sampler seeded: the run
    # is the same every time, and a learning rate of 1e4 with momentum 0.99 always diverges
    fixed = {"lr_scale": 1e6, "max_norm": False, "momentum": 0.99, "batch_norm": False, "dropout_input": 0.0}
    spec = parse_spec(tiny_spec_dict(space={**fixed, "dropout_hidden": 0.0, "weight_decay": 0.0, "lr_decay": 1.0}))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    with pytest.raises(Diverged, match="loss became"):  # a TrialPruned with why: the worker records it
        Objective(spec, prepare_data(spec))(study.ask())
    assert issubclass(Diverged, optuna.TrialPruned)


def _weights_l1(model: torch.nn.Module) -> float:
    return sum(p.abs().sum().item() for p in weight_matrices(model).values())


def _two_pass_kl(model: torch.nn.Module, x: torch.Tensor) -> float:
    """R-Drop's symmetric KL between two dropout passes (train mode) over ``x``, seeded."""
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        lp1, lp2 = F.log_softmax(model(x), -1), F.log_softmax(model(x), -1)
    kl = F.kl_div(lp1, lp2, log_target=True, reduction="batchmean") + F.kl_div(
        lp2, lp1, log_target=True, reduction="batchmean"
    )
    return 0.5 * kl.item()


def test_l1_shrinks_the_weights_l1_norm(tiny_spec) -> None:
    data = prepare_data(tiny_spec)
    trained = {}
    for l1 in (None, 1e-4, 1e-3):
        model, metrics = fit(tiny_spec, data, Hparams(dropout=(0.1, 0.3), momentum=0.9, lr_scale=10, l1=l1), seed=0)
        trained[l1] = (_weights_l1(model), metrics)
    norms = [trained[k][0] for k in (None, 1e-4, 1e-3)]
    assert norms[0] > norms[1] > norms[2] and norms[2] < 0.9 * norms[0], norms  # the stronger, the smaller
    assert trained[1e-3][1] != trained[None][1]
    assert trained[1e-3][1]["val_accuracy"] > 0.5


def test_r_drop_pulls_the_two_dropout_passes_together(tiny_spec) -> None:
    data = prepare_data(tiny_spec)
    kl, metrics = {}, {}
    for alpha in (None, 1.0, 5.0):
        hp = Hparams(dropout=(0.1, 0.3), momentum=0.9, lr_scale=10, r_drop_alpha=alpha)
        model, metrics[alpha] = fit(tiny_spec, data, hp, seed=0)
        kl[alpha] = _two_pass_kl(model, data.train.x)
    # R-Drop's term is the KL between two passes: the larger alpha, the closer they agree after training
    assert kl[None] > kl[1.0] > kl[5.0] and kl[5.0] < 0.5 * kl[None], kl
    assert metrics[1.0] != metrics[None] != metrics[5.0]
    assert metrics[1.0]["val_accuracy"] > 0.5


def test_batch_norm_and_max_norm_are_applied(tiny_spec) -> None:
    data = prepare_data(tiny_spec)
    c = 0.5  # below the rows' norms at initialization (about 0.58): the constraint has work to do
    free, _ = fit(tiny_spec, data, Hparams(dropout=(0.1, 0.3), momentum=0.9, lr_scale=10), seed=0)
    model, metrics = fit(
        tiny_spec, data, Hparams(dropout=(0.1, 0.3), momentum=0.9, lr_scale=10, batch_norm=True, max_norm=c), seed=0
    )
    norms = torch.cat([lin.weight.norm(dim=1).flatten() for lin in model.linears])  # a unit's inputs: dim 1
    assert norms.max().item() <= c + 1e-5, "every unit's incoming weights within the max-norm ball"
    free_norms = torch.cat([lin.weight.norm(dim=1).flatten() for lin in free.linears])
    assert free_norms.max().item() > c
    (bn,) = [m for m in model.modules() if isinstance(m, BatchNorm)]
    assert bn.running_mean.abs().sum().item() > 0 and (bn.running_var != 1).any()  # it trained
    assert free.norms is None
    assert metrics["val_accuracy"] > 0.5


def test_suggested_params_are_named_per_layer() -> None:
    spec = parse_spec(tiny_spec_dict(network={"hidden": [16, 16, 16]}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    hp = spec.space.suggest(trial, spec.network.n_hidden)
    assert len(hp.dropout) == 4
    assert {
        "dropout.input",
        "dropout.hidden_1",
        "dropout.hidden_2",
        "dropout.hidden_3",
        "weight_decay",
        "momentum",
        "lr_scale",
        "batch_norm",
        "lr_decay",
    } <= set(trial.params)
    assert 0 <= hp.dropout[0] <= 0.2 and all(0.2 <= r <= 0.5 for r in hp.dropout[1:])
