"""``sweeper check``: the classic dropout debugging step before a sweep.

With dropout on, the training loss is noisy by design, so a bug hides behind the noise. Turn every
dropout rate to 0 (keep probability 1), train briefly, and confirm the loss goes down steadily.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sweeper.study.hparams import Hparams
from sweeper.study.spec import StudySpec
from sweeper.training.objective import fit, prepare_data

log = logging.getLogger("sweeper")


@dataclass
class CheckResult:
    losses: list[float]
    passed: bool
    verdict: str


def dropout_off_check(spec: StudySpec, epochs: int = 5, tolerance: float = 0.01) -> CheckResult:
    """Train with no dropout or other regularizer (SGD, the lr range's log-middle); judge the loss curve."""
    log.info("loading the %s data", spec.data.dataset)
    data = prepare_data(spec)
    lo, hi = spec.space.lr_scale.bounds()
    scale = (lo * hi) ** 0.5  # the range's middle on its log scale: the low end barely moves a CNN in 5 epochs
    momentum = spec.space.momentum.bounds()[0]
    hp = Hparams(dropout=(0.0,) * spec.network.n_dropout, momentum=momentum, lr_scale=scale)
    settings = spec.train.model_copy(update={"epochs": epochs})
    losses: list[float] = []

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        losses.append(metrics["train_loss"])
        log.info("epoch %d/%d: training loss %.4f", epoch + 1, epochs, metrics["train_loss"])

    log.info("training %d epochs with dropout off (keep probability 1), lr scale %g", epochs, scale)
    try:
        fit(spec.model_copy(update={"train": settings}), data, hp, spec.seed, on_epoch)
    except Exception as e:  # a divergence is the verdict, not a crash
        return CheckResult(losses, False, f"FAIL: training broke off: {e}. Lower train.base_lr.")
    rises = [i for i in range(1, len(losses)) if losses[i] > losses[i - 1] * (1 + tolerance)]
    curve = " -> ".join(f"{v:.4f}" for v in losses)
    if rises:
        return CheckResult(
            losses,
            False,
            f"FAIL: with dropout off the training loss rose at epoch(s) {rises}: {curve}. "
            "Lower train.base_lr or check the data and network before sweeping.",
        )
    if len(losses) > 1 and losses[-1] > losses[0] * 0.98:
        return CheckResult(
            losses,
            False,
            f"FAIL: with dropout off the training loss hardly moved: {curve}. "
            "Raise train.base_lr or check that labels match inputs.",
        )
    return CheckResult(
        losses,
        True,
        f"PASS: with dropout off (keep probability 1) the training loss fell "
        f"steadily over {len(losses)} epochs: {curve}",
    )
