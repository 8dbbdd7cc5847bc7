"""Datasets: deterministic splits, user files and functions."""

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_spec_dict
from sweeper import api
from sweeper.errors import SpecError
from sweeper.study.spec import DataSpec, parse_spec
from sweeper.training.data import load_dataset


def test_split_depends_only_on_seed() -> None:
    spec = DataSpec(dataset="digits")
    a, b, c = load_dataset(spec, 0), load_dataset(spec, 0), load_dataset(spec, 1)
    assert torch.equal(a.test.x, b.test.x) and not torch.equal(a.test.x, c.test.x)
    n = len(a.train.x) + len(a.val.x) + len(a.test.x)
    assert n == 1797 and len(a.test.x) == round(0.15 * n)
    assert a.num_classes == 10 and a.in_features == 64
    assert abs(a.train.x.mean().item()) < 1e-3  # standardized with training statistics


def test_a_feature_constant_in_training_keeps_its_scale(tmp_path: Path) -> None:
    """Standardizing divides by the training std: a feature that never varies there must not be divided by ~0."""
    rng = np.random.default_rng(0)
    x_train, y_train = rng.normal(5.0, 3.0, size=(200, 4)), rng.integers(0, 2, 200)
    x_train[:, 1] = 0.0  # like a digits pixel that is blank in every training image
    x_test = rng.normal(5.0, 3.0, size=(50, 4))
    x_test[0, 1] = 16.0
    np.savez(tmp_path / "d.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=rng.integers(0, 2, 50))
    d = load_dataset(DataSpec(dataset="file", path="d.npz", split="given", standardize=True), 0, str(tmp_path))
    assert d.std is not None and d.std[1].item() == 1.0 and d.mean[1].item() == 0.0
    assert d.test.x[0, 1].item() == 16.0  # the raw value, not 16 / 1e-6
    assert d.test.x.abs().max().item() < 100


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


def test_mnist1d_standard_is_the_published_split() -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    published = make_dataset(get_dataset_args())  # 5000 samples, seed 42, 80 / 20
    assert published["x"].shape == (4000, 40) and published["x_test"].shape == (1000, 40)
    a = load_dataset(DataSpec(dataset="mnist1d_standard", standardize=False), 0)
    b = load_dataset(DataSpec(dataset="mnist1d_standard", standardize=False), 1)
    assert (len(a.train.x), len(a.val.x), len(a.test.x)) == (3400, 600, 1000)
    # the test split is the published one whatever the study seed; validation comes out of the 4000 only
    assert torch.equal(a.test.x, torch.from_numpy(published["x_test"].astype(np.float32)))
    assert torch.equal(a.test.x, b.test.x) and not torch.equal(a.val.x, b.val.x)
    train_rows = {r.tobytes() for r in published["x"].astype(np.float32)}
    assert {r.numpy().tobytes() for r in torch.cat([a.train.x, a.val.x])} == train_rows


def _shifted_npz(path: Path, with_val: bool = False) -> None:
    """Three separable classes; the given test split has every label moved by one, so it scores ~0."""
    rng = np.random.default_rng(0)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        return np.eye(3)[y] * 4 + rng.normal(size=(n, 3)) * 0.3, y

    (x_train, y_train), (x_test, y_test) = draw(300), draw(60)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": (y_test + 1) % 3}
    if with_val:
        arrays["x_val"], arrays["y_val"] = draw(40)
    np.savez(path, **arrays)


def test_given_split_keeps_test_and_carves_validation_from_train(tmp_path: Path) -> None:
    _shifted_npz(tmp_path / "d.npz")
    spec = DataSpec(dataset="file", path="d.npz", split="given", val_fraction=0.2, standardize=False)
    d = load_dataset(spec, 0, str(tmp_path))
    with np.load(tmp_path / "d.npz") as z:
        assert torch.equal(d.test.x, torch.from_numpy(z["x_test"].astype(np.float32)))
        assert torch.equal(d.test.y, torch.from_numpy(z["y_test"]))
    assert (len(d.train.x), len(d.val.x), len(d.test.x)) == (240, 60, 60)
    _shifted_npz(tmp_path / "v.npz", with_val=True)
    d = load_dataset(DataSpec(dataset="file", path="v.npz", split="given"), 0, str(tmp_path))
    assert (len(d.train.x), len(d.val.x), len(d.test.x)) == (300, 40, 60)  # a given validation split is used as is


def test_given_split_study_selects_on_validation_and_scores_the_given_test(tmp_path: Path) -> None:
    """End to end: trials score ~1 on validation (from train) and the best scores ~0 on the shifted test split."""
    _shifted_npz(tmp_path / "d.npz")
    spec = parse_spec(
        tiny_spec_dict(data={"dataset": "file", "path": "d.npz", "split": "given"}, train={"epochs": 5}, trials=2),
        base_dir=tmp_path,
    )
    rep = api.launch(spec, storage=f"sqlite:///{tmp_path}/s.db", tracking="")
    assert rep.best_value is not None and rep.best_value > 0.9
    assert rep.test is not None and rep.test["test_accuracy"] < 0.1


def test_given_split_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "half.npz", x_train=np.zeros((4, 2)), y_train=np.arange(4) % 2)
    with pytest.raises(SpecError, match="x_test, y_test.*has \\['x_train', 'y_train'\\]"):
        load_dataset(DataSpec(dataset="file", path="half.npz", split="given"), 0, str(tmp_path))
    _shifted_npz(tmp_path / "d.npz")
    with pytest.raises(SpecError, match="add 'split: given'"):
        load_dataset(DataSpec(dataset="file", path="d.npz"), 0, str(tmp_path))
    np.savez(
        tmp_path / "v.npz",
        x_train=np.zeros((4, 2)),
        y_train=[0, 1, 0, 1],
        x_test=np.zeros((2, 2)),
        y_test=[0, 1],
        x_val=np.zeros((2, 2)),
    )
    with pytest.raises(SpecError, match="both x_val and y_val"):
        load_dataset(DataSpec(dataset="file", path="v.npz", split="given"), 0, str(tmp_path))
    np.savez(tmp_path / "w.npz", x_train=np.zeros((4, 2)), y_train=[0, 1, 0, 1], x_test=np.zeros((2, 3)), y_test=[0, 1])
    with pytest.raises(SpecError, match="same number of features"):
        load_dataset(DataSpec(dataset="file", path="w.npz", split="given"), 0, str(tmp_path))


