"""Datasets with no download at run time, split deterministically from the study seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sweeper.errors import SpecError
from sweeper.study.spec import DataSpec
from sweeper.training.loader import load_callable


@dataclass(frozen=True)
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def in_features(self) -> int:
        return int(self.train.x.shape[1])

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.train.to(device), self.val.to(device), self.test.to(device), self.num_classes)


def _mnist1d(spec: DataSpec, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset  # make_dataset generates; get_dataset downloads

    args = get_dataset_args()
    args.num_samples = spec.num_samples
    args.seed = seed
    d = make_dataset(args)
    return np.concatenate([d["x"], d["x_test"]]), np.concatenate([d["y"], d["y_test"]])


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x, y


def _file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise SpecError(f"data.path {str(path)!r} does not exist (paths are relative to the study file)")
    if path.suffix == ".npz":
        with np.load(path) as z:
            if "x" not in z or "y" not in z:
                raise SpecError(f"{path} must hold arrays named 'x' and 'y', but has {sorted(z.files)}")
            return z["x"], z["y"]
    table = np.loadtxt(path, delimiter=",", skiprows=_header_rows(path))
    return table[:, :-1], table[:, -1]


def _header_rows(path: Path) -> int:
    first = path.open().readline().split(",")
    try:
        [float(v) for v in first]
        return 0
    except ValueError:
        return 1


def load_arrays(spec: DataSpec, seed: int, base_dir: str) -> tuple[np.ndarray, np.ndarray]:
    if spec.dataset == "mnist1d":
        return _mnist1d(spec, seed)
    if spec.dataset == "digits":
        return _digits()
    if spec.dataset == "file":
        assert spec.path is not None
        p = Path(spec.path)
        return _file(p if p.is_absolute() else Path(base_dir) / p)
    assert spec.function is not None
    out = load_callable(spec.function, base_dir, "data.function")()
    if not (isinstance(out, tuple) and len(out) == 2):
        raise SpecError(f"data.function {spec.function!r} must return (x, y), but got {type(out).__name__}")
    return np.asarray(out[0]), np.asarray(out[1])


def load_dataset(spec: DataSpec, seed: int, base_dir: str = ".") -> Dataset:
    """Train / validation / test split, the same for every trial of a study (it depends on the seed only)."""
    x, y = load_arrays(spec, seed, base_dir)
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    labels, y_idx = np.unique(np.asarray(y), return_inverse=True)
    if len(x) != len(y_idx):
        raise SpecError(f"data has {len(x)} inputs but {len(y_idx)} labels")
    if len(labels) < 2:
        raise SpecError(f"data needs at least 2 classes, but has {len(labels)}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(spec.test_fraction * len(x))))
    n_val = max(1, int(round(spec.val_fraction * len(x))))
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    if spec.standardize:
        mean, std = x[train].mean(0), x[train].std(0) + 1e-6  # statistics of the training split only
        x = (x - mean) / std

    def split(idx: np.ndarray) -> Split:
        return Split(torch.from_numpy(x[idx]), torch.from_numpy(y_idx[idx].astype(np.int64)))

    return Dataset(split(train), split(val), split(test), num_classes=len(labels))
