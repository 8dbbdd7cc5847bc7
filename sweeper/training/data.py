"""Datasets with no download at run time, split deterministically from the study seed.

A source gives either one (x, y), split at random into train / val / test, or its own splits
(``split: given``): the test split as given, validation as given or carved from the training split.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, replace
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
    """The three splits as the networks see them (standardized when ``data.standardize``).

    ``mean`` and ``std`` are the training split's feature statistics the inputs were standardized with
    (``x = (raw - mean) / std``; ``None`` when they were not), so a network can be exported to take raw
    inputs. ``classes`` are the source's labels in class-index order: class ``i`` is ``classes[i]``.
    """

    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    classes: tuple[object, ...] = ()

    @property
    def in_features(self) -> int:
        return int(self.train.x.shape[1])

    def to(self, device: torch.device | str) -> Dataset:
        """The splits on ``device``; the standardization statistics stay on the CPU (they go with an exported model)."""
        splits = self.train.to(device), self.val.to(device), self.test.to(device)
        return replace(self, train=splits[0], val=splits[1], test=splits[2])


Arrays = tuple[np.ndarray, np.ndarray]
Parts = dict[str, Arrays]  # {"all": (x, y)} to split at random, or {"train", "test"[, "val"]} when given
GIVEN_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _mnist1d(spec: DataSpec, seed: int) -> Parts:
    from mnist1d.data import get_dataset_args, make_dataset  # make_dataset generates; get_dataset downloads

    args = get_dataset_args()
    args.num_samples = spec.num_samples
    args.seed = seed
    d = make_dataset(args)
    return {"all": (np.concatenate([d["x"], d["x_test"]]), np.concatenate([d["y"], d["y_test"]]))}


def _mnist1d_standard() -> Parts:
    """MNIST-1D with the generator settings of the paper (Greydanus 2020): 5000 samples, seed 42, 4000 / 1000.

    It never depends on the study seed, so every study tests on the same 1000 samples.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())
    return {"train": (d["x"], d["y"]), "test": (d["x_test"], d["y_test"])}


def _digits() -> Parts:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return {"all": (x, y)}


def _given(arrays: Mapping[str, object], where: str) -> Parts:
    """The splits of a given-split source: x_train, y_train, x_test, y_test and optionally x_val, y_val."""
    names = sorted(arrays)
    missing = [k for k in GIVEN_KEYS if k not in arrays]
    if missing:
        raise SpecError(
            f"{where} must hold {', '.join(GIVEN_KEYS)} (and optionally x_val, y_val) for split 'given', "
            f"but has {names}; add the missing arrays or remove 'split: given'"
        )
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise SpecError(f"{where} must hold both x_val and y_val or neither, but has {names}")
    splits = ("train", "val", "test") if "x_val" in arrays else ("train", "test")
    return {s: (np.asarray(arrays[f"x_{s}"]), np.asarray(arrays[f"y_{s}"])) for s in splits}


def _file(path: Path, given: bool) -> Parts:
    if not path.is_file():
        raise SpecError(f"data.path {str(path)!r} does not exist (paths are relative to the study file)")
    if path.suffix == ".npz":
        with np.load(path) as z:
            if given:
                return _given({k: z[k] for k in z.files}, str(path))
            if "x" not in z or "y" not in z:
                hint = "; it holds x_train and x_test: add 'split: given'" if "x_train" in z else ""
                raise SpecError(f"{path} must hold arrays named 'x' and 'y', but has {sorted(z.files)}{hint}")
            return {"all": (z["x"], z["y"])}
    table = np.loadtxt(path, delimiter=",", skiprows=_header_rows(path))
    return {"all": (table[:, :-1], table[:, -1])}


def _header_rows(path: Path) -> int:
    first = path.open().readline().split(",")
    try:
        [float(v) for v in first]
        return 0
    except ValueError:
        return 1


def _python(spec: DataSpec, base_dir: str) -> Parts:
    assert spec.function is not None
    out = load_callable(spec.function, base_dir, "data.function")()
    where = f"data.function {spec.function!r}"
    if spec.split == "given":
        if not isinstance(out, Mapping):
            got = type(out).__name__
            raise SpecError(f"{where} must return a dict of x_train, y_train, x_test, y_test, but got {got}")
        return _given(out, f"the dict from {where}")
    if not (isinstance(out, tuple) and len(out) == 2):
        raise SpecError(f"{where} must return (x, y), but got {type(out).__name__}")
    return {"all": (np.asarray(out[0]), np.asarray(out[1]))}


def load_arrays(spec: DataSpec, seed: int, base_dir: str) -> Parts:
    """The data as its source gives it: one (x, y) to split, or the given train / test (/ val) splits."""
    if spec.dataset == "mnist1d":
        return _mnist1d(spec, seed)
    if spec.dataset == "mnist1d_standard":
        return _mnist1d_standard()
    if spec.dataset == "digits":
        return _digits()
    if spec.dataset == "file":
        assert spec.path is not None
        p = Path(spec.path)
        return _file(p if p.is_absolute() else Path(base_dir) / p, spec.split == "given")
    return _python(spec, base_dir)


