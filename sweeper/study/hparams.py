"""The hyperparameter table: one declaration (a ``Knob``) per hyperparameter sweeper searches.

A knob says everything sweeper knows about one hyperparameter: its key in the study file's ``space`` section and
its default range, the values it may take and the hint shown with a bad one, whether it can be off, its name in an
Optuna trial, whether a stacked population trains it, and where its math lives. Everything else reads this table:
the study file's validation and the suggestion (``sweeper.study.space``), ``Hparams`` (one trial's values, a field
per key, generated below), the one-trial trainer (``training.train``) and the population's stack
(``training.population.stacked``). One name end to end: the key is the ``Hparams`` field and the stack's setting.

Adding a regularizer is one ``Knob`` here and its math where ``math`` says. Defaults follow the dropout literature
(Srivastava et al. 2014; Liang et al. 2021 for R-Drop); the additions beyond it (AdamW, label smoothing, mixup,
gradient clipping, weight averaging, Gaussian dropout) are off unless a study names them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from sweeper.study.param import Param, between

INF = math.inf


@dataclass(frozen=True)
class Knob:
    """One hyperparameter: its study-file key, default, allowed values, trial name, and population support."""

    key: str  # the study file's key under space:, the Hparams field, the stack's setting
    default: Param | None  # searched when the study file does not name it; None: off unless named
    hint: str  # shown with a bad value: what it is and its usual range
    math: str  # where its math lives
    low: float = 0.0  # allowed values: low <= v <= high (v < high if high_open)
    high: float = INF
    high_open: bool = False
    log: bool = False  # sampled on a log scale unless the study file says otherwise
    words: tuple[Any, ...] = ()  # a choice among names (or false/true for a switch), not a number
    can_be_off: bool = False  # false / null in the study file: off (None in Hparams)
    trial_name: str = ""  # its name in an Optuna trial (default: the key)
    optimizer: str | None = None  # drawn only in the trials of this optimizer
    layers: str | None = None  # a dropout rate per layer of this kind (input, conv, hidden): Hparams.dropout
    stack: bool | tuple[Any, ...] = True  # the population trains it: always, never (those trials run alone), or
    # for these values only
    neutral: Any = None  # its value where a trial does not draw it (another optimizer's knob, a hand-built Hparams)
    off: float = 0.0  # in the stack: the value that means off (no clipping is a bound of inf)
    float64: bool = False  # in the stack: kept in double precision (it compounds every epoch)

    @property
    def name(self) -> str:
        """The parameter's name in a trial (parameter names say where a value goes)."""
        return self.trial_name or self.key

    @property
    def numeric(self) -> bool:
        return not self.words


