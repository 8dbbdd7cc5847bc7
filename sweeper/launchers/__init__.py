"""Where workers run: local worker processes, or Ray tasks on a cluster. Each places ``sweeper worker``s;
what a worker does with its trials is ``sweeper.workers``. ``launcher`` picks the one the settings ask for."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sweeper.settings import RunSettings


@contextmanager
def launcher(settings: RunSettings) -> Iterator[Callable[[str], object]]:
    """What runs a study's workers, given its name: Ray tasks (the cluster is reached and checked on entry,
    before the study exists, and a Ray started here stops on exit), worker processes on this machine, or
    one worker in this process (its sampler seeded by the study: a re-run repeats the search)."""
    if settings.ray is not None:
        from sweeper.launchers.ray import RayWorkers

        with RayWorkers.connect(settings) as cluster:
            yield cluster.run
    elif settings.in_processes:
        from sweeper.launchers.local import run_workers

        yield lambda study_name: run_workers(study_name, settings)
    else:
        from sweeper.launchers.local import set_threads
        from sweeper.workers.worker import run_worker

        set_threads(settings.worker_threads)  # trials train in this process
        yield lambda study_name: run_worker(study_name, settings, reproducible=True)