def test_python_function_can_give_the_splits(tmp_path: Path) -> None:
    (tmp_path / "splits.py").write_text(
        "import numpy as np\n"
        "def load():\n"
        "    r = np.random.default_rng(0)\n"
        "    return {'x_train': r.normal(size=(50, 4)), 'y_train': np.arange(50) % 2,\n"
        "            'x_test': r.normal(size=(10, 4)), 'y_test': np.arange(10) % 2}\n"
        "def pair():\n"
        "    return np.zeros((4, 2)), np.arange(4) % 2\n"
    )
    d = load_dataset(DataSpec(dataset="python", function="splits.py:load", split="given"), 0, str(tmp_path))
    assert (len(d.train.x), len(d.val.x), len(d.test.x)) == (42, 8, 10)
    with pytest.raises(SpecError, match="must return a dict"):
        load_dataset(DataSpec(dataset="python", function="splits.py:pair", split="given"), 0, str(tmp_path))


def test_a_launch_loads_its_data_once_and_a_changed_file_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The study file's check, the worker and the test scoring share one load in the launching process."""
    import sweeper.training.data as data

    calls: list[str] = []
    real = data.load_arrays
    monkeypatch.setattr(data, "load_arrays", lambda spec, *a: calls.append(spec.dataset) or real(spec, *a))
    x, y = np.random.default_rng(7).normal(size=(300, 6)), np.arange(300) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    spec = parse_spec(tiny_spec_dict("once", trials=2, data={"dataset": "file", "path": "d.npz"}), base_dir=tmp_path)
    api.launch(spec, storage=f"sqlite:///{tmp_path}/s.db", tracking=f"sqlite:///{tmp_path}/m.db")
    assert calls == ["file"], "one load for the check, the worker, the test scoring and the exported model"
    np.savez(tmp_path / "d.npz", x=x + 1, y=y)
    import os

    os.utime(tmp_path / "d.npz", ns=(0, 10**18))  # a changed file: a new stamp even within one clock tick
    data.load_raw_splits(spec.data, spec.seed, spec.base_dir)
    assert calls == ["file", "file"]
