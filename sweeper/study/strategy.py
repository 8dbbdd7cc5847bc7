"""The study's sampler and pruner, built from the spec: Optuna's own, TPE's and the median pruner's reads made cheap."""

from __future__ import annotations

import secrets
import threading
import warnings
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from sweeper.study.search_view import SearchView, search_view
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
            return TPESampler(
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


class TPESampler(optuna.samplers.TPESampler):
    """Optuna's ``TPESampler``, its samples unchanged, reading the study through ``search_view``: finished trials
    from the worker's copy, running ones lean, each trial's finished ones once as Optuna's study would."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._views = threading.local()  # this thread's view of the study, for its current trial

    def __getstate__(self) -> dict[str, Any]:  # a sampler pickles, as Optuna's do (its views are this process's)
        return {k: v for k, v in self.__dict__.items() if k != "_views"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._views = threading.local()

    def _view(self, study: optuna.Study, trial: FrozenTrial) -> optuna.Study:
        view = getattr(self._views, "view", None)
        if not (isinstance(view, SearchView) and view.is_for(study, trial.number)):
            view = self._views.view = search_view(study, trial.number)
        return view

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return super().infer_relative_search_space(self._view(study, trial), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return super().sample_relative(self._view(study, trial), trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return super().sample_independent(self._view(study, trial), trial, param_name, param_distribution)


class MedianPruner(optuna.pruners.MedianPruner):
    """Optuna's ``MedianPruner``, its decisions unchanged, reading the study's finished trials from the worker's
    copy (``search_view``) at each report."""

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return super().prune(search_view(study), trial)
