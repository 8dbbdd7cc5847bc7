"""The dropout literature's starting points, fitted into a study's space: the first trials of a new study."""

from __future__ import annotations

from typing import Any, cast

import optuna

from sweeper.study.space import Space

#: the dropout literature's starting points (Srivastava et al. 2014, sections 5-6 and appendix A: input
#: dropout ~0.2, hidden 0.5, max-norm c 3-4, momentum 0.95-0.99, a learning rate 10-100x that of a net
#: without dropout), plus a lighter-dropout, higher-rate variant and one with batch norm; "lr" is the learning
#: rate itself (the trial's lr_scale is lr / train.base_lr); each value is
#: fitted into the study's space (clipped to its range, or the nearest choice), so a space that excludes
#: one still gets a point inside it. "dropout.hidden" stands for every hidden layer, "dropout.conv" for every
#: conv block (channel dropout; Srivastava et al. used 0.1-0.25 in conv layers).
LITERATURE: tuple[dict[str, Any], ...] = (
    {"dropout.input": 0.2, "dropout.conv": 0.2, "dropout.hidden": 0.5, "max_norm.enabled": True, "max_norm": 3.5,
     "momentum": 0.95, "lr": 0.05, "weight_decay": 1e-5, "batch_norm": False, "lr_decay": 0.98},
    {"dropout.input": 0.1, "dropout.conv": 0.1, "dropout.hidden": 0.3, "max_norm.enabled": True, "max_norm": 4.0,
     "momentum": 0.9, "lr": 0.1, "weight_decay": 1e-4, "batch_norm": False, "lr_decay": 0.98},
    {"dropout.input": 0.0, "dropout.conv": 0.0, "dropout.hidden": 0.2, "max_norm.enabled": False,
     "momentum": 0.9, "lr": 0.01, "weight_decay": 1e-4, "batch_norm": True, "lr_decay": 0.97},
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
        for layer in ("dropout.hidden", "dropout.conv"):
            if name.startswith(layer + "_"):
                return self.recipe.get(layer)
        return self.recipe.get(name)

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        want = self._wanted(name)
        self[name] = low if want is None else min(max(float(want), low), high)
        return self[name]

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        want = self._wanted(name)
        if want is None and name.endswith(".enabled") and False in choices:
            want = False  # a regularizer the recipe does not name stays off
        if want in choices:
            self[name] = want
        elif want is None or isinstance(want, bool) or not all(isinstance(c, int | float) for c in choices):
            self[name] = choices[0]
        else:
            self[name] = min(choices, key=lambda c: abs(float(c) - float(want)))
        return self[name]


def literature_points(space: Space, n_hidden: int, base_lr: float, n_conv: int = 0) -> list[dict[str, Any]]:
    """The literature's recipes as parameter sets of ``space`` (duplicates dropped), to enqueue as the first trials.

    The recipes are SGD's: where the optimizer is searched they start on SGD, and what they do not name (label
    smoothing, mixup, ...) stays off where it can be off, else at its range's lower end.
    """
    points: list[dict[str, Any]] = []
    for recipe in LITERATURE:
        fitted = _Recipe(recipe, base_lr)
        space.suggest(cast(optuna.Trial, fitted), n_hidden, n_conv)
        if fitted and dict(fitted) not in points:
            points.append(dict(fitted))
    return points
