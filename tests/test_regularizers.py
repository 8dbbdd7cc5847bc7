"""Beyond the MLP with SGD: AdamW, label smoothing, mixup, gradient clipping, weight averaging, early stopping,
the 1-D CNN. Each option through a FixedTrial on tiny seeded data; each test fails if the option is ignored."""

from __future__ import annotations

import dataclasses
from typing import Any

import mlflow
import optuna
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient

from conftest import tiny_spec_dict
from sweeper import api
from sweeper.errors import SpecError
from sweeper.study.recipes import literature_points
from sweeper.study.space import Hparams
from sweeper.study.spec import StudySpec, parse_spec
from sweeper.training.data import load_raw_splits
from sweeper.training.loss import evaluate
from sweeper.training.objective import Objective, TrialHooks, fit, prepare_data
from sweeper.training.population.trainer import unstackable
from sweeper.training.train import Criterion, optimizer

BASE = {"dropout.input": 0.1, "dropout.hidden_1": 0.3, "weight_decay": 1e-4, "momentum": 0.9, "lr_scale": 5.0,
        "max_norm.enabled": False, "batch_norm": False, "lr_decay": 1.0}  # fmt: skip
#: each option: (what the study file's space writes, the trial's parameters for it)
OPTIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "adamw": ({"optimizer": ["sgd", "adamw"]},
              {"optimizer": "adamw", "adamw.lr_scale": 1.0, "adamw.weight_decay": 0.05}),
    "label_smoothing": ({"label_smoothing": [0.0, 0.3]}, {"label_smoothing": 0.2}),
    "mixup": ({"mixup_alpha": [0.1, 0.4]}, {"mixup.alpha": 0.3}),
    "grad_clip": ({"grad_clip": [0.1, 10.0]}, {"grad_clip": 0.1}),
    "ema": ({"ema_decay": [0.5, 0.99]}, {"ema.decay": 0.9}),
}  # fmt: skip


def _spec(space: dict[str, Any] | None = None, **train: Any) -> StudySpec:
    return parse_spec(tiny_spec_dict(space=space or {}, train={"epochs": 2, **train}))


class _Kept(TrialHooks):
    model: torch.nn.Module | None = None

    def trained(self, trial: optuna.Trial, model: torch.nn.Module) -> None:
        self.model = model


def _run(spec: StudySpec, params: dict[str, Any]) -> tuple[float, torch.nn.Module]:
    kept = _Kept()
    value = Objective(spec, prepare_data(spec), kept)(optuna.trial.FixedTrial({**BASE, **params}))
    assert kept.model is not None
    return value, kept.model


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.is_floating_point()])


#: the option's parameters at a value that must give the plain network bit for bit (mixup has none: alpha > 0)
NEUTRAL = {"adamw": {"optimizer": "sgd"}, "label_smoothing": {"label_smoothing": 0.0},
           "grad_clip": {"grad_clip": 1e9}, "ema": {"ema.decay": 0.0}}  # fmt: skip


@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_option_is_searched_and_changes_the_trained_network(option: str) -> None:
    space, params = OPTIONS[option]
    spec = _spec(space)
    assert set(params) <= set(spec.space.param_names(1)), "the option's parameters are searched"
    _, plain = _run(_spec(), {})
    value, changed = _run(spec, params)
    assert not torch.allclose(_flat(plain), _flat(changed)), f"{option} must change the trained network"
    assert 0.0 <= value <= 1.0
    if option in NEUTRAL:
        _, neutral = _run(spec, NEUTRAL[option])
        assert torch.equal(_flat(plain), _flat(neutral)), "at its neutral value the network is the plain one"


