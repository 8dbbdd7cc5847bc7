"""The Python API that the CLI (and tests) call."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeper.errors import SpecError, StudyError
from sweeper.spec import StudySpec, load_spec
from sweeper.storage import make_storage, mask_url, storage_url, tracking_uri
from sweeper.worker import BUDGET_ATTR, SPEC_ATTR, load_study, n_finished, run_worker

TEST_ATTR = "sweeper.best_test"
log = logging.getLogger("sweeper")
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class StudyReport:
    name: str
    budget: int
    counts: dict[str, int]
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_trial: int | None = None
    test: dict[str, Any] | None = None


def create_study(spec: StudySpec, storage: str, trials: int | None = None, allow_changed: bool = False) -> optuna.Study:
    """Create the study with its spec stored in it, or check an existing one's spec and resume it."""
    st = make_storage(storage)
    study = optuna.create_study(study_name=spec.name, storage=st, direction=spec.direction, load_if_exists=True)
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is not None and not allow_changed:
        from sweeper.spec import parse_spec

        old = parse_spec(stored)
        if old.fingerprint() != spec.fingerprint():
            raise StudyError(
                f"study {spec.name!r} already exists in {mask_url(storage)} with a different study file; "
                f"resume it unchanged, pick a new 'name', or pass --allow-changed-spec"
            )
    if study.direction.name.lower() != spec.direction:
        raise StudyError(
            f"study {spec.name!r} exists with direction {study.direction.name.lower()}, not {spec.direction}"
        )
    study.set_user_attr(SPEC_ATTR, spec.to_dict())
    study.set_user_attr(BUDGET_ATTR, trials or spec.trials)
    return study


def launch(
    study_file: str | Path | StudySpec,
    trials: int | None = None,
    storage: str | None = None,
    tracking: str | None = None,
    allow_changed: bool = False,
    progress: bool = False,
    score_test: bool = True,
    population: int | None = None,
    workers: int = 1,
    gpus: str | None = None,
) -> StudyReport:
    """Create or resume a study from a study file, run it to its budget, and score the best trial on test.

    With ``workers > 1`` (or ``gpus``) the trials run in that many worker processes (``sweeper.launcher``).

    ``population`` trains that many trials at once, stacked on one device (default: the study file's
    ``train.population``, 1 unless set).
    """
    _check_population(population)
    if workers > 1 or gpus is not None:
        from sweeper.launcher import parse_gpus

        parse_gpus(gpus)  # a wrong --gpus stops us before the study exists
    spec = create(study_file, trials, storage, tracking, allow_changed)
    url, uri = storage_url(storage), tracking_uri(tracking)
    if workers > 1 or gpus is not None:
        from sweeper.launcher import run_workers

        run_workers(spec.name, url, uri, workers, gpus, population=population)
    else:
        run_worker(spec.name, url, uri, progress=progress, population=population)
    _log_dashboard(spec.name, url, uri)
    rep = report(spec.name, url)
    # stopped early (Ctrl-C, SIGTERM): the test split is scored once, when the study is done
    if score_test and rep.counts["complete"] + rep.counts["pruned"] >= rep.budget:
        score_best_on_test(spec.name, url, uri)
        rep = report(spec.name, url)
    return rep


def create(
    study_file: str | Path | StudySpec,
    trials: int | None = None,
    storage: str | None = None,
    tracking: str | None = None,
    allow_changed: bool = False,
) -> StudySpec:
    """Create (or check and resume) the study and its MLflow parent run, without running trials.

    Workers started elsewhere (``sweeper worker NAME``) then join it through the storage.
    """
    spec = study_file if isinstance(study_file, StudySpec) else load_spec(study_file)
    if trials is not None and trials < 1:
        raise SpecError(f"--trials must be >= 1, but got {trials}")
    url, uri = storage_url(storage), tracking_uri(tracking)
    _preflight(spec)
    study = create_study(spec, url, trials, allow_changed)
    if uri:
        from sweeper.tracking import reachable, setup_study_run

        if reachable(uri):
            setup_study_run(uri, study, spec.to_dict(), url)
        else:  # tracking is an edge: the study runs, its results are in the study database
            log.warning("MLflow tracking server %s does not answer; the study runs without tracking", mask_url(uri))
    return spec


