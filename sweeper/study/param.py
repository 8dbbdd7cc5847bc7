"""One hyperparameter as a study file writes it: a fixed value, a range or choices, and its ``trial.suggest_*``."""

from __future__ import annotations

from typing import Any

import optuna
from pydantic import BaseModel, ConfigDict, model_validator


class Param(BaseModel):
    """One searched (or fixed) hyperparameter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float | None = None
    high: float | None = None
    log: bool | None = None
    optional: bool = False
    value: float | bool | str | None = None
    choices: tuple[float | bool | str, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, v: Any) -> Any:
        if isinstance(v, bool) or isinstance(v, int | float):
            return {"value": v}
        if isinstance(v, str):
            return {"value": _number(v)}  # a name (optimizer: adamw) stays a string; a numeric field rejects it
        if isinstance(v, list | tuple):
            v = [_number(x) for x in v]
            if len(v) == 2 and not any(isinstance(x, bool | str) for x in v):
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

    def words(self) -> list[str]:
        """The names among this parameter's values (a numeric hyperparameter has none)."""
        values = self.choices if self.choices is not None else (self.value,)
        return [v for v in values if isinstance(v, str)]

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


def _number(x: Any) -> Any:
    """``x``, or the number a string spells (PyYAML reads 1e-4 as a string); a name stays a string."""
    try:
        return float(x) if isinstance(x, str) else x
    except ValueError:
        return x


def between(low: float, high: float, **kw: Any) -> Param:
    return Param(low=low, high=high, **kw)
