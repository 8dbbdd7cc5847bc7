"""The Python API that the CLI (and tests) call: define a study, run its workers, report on it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

from sweeper.best import refit_best, score_best_on_test
from sweeper.errors import StudyError, TrackingError
from sweeper.launchers import launcher
from sweeper.launchers.local import set_threads, threads_for_a_while
from sweeper.settings import RunSettings
from sweeper.study.record import StudyRecord, StudyReport, sweeper_study_names
from sweeper.study.spec import StudySpec, load_spec
from sweeper.study.urls import mask_url, storage_url

log = logging.getLogger("sweeper")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def create_study(
    spec: StudySpec, storage: str, *, trials: int | None = None, allow_changed: bool = False
) -> optuna.Study:
    """Create the study with its spec stored in it, or check an existing one's spec and resume it."""
    return StudyRecord.create(spec, storage, trials, allow_changed).study


def launch(
    study_file: str | Path | StudySpec,
    *,
    trials: int | None = None,
    storage: str | None = None,
    tracking: str | None = None,
    allow_changed: bool = False,
    progress: bool = False,
    score_test: bool = True,
    population: int | None = None,
    workers: int = 1,
    gpus: str | None = None,
    threads: int | None = None,
    checkpoint_dir: str | None = None,
    ray: str | None = None,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float | None = None,
) -> StudyReport:
    """Create or resume a study from a study file, run it to its budget, and score the best trial on test.

    With ``workers > 1`` (or ``gpus``) the trials run in that many worker processes (``sweeper.launchers.local``).
    With ``ray`` (a ``ray.init`` address: ``auto``, ``host:6379``, ``ray://host:10001``, or ``''``/``local``
    for a Ray started here) they run as Ray tasks, each asking for ``cpus_per_worker`` (default 1) and
    ``gpus_per_worker`` (default 0; fractions share a GPU) (``sweeper.launchers.ray``).

    ``population`` trains that many trials at once, stacked on one device (default: the study file's
    ``train.population``, 1 unless set). ``threads``: torch threads per worker (default: worker processes
    share the cores evenly; one worker in this process keeps torch's default, every core). ``checkpoint_dir``: a
    folder every worker mounts for trials' checkpoints (default: the study's MLflow run; see
    ``sweeper.workers.checkpoints``).
    Every option is checked here, once (``sweeper.settings.RunSettings``), before the study exists.
    """
    settings = RunSettings(
        storage=storage or "",
        tracking=tracking,
        trials=trials,
        allow_changed=allow_changed,
        population=population,
        workers=workers,
        gpus=gpus,
        threads=threads,
        checkpoint_dir=checkpoint_dir,
        ray=ray,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        progress=progress,
        score_test=score_test,
    )
    spec = _load(study_file)
    with launcher(settings) as run_workers:
        _create(spec, settings)
        run_workers(spec.name)
    return _finish(spec.name, settings)


def finish(
    study_name: str,
    *,
    storage: str | None = None,
    tracking: str | None = None,
    score_test: bool = True,
    threads: int | None = None,
    require_done: bool = False,
) -> StudyReport:
    """After the workers: the study's end steps once its budget is met (``sweeper.finish``: test score, best
    model, refit, final dashboard; run once, whichever process gets there first), else its dashboard so far.

    ``threads`` bounds torch here too (the refit), as ``--threads`` does for the workers. ``score_test=False``
    leaves the end steps for later (only the dashboard is logged). ``require_done``: a study whose budget is
    not met yet is a ``StudyError`` (``sweeper finish``) rather than a report.
    """
    settings = RunSettings(storage=storage or "", tracking=tracking, threads=threads, score_test=score_test)
    return _finish(study_name, settings, require_done=require_done)


def _finish(study_name: str, settings: RunSettings, *, require_done: bool = False) -> StudyReport:
    storage, tracking = settings.storage, settings.tracking
    record = StudyRecord.open(study_name, storage, wait=True)  # the workers rode out an outage: so does launch
    if require_done and not record.done:
        raise StudyError(
            f"study {study_name!r} has {record.n_finished()} of its {record.budget} trials finished: its end steps "
            f"run once the budget is met; run workers first ('sweeper worker {study_name}')"
        )
    # stopped early (Ctrl-C, SIGTERM): the test split is scored once, when the study is done
    if settings.score_test and record.done:
        from sweeper.finish import end_study

        with threads_for_a_while(settings.threads):
            end_study(record, tracking=tracking, wait=True, who="sweeper")
    else:
        _log_dashboard(record, tracking)
    return record.report()


