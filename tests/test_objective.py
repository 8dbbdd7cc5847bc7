"""The objective with optuna.trial.FixedTrial and tiny seeded data."""

import math

import optuna
import pytest

from conftest import tiny_spec_dict
from sweeper.study.space import Hparams
from sweeper.study.spec import parse_spec
from sweeper.training.objective import Objective, fit, prepare_data

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


def test_objective_trains_and_returns_validation_accuracy(tiny_spec) -> None:
    data = prepare_data(tiny_spec)
    seen: list[tuple[int, dict]] = []
    value = Objective(tiny_spec, data, hooks=[lambda t, e, m: seen.append((e, m))])(optuna.trial.FixedTrial(PARAMS))
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
    study.optimize(Objective(spec, prepare_data(spec)), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.PRUNED
    assert "loss became" in t.user_attrs["end_reason"]


@pytest.mark.parametrize("options", [{"r_drop_alpha": 1.0}, {"l1": 1e-5}, {"batch_norm": True, "max_norm": 3.0}])
def test_regularizers_train(tiny_spec, options: dict) -> None:
    data = prepare_data(tiny_spec)
    hp = Hparams(dropout=(0.1, 0.3), momentum=0.9, lr_scale=10, **options)
    _, metrics = fit(tiny_spec, data, hp, seed=0)
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
