"""The search space: what a study file writes for each hyperparameter, and ``trial.suggest_*``.

A value in the ``space`` section is one of
  - a number (or true/false): fixed, not searched;
  - ``[low, high]`` or ``{low, high, log, optional}``: a range (``optional: true`` also tries "off");
  - ``{choices: [...]}``: a categorical;
  - ``false`` / ``null`` on an optional regularizer (l1, max_norm, r_drop_alpha): off.
Defaults follow the dropout literature (Srivastava et al. 2014; Liang et al. 2021 for R-Drop).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, cast

import optuna
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator


class Param(BaseModel):
    """One searched (or fixed) hyperparameter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float | None = None
    high: float | None = None
    log: bool | None = None
    optional: bool = False
    value: float | bool | None = None
    choices: tuple[float | bool, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, v: Any) -> Any:
        if isinstance(v, bool) or isinstance(v, int | float):
            return {"value": v}
        if isinstance(v, str):
            try:
                return {"value": float(v)}  # PyYAML reads 1e-4 as a string
            except ValueError:
                raise ValueError(f"expected a number, [low, high] or a mapping, but got {v!r}") from None
        if isinstance(v, list | tuple):
            if len(v) == 2 and not any(isinstance(x, bool) for x in v):
                return {"low": v[0], "high": v[1]}
            return {"choices": v}
        return v

    @model_validator(mode="after")
    def _check(self) -> Param:
        kinds = [self.value is not None, self.choices is not None, self.low is not None or self.high is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of: a fixed value, [low, high], or choices")
        if self.choices is not None and not self.choices:
            raise ValueError("give a range like [0.2, 0.5] or at least one choice, not []")
        if kinds[2]:
            if self.low is None or self.high is None:
                raise ValueError("a range needs both low and high")
            if self.low > self.high:
                raise ValueError(f"low must be <= high, but got low={self.low} > high={self.high}")
        return self

    def bounds(self) -> tuple[float, float]:
        """Smallest and largest value this parameter can take (for range checks)."""
        if self.value is not None:
            return float(self.value), float(self.value)
        if self.choices is not None:
            nums = [float(c) for c in self.choices]
            return min(nums), max(nums)
        assert self.low is not None and self.high is not None
        return self.low, self.high

    def suggest(self, trial: optuna.Trial, name: str, default_log: bool = False) -> Any:
        if self.optional and not trial.suggest_categorical(f"{name}.enabled", [True, False]):
            return None
        if self.value is not None:
            return self.value
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        assert self.low is not None and self.high is not None
        log = default_log if self.log is None else self.log
        return trial.suggest_float(name, self.low, self.high, log=log)


def _range(low: float, high: float, **kw: Any) -> Param:
    return Param(low=low, high=high, **kw)


# name -> (lowest allowed, highest allowed, highest exclusive?, log by default)
_LIMITS: dict[str, tuple[float, float, bool, bool]] = {
    "dropout_input": (0.0, 1.0, True, False),
    "dropout_hidden": (0.0, 1.0, True, False),
    "weight_decay": (0.0, float("inf"), False, True),
    "l1": (0.0, float("inf"), False, True),
    "momentum": (0.0, 1.0, True, False),
    "lr_scale": (1e-12, float("inf"), False, True),
    "max_norm": (1e-12, float("inf"), False, False),
    "r_drop_alpha": (0.0, float("inf"), False, False),
    "lr_decay": (1e-12, 1.0, False, False),
}
_HINTS = {
    "dropout_input": "a dropout rate is in [0, 1): the input layer is usually 0-0.2",
    "dropout_hidden": "a dropout rate is in [0, 1): hidden layers are usually 0.2-0.5",
    "weight_decay": "weight decay must be >= 0 (log ranges need low > 0, e.g. [1e-6, 1e-2])",
    "l1": "the L1 weight must be >= 0 (log ranges need low > 0)",
    "momentum": "momentum is in [0, 1), usually 0.9-0.99",
    "lr_scale": "the learning-rate scale must be > 0, usually 1-100",
    "max_norm": "the max-norm constant c must be > 0, usually 3-5",
    "r_drop_alpha": "the R-Drop weight alpha must be >= 0",
    "lr_decay": "the per-epoch learning-rate decay factor is in (0, 1]",
}


class Space(BaseModel):
    """The ``space`` section of a study file; each field's default is the literature's range."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dropout_input: Param = _range(0.0, 0.2)
    dropout_hidden: Param | tuple[Param, ...] = _range(0.2, 0.5)
    weight_decay: Param = _range(1e-6, 1e-2, log=True)
    l1: Param | None = None
    momentum: Param = _range(0.9, 0.99)
    lr_scale: Param = _range(1.0, 100.0, log=True)
    max_norm: Param | None = _range(3.0, 5.0, optional=True)
    batch_norm: Param = Param(choices=(False, True))
    r_drop_alpha: Param | None = None
    lr_decay: Param = _range(0.95, 1.0)

    @model_validator(mode="before")
    @classmethod
    def _off(cls, v: Any) -> Any:
        # ``max_norm: false`` means off, not "fixed at 0"
        if isinstance(v, dict):
            return {k: (None if x is False and k in ("l1", "max_norm", "r_drop_alpha") else x) for k, x in v.items()}
        return v

    @field_validator(*_LIMITS)
    @classmethod
    def _limits(cls, value: Param | tuple[Param, ...] | None, info: ValidationInfo) -> Any:
        name = info.field_name
        assert name is not None
        lo, hi, hi_open, default_log = _LIMITS[name]
        if isinstance(value, tuple) and not value:
            raise ValueError("give a range like [0.2, 0.5], or a list of ranges with one per hidden layer, not []")
        for p in value if isinstance(value, tuple) else (value,):
            if p is None:
                continue
            low, high = p.bounds()
            log = default_log if p.log is None else p.log
            if low < lo or high > hi or (hi_open and high >= hi) or (log and p.low is not None and p.low <= 0):
                raise ValueError(f"{_HINTS[name]}, but got {low}..{high}")
        return value

    def param_names(self, n_hidden: int) -> list[str]:
        """The names of the parameters a trial searches (optional ones as if on), in suggestion order."""
        names = _Names()
        self.suggest(cast(optuna.Trial, names), n_hidden)
        return [n for n in names if not n.endswith(".enabled")]

    def suggest(self, trial: optuna.Trial, n_hidden: int) -> Hparams:
        """Draw one trial's hyperparameters; parameter names say where each value goes."""
        hidden = self.dropout_hidden
        if isinstance(hidden, tuple) and len(hidden) != n_hidden:
            raise ValueError(f"space.dropout_hidden lists {len(hidden)} ranges for {n_hidden} hidden layers")
        per_layer = hidden if isinstance(hidden, tuple) else (hidden,) * n_hidden
        rates = [self.dropout_input.suggest(trial, "dropout.input")]
        rates += [p.suggest(trial, f"dropout.hidden_{i + 1}") for i, p in enumerate(per_layer)]

        def opt(p: Param | None, name: str, log: bool = False) -> float | None:
            return None if p is None else p.suggest(trial, name, log)

        return Hparams(
            dropout=tuple(float(r) for r in rates),
            weight_decay=float(self.weight_decay.suggest(trial, "weight_decay", True)),
            l1=opt(self.l1, "l1", True),
            momentum=float(self.momentum.suggest(trial, "momentum")),
            lr_scale=float(self.lr_scale.suggest(trial, "lr_scale", True)),
            max_norm=opt(self.max_norm, "max_norm"),
            batch_norm=bool(self.batch_norm.suggest(trial, "batch_norm")),
            r_drop_alpha=opt(self.r_drop_alpha, "r_drop.alpha"),
            lr_decay=float(self.lr_decay.suggest(trial, "lr_decay")),
        )


#: the dropout literature's starting points (Srivastava et al. 2014, sections 5-6 and appendix A: input
#: dropout ~0.2, hidden 0.5, max-norm c 3-4, momentum 0.95-0.99, a learning rate 10-100x that of a net
#: without dropout), plus a lighter-dropout, higher-rate variant and one with batch norm; "lr" is the learning
#: rate itself (the trial's lr_scale is lr / train.base_lr); each value is
#: fitted into the study's space (clipped to its range, or the nearest choice), so a space that excludes
#: one still gets a point inside it. "dropout.hidden" stands for every hidden layer.
LITERATURE: tuple[dict[str, Any], ...] = (
    {"dropout.input": 0.2, "dropout.hidden": 0.5, "max_norm.enabled": True, "max_norm": 3.5, "momentum": 0.95,
     "lr": 0.05, "weight_decay": 1e-5, "batch_norm": False, "lr_decay": 0.98},
    {"dropout.input": 0.1, "dropout.hidden": 0.3, "max_norm.enabled": True, "max_norm": 4.0, "momentum": 0.9,
     "lr": 0.1, "weight_decay": 1e-4, "batch_norm": False, "lr_decay": 0.98},
    {"dropout.input": 0.0, "dropout.hidden": 0.2, "max_norm.enabled": False, "momentum": 0.9,
     "lr": 0.01, "weight_decay": 1e-4, "batch_norm": True, "lr_decay": 0.97},
)  # fmt: skip


class _Recipe(dict[str, Any]):
    """Stands in for a trial to fit a recipe into the space: each answer is the recipe's value, clipped into the
    parameter's range (or its nearest choice); a parameter the recipe does not name gets its lower end."""

    def __init__(self, recipe: dict[str, Any], base_lr: float) -> None:
        super().__init__()
        self.recipe, self.base_lr = recipe, base_lr

    def _wanted(self, name: str) -> Any:
        if name == "lr_scale":
            return self.recipe["lr"] / self.base_lr
        return self.recipe.get("dropout.hidden" if name.startswith("dropout.hidden_") else name)

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        want = self._wanted(name)
        self[name] = low if want is None else min(max(float(want), low), high)
        return self[name]

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        want = self._wanted(name)
        if want in choices:
            self[name] = want
        elif want is None or isinstance(want, bool) or not all(isinstance(c, int | float) for c in choices):
            self[name] = choices[0]
        else:
            self[name] = min(choices, key=lambda c: abs(float(c) - float(want)))
        return self[name]


def literature_points(space: Space, n_hidden: int, base_lr: float) -> list[dict[str, Any]]:
    """The literature's recipes as parameter sets of ``space`` (duplicates dropped), to enqueue as the first trials."""
    points: list[dict[str, Any]] = []
    for recipe in LITERATURE:
        fitted = _Recipe(recipe, base_lr)
        space.suggest(cast(optuna.Trial, fitted), n_hidden)
        if fitted and dict(fitted) not in points:
            points.append(dict(fitted))
    return points


class _Names(list[str]):
    """Stands in for a trial to list the names ``Space.suggest`` asks for, each optional regularizer on."""

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        self.append(name)
        return low

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        self.append(name)
        return True if name.endswith(".enabled") else choices[0]


@dataclass(frozen=True)
class Hparams:
    """One trial's regularization settings (what is searched, apart from where it runs)."""

    dropout: tuple[float, ...]  # input layer first, then each hidden layer
    weight_decay: float = 0.0
    l1: float | None = None
    momentum: float = 0.9
    lr_scale: float = 1.0
    max_norm: float | None = None
    batch_norm: bool = False
    r_drop_alpha: float | None = None
    lr_decay: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