def create(
    study_file: str | Path | StudySpec,
    *,
    trials: int | None = None,
    storage: str | None = None,
    tracking: str | None = None,
    allow_changed: bool = False,
) -> StudySpec:
    """Create (or check and resume) the study and its MLflow parent run, without running trials.

    Workers started elsewhere (``sweeper worker NAME``) then join it through the storage.
    """
    settings = RunSettings(storage=storage or "", tracking=tracking, trials=trials, allow_changed=allow_changed)
    spec = _load(study_file)
    _create(spec, settings)
    return spec


def _load(study_file: str | Path | StudySpec) -> StudySpec:
    return study_file if isinstance(study_file, StudySpec) else load_spec(study_file)


def _create(spec: StudySpec, settings: RunSettings) -> None:
    url, uri = settings.storage, settings.tracking
    _preflight(spec)
    problem = None
    if uri:
        from sweeper.tracking.client import server_problem
        from sweeper.tracking.study_run import check_experiment_storage

        problem = server_problem(uri)
        if problem is None:  # a name taken by a study in another database: refused before this one exists
            check_experiment_storage(uri, spec.name, url)
    record = StudyRecord.create(spec, url, settings.trials, settings.allow_changed)
    if uri:
        from sweeper.tracking.study_run import setup_study_run

        if problem is None:
            setup_study_run(uri, record, url)
        else:  # tracking is an edge: the study runs, its results are in the study database
            log.warning("MLflow tracking at %s %s; the study runs without tracking", mask_url(uri), problem)


def _preflight(spec: StudySpec) -> None:
    """Load the data and build the network once, so a user's mistake stops us before the study exists."""
    from sweeper.training.data import load_dataset
    from sweeper.training.models import build_network

    log.info(
        "validating the study file of %s: loading the %s data and building the network", spec.name, spec.data.dataset
    )
    data = load_dataset(spec.data, spec.seed, spec.base_dir)
    from sweeper.study.hparams import Hparams

    hp = Hparams(dropout=(0.0,) * spec.network.n_dropout)
    build_network(spec.network, data.in_features, data.num_classes, hp, spec.base_dir)


def refit(
    study_name: str, *, storage: str | None = None, tracking: str | None = None, threads: int | None = None
) -> dict[str, Any] | None:
    """The best trial's settings trained again on train + validation, scored once on test (beside, never instead
    of, the selected trial's score; ``sweeper.best.refit_best``); ``None`` while no trial is complete."""
    settings = RunSettings(storage=storage or "", tracking=tracking, threads=threads)
    with threads_for_a_while(settings.threads):
        try:
            return refit_best(study_name, storage=settings.storage, tracking=settings.tracking)
        except TrackingError as e:  # the result is stored: the model waits for 'sweeper finish'
            log.warning("%s; the refit's result is in the study database ('sweeper finish %s' logs it)", e, study_name)
            return report(study_name, storage=settings.storage).refit


def report(study_name: str, *, storage: str | None = None) -> StudyReport:
    return StudyRecord.open(study_name, storage_url(storage)).report()


def list_studies(*, storage: str | None = None) -> list[StudyReport]:
    url = storage_url(storage)
    return [report(name, storage=url) for name in sweeper_study_names(url)]


def join(
    study_name: str,
    *,
    storage: str | None = None,
    tracking: str | None = None,
    progress: bool = False,
    population: int | None = None,
    worker_id: int = 0,
    device: str | None = None,
    threads: int | None = None,
    checkpoint_dir: str | None = None,
    end_steps: bool = True,
) -> int:
    """Run a worker on an existing study (the study file comes from the storage); ``threads``: torch's threads.

    When the budget is met the worker runs the study's end steps (``sweeper.finish``), unless another
    process is running them; ``end_steps=False`` leaves them to its launcher (``sweeper launch --workers``).
    """
    from sweeper.workers.worker import run_worker

    settings = RunSettings(
        storage=storage or "",
        tracking=tracking,
        population=population,
        threads=threads,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
    )
    set_threads(settings.worker_threads)
    url, uri = settings.storage, settings.tracking
    n = run_worker(study_name, settings, worker_id=worker_id, device=device, trial_lines=True)
    record = StudyRecord.open(study_name, url, wait=True)
    if record.done and end_steps:  # the last trial's worker, or a later one if that one died mid-way
        from sweeper.finish import end_study

        end_study(record, tracking=uri, wait=False, who=f"worker {worker_id}", device=device)
    elif n and not record.done:  # a stopped worker shows the study so far; a worker that ran nothing leaves it
        _log_dashboard(record, uri)
    return n


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
    "refit",
    "report",
    "score_best_on_test",
]