_RATE = {"high": 1.0, "high_open": True}
KNOBS: tuple[Knob, ...] = (  # in the order a trial draws them
    Knob("dropout_input", between(0.0, 0.2), "a dropout rate is in [0, 1): the input layer is usually 0-0.2",
         "training.layers.dropout", layers="input", trial_name="dropout.input", **_RATE),
    Knob("dropout_conv", between(0.0, 0.3), "a channel dropout rate is in [0, 1): conv blocks are usually 0-0.3",
         "torch.nn.Dropout1d (training.models.CNN1d)", layers="conv", trial_name="dropout.conv", **_RATE),
    Knob("dropout_hidden", between(0.2, 0.5), "a dropout rate is in [0, 1): hidden layers are usually 0.2-0.5",
         "training.layers.dropout", layers="hidden", trial_name="dropout.hidden", **_RATE),
    Knob("optimizer", Param(value="sgd"), "optimizer is one of ['sgd', 'adamw'] or a list of them to search",
         "training.train.optimizer; training.population.optim.sgd_step", words=("sgd", "adamw"), stack=("sgd",),
         neutral="sgd"),
    # AdamW's own learning-rate scale and decoupled decay, named apart from SGD's
    Knob("adamw_lr_scale", between(0.1, 10.0, log=True),
         "AdamW's learning-rate scale must be > 0, usually 0.1-10 (lr = base_lr * scale)",
         "Hparams.lr", low=1e-12, log=True, optimizer="adamw", trial_name="adamw.lr_scale", neutral=1.0),
    Knob("adamw_weight_decay", between(1e-4, 0.3, log=True),
         "AdamW's decoupled weight decay must be >= 0, usually 1e-4-0.1",
         "training.train.optimizer", log=True, optimizer="adamw", trial_name="adamw.weight_decay", neutral=0.0),
    Knob("adamw_beta1", Param(value=0.9), "AdamW's beta1 is in [0, 1), usually 0.9", "training.train.optimizer",
         optimizer="adamw", trial_name="adamw.beta1", neutral=0.9, **_RATE),
    Knob("adamw_beta2", Param(value=0.999), "AdamW's beta2 is in [0, 1), usually 0.99-0.999",
         "training.train.optimizer", optimizer="adamw", trial_name="adamw.beta2", neutral=0.999, **_RATE),
    Knob("weight_decay", between(1e-6, 1e-2, log=True),
         "weight decay must be >= 0 (log ranges need low > 0, e.g. [1e-6, 1e-2])",
         "L2 in SGD's gradient: training.train.optimizer; training.population.optim.sgd_step", log=True,
         optimizer="sgd", neutral=0.0),
    Knob("momentum", between(0.9, 0.99), "momentum is in [0, 1), usually 0.9-0.99",
         "training.train.optimizer; training.population.optim.sgd_step", optimizer="sgd", neutral=0.9, **_RATE),
    Knob("lr_scale", between(1.0, 100.0, log=True), "the learning-rate scale must be > 0, usually 1-100",
         "Hparams.lr", low=1e-12, log=True, optimizer="sgd", neutral=1.0),
    Knob("l1", None, "the L1 weight must be >= 0 (log ranges need low > 0)", "training.loss.l1_penalty",
         log=True, can_be_off=True),
    Knob("max_norm", between(3.0, 5.0, optional=True), "the max-norm constant c must be > 0, usually 3-5",
         "training.layers.max_norm_", low=1e-12, can_be_off=True, off=INF),
    Knob("batch_norm", Param(choices=(False, True)), "batch_norm is true, false or [false, true] to search",
         "training.layers.BatchNorm", words=(False, True), neutral=False),
    Knob("r_drop_alpha", None, "the R-Drop weight alpha must be >= 0", "training.loss.r_drop",
         can_be_off=True, trial_name="r_drop.alpha"),
    Knob("lr_decay", between(0.95, 1.0), "the per-epoch learning-rate decay factor is in (0, 1]",
         "ExponentialLR in training.train; training.population.optim.decay_lr", low=1e-12, high=1.0, neutral=1.0,
         float64=True),
    Knob("label_smoothing", None, "label smoothing epsilon is in [0, 1), usually 0.05-0.2",
         "training.loss.cross_entropy", can_be_off=True, **_RATE),
    Knob("mixup_alpha", None, "mixup's Beta(alpha, alpha) needs alpha > 0, usually 0.1-0.4",
         "training.train.Criterion", low=1e-12, can_be_off=True, trial_name="mixup.alpha", stack=False),
    Knob("grad_clip", None, "the gradient-norm clip must be > 0, usually 0.5-10",
         "clip_grad_norm_ in training.train; training.population.trainer._clip_", low=1e-12, log=True, can_be_off=True,
         off=INF),
    Knob("ema_decay", None, "the weight average's decay is in [0, 1), usually 0.9-0.999",
         "AveragedModel in training.train", can_be_off=True, trial_name="ema.decay", stack=False, **_RATE),
    # Srivastava et al. 2014, sec. 10: multiplicative N(1, rate / (1 - rate)) noise instead of Bernoulli masks
    Knob("dropout_kind", Param(value="bernoulli"),
         "dropout_kind is bernoulli, gaussian or [bernoulli, gaussian] to search", "training.layers.dropout",
         words=("bernoulli", "gaussian"), trial_name="dropout.kind", neutral="bernoulli"),
)  # fmt: skip
KNOB = {k.key: k for k in KNOBS}
OPTIMIZERS: tuple[str, ...] = KNOB["optimizer"].words


def _type(k: Knob) -> Any:
    if k.words:
        return type(k.words[0])
    return float | None if k.can_be_off else float


def _lr(self: Any, base_lr: float) -> float:
    """The trial's learning rate: ``base_lr`` times its optimizer's scale."""
    return base_lr * (self.adamw_lr_scale if self.optimizer == "adamw" else self.lr_scale)


#: One trial's hyperparameters (what is searched, apart from where it runs): ``dropout`` (the input layer's rate,
#: then each conv block's, then each hidden layer's) and a field per knob of the table, named by its key.
Hparams = make_dataclass(
    "Hparams",
    [("dropout", tuple[float, ...])] + [(k.key, _type(k), field(default=k.neutral)) for k in KNOBS if k.layers is None],
    frozen=True,
    namespace={"lr": _lr, "__doc__": "One trial's hyperparameters: ``dropout`` per layer and a field per knob."},
)
Hparams.__module__ = __name__  # where pickle finds it


def stack_settings(hp: Any) -> dict[str, tuple[float, bool]]:
    """The population's per-member settings of ``hp``: each stackable number by its key (``off`` where it is off,
    e.g. no max-norm is a bound of inf), and whether it is kept in double precision."""
    return {
        k.key: (k.off if getattr(hp, k.key) is None else float(getattr(hp, k.key)), k.float64)
        for k in KNOBS
        if k.numeric and k.layers is None and k.stack is True and k.optimizer in (None, *_stackable_optimizers())
    }


def _stackable_optimizers() -> tuple[str, ...]:
    stack = KNOB["optimizer"].stack
    return stack if isinstance(stack, tuple) else ()
