"""Study file (YAML) -> validated, immutable spec objects.

Each section owns its defaults; a study file only overrides what it names. Unknown keys
are rejected with their path and a did-you-mean, bad values with the field and the fix.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from sweeper.errors import SpecError
from sweeper.study.space import Space

if TYPE_CHECKING:
    import optuna

    from sweeper.study.hparams import Hparams


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplerSpec(_Section):
    type: Literal["tpe", "random", "gp", "cmaes"] = "tpe"
    n_startup_trials: int = Field(10, ge=0)


class PrunerSpec(_Section):
    type: Literal["median", "asha", "hyperband", "none"] = "median"
    warmup_epochs: int | None = Field(
        None,
        ge=0,
        description="epochs before a trial may be pruned; default a third of train.epochs (at least 2): heavy "
        "dropout learns slower and ends better, and an early cut would punish it",
    )
    n_startup_trials: int = Field(5, ge=0, description="median: trials finished before pruning starts")


class DataSpec(_Section):
    dataset: Literal["mnist1d", "mnist1d_standard", "digits", "file", "python"] = "mnist1d"
    path: str | None = Field(None, description="file: a .npz (arrays x, y) or .csv (label in the last column)")
    function: str | None = Field(None, description="python: 'file.py:fn' or 'module:fn' returning (x, y)")
    num_samples: int | None = Field(None, ge=20, description="mnist1d: how many samples to generate (10000)")
    split: Literal["random", "given"] | None = Field(
        None,
        description="random: split one (x, y) by the fractions; given: the data comes with its test split "
        "(x_train, y_train, x_test, y_test) and validation is carved from the training split",
    )
    val_fraction: float = Field(0.15, gt=0, lt=1, description="of all data (random split) or of train (given)")
    test_fraction: float | None = Field(None, gt=0, lt=1, description="random split only (0.15)")
    standardize: bool | Literal["auto"] = Field(
        "auto",
        description="scale features by the training split's mean and std; auto: only when they are far from "
        "unit scale (some feature's mean beyond +-0.5 or std outside 0.5-2), as raw pixels or mixed units are",
    )

    @model_validator(mode="after")
    def _split_and_sizes(self) -> DataSpec:
        standard = self.dataset == "mnist1d_standard"  # MNIST-1D as published: its own 4000 / 1000 split
        if self.split is None:
            object.__setattr__(self, "split", "given" if standard else "random")
        elif self.split == "random" and standard:
            raise ValueError(
                "dataset 'mnist1d_standard' is the published 4000 / 1000 split, so split must be 'given', "
                "but got 'random'; remove 'split', or use dataset 'mnist1d' for a random split"
            )
        elif self.split == "given" and self.dataset in ("mnist1d", "digits"):
            raise ValueError(
                f"dataset {self.dataset!r} has no given test split, but got split 'given'; remove 'split'"
                + (", or use dataset 'mnist1d_standard' (the published split)" if self.dataset == "mnist1d" else "")
            )
        if standard and self.num_samples is not None:
            raise ValueError(
                f"dataset 'mnist1d_standard' always has the published 5000 samples, but got num_samples "
                f"{self.num_samples}; remove num_samples, or use dataset 'mnist1d'"
            )
        if self.split == "given" and self.test_fraction is not None:
            raise ValueError(
                f"with split 'given' the test split comes with the data, but got test_fraction {self.test_fraction}; "
                "remove test_fraction (val_fraction is the share of the training split held out)"
            )
        # defaults that depend on the dataset; a stored spec keeps None where a value does not apply
        if self.dataset == "mnist1d" and self.num_samples is None:
            object.__setattr__(self, "num_samples", 10000)
        if self.split == "random" and self.test_fraction is None:
            object.__setattr__(self, "test_fraction", 0.15)
        if self.split == "random" and self.val_fraction + (self.test_fraction or 0) >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction must leave data to train on, but got "
                f"{self.val_fraction} + {self.test_fraction}; lower them (e.g. 0.15 each)"
            )
        return self

    @model_validator(mode="after")
    def _source(self) -> DataSpec:
        if self.dataset == "file" and not self.path:
            raise ValueError("dataset 'file' needs 'path: data.npz' (or .csv)")
        if self.dataset == "file" and self.path and not self.path.endswith((".npz", ".csv")):
            raise ValueError(f"path must end in .npz or .csv, but got {self.path!r}")
        if self.dataset == "file" and self.split == "given" and self.path and not self.path.endswith(".npz"):
            raise ValueError(
                f"split 'given' reads x_train, y_train, x_test, y_test from an .npz, but got path {self.path!r}; "
                "save the splits with numpy.savez"
            )
        if self.dataset == "python" and not self.function:
            raise ValueError("dataset 'python' needs 'function: my_data.py:load'")
        return self


class NetworkSpec(_Section):
    type: Literal["mlp", "cnn1d", "python"] = "mlp"
    hidden: tuple[int, ...] = Field((256, 256), description="mlp, cnn1d's head: width of each hidden layer")
    channels: tuple[int, ...] = Field((32, 32), description="cnn1d: channels of each conv block")
    kernel_size: int = Field(5, ge=1, description="cnn1d: the conv blocks' kernel size")
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    factory: str | None = Field(None, description="python: 'file.py:fn' building an nn.Module")
    hidden_layers: int | None = Field(None, ge=0, description="python: how many hidden dropout rates fn takes")

    @field_validator("hidden", "channels")
    @classmethod
    def _widths(cls, v: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        if not v or any(w < 1 for w in v):
            raise ValueError(f"{info.field_name} must list at least one positive width, but got {list(v)!r}")
        return v

    @model_validator(mode="after")
    def _check(self) -> NetworkSpec:
        if self.type == "python" and not self.factory:
            raise ValueError("network type 'python' needs 'factory: my_net.py:build'")
        return self

    @property
    def n_conv(self) -> int:
        """Conv blocks, each with its own channel dropout rate (cnn1d), else 0."""
        return len(self.channels) if self.type == "cnn1d" else 0

    @property
    def n_dropout(self) -> int:
        """Dropout rates a trial draws: the input's, one per conv block, one per hidden layer."""
        return 1 + self.n_conv + self.n_hidden

    @property
    def n_hidden(self) -> int:
        if self.type == "python":
            return self.hidden_layers if self.hidden_layers is not None else len(self.hidden)
        return len(self.hidden)


