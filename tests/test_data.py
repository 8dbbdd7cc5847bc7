"""Datasets: deterministic splits, user files and functions."""

from pathlib import Path

import numpy as np
import pytest
import torch

from sweeper.errors import SpecError
from sweeper.study.spec import DataSpec
from sweeper.training.data import load_dataset


def test_split_depends_only_on_seed() -> None:
    spec = DataSpec(dataset="digits")
    a, b, c = load_dataset(spec, 0), load_dataset(spec, 0), load_dataset(spec, 1)
    assert torch.equal(a.test.x, b.test.x) and not torch.equal(a.test.x, c.test.x)
    n = len(a.train.x) + len(a.val.x) + len(a.test.x)
    assert n == 1797 and len(a.test.x) == round(0.15 * n)
    assert a.num_classes == 10 and a.in_features == 64
    assert abs(a.train.x.mean().item()) < 1e-3  # standardized with training statistics


def test_mnist1d_is_generated_locally() -> None:
    d = load_dataset(DataSpec(dataset="mnist1d", num_samples=200), 0)
    assert d.in_features == 40 and d.num_classes == 10


def test_npz_and_csv_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 5)), rng.integers(0, 3, 100)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.savetxt(tmp_path / "d.csv", np.c_[x, y], delimiter=",", header="a,b,c,d,e,label", comments="")
    for name in ("d.npz", "d.csv"):
        d = load_dataset(DataSpec(dataset="file", path=name), 0, str(tmp_path))
        assert d.in_features == 5 and d.num_classes == 3


def test_user_data_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_dataset(DataSpec(dataset="file", path="missing.npz"), 0, str(tmp_path))
    np.savez(tmp_path / "bad.npz", a=np.zeros(3))
    with pytest.raises(SpecError, match="'x' and 'y'"):
        load_dataset(DataSpec(dataset="file", path="bad.npz"), 0, str(tmp_path))
    with pytest.raises(SpecError, match="has no function"):
        load_dataset(
            DataSpec(dataset="python", function="custom_data.py:nope"), 0, str(Path(__file__).parents[1] / "studies")
        )


def test_python_data_function() -> None:
    studies = str(Path(__file__).parents[1] / "studies")
    d = load_dataset(DataSpec(dataset="python", function="custom_data.py:load"), 0, studies)
    assert d.in_features == 20 and d.num_classes == 3
