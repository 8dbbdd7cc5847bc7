"""Train a changing population of MLPs epoch by epoch, each member on its own data order.

Members move through epochs in lockstep (every epoch has the same batches count), so a new member
can join at any epoch boundary and a finished or pruned one can leave; each member keeps its own
epoch count, learning rate and data-order generator (seeded like ``train.train``'s, so a member's
batches are the sequential trainer's batches). Dropout masks come from population generators
(one per layer and R-Drop pass): a member's masks depend on its slot in the stack, not on its peers' settings.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sweeper.study.hparams import KNOBS, Hparams
from sweeper.study.param import Param
from sweeper.study.spec import NetworkSpec, StudySpec, TrainSpec
from sweeper.training.data import Dataset, Split
from sweeper.training.layers import max_norm_
from sweeper.training.loss import cross_entropy, divergence, l1_penalty, r_drop, scores
from sweeper.training.population.optim import decay_lr, sgd_step
from sweeper.training.population.stacked import Stack
from sweeper.training.train import StepHook


def unstackable(spec: StudySpec) -> str | None:
    """Why ``spec``'s trials cannot be trained as a stacked population (then they run one at a time), or None.

    The population stacks the built-in MLP and the hyperparameters the table marks as stackable
    (``hparams.Knob.stack``); early stopping keeps a trial's best epoch, which the stack does not.
    """
    if spec.network.type != "mlp":
        return f"network {spec.network.type!r} is not the built-in mlp"
    named = []
    for knob in KNOBS:
        p = spec.space.value(knob.key)
        if p is None or knob.optimizer is not None:  # off, or drawn only with its optimizer (which says it)
            continue
        values = set(p.words() if isinstance(p, Param) else ())
        if knob.stack is False or (isinstance(knob.stack, tuple) and values - set(knob.stack)):
            named.append(knob.key)
    if spec.train.early_stopping_patience is not None:
        named.append("train.early_stopping_patience")
    return f"the population does not stack {', '.join(named)}" if named else None


@dataclass
class EpochResult:
    key: Hashable
    epoch: int
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # set when the member diverged


@torch.no_grad()
def _clip_(grads: dict[str, torch.Tensor], clip: torch.Tensor) -> None:
    """Each member's gradient to total norm <= ``clip`` (``[K]``), as ``clip_grad_norm_`` over its parameters."""
    norm = torch.stack([g.float().pow(2).flatten(1).sum(1) for g in grads.values()]).sum(0).sqrt()
    coef = (clip / (norm + 1e-6)).clamp(max=1.0)
    for g in grads.values():
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))


