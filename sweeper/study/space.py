"""The search space: what a study file writes for each hyperparameter, and ``trial.suggest_*``.

A value in the ``space`` section is one of
  - a number (or true/false): fixed, not searched;
  - ``[low, high]`` or ``{low, high, log, optional}``: a range (``optional: true`` also tries "off");
  - ``{choices: [...]}``: a categorical;
  - ``false`` / ``null`` on an optional regularizer (l1, max_norm, r_drop_alpha, label_smoothing, mixup_alpha,
    grad_clip, ema_decay): off.
Defaults follow the dropout literature (Srivastava et al. 2014; Liang et al. 2021 for R-Drop); the additions
beyond it (AdamW, label smoothing, mixup, gradient clipping, weight averaging) are off unless a study names them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, cast

import optuna
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from sweeper.study.param import Param, between

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
    "dropout_conv": (0.0, 1.0, True, False),
    "adamw_lr_scale": (1e-12, float("inf"), False, True),
    "adamw_weight_decay": (0.0, float("inf"), False, True),
    "adamw_beta1": (0.0, 1.0, True, False),
    "adamw_beta2": (0.0, 1.0, True, False),
    "label_smoothing": (0.0, 1.0, True, False),
    "mixup_alpha": (1e-12, float("inf"), False, False),
    "grad_clip": (1e-12, float("inf"), False, True),
    "ema_decay": (0.0, 1.0, True, False),
}
OPTIMIZERS = ("sgd", "adamw")
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
    "dropout_conv": "a channel dropout rate is in [0, 1): conv blocks are usually 0-0.3",
    "adamw_lr_scale": "AdamW's learning-rate scale must be > 0, usually 0.1-10 (lr = base_lr * scale)",
    "adamw_weight_decay": "AdamW's decoupled weight decay must be >= 0, usually 1e-4-0.1",
    "adamw_beta1": "AdamW's beta1 is in [0, 1), usually 0.9",
    "adamw_beta2": "AdamW's beta2 is in [0, 1), usually 0.99-0.999",
    "label_smoothing": "label smoothing epsilon is in [0, 1), usually 0.05-0.2",
    "mixup_alpha": "mixup's Beta(alpha, alpha) needs alpha > 0, usually 0.1-0.4",
    "grad_clip": "the gradient-norm clip must be > 0, usually 0.5-10",
    "ema_decay": "the weight average's decay is in [0, 1), usually 0.9-0.999",
}
_OPTIONAL = ("l1", "max_norm", "r_drop_alpha", "label_smoothing", "mixup_alpha", "grad_clip", "ema_decay")


class Space(BaseModel):
    """The ``space`` section of a study file; each field's default is the literature's range."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dropout_input: Param = between(0.0, 0.2)
    dropout_hidden: Param | tuple[Param, ...] = between(0.2, 0.5)
    weight_decay: Param = between(1e-6, 1e-2, log=True)
    l1: Param | None = None
    momentum: Param = between(0.9, 0.99)
    lr_scale: Param = between(1.0, 100.0, log=True)
    max_norm: Param | None = between(3.0, 5.0, optional=True)
    batch_norm: Param = Param(choices=(False, True))
    r_drop_alpha: Param | None = None
    lr_decay: Param = between(0.95, 1.0)
    # network: cnn1d only: channel dropout (Dropout1d) after each conv block, like dropout_hidden per block
    dropout_conv: Param | tuple[Param, ...] = between(0.0, 0.3)
    # the optimizer: sgd (momentum, lr_scale, weight_decay as L2 in the gradient) or adamw (its own lr scale and
    # decoupled weight decay, see README); a categorical [sgd, adamw] searches both, each with its own parameters
    optimizer: Param = Param(value="sgd")
    adamw_lr_scale: Param = between(0.1, 10.0, log=True)
    adamw_weight_decay: Param = between(1e-4, 0.3, log=True)
    adamw_beta1: Param = Param(value=0.9)
    adamw_beta2: Param = Param(value=0.999)
    # beyond the dropout paper, off unless named: label smoothing epsilon, mixup alpha, gradient-norm clip,
    # exponential moving average of the weights (its decay; the average is what is evaluated and kept)
    label_smoothing: Param | None = None
    mixup_alpha: Param | None = None
    grad_clip: Param | None = None
    ema_decay: Param | None = None

    @model_validator(mode="before")
    @classmethod
    def _off(cls, v: Any) -> Any:
        # ``max_norm: false`` means off, not "fixed at 0"
        if isinstance(v, dict):
            return {k: (None if x is False and k in _OPTIONAL else x) for k, x in v.items()}
        return v

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, value: Param) -> Param:
        names = value.words()
        if value.low is not None or len(names) != len(value.choices or (value.value,)) or set(names) - set(OPTIMIZERS):
            raise ValueError(
                f"optimizer is one of {list(OPTIMIZERS)} or a list of them to search, but got "
                f"{list(value.choices) if value.choices else value.value!r}"
            )
        return value

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
            if p.words():
                raise ValueError(
                    f"{_HINTS[name]}; expected a number, [low, high] or a mapping, but got {p.words()[0]!r}"
                )
            low, high = p.bounds()
            log = default_log if p.log is None else p.log
            if low < lo or high > hi or (hi_open and high >= hi) or (log and p.low is not None and p.low <= 0):
                raise ValueError(f"{_HINTS[name]}, but got {low}..{high}")
        return value

    @field_validator("batch_norm")
    @classmethod
    def _switch(cls, value: Param) -> Param:
        if value.words() or value.low is not None:
            raise ValueError(f"batch_norm is true, false or [false, true] to search, but got {value.words() or value}")
        return value

    def param_names(self, n_hidden: int, n_conv: int = 0) -> list[str]:
        """The names of the parameters a trial searches (optional ones as if on, each optimizer's own), in order."""
        names: list[str] = []
        for optimizer in self.optimizer.words():
            asked = _Names(optimizer)
            self.suggest(cast(optuna.Trial, asked), n_hidden, n_conv)
            names += [n for n in asked if n not in names and not n.endswith(".enabled")]
        return names

    def suggest(self, trial: optuna.Trial, n_hidden: int, n_conv: int = 0) -> Hparams:
        """Draw one trial's hyperparameters; parameter names say where each value goes.

        ``n_conv``: the network's conv blocks (cnn1d), each with its own channel dropout rate; their rates come
        after the input's and before the hidden layers' in ``Hparams.dropout``.
        """
        rates = [self.dropout_input.suggest(trial, "dropout.input")]
        rates += [
            p.suggest(trial, f"dropout.conv_{i + 1}") for i, p in enumerate(_per_layer(self.dropout_conv, n_conv))
        ]
        hidden = _per_layer(self.dropout_hidden, n_hidden, "dropout_hidden")
        rates += [p.suggest(trial, f"dropout.hidden_{i + 1}") for i, p in enumerate(hidden)]

        def opt(p: Param | None, name: str, log: bool = False) -> float | None:
            return None if p is None else p.suggest(trial, name, log)

        optimizer = str(self.optimizer.suggest(trial, "optimizer"))
        if optimizer == "adamw":  # conditional: AdamW's own scale and decoupled decay (named apart from SGD's)
            lr_scale = float(self.adamw_lr_scale.suggest(trial, "adamw.lr_scale", True))
            weight_decay = float(self.adamw_weight_decay.suggest(trial, "adamw.weight_decay", True))
            betas = (float(self.adamw_beta1.suggest(trial, "adamw.beta1")),
                     float(self.adamw_beta2.suggest(trial, "adamw.beta2")))  # fmt: skip
            momentum = 0.0
        else:
            weight_decay = float(self.weight_decay.suggest(trial, "weight_decay", True))
            momentum = float(self.momentum.suggest(trial, "momentum"))
            lr_scale = float(self.lr_scale.suggest(trial, "lr_scale", True))
            betas = (0.9, 0.999)
        return Hparams(
            dropout=tuple(float(r) for r in rates),
            weight_decay=weight_decay,
            l1=opt(self.l1, "l1", True),
            momentum=momentum,
            lr_scale=lr_scale,
            max_norm=opt(self.max_norm, "max_norm"),
            batch_norm=bool(self.batch_norm.suggest(trial, "batch_norm")),
            r_drop_alpha=opt(self.r_drop_alpha, "r_drop.alpha"),
            lr_decay=float(self.lr_decay.suggest(trial, "lr_decay")),
            optimizer=optimizer,
            betas=betas,
            label_smoothing=opt(self.label_smoothing, "label_smoothing"),
            mixup_alpha=opt(self.mixup_alpha, "mixup.alpha"),
            grad_clip=opt(self.grad_clip, "grad_clip", True),
            ema_decay=opt(self.ema_decay, "ema.decay"),
        )


def _per_layer(p: Param | tuple[Param, ...], n: int, field: str = "dropout_conv") -> tuple[Param, ...]:
    """One range per layer: the same for every layer, or the study file's list (one per layer)."""
    if isinstance(p, tuple):
        if len(p) != n:
            raise ValueError(f"space.{field} lists {len(p)} ranges for {n} layers")
        return p
    return (p,) * n


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
        if name == "optimizer":
            return self.optimizer
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
    optimizer: str = "sgd"  # sgd: momentum, L2 weight_decay; adamw: betas, decoupled weight_decay
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float | None = None
    mixup_alpha: float | None = None
    grad_clip: float | None = None  # max gradient norm
    ema_decay: float | None = None  # evaluate (and keep) an exponential moving average of the weights

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
