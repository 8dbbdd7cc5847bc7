"""Where and how a study runs (not what it searches): one frozen value, checked once when it is made.

``RunSettings`` carries the options of ``sweeper launch`` / ``sweeper worker`` from the API's door to the
launchers (local processes, Ray tasks) and the worker. A bad value is a ``SpecError`` naming it; what
follows from the values (the GPU ids, each worker's torch threads) is worked out here, once, and kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sweeper.errors import SpecError
from sweeper.study.urls import storage_url, tracking_uri


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """A run's settings. ``storage`` and ``tracking`` are resolved (defaults, environment) when it is made.

    ``workers`` processes on this machine (``gpus``: pinned round-robin) or, with ``ray`` (a ``ray.init``
    address; ``''``/``local`` for a Ray started here), Ray tasks asking for ``cpus_per_worker`` (default 1)
    and ``gpus_per_worker`` (default 0) each. One worker and no ``gpus``: trials train in this process.
    """

    storage: str = ""  # the study database ('': SWEEPER_STORAGE, else sqlite:///sweeper.db)
    tracking: str | None = None  # MLflow's tracking URI (None: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db; '': off)
    trials: int | None = None  # the study's budget of finished trials (default: the study file's)
    allow_changed: bool = False
    population: int | None = None  # trials trained together (default: the study file's train.population)
    workers: int = 1
    gpus: str | None = None
    threads: int | None = None  # torch threads per worker, as asked (None: an even share of the cores)
    ray: str | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    progress: bool = False
    score_test: bool = True
    checkpoint_dir: str | None = None  # trials' checkpoints (None: the study's MLflow run; none with tracking off)
    #: GPU ids the local worker processes are pinned to (``[]``: the CPU); ``None`` when they are not local
    gpu_ids: tuple[str, ...] | None = field(init=False, default=None)
    #: torch threads each worker gets (``None``: one worker here keeps torch's default, every core)
    worker_threads: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        for name, value, what in (
            ("trials", self.trials, ""),
            ("population", self.population, " (trials trained together)"),
            ("workers", self.workers, ""),
            ("threads", self.threads, " (torch threads per worker)"),
        ):
            if value is not None and value < 1:
                raise SpecError(f"--{name} must be >= 1{what}, but got {value}")
        self._set("storage", storage_url(self.storage))
        self._set("tracking", tracking_uri(self.tracking))
        if self.checkpoint_dir:
            self._set("checkpoint_dir", os.path.abspath(os.path.expanduser(self.checkpoint_dir)))
        if self.ray is not None:
            if self.gpus is not None:
                raise SpecError(f"--gpus {self.gpus!r} picks this machine's GPUs; with --ray, use --gpus-per-worker")
            cpus = 1.0 if self.cpus_per_worker is None else self.cpus_per_worker
            gpus = self.gpus_per_worker or 0.0
            _check_ray_quantities(cpus, gpus)
            self._set("cpus_per_worker", cpus)
            self._set("gpus_per_worker", gpus)
            self._set("worker_threads", self.threads or max(1, int(cpus)))
        elif self.cpus_per_worker is not None or self.gpus_per_worker is not None:
            raise SpecError(
                "--cpus-per-worker and --gpus-per-worker ask Ray for resources: add --ray (e.g. --ray auto)"
            )
        elif self.in_processes:
            self._set("worker_threads", threads_per_worker(self.workers, self.threads))
            self._set("gpu_ids", tuple(parse_gpus(self.gpus)))
        else:
            self._set("worker_threads", self.threads)

    @property
    def in_processes(self) -> bool:
        """Workers are processes started on this machine (not Ray tasks, not this process)."""
        return self.ray is None and (self.workers > 1 or self.gpus is not None)

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)


def cpu_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_worker(workers: int, threads: int | None = None) -> int:
    """Intra-op threads for each of ``workers`` processes: ``threads`` if given, else an even share of the cores."""
    return threads if threads is not None else max(1, cpu_cores() // max(1, workers))


def parse_gpus(gpus: str | None) -> list[str]:
    """GPU ids to pin workers to, round-robin: ``all`` (default) every visible GPU, ``none`` the CPU, or ``0,2``."""
    choice = (gpus or "all").strip().lower()
    if choice == "none":
        return []
    import torch

    count = torch.cuda.device_count()
    if choice == "all":
        return [str(i) for i in range(count)]
    ids = [g.strip() for g in choice.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise SpecError(f"--gpus takes 'all', 'none' or GPU ids like '0,2', but got {gpus!r}")
    missing = [g for g in ids if int(g) >= count]
    if missing:
        raise SpecError(
            f"--gpus {gpus!r} names GPU {', '.join(missing)} but this machine has {count} "
            f"(ids 0..{count - 1}); use '--gpus all' or '--gpus none'"
        )
    return ids


def _check_ray_quantities(cpus: float, gpus: float) -> None:
    """What one worker asks Ray for (Ray's own rules for quantities)."""
    for name, value, low in (("--cpus-per-worker", cpus, "> 0"), ("--gpus-per-worker", gpus, ">= 0")):
        if value < 0 or (value == 0 and name == "--cpus-per-worker"):
            raise SpecError(f"{name} must be {low}, but got {value:g}")
        if value > 1 and value != int(value):
            raise SpecError(
                f"{name} above 1 must be a whole number (Ray shares only fractions of one), but got {value:g}"
            )


__all__ = ["RunSettings", "cpu_cores", "parse_gpus", "threads_per_worker"]