class PopulationTrainer:
    """``add`` members, call ``train_epoch`` until each is done, ``remove`` the ones that leave."""

    def __init__(
        self, data: Dataset, settings: TrainSpec, network: NetworkSpec, mask_seed: int = 0, amp: bool = True
    ) -> None:
        if network.type != "mlp":
            raise ValueError("population training stacks the built-in MLP only")
        self.data, self.settings, self.network = data, settings, network
        self.device = data.train.x.device
        # one mask stream per (forward pass, dropout layer): a peer switching R-Drop or a layer's
        # dropout on or off never shifts another member's masks
        layers = len(network.hidden) + 1
        self.mask_gens = [
            [torch.Generator(device=self.device).manual_seed(mask_seed * 1000 + 100 * rd + i) for i in range(layers)]
            for rd in range(2)
        ]
        self.amp = amp and self.device.type == "cuda"  # bf16 matmuls on GPUs; fp32 on CPU
        self.stack: Stack | None = None
        self.keys: list[Hashable] = []
        self.epochs: list[int] = []
        self.gens: list[torch.Generator] = []

    @property
    def size(self) -> int:
        return len(self.keys)

    def add(
        self,
        keys: Sequence[Hashable],
        hps: Sequence[Hparams],
        seeds: Sequence[int],
        saved: Sequence[dict[str, Any] | None] = (),
    ) -> None:
        """New members, each from its seed or, where ``saved`` has one, from a ``member_state`` (a resumed trial)."""
        if not keys:
            return
        saved = list(saved) or [None] * len(keys)
        new = Stack.build(
            hps,
            seeds,
            self.data.in_features,
            self.data.num_classes,
            self.network.hidden,
            self.network.activation,
            self.settings.base_lr,
            self.device,
            saved,
        )
        if self.stack is None:
            self.stack = new
        else:
            self.stack.extend(new)
        self.keys += list(keys)
        self.epochs += [int(s["epoch"]) if s else 0 for s in saved]
        for seed, state in zip(seeds, saved, strict=True):
            self.gens.append(torch.Generator(device=self.device).manual_seed(seed))
            if state is not None:
                self.gens[-1].set_state(state["gen"])

    def member_state(self, key: Hashable) -> dict[str, Any]:
        """A member's training state at an epoch's end (weights, momentum, learning rate, epochs, data order): what
        ``add`` resumes it from. Not its dropout masks: they come from the population's streams, shared by slot."""
        assert self.stack is not None
        j = self.keys.index(key)
        return {**self.stack.member_state(j), "epoch": self.epochs[j], "gen": self.gens[j].get_state()}

    def member(self, key: Hashable) -> torch.nn.Module:
        """A member as a one-trial network (``models.MLP``) with its weights as trained so far."""
        assert self.stack is not None
        return self.stack.net.member(self.keys.index(key))

    def remove(self, keys: Sequence[Hashable]) -> None:
        gone = set(keys)
        idx = [i for i, k in enumerate(self.keys) if k not in gone]
        if len(idx) == self.size:
            return
        assert self.stack is not None
        self.stack.select(idx)
        self.keys = [self.keys[i] for i in idx]
        self.epochs = [self.epochs[i] for i in idx]
        self.gens = [self.gens[i] for i in idx]

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp)

    def _step(self, xb: torch.Tensor, yb: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """One training step of every member (or of the ``active`` ones, ``[K]`` bool); their losses, ``[K]``."""
        stack = self.stack
        assert stack is not None
        net, hp = stack.net, stack.hp
        with self._autocast():
            logits = net(xb, self.mask_gens[0], bn_update=active)
            smooth = hp["label_smoothing"] if stack.any_smooth else None
            loss = cross_entropy(logits, yb, smooth)
            if stack.any_r_drop:
                alpha = hp["r_drop_alpha"]
                # R-Drop's second pass moves the batch-norm running statistics of R-Drop members only (as
                # train.train's second forward pass does), never those of the members beside them
                second = alpha > 0 if active is None else (alpha > 0) & active
                logits2 = net(xb, self.mask_gens[1], bn_update=second)
                both = 0.5 * (loss + cross_entropy(logits2, yb, smooth)) + alpha * r_drop(logits, logits2)
                loss = torch.where(alpha > 0, both, loss)
        reported = loss.detach()
        if stack.any_l1:
            loss = loss + hp["l1"] * l1_penalty(stack.weights.values(), members=True)
        if active is not None:
            loss = torch.where(active, loss, torch.zeros_like(loss))
        params = stack.params
        # batch-norm parameters get no gradient when no member uses batch norm: SGD skips them too
        grads = torch.autograd.grad(loss.sum(), list(params.values()), allow_unused=True)
        used = {n: g for n, g in zip(params, grads, strict=True) if g is not None}
        if stack.any_clip:
            _clip_(used, hp["grad_clip"])
        sgd_step(stack, used, active)
        if stack.any_max_norm:
            max_norm_(net, hp["max_norm"], active)
        return reported

    def evaluate(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member mean cross-entropy and accuracy (dropout off, batch-norm running statistics)."""
        assert self.stack is not None
        return scores(self.stack.net, split, self.settings.eval_batch_size, self.size, self._autocast)

    def train_epoch(self, on_step: StepHook | None = None) -> list[EpochResult]:
        """One epoch for every member; one host sync at its end. ``on_step()`` runs after each step and may raise."""
        stack = self.stack
        assert stack is not None and self.size
        x, y = self.data.train.x, self.data.train.y
        n, bs = len(x), self.settings.batch_size
        perms = torch.stack([torch.randperm(n, generator=g, device=self.device) for g in self.gens])
        loss_sum = torch.zeros(self.size, device=self.device)
        steps = torch.zeros(self.size, device=self.device)
        for i in range(0, n, bs):
            idx = perms[:, i : i + bs]
            if idx.shape[1] < 2 and stack.any_bn:
                # batch norm needs 2 samples: like train.train, a batch-norm member skips a 1-sample batch,
                # and the members without batch norm still train on it, as they would alone
                active = ~stack.net.batch_norm
                if not bool(active.any()):
                    continue
                loss_sum += torch.where(active, self._step(x[idx], y[idx], active), torch.zeros_like(loss_sum))
                steps += active
            else:
                loss_sum += self._step(x[idx], y[idx])
                steps += 1
            if on_step is not None:
                on_step()
        train_loss = loss_sum / steps.clamp(min=1)
        val_loss, val_acc = self.evaluate(self.data.val)
        lr = stack.hp["lr"].clone()
        decay_lr(stack)
        table = torch.stack([train_loss.double(), val_loss.double(), val_acc.double(), lr]).cpu().tolist()
        out = []
        for j, key in enumerate(self.keys):
            tl, vl, va, rate = (row[j] for row in table)
            epoch = self.epochs[j]
            self.epochs[j] += 1
            metrics = {"train_loss": tl, "val_loss": vl, "val_accuracy": va, "lr": rate}
            out.append(EpochResult(key, epoch, metrics, divergence(tl, vl, epoch)))
        return out