def _indices(spec: DataSpec, sizes: dict[str, int], seed: int) -> dict[str, tuple[str, np.ndarray]]:
    """For each of train / val / test: which part it comes from and the rows taken (seeded by the study seed)."""
    rng = np.random.default_rng(seed)
    if "all" in sizes:
        n = sizes["all"]
        assert spec.test_fraction is not None
        order = rng.permutation(n)
        n_test = max(1, int(round(spec.test_fraction * n)))
        n_val = max(1, int(round(spec.val_fraction * n)))
        return {
            "test": ("all", order[:n_test]),
            "val": ("all", order[n_test : n_test + n_val]),
            "train": ("all", order[n_test + n_val :]),
        }
    out = {s: (s, np.arange(sizes[s])) for s in sizes}
    if "val" not in sizes:  # the test split is given: validation comes out of the training split only
        order = rng.permutation(sizes["train"])
        n_val = max(1, int(round(spec.val_fraction * len(order))))
        if n_val >= len(order):
            raise SpecError(
                f"the training split has {len(order)} samples, too few to hold out val_fraction {spec.val_fraction} "
                "of it and train on the rest; lower val_fraction or give x_val, y_val"
            )
        out["val"], out["train"] = ("train", order[:n_val]), ("train", order[n_val:])
    return out


@dataclass(frozen=True)
class RawSplits:
    """Train / validation / test as the source gives them (not standardized), labels mapped to 0..K-1."""

    train: Arrays
    val: Arrays
    test: Arrays
    classes: np.ndarray  # the source's labels, sorted: label index i is classes[i]


def needs_standardizing(setting: bool | str, x_train: np.ndarray) -> bool:
    """``data.standardize``: true, false, or auto (only features far from unit scale, e.g. raw pixels 0-16).

    Standardizing features that already have mean ~0 and std ~1 (MNIST-1D) only adds the noise of
    statistics estimated on a few thousand samples; features in other units need it.
    """
    if setting != "auto":
        return bool(setting)
    mean, std = x_train.mean(0), x_train.std(0)
    return bool(np.abs(mean).max() > 0.5 or std.min() < 0.5 or std.max() > 2.0)


def load_raw_splits(spec: DataSpec, seed: int, base_dir: str = ".") -> RawSplits:
    """The splits of ``load_dataset`` (same rows, same label indices), before standardization.

    ``x`` is float32 ``[n, features]``, ``y`` int64 class indices; what a model exported by sweeper takes.
    Loaded once per process for the same data: a launch's check of the study file, its worker and its test
    scoring share one load (a data file is loaded again when it changed on disk). Nothing may write to them.
    """
    base = str(Path(base_dir).resolve())
    stamp = None
    if spec.dataset == "file" and spec.path:
        st = (Path(base) / spec.path).stat() if (Path(base) / spec.path).exists() else None
        stamp = (st.st_mtime_ns, st.st_size) if st else None
    return _raw_splits(spec, seed, base, stamp)


@functools.lru_cache(maxsize=4)
def _raw_splits(spec: DataSpec, seed: int, base_dir: str, stamp: tuple[int, int] | None) -> RawSplits:
    parts = load_arrays(spec, seed, base_dir)
    xs = {k: np.asarray(x, dtype=np.float32).reshape(len(x), -1) for k, (x, _) in parts.items()}
    for k, (x, y) in parts.items():
        if len(x) != len(y):
            raise SpecError(f"data{'' if k == 'all' else f' ({k} split)'} has {len(x)} inputs but {len(y)} labels")
    widths = {k: x.shape[1] for k, x in xs.items()}
    if len(set(widths.values())) > 1:
        raise SpecError(f"every split must have the same number of features, but got {widths}")
    labels, inverse = np.unique(np.concatenate([np.asarray(y) for _, y in parts.values()]), return_inverse=True)
    if len(labels) < 2:
        raise SpecError(f"data needs at least 2 classes, but has {len(labels)}")
    bounds = np.cumsum([0] + [len(y) for _, y in parts.values()])
    ys = {k: inverse[bounds[i] : bounds[i + 1]].astype(np.int64) for i, k in enumerate(parts)}
    rows = _indices(spec, {k: len(x) for k, x in xs.items()}, seed)
    take = {s: (xs[part][idx], ys[part][idx]) for s, (part, idx) in rows.items()}
    return RawSplits(take["train"], take["val"], take["test"], labels)


def load_dataset(spec: DataSpec, seed: int, base_dir: str = ".") -> Dataset:
    """Train / validation / test splits, the same for every trial of a study (they depend on the seed only)."""
    raw = load_raw_splits(spec, seed, base_dir)
    take = {"train": raw.train, "val": raw.val, "test": raw.test}
    mean = std = None
    if needs_standardizing(spec.standardize, raw.train[0]):
        mean, std = raw.train[0].mean(0), raw.train[0].std(0)  # statistics of the training split only
        # a feature constant in the training split keeps its scale (as scikit-learn's StandardScaler does): dividing
        # by ~0 would blow a validation, test or deployed input that has it up to ~1e6
        std = np.where(std > 1e-6 * np.maximum(1.0, np.abs(mean)), std + 1e-6, 1.0)
        take = {s: ((x - mean) / std, y) for s, (x, y) in take.items()}

    def split(s: str) -> Split:
        x, y = take[s]
        return Split(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y))

    def stat(v: np.ndarray | None) -> torch.Tensor | None:
        return None if v is None else torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))

    classes = tuple(raw.classes.tolist())
    return Dataset(split("train"), split("val"), split("test"), len(classes), stat(mean), stat(std), classes)
