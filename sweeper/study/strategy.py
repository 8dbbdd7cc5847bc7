"""The study's sampler and pruner, built from the spec (Optuna's own classes, unwrapped)."""

from __future__ import annotations

import warnings

import optuna

from sweeper.study.spec import StudySpec


def make_sampler(spec: StudySpec, worker_id: int = 0) -> optuna.samplers.BaseSampler:
    """Each worker seeds its sampler differently, so workers never start with identical trials."""
    seed = spec.seed + 1000 * worker_id
    s = spec.sampler
    if s.type == "tpe":
        with (
            warnings.catch_warnings()
        ):  # multivariate/group are "experimental" but the recommended TPE for conditionals
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=s.n_startup_trials, multivariate=True, group=True
            )
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.type == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.n_startup_trials)
    return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=s.n_startup_trials)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.warmup_epochs)
    if p.type == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, p.warmup_epochs))
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, p.warmup_epochs), max_resource=spec.train.epochs)
    return optuna.pruners.NopPruner()