def test_adamw_decays_decoupled_and_sgd_decays_in_the_gradient() -> None:
    """AdamW: w <- w - lr * wd * w, whatever the gradient; SGD: wd * w is added to the gradient (L2)."""
    lin = torch.nn.Linear(4, 3)
    w0 = lin.weight.detach().clone()
    hp = Hparams(dropout=(0.0,), optimizer="adamw", adamw_weight_decay=0.5)
    opt = optimizer(lin, hp, lr=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    lin.weight.grad, lin.bias.grad = torch.zeros_like(lin.weight), torch.zeros_like(lin.bias)
    opt.step()  # zero gradient: only the decoupled decay moves the weights
    assert torch.allclose(lin.weight, w0 * (1 - 0.1 * 0.5))
    sgd = optimizer(lin, Hparams(dropout=(0.0,), weight_decay=0.5, momentum=0.9), lr=0.1)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["weight_decay"] == 0.5
    assert sgd.param_groups[1]["weight_decay"] == 0.0, "biases never decay"


def test_label_smoothing_and_mixup_losses_are_the_published_ones() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    smooth = Criterion(Hparams(dropout=(0.0,), label_smoothing=0.2), seed=0)
    target = torch.full((8, 3), 0.2 / 3).scatter(1, y[:, None], 1 - 0.2 + 0.2 / 3)
    expected = -(target * F.log_softmax(model(x), -1)).sum(1).mean()
    assert torch.allclose(smooth(model, x, y, torch.Generator().manual_seed(0)), expected)
    mixup = Criterion(Hparams(dropout=(0.0,), mixup_alpha=0.4), seed=3)
    gen = torch.Generator().manual_seed(1)
    got = mixup(model, x, y, gen)
    lam = float(__import__("numpy").random.default_rng(3).beta(0.4, 0.4))
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    logits = model(lam * x + (1 - lam) * x[perm])
    assert torch.allclose(got, lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm]))


def test_gradient_clipping_bounds_every_step() -> None:
    spec, data = _spec(), prepare_data(_spec())
    hp = Hparams(dropout=(0.0, 0.0), momentum=0.0, lr_scale=10.0)  # lr 0.1, no momentum: a step is lr * grad
    init, _ = fit(spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": 0 + 1})}), data,
                  Hparams(dropout=(0.0, 0.0), momentum=0.0, lr_scale=1e-12), seed=0)  # fmt: skip
    clipped, _ = fit(spec, data, dataclasses.replace(hp, grad_clip=1e-3), seed=0)
    free, _ = fit(spec, data, hp, seed=0)
    steps = spec.train.epochs * -(-len(data.train.x) // spec.train.batch_size)
    moved = (_flat(clipped) - _flat(init)).norm().item()
    assert moved <= 0.1 * 1e-3 * steps * 1.01, "each step's update is at most lr * clip"
    assert (_flat(free) - _flat(init)).norm().item() > 10 * moved


def test_weight_average_is_what_is_evaluated_and_kept() -> None:
    spec = _spec(epochs=3)
    data = prepare_data(spec)
    hp = Hparams(dropout=(0.1, 0.3), momentum=0.9, lr_scale=5.0, batch_norm=True)
    plain, m_plain = fit(spec, data, hp, seed=0)
    same, m_same = fit(spec, data, dataclasses.replace(hp, ema_decay=0.0), seed=0)  # average of one
    avg, m_avg = fit(spec, data, dataclasses.replace(hp, ema_decay=0.95), seed=0)
    assert torch.equal(_flat(plain), _flat(same)) and m_plain == m_same
    assert not torch.allclose(_flat(plain), _flat(avg))
    _, acc = evaluate(avg, data.val)
    assert acc == m_avg["val_accuracy"], "the kept network is the evaluated average (batch-norm statistics too)"


def test_early_stopping_keeps_the_best_epoch() -> None:
    spec = _spec(epochs=12, early_stopping_patience=2)
    data = prepare_data(spec)
    hp = Hparams(dropout=(0.0, 0.0), momentum=0.99, lr_scale=40.0)  # a noisy, high rate: val accuracy wobbles
    seen: list[float] = []
    model, metrics = fit(spec, data, hp, seed=0, on_epoch=lambda e, m: seen.append(m["val_accuracy"]))
    assert seen[-1] < max(seen), "precondition: the last epoch is not the best, or the test could not fail"
    assert metrics["val_accuracy"] == max(seen)
    assert evaluate(model, data.val)[1] == max(seen), "the network is restored to its best epoch"
    assert len(seen) < 12 and seen.index(max(seen)) == len(seen) - 3, "stopped after 2 epochs without a gain"


def test_cnn1d_drops_whole_channels_per_block_and_trains_from_a_study_file() -> None:
    spec = parse_spec(
        tiny_spec_dict(
            data={"dataset": "mnist1d", "num_samples": 600},
            network={"type": "cnn1d", "channels": [8, 8], "hidden": [16]},
            space={"dropout_conv": [[0.1, 0.2], [0.3, 0.4]]},
        )
    )
    assert spec.space.param_names(1, 2)[:4] == ["dropout.input", "dropout.conv_1", "dropout.conv_2", "dropout.hidden_1"]
    point = literature_points(spec.space, 1, spec.train.base_lr, 2)[0]
    assert (point["dropout.conv_1"], point["dropout.conv_2"]) == (0.2, 0.3), "the recipe, clipped per block"
    value, model = _run(spec, point)
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout1d)]
    assert [d.p for d in drops] == [0.2, 0.3]
    h = torch.ones(4, 8, 10)
    drops[0].train()
    out = drops[0](h)
    per_channel = (out == 0).all(-1) | (out != 0).all(-1)
    assert per_channel.all(), "a channel is dropped whole or kept whole"
    assert 0.0 <= value <= 1.0