def _preflight(spec: StudySpec) -> None:
    """Load the data and build the network once, so a user's mistake stops us before the study exists."""
    from sweeper.data import load_dataset
    from sweeper.models import build_network

    data = load_dataset(spec.data, spec.seed, spec.base_dir)
    rates = (0.0,) * (spec.network.n_hidden + 1)
    build_network(spec.network, data.in_features, data.num_classes, rates, False, spec.base_dir)


def score_best_on_test(
    study_name: str, storage: str | None = None, tracking: str | None = None
) -> dict[str, Any] | None:
    """Retrain the best trial (same seed, same numbers) and score it once on the test split.

    The test score is reported, never used for selection.
    """
    from sweeper.objective import fit, prepare_data
    from sweeper.train import evaluate, trial_seed

    url = storage_url(storage)
    study, spec = load_study(study_name, url)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    cached = study.user_attrs.get(TEST_ATTR)
    if cached and cached.get("trial") == best.number:
        return dict(cached)
    data = prepare_data(spec)
    hp = spec.space.suggest(optuna.trial.FixedTrial(best.params, best.number), spec.network.n_hidden)
    model, metrics = fit(spec, data, hp, trial_seed(spec.seed, best.number))
    test_loss, test_acc = evaluate(model, data.test, spec.train.eval_batch_size)
    result = {
        "trial": best.number,
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "val_accuracy": metrics["val_accuracy"],
    }
    study.set_user_attr(TEST_ATTR, result)
    uri = tracking_uri(tracking)
    parent = study.user_attrs.get("sweeper.mlflow_parent_run")
    if uri and parent:
        from sweeper.tracking import log_best_model

        log_best_model(uri, parent, study, model, data, result)
    return result


def report(study_name: str, storage: str | None = None) -> StudyReport:
    study, spec = load_study(study_name, storage_url(storage))
    counts = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] += 1
    rep = StudyReport(study_name, int(study.user_attrs.get(BUDGET_ATTR, spec.trials)), counts)
    if counts["complete"]:
        best = study.best_trial
        rep.best_value, rep.best_params, rep.best_trial = best.value, best.params, best.number
    rep.test = study.user_attrs.get(TEST_ATTR)
    return rep


def list_studies(storage: str | None = None) -> list[StudyReport]:
    url = storage_url(storage)
    summaries = optuna.get_all_study_summaries(make_storage(url), include_best_trial=False)
    return [report(s.study_name, url) for s in summaries if SPEC_ATTR in s.user_attrs]


def join(
    study_name: str,
    storage: str | None = None,
    tracking: str | None = None,
    progress: bool = False,
    population: int | None = None,
    worker_id: int = 0,
    device: str | None = None,
) -> int:
    """Run a worker on an existing study (the study file comes from the storage)."""
    _check_population(population)
    url, uri = storage_url(storage), tracking_uri(tracking)
    n = run_worker(study_name, url, uri, worker_id, progress=progress, device=device, population=population)
    _log_dashboard(study_name, url, uri)
    return n


def _check_population(population: int | None) -> None:
    if population is not None and population < 1:
        raise SpecError(f"--population must be >= 1 (trials trained together), but got {population}")


def _log_dashboard(study_name: str, url: str, uri: str | None) -> None:
    """The study's summary and plots on its MLflow parent run, once this worker is done."""
    if uri:
        from sweeper.tracking import log_study_dashboard

        study, spec = load_study(study_name, url)
        budget = int(study.user_attrs.get(BUDGET_ATTR, spec.trials))
        log_study_dashboard(uri, study, done=n_finished(study) >= budget)


__all__ = [
    "StudyReport",
    "create",
    "create_study",
    "join",
    "launch",
    "list_studies",
    "n_finished",
    "report",
    "score_best_on_test",
]
