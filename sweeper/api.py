"""The Python API that the CLI (and tests) call: define a study, run its workers, report on it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

from sweeper.errors import SpecError
from sweeper.study.record import StudyRecord, StudyReport, n_finished, sweeper_study_names
from sweeper.study.spec import StudySpec, load_spec
from sweeper.study.storage import mask_url, storage_url, tracking_uri
from sweeper.workers.worker import run_worker

log = logging.getLogger("sweeper")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def create_study(spec: StudySpec, storage: str, trials: int | None = None, allow_changed: bool = False) -> optuna.Study:
    """Create the study with its spec stored in it, or check an existing one's spec and resume it."""
    return StudyRecord.create(spec, storage, trials, allow_changed).study


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

    With ``workers > 1`` (or ``gpus``) the trials run in that many worker processes (``sweeper.workers.local``).

    ``population`` trains that many trials at once, stacked on one device (default: the study file's
    ``train.population``, 1 unless set).
    """
    _check_population(population)
    if workers > 1 or gpus is not None:
        from sweeper.workers.local import parse_gpus

        parse_gpus(gpus)  # a wrong --gpus stops us before the study exists
    spec = create(study_file, trials, storage, tracking, allow_changed)
    url, uri = storage_url(storage), tracking_uri(tracking)
    if workers > 1 or gpus is not None:
        from sweeper.workers.local import run_workers

        run_workers(spec.name, url, uri, workers, gpus, population=population)
    else:
        run_worker(spec.name, url, uri, progress=progress, population=population)
    return finish(spec.name, url, uri, score_test)


def finish(study_name: str, storage: str, tracking: str | None, score_test: bool = True) -> StudyReport:
    """After the workers: the study's dashboard in MLflow, the test score once the budget is met, the report."""
    record = StudyRecord.open(study_name, storage)
    _log_dashboard(record, tracking)
    # stopped early (Ctrl-C, SIGTERM): the test split is scored once, when the study is done
    if score_test and record.done:
        score_best_on_test(record, tracking)
    return record.report()


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
    record = StudyRecord.create(spec, url, trials, allow_changed)
    if uri:
        from sweeper.tracking.client import reachable
        from sweeper.tracking.study_run import setup_study_run

        if reachable(uri):
            setup_study_run(uri, record, url)
        else:  # tracking is an edge: the study runs, its results are in the study database
            log.warning("MLflow tracking server %s does not answer; the study runs without tracking", mask_url(uri))
    return spec


def _preflight(spec: StudySpec) -> None:
    """Load the data and build the network once, so a user's mistake stops us before the study exists."""
    from sweeper.training.data import load_dataset
    from sweeper.training.models import build_network

    data = load_dataset(spec.data, spec.seed, spec.base_dir)
    rates = (0.0,) * (spec.network.n_hidden + 1)
    build_network(spec.network, data.in_features, data.num_classes, rates, False, spec.base_dir)


def score_best_on_test(
    record: StudyRecord | str, tracking: str | None = None, storage: str | None = None
) -> dict[str, Any] | None:
    """Retrain the best trial (same seed, same numbers) and score it once on the test split.

    The test score is reported, never used for selection. ``record`` is an open study or a study name
    (in ``storage``).
    """
    from sweeper.training.objective import fit, prepare_data
    from sweeper.training.train import evaluate, trial_seed

    if isinstance(record, str):
        record = StudyRecord.open(record, storage_url(storage))
    best, spec = record.best_trial(), record.spec
    if best is None:
        return None
    cached = record.test_result
    if cached and cached.get("trial") == best.number:
        return cached
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
    record.set_test_result(result)
    uri = tracking_uri(tracking)
    if uri and record.parent_run_id:
        from sweeper.tracking.study_run import log_best_model

        log_best_model(uri, record.parent_run_id, record.study, model, data, result)
    return result


def report(study_name: str, storage: str | None = None) -> StudyReport:
    return StudyRecord.open(study_name, storage_url(storage)).report()


def list_studies(storage: str | None = None) -> list[StudyReport]:
    url = storage_url(storage)
    return [report(name, url) for name in sweeper_study_names(url)]


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
    _log_dashboard(StudyRecord.open(study_name, url), uri)
    return n


def _check_population(population: int | None) -> None:
    if population is not None and population < 1:
        raise SpecError(f"--population must be >= 1 (trials trained together), but got {population}")


def _log_dashboard(record: StudyRecord, uri: str | None) -> None:
    """The study's summary and plots on its MLflow parent run, once this worker is done."""
    if uri:
        from sweeper.tracking.study_run import log_study_dashboard

        log_study_dashboard(uri, record)


__all__ = [
    "StudyRecord",
    "StudyReport",
    "create",
    "create_study",
    "finish",
    "join",
    "launch",
    "list_studies",
    "n_finished",
    "report",
    "score_best_on_test",
]