def test_a_cnn_sweep_runs_end_to_end_and_its_best_model_takes_raw_rows(tmp_path: Any, tracking_uri: str) -> None:
    spec = parse_spec(
        tiny_spec_dict(
            "cnn", trials=2, data={"dataset": "mnist1d", "num_samples": 600, "standardize": True},
            network={"type": "cnn1d", "channels": [4], "hidden": [16]},
            space={"optimizer": ["sgd", "adamw"], "label_smoothing": [0.0, 0.2]},
        )
    )  # fmt: skip
    url = f"sqlite:///{tmp_path}/s.db"
    rep = api.launch(spec, storage=url, tracking=tracking_uri)
    trials = optuna.load_study(study_name="cnn", storage=url).get_trials()
    assert all("dropout.conv_1" in t.params and "label_smoothing" in t.params for t in trials)
    assert rep.test is not None and rep.test["model"] == "selected"
    client = MlflowClient(tracking_uri=tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cnn").experiment_id], "tags.`sweeper.role` = 'study'")
    raw_x, y = load_raw_splits(spec.data, spec.seed, spec.base_dir).test
    mlflow.set_tracking_uri(tracking_uri)
    with torch.no_grad():
        pred = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/best_model")(torch.from_numpy(raw_x)).argmax(-1)
    assert ((pred == torch.from_numpy(y)).sum() / len(y)).item() == rep.test["test_accuracy"]
    exp = client.get_experiment_by_name("cnn").experiment_id
    logged = client.search_runs([exp], "tags.`sweeper.role` = 'trial'")
    assert logged and all({"dropout.conv_1", "optimizer", "label_smoothing"} <= set(r.data.params) for r in logged)


def test_options_the_population_cannot_stack_run_one_trial_at_a_time() -> None:
    assert unstackable(_spec()) is None
    assert unstackable(_spec({"label_smoothing": [0.0, 0.2], "grad_clip": [0.5, 5.0]})) is None  # these stack
    assert "mixup_alpha" in (unstackable(_spec({"mixup_alpha": [0.1, 0.4]})) or "")
    assert "ema_decay" in (unstackable(_spec({"ema_decay": [0.9, 0.99]})) or "")
    assert "optimizer" in (unstackable(_spec({"optimizer": "adamw"})) or "")
    assert "early_stopping" in (unstackable(_spec(early_stopping_patience=3)) or "")
    cnn = parse_spec(tiny_spec_dict(network={"type": "cnn1d"}))
    assert "cnn1d" in (unstackable(cnn) or "")


@pytest.mark.parametrize(
    ("space", "words"),
    [
        ({"optimizer": "adam"}, ["optimizer", "sgd", "adamw", "adam"]),
        ({"optimizer": ["sgd", 0.5]}, ["optimizer"]),
        ({"label_smoothing": [0.0, 1.5]}, ["label_smoothing", "[0, 1)"]),
        ({"mixup_alpha": "lots"}, ["mixup_alpha", "lots"]),
        ({"ema_decay": [0.9, 1.0]}, ["ema_decay", "[0, 1)"]),
        ({"batch_norm": "maybe"}, ["batch_norm", "maybe"]),
    ],
)
def test_bad_values_of_the_new_options_name_the_field(space: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(tiny_spec_dict(space=space))
    for w in words:
        assert w in str(e.value), str(e.value)