class TrainSpec(_Section):
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(128, ge=1)
    base_lr: float = Field(1e-3, gt=0, description="multiplied by the searched lr_scale")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    eval_batch_size: int = Field(4096, ge=1)
    population: int = Field(1, ge=1, description="trials trained together, stacked on one device (built-in mlp)")
    checkpoint_every: int | Literal["auto", "off"] = Field(
        "auto",
        description="checkpoint a trial every N epochs, so that its retry (worker killed or preempted) resumes "
        "instead of starting over; auto: at the first training step at least a minute (and 20 save times) after "
        "the last, mid-epoch too: under 5% of training time, and trials of seconds never; off: never. A stopped "
        "worker (SIGTERM) checkpoints its trial unless off",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="stop a trial after this many epochs without a better validation metric; its value and "
        "its model are then those of its best epoch (off: the last epoch's)",
    )

    @field_validator("checkpoint_every", mode="before")
    @classmethod
    def _interval(cls, v: Any) -> Any:
        if v in ("auto", "off") or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"must be a number of epochs >= 1, 'auto' or 'off' (got {v!r})")


class StudySpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    direction: Literal["maximize", "minimize"] | None = None
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    metric_epochs: int = Field(
        1,
        ge=1,
        description="a complete trial's value: the mean of metric over its last N epochs (1: the last epoch's), "
        "a less noisy estimate to select on; with early stopping, its best epoch's",
    )
    trials: int = Field(20, ge=1, description="budget: finished (complete or pruned) trials")
    seed: int = Field(0, ge=0)
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    data: DataSpec = DataSpec()
    network: NetworkSpec = NetworkSpec()
    train: TrainSpec = TrainSpec()
    space: Space = Space()
    warm_start: Literal["literature", "none"] = Field(
        "literature",
        description="literature: the first trials of a new study are the dropout literature's recipes "
        "(Srivastava et al. 2014), fitted into the space, before the sampler takes over",
    )
    refit: bool = Field(
        True,
        description="when the budget is met, the best trial's settings are trained again on train + validation, "
        "scored once on test and logged as refit_model, beside (never instead of) the selected network",
    )
    base_dir: str = Field(".", description="set by the loader: user paths are relative to the file")

    @field_validator("sampler", "pruner", mode="before")
    @classmethod
    def _short_form(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _warmup(self) -> StudySpec:
        if self.pruner.warmup_epochs is None:
            share = self.pruner.model_copy(update={"warmup_epochs": max(2, self.train.epochs // 3)})
            object.__setattr__(self, "pruner", share)
        return self

    @model_validator(mode="after")
    def _space_fits_network(self) -> StudySpec:
        self.space.check_network(self.network)
        return self

    @model_validator(mode="after")
    def _direction(self) -> StudySpec:
        natural = "maximize" if self.metric == "val_accuracy" else "minimize"
        if self.direction is None:
            object.__setattr__(self, "direction", natural)
        elif self.direction != natural:
            raise ValueError(
                f"metric {self.metric!r} should be {natural}d, but direction is {self.direction!r}; "
                f"remove 'direction' or set it to {natural!r}"
            )
        return self

    def hparams(self, trial: optuna.Trial) -> Hparams:
        """Draw a trial's hyperparameters from the space, for this study's network."""
        return self.space.suggest(trial, self.network.n_hidden, self.network.n_conv)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """Hash of what decides trial results (the trial budget and the refit after the study are not part of it)."""
        d = self.to_dict()
        d.pop("trials")
        d.pop("refit")
        d.pop("base_dir")
        d.get("train", {}).pop("checkpoint_every", None)  # when to save, not what is trained
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _fields_of(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Field names valid at ``path`` (for did-you-mean)."""
    for part in path:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return []
    return list(model.model_fields)


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        where = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            known = [f for f in _fields_of(StudySpec, loc[:-1]) if f != "base_dir"]
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            lines.append(f"unknown key {where!r}: {hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {msg} (got {e.get('input')!r})" if "got" not in msg else f"{where}: {msg}")
    return "invalid study file:\n  " + "\n  ".join(lines)


def parse_spec(data: Any, base_dir: str | Path = ".") -> StudySpec:
    """Validate a study file's content (already parsed from YAML)."""
    if data is None:
        raise SpecError("the study file is empty; write at least 'name: my-study' (see studies/)")
    if not isinstance(data, dict):
        raise SpecError(f"a study file must be a mapping of keys, but got {type(data).__name__}")
    data = {**data, "base_dir": str(base_dir)} if "base_dir" not in data else data
    try:
        return StudySpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(_format(e)) from None


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"study file {str(p)!r} does not exist; give the path of a YAML file (see studies/)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{p} is not valid YAML: {e}") from None
    if data is None:  # yaml reads an empty file (or one with only comments) as None
        raise SpecError(f"study file {str(p)!r} is empty; write at least 'name: my-study' (see studies/ for examples)")
    return parse_spec(data, base_dir=p.resolve().parent)
