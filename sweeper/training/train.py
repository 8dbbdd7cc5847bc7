"""One network's training loop, with the data resident on the device for the whole run."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sweeper.errors import DivergedError
from sweeper.study.hparams import Hparams
from sweeper.study.spec import TrainSpec
from sweeper.training.data import Dataset
from sweeper.training.layers import BatchNorm, max_norm_, weight_matrices
from sweeper.training.loss import cross_entropy, divergence, evaluate, l1_penalty, r_drop
from sweeper.training.models import decay_groups

EpochHook = Callable[[int, dict[str, float]], None]
StepHook = Callable[[], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A per-trial seed derived from the study seed, so a trial re-run reproduces its numbers."""
    return int(np.random.SeedSequence([study_seed, trial_number]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Criterion:
    """The training loss of one batch: cross-entropy with label smoothing, mixup and R-Drop as ``hp`` sets them.

    Mixup (Zhang et al. 2018) mixes each batch with a shuffled copy of itself, ``lam ~ Beta(alpha, alpha)``, and
    the loss the same way; R-Drop (Liang et al. 2021) runs two dropout passes: mean CE + alpha * symmetric KL.
    """

    def __init__(self, hp: Hparams, seed: int) -> None:
        self.hp = hp
        self.rng = np.random.default_rng(seed)  # mixup's lam: its own stream, never the data order's

    def __call__(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        hp = self.hp
        lam, y2 = 1.0, yb
        if hp.mixup_alpha:
            lam = float(self.rng.beta(hp.mixup_alpha, hp.mixup_alpha))
            perm = torch.randperm(len(xb), generator=gen, device=xb.device)
            xb, y2 = lam * xb + (1.0 - lam) * xb[perm], yb[perm]

        def ce(logits: torch.Tensor) -> torch.Tensor:
            loss = cross_entropy(logits, yb, hp.label_smoothing)
            if hp.mixup_alpha:
                loss = lam * loss + (1.0 - lam) * cross_entropy(logits, y2, hp.label_smoothing)
            return loss

        logits = model(xb)
        if not hp.r_drop_alpha:
            return ce(logits)
        logits2 = model(xb)
        return 0.5 * (ce(logits) + ce(logits2)) + hp.r_drop_alpha * r_drop(logits, logits2)


def optimizer(model: nn.Module, hp: Hparams, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum and L2 in the gradient, or AdamW with decoupled decay; weight matrices only decay."""
    if hp.optimizer == "adamw":
        groups = decay_groups(model, hp.adamw_weight_decay)
        return torch.optim.AdamW(groups, lr=lr, betas=(hp.adamw_beta1, hp.adamw_beta2))
    return torch.optim.SGD(decay_groups(model, hp.weight_decay), lr=lr, momentum=hp.momentum)


class BestEpoch:
    """Early stopping: the best epoch's metrics and weights so far, and whether patience has run out."""

    def __init__(self, metric: str, patience: int | None) -> None:
        self.metric, self.patience, self.sign = metric, patience, (1.0 if metric == "val_accuracy" else -1.0)
        self.metrics: dict[str, float] = {}
        self.state: dict[str, torch.Tensor] | None = None
        self.since = 0

    def update(self, model: nn.Module, metrics: dict[str, float]) -> bool:
        """Keep ``model``'s weights if this epoch is the best; True when training should stop."""
        if not self.metrics or self.sign * (metrics[self.metric] - self.metrics[self.metric]) > 0:
            self.metrics, self.since = metrics, 0
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.since += 1
        return self.patience is not None and self.since >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "state": self.state, "since": self.since}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.metrics, self.state, self.since = dict(state["metrics"]), state["state"], int(state["since"])


class Training:
    """One network's training, step by step, holding every piece of state it needs to go on in another process.

    ``state_dict()`` at a step boundary (inside ``on_step``) or an epoch's end (inside ``on_epoch``) and
    ``load_state_dict`` into a ``Training`` built the same way (same network, hyperparameters, seed) continue
    the run exactly: weights, optimizer moments, the learning-rate schedule, the weight average, early
    stopping, the position in the epoch's data order and every random generator it draws from (data order,
    mixup, dropout masks: torch's default generators, Python's and NumPy's global ones), and the metrics per
    epoch so far (``curve``). ``sweeper.workers.checkpoints`` stores it.
    """

    def __init__(
        self, model: nn.Module, data: Dataset, hp: Hparams, settings: TrainSpec, seed: int, metric: str
    ) -> None:
        self.model, self.data, self.hp, self.settings = model, data, hp, settings
        self.device = data.train.x.device
        self.opt = optimizer(model, hp, hp.lr(settings.base_lr))
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma=hp.lr_decay)
        self.criterion = Criterion(hp, seed)
        self.ema = None
        if hp.ema_decay is not None:
            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(hp.ema_decay), use_buffers=True)
        self.best = BestEpoch(metric, settings.early_stopping_patience)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)  # data order (and mixup's pairing)
        self.epoch, self.stopped_early = 0, False
        self.perm: torch.Tensor | None = None  # this epoch's data order, drawn at its first step
        self.pos, self.steps = 0, 0  # where in it, and the steps taken
        self.loss_sum = torch.zeros((), device=self.device)  # accumulated on the device: one sync per epoch
        self.curve: list[dict[str, float]] = []  # each finished epoch's metrics

    def state_dict(self) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "best": self.best.state_dict(),
            "gen": self.gen.get_state(),
            "mixup": self.criterion.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda,
            "python_rng": random.getstate(),
            "numpy_rng": _numpy_state(),
            "epoch": self.epoch,
            "stopped_early": self.stopped_early,
            "perm": self.perm,
            "pos": self.pos,
            "steps": self.steps,
            "loss_sum": self.loss_sum,
            "curve": self.curve,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        if (self.ema is None) != (state["ema"] is None):
            raise ValueError("the checkpoint's weight average does not match the trial's ema_decay")
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.best.load_state_dict(state["best"])
        self.gen.set_state(state["gen"])
        self.criterion.rng.bit_generator.state = state["mixup"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        random.setstate(_as_tuple(state["python_rng"]))
        np.random.set_state(_numpy_state(state["numpy_rng"]))
        self.epoch, self.stopped_early = int(state["epoch"]), bool(state["stopped_early"])
        perm = state["perm"]
        self.perm = None if perm is None else perm.to(self.device)
        self.pos, self.steps = int(state["pos"]), int(state["steps"])
        self.loss_sum = state["loss_sum"].to(self.device)
        self.curve = [dict(m) for m in state["curve"]]

    def run(self, on_epoch: EpochHook | None = None, on_step: StepHook | None = None) -> dict[str, float]:
        """Train to the last epoch (from wherever this training stands); the last epoch's metrics, or the best
        epoch's with early stopping. ``on_epoch``/``on_step`` see a state that ``state_dict`` can save."""
        model, hp, settings = self.model, self.hp, self.settings
        x, y = self.data.train.x, self.data.train.y
        evaluated = self.ema or model
        weights = list(weight_matrices(model).values())
        n, bs = len(x), settings.batch_size
        bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm | BatchNorm) for m in model.modules())
        min_batch = 2 if bn else 1
        while self.epoch < settings.epochs and not self.stopped_early:
            model.train()
            if self.perm is None:
                self.perm = torch.randperm(n, generator=self.gen, device=self.device)
                self.pos, self.steps = 0, 0
                self.loss_sum = torch.zeros((), device=self.device)
            while self.pos < n:
                idx = self.perm[self.pos : self.pos + bs]
                self.pos += bs
                if len(idx) < min_batch:
                    continue
                loss = self.criterion(model, x[idx], y[idx], self.gen)
                self.loss_sum += loss.detach()
                if hp.l1:
                    loss = loss + hp.l1 * l1_penalty(weights)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if hp.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
                self.opt.step()
                if hp.max_norm:
                    max_norm_(model, hp.max_norm)
                if self.ema is not None:
                    self.ema.update_parameters(model)
                self.steps += 1
                if on_step is not None:
                    on_step()
            epoch = self.epoch
            train_loss = (self.loss_sum / max(self.steps, 1)).item()
            val_loss, val_acc = evaluate(evaluated, self.data.val, settings.eval_batch_size)
            metrics = {
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": self.opt.param_groups[0]["lr"],
            }
            self.sched.step()
            if why := divergence(train_loss, val_loss, epoch):
                raise DivergedError(why)
            self.curve.append(metrics)
            self.epoch, self.perm, self.pos, self.steps = epoch + 1, None, 0, 0
            if settings.early_stopping_patience:
                self.stopped_early = self.best.update(self.ema.module if self.ema else model, metrics)
            if on_epoch is not None:
                on_epoch(epoch, metrics)
        if settings.early_stopping_patience is not None and self.best.state is not None:
            model.load_state_dict(self.best.state)
            return self.best.metrics
        if self.ema is not None:
            model.load_state_dict(self.ema.module.state_dict())
        return self.curve[-1]


