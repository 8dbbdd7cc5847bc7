"""The search space: the study file's ``space`` section, checked against the hyperparameter table, and its
``trial.suggest_*``.

A value in the ``space`` section is one of
  - a number (or true/false, or a name): fixed, not searched;
  - ``[low, high]`` or ``{low, high, log, optional}``: a range (``optional: true`` also tries "off");
  - ``{choices: [...]}`` (or a list of names): a categorical;
  - ``false`` / ``null`` on a regularizer that can be off (l1, max_norm, r_drop_alpha, ...): off.
Every key, its default and its limits come from ``sweeper.study.hparams.KNOBS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import optuna
from pydantic import BaseModel, ConfigDict, ValidationInfo, create_model, field_validator, model_validator

from sweeper.study.hparams import KNOB, KNOBS, Hparams, Knob
from sweeper.study.param import Param

if TYPE_CHECKING:
    from sweeper.study.spec import NetworkSpec

__all__ = ["Hparams", "Space"]


class _SpaceBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _off(cls, v: Any) -> Any:
        # ``max_norm: false`` means off, not "fixed at 0"
        if isinstance(v, dict):
            return {k: (None if x is False and k in KNOB and KNOB[k].can_be_off else x) for k, x in v.items()}
        return v

    @field_validator("*")
    @classmethod
    def _allowed(cls, value: Param | tuple[Param, ...] | None, info: ValidationInfo) -> Any:
        assert info.field_name is not None
        knob = KNOB[info.field_name]
        if isinstance(value, tuple) and not value:
            raise ValueError("give a range like [0.2, 0.5], or a list of ranges with one per hidden layer, not []")
        for p in value if isinstance(value, tuple) else (value,):
            if p is not None:
                (_check_number if knob.numeric else _check_choice)(knob, p)
        return value

    def param_names(self, n_hidden: int, n_conv: int = 0) -> list[str]:
        """The names of the parameters a trial searches (optional ones as if on, each optimizer's own), in order."""
        names: list[str] = []
        for optimizer in self.value("optimizer").words():
            asked = _Names(optimizer)
            self.suggest(cast(optuna.Trial, asked), n_hidden, n_conv)
            names += [n for n in asked if n not in names and not n.endswith(".enabled")]
        return names

    def check_network(self, network: NetworkSpec) -> None:
        """What the space asks of the study's network: a list of per-layer ranges has one per layer; Gaussian
        dropout changes sweeper's own dropout layers, which a network.factory does not use."""
        for key, n in (("dropout_hidden", network.n_hidden), ("dropout_conv", network.n_conv)):
            ranges = self.value(key)
            if isinstance(ranges, tuple) and len(ranges) != n and not (key == "dropout_conv" and n == 0):
                raise ValueError(
                    f"space.{key} needs one range per layer ({n} in this network), but got {len(ranges)} "
                    f"ranges; give one per layer, or a single range [low, high] for all"
                )
        if network.type == "python" and "gaussian" in self.value("dropout_kind").words():
            raise ValueError(
                "space.dropout_kind gaussian changes sweeper's own dropout layers (network type mlp or cnn1d), but "
                "got network type 'python', whose factory builds its own; remove dropout_kind or set it to bernoulli"
            )

    def value(self, key: str) -> Any:
        """The study file's value for a knob (its ``Param``, a tuple of them per layer, or None when off)."""
        return getattr(self, key)

    def suggest(self, trial: optuna.Trial, n_hidden: int, n_conv: int = 0) -> Any:
        """Draw one trial's ``Hparams``, knob by knob in the table's order; parameter names say where each goes.

        ``n_conv``: the network's conv blocks (cnn1d), each with its own channel dropout rate; their rates come
        after the input's and before the hidden layers' in ``Hparams.dropout``.
        """
        layers = {"input": 1, "conv": n_conv, "hidden": n_hidden}
        optimizer = None
        rates: list[float] = []
        values: dict[str, Any] = {}
        for knob in KNOBS:
            if knob.optimizer is not None and knob.optimizer != optimizer:
                continue  # conditional: each optimizer's own parameters
            p = self.value(knob.key)
            if knob.layers is not None:
                per = _per_layer(p, layers[knob.layers], knob.key)
                names = [knob.name] if knob.layers == "input" else [f"{knob.name}_{i + 1}" for i in range(len(per))]
                rates += [float(q.suggest(trial, name)) for q, name in zip(per, names, strict=True)]
            elif p is not None:
                values[knob.key] = _typed(knob, p.suggest(trial, knob.name, knob.log))
            if knob.key == "optimizer":
                optimizer = values["optimizer"]
        return Hparams(dropout=tuple(rates), **values)


def _typed(knob: Knob, v: Any) -> Any:
    """A drawn value as its ``Hparams`` field holds it: a number as a float, a switch as a bool, a name as is."""
    if v is None or isinstance(v, str):
        return v
    return bool(v) if knob.words else float(v)


def _check_number(knob: Knob, p: Param) -> None:
    if p.words():
        raise ValueError(f"{knob.hint}; expected a number, [low, high] or a mapping, but got {p.words()[0]!r}")
    low, high = p.bounds()
    log = knob.log if p.log is None else p.log
    if (
        low < knob.low
        or high > knob.high
        or (knob.high_open and high >= knob.high)
        or (log and p.low is not None and p.low <= 0)
    ):
        raise ValueError(f"{knob.hint}, but got {low}..{high}")


def _check_choice(knob: Knob, p: Param) -> None:
    values = list(p.choices) if p.choices is not None else [p.value]
    if p.low is not None or any(v not in knob.words or type(v) is not type(knob.words[0]) for v in values):
        got = [p.low, p.high] if p.low is not None else values if p.choices is not None else p.value
        raise ValueError(f"{knob.hint}, but got {got!r}")


def _per_layer(p: Param | tuple[Param, ...], n: int, key: str) -> tuple[Param, ...]:
    """One range per layer: the same for every layer, or the study file's list (one per layer)."""
    if isinstance(p, tuple):
        if len(p) != n:
            raise ValueError(f"space.{key} lists {len(p)} ranges for {n} layers")
        return p
    return (p,) * n


def _field(knob: Knob) -> tuple[Any, Any]:
    typ: Any = Param | tuple[Param, ...] if knob.layers in ("conv", "hidden") else Param
    return (typ | None if knob.can_be_off else typ), knob.default


#: The ``space`` section of a study file: a field per knob of the table, its default the literature's range.
Space = create_model(  # type: ignore[call-overload]
    "Space",
    __base__=_SpaceBase,
    __module__=__name__,
    __doc__="The ``space`` section of a study file: a field per knob of ``hparams.KNOBS``.",
    **{k.key: _field(k) for k in KNOBS},
)


class _Names(list[str]):
    """Stands in for a trial to list the names ``Space.suggest`` asks for, each optional regularizer on."""

    def __init__(self, optimizer: str) -> None:
        super().__init__()
        self.optimizer = optimizer

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        self.append(name)
        return low

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        self.append(name)
        if name == KNOB["optimizer"].name:
            return self.optimizer
        return True if name.endswith(".enabled") else choices[0]
