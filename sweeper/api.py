"""The Python API that the CLI (and tests) call: define a study, run its workers, report on it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

from sweeper.best import refit_best, score_best_on_test
from sweeper.errors import SpecError, StudyError, TrackingError
from sweeper.launchers.local import set_threads, threads_for_a_while, threads_per_worker
from sweeper.study.record import StudyRecord, StudyReport, n_finished, sweeper_study_names
from sweeper.study.spec import StudySpec, load_spec
from sweeper.study.urls import mask_url, storage_url, tracking_uri

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
    share the cores evenly; one worker in this process keeps torch's default, every core).
    """
    _check_population(population)
    if ray is not None:  # Ray places the workers; its cluster is checked before the study exists
        from sweeper.launchers.ray import RayWorkers

        if gpus is not None:
            raise SpecError(f"--gpus {gpus!r} picks this machine's GPUs; with --ray, use --gpus-per-worker")
        threads_per_worker(workers, threads)
        spec = study_file if isinstance(study_file, StudySpec) else load_spec(study_file)
        url, uri = storage_url(storage), tracking_uri(tracking)
        cpus = 1.0 if cpus_per_worker is None else cpus_per_worker
        with RayWorkers.connect(ray, url, uri, workers, cpus, gpus_per_worker or 0.0) as cluster:
            create(spec, trials=trials, storage=storage, tracking=tracking, allow_changed=allow_changed)
            cluster.run(spec.name, url, uri, workers, population, threads, progress)
        return finish(spec.name, storage=url, tracking=uri, score_test=score_test, threads=threads)
    if cpus_per_worker is not None or gpus_per_worker is not None:
        raise SpecError("--cpus-per-worker and --gpus-per-worker ask Ray for resources: add --ray (e.g. --ray auto)")
    if workers > 1 or gpus is not None:
        from sweeper.launchers.local import parse_gpus

        threads_per_worker(workers, threads)  # a bad --threads or --gpus stops us before the study exists
        parse_gpus(gpus)
    else:
        set_threads(threads)  # trials train in this process
    spec = create(study_file, trials=trials, storage=storage, tracking=tracking, allow_changed=allow_changed)
    url, uri = storage_url(storage), tracking_uri(tracking)
    if workers > 1 or gpus is not None:
        from sweeper.launchers.local import run_workers

        run_workers(spec.name, url, uri, workers, gpus, population=population, threads=threads)
    else:
        from sweeper.workers.worker import run_worker

        run_worker(spec.name, url, uri, progress=progress, population=population, reproducible=True)
    return finish(spec.name, storage=url, tracking=uri, score_test=score_test, threads=threads)


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
    storage, tracking = storage_url(storage), tracking_uri(tracking)
    record = StudyRecord.open(study_name, storage, wait=True)  # the workers rode out an outage: so does launch
    if require_done and not record.done:
        raise StudyError(
            f"study {study_name!r} has {record.n_finished()} of its {record.budget} trials finished: its end steps "
            f"run once the budget is met; run workers first ('sweeper worker {study_name}')"
        )
    # stopped early (Ctrl-C, SIGTERM): the test split is scored once, when the study is done
    if score_test and record.done:
        from sweeper.finish import end_study

        with threads_for_a_while(threads):
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
    spec = study_file if isinstance(study_file, StudySpec) else load_spec(study_file)
    if trials is not None and trials < 1:
        raise SpecError(f"--trials must be >= 1, but got {trials}")
    url, uri = storage_url(storage), tracking_uri(tracking)
    _preflight(spec)
    problem = None
    if uri:
        from sweeper.tracking.client import server_problem
        from sweeper.tracking.study_run import check_experiment_storage

        problem = server_problem(uri)
        if problem is None:  # a name taken by a study in another database: refused before this one exists
            check_experiment_storage(uri, spec.name, url)
    record = StudyRecord.create(spec, url, trials, allow_changed)
    if uri:
        from sweeper.tracking.study_run import setup_study_run

        if problem is None:
            setup_study_run(uri, record, url)
        else:  # tracking is an edge: the study runs, its results are in the study database
            log.warning("MLflow tracking at %s %s; the study runs without tracking", mask_url(uri), problem)
    return spec


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
    with threads_for_a_while(threads):
        try:
            return refit_best(study_name, storage=storage, tracking=tracking)
        except TrackingError as e:  # the result is stored: the model waits for 'sweeper finish'
            log.warning("%s; the refit's result is in the study database ('sweeper finish %s' logs it)", e, study_name)
            return report(study_name, storage=storage).refit


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
    end_steps: bool = True,
) -> int:
    """Run a worker on an existing study (the study file comes from the storage); ``threads``: torch's threads.

    When the budget is met the worker runs the study's end steps (``sweeper.finish``), unless another
    process is running them; ``end_steps=False`` leaves them to its launcher (``sweeper launch --workers``).
    """
    from sweeper.workers.worker import run_worker

    _check_population(population)
    set_threads(threads)
    url, uri = storage_url(storage), tracking_uri(tracking)
    n = run_worker(
        study_name, url, uri, worker_id, progress=progress, device=device, population=population, trial_lines=True
    )
    record = StudyRecord.open(study_name, url, wait=True)
    if record.done and end_steps:  # the last trial's worker, or a later one if that one died mid-way
        from sweeper.finish import end_study

        end_study(record, tracking=uri, wait=False, who=f"worker {worker_id}", device=device)
    elif n and not record.done:  # a stopped worker shows the study so far; a worker that ran nothing leaves it
        _log_dashboard(record, uri)
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
    "refit",
    "report",
    "score_best_on_test",
]