def _numpy_state(saved: list[Any] | None = None) -> Any:
    """NumPy's global generator state as plain lists (what ``torch.load(weights_only=True)`` reads), and back."""
    if saved is None:
        name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
        return [name, key.tolist(), pos, has_gauss, cached]
    name, key, pos, has_gauss, cached = saved
    return (name, np.array(key, dtype=np.uint32), pos, has_gauss, cached)


def _as_tuple(state: Any) -> Any:
    """``random.getstate()`` as it was, after a round trip through ``torch.load`` (tuples may come back as lists)."""
    return tuple(_as_tuple(s) for s in state) if isinstance(state, list | tuple) else state


def train(
    model: nn.Module,
    data: Dataset,
    hp: Hparams,
    settings: TrainSpec,
    seed: int,
    on_epoch: EpochHook | None = None,
    on_step: StepHook | None = None,
    metric: str = "val_accuracy",
) -> dict[str, float]:
    """Train ``model`` in place on ``data`` (already on the model's device); return the last epoch's metrics.

    ``on_epoch(epoch, metrics)`` is called after each epoch; it may raise (e.g. ``optuna.TrialPruned``)
    to stop; ``on_step()`` is called after each optimizer step and may raise too (a stop request).
    Raises ``DivergedError`` when the training loss stops being finite. With ``hp.ema_decay`` the evaluated (and
    in the end, the trained) weights are the moving average; with ``settings.early_stopping_patience`` training
    stops when ``metric`` has not improved for that many epochs, and ``model`` and the returned metrics are
    those of its best epoch. A run that can be saved and continued: ``Training``.
    """
    return Training(model, data, hp, settings, seed, metric).run(on_epoch, on_step)
