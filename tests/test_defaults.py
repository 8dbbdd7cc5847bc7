"""The search defaults chosen by the search benchmark: literature start points, auto standardization, warm-up."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna

from conftest import tiny_spec_dict
from sweeper.study.recipes import LITERATURE, literature_points
from sweeper.study.record import StudyRecord
from sweeper.study.spec import parse_spec
from sweeper.training.data import load_dataset, needs_standardizing


def test_a_new_study_starts_from_the_literature_recipes_fitted_into_its_space(tmp_path: Any) -> None:
    spec = parse_spec(
        tiny_spec_dict(
            "lit",
            space={"dropout_hidden": [0.1, 0.3], "lr_scale": [1, 3]},
            train={"base_lr": 0.01},
            warm_start="literature",
        )
    )
    record = StudyRecord.create(spec, f"sqlite:///{tmp_path}/s.db")
    queued = record.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert len(queued) == len(LITERATURE)
    first = record.study.ask()  # the sampler takes over only after them
    hp = spec.space.suggest(first, spec.network.n_hidden)
    assert hp.dropout == (0.2, 0.3)  # the recipe's 0.5 clipped into the space's [0.1, 0.3]
    assert (
        hp.lr_scale == 3 and hp.max_norm == 3.5
    )  # lr 0.05 is scale 5 of base_lr 0.01: clipped to 3 and hp.momentum == 0.95 and not hp.batch_norm
    # resuming the study enqueues nothing more; a budget smaller than the recipes takes only as many
    short = parse_spec(tiny_spec_dict("short", trials=1, warm_start="literature"))
    assert len(StudyRecord.create(short, f"sqlite:///{tmp_path}/s.db").study.get_trials()) == 1
    StudyRecord.create(spec, f"sqlite:///{tmp_path}/s.db")
    assert len(record.study.get_trials(deepcopy=False)) == len(LITERATURE)


def test_warm_start_none_leaves_the_sampler_alone(tmp_path: Any) -> None:
    spec = parse_spec(tiny_spec_dict("cold", warm_start="none"))
    assert parse_spec({"name": "default"}).warm_start == "literature"
    assert StudyRecord.create(spec, f"sqlite:///{tmp_path}/s.db").study.get_trials() == []


def test_literature_points_respect_fixed_and_categorical_parameters() -> None:
    spec = parse_spec(tiny_spec_dict("fit", space={"batch_norm": False, "momentum": {"choices": [0.5, 0.99]}}))
    points = literature_points(spec.space, 1, base_lr=0.001)
    assert {round(p["lr_scale"]) for p in points} == {50, 100, 10}  # lr 0.05, 0.1, 0.01
    assert all("batch_norm" not in p for p in points)  # fixed: not a parameter at all
    assert {p["momentum"] for p in points} == {0.99}  # the nearest choice to 0.95 and 0.9
    assert len(points) == len({tuple(sorted(p.items())) for p in points})


def test_auto_standardizes_only_features_far_from_unit_scale() -> None:
    rng = np.random.default_rng(0)
    unit = rng.normal(0, 1, (500, 10)).astype(np.float32)
    assert not needs_standardizing("auto", unit)  # MNIST-1D's features are like this
    assert needs_standardizing("auto", unit * 10)
    assert needs_standardizing("auto", unit + 3)
    assert needs_standardizing(True, unit) and not needs_standardizing(False, unit * 10)
    digits = load_dataset(parse_spec(tiny_spec_dict("d")).data, seed=0)
    assert digits.mean is not None  # raw pixels 0-16
    assert abs(float(digits.train.x.mean())) < 0.05


def test_warmup_defaults_to_a_third_of_the_epochs() -> None:
    assert parse_spec({"name": "w", "train": {"epochs": 30}}).pruner.warmup_epochs == 10
    assert parse_spec({"name": "w", "train": {"epochs": 3}}).pruner.warmup_epochs == 2
    assert parse_spec({"name": "w", "pruner": {"warmup_epochs": 1}}).pruner.warmup_epochs == 1
