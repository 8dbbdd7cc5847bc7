"""The study's sampler and pruner, built from the spec (Optuna's own classes; the median pruner's reads made cheap)."""

from __future__ import annotations

import secrets
import warnings

import optuna

from sweeper.study.pruning import MedianPruner
from sweeper.study.spec import StudySpec


def sampler_seed(spec: StudySpec, fresh: bool) -> int:
    """The study seed (one worker: a re-run repeats its search), or a seed of this worker's own.

    Workers that share a study must not share a sampler seed: their random start-up trials would be
    the same points, trained N times. A fresh seed per worker process needs no hand-given worker id.
    """
    return secrets.randbits(31) if fresh else spec.seed


def make_sampler(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    """The study's sampler; TPE with the constant liar: parallel workers steer away from each other's running trials."""
    s = spec.sampler
    if s.type == "tpe":
        with (
            warnings.catch_warnings()
        ):  # multivariate/group are "experimental" but the recommended TPE for conditionals
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=s.n_startup_trials, multivariate=True, group=True, constant_liar=True
            )
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.type == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.n_startup_trials)
    return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=s.n_startup_trials)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.type == "median":
        return MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.warmup_epochs or 0)
    if p.type == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, p.warmup_epochs or 0))
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, p.warmup_epochs or 0), max_resource=spec.train.epochs)
    return optuna.pruners.NopPruner()
