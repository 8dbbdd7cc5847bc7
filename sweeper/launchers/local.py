"""Start N worker processes on one machine, each pinned to a GPU (or on the CPU), and wait for them.

The study already exists (``api.launch`` created it once), so workers only load it and no two
processes race to create tables. Each worker is ``python -m sweeper.cli worker NAME --worker-id i``;
the storage URL and tracking URI travel in the environment, not on the command line, so a
database password never shows in ``ps``.

Each worker gets its share of the CPU cores for torch's intra-op threads (OMP_NUM_THREADS and
MKL_NUM_THREADS, unless the user set them): left alone, every worker would start one thread per
core and N workers would run N x cores threads on the cores.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sweeper.settings import RunSettings
from sweeper.signals import on_stop_signals
from sweeper.study.urls import normalize_url

log = logging.getLogger("sweeper")
_warned: set[str] = set()
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # read by torch when a worker process starts


def set_threads(threads: int | None) -> None:
    """In this process: torch's intra-op threads (``--threads`` of a worker running in-process)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


@contextmanager
def threads_for_a_while(threads: int | None) -> Iterator[None]:
    """``set_threads`` for the ``with`` block, then torch's thread count as it was (the launching process)."""
    import torch

    before = torch.get_num_threads()
    set_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def warn_sqlite(storage: str, workers: int) -> None:
    """Several writers on one SQLite file take turns on its lock; say so once."""
    if workers > 1 and storage.startswith("sqlite") and "sqlite" not in _warned:
        _warned.add("sqlite")
        log.warning(
            "%d workers on SQLite take turns writing the study file; it works on one machine "
            "but for many workers use PostgreSQL (--storage postgresql://user@host/db)",
            workers,
        )


def worker_env(storage: str, tracking: str | None, gpu: str | None, threads: int | None = None) -> dict[str, str]:
    """A worker's environment; ``threads`` sets OMP/MKL_NUM_THREADS where the user has not set them."""
    env = {**os.environ, "SWEEPER_STORAGE": normalize_url(storage), "PYTHONUNBUFFERED": "1"}
    env["MLFLOW_TRACKING_URI"] = tracking or ""
    env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else ""  # "" hides every GPU: the worker uses the CPU
    if threads is not None:
        for var in THREAD_VARS:
            env.setdefault(var, str(threads))
    return env


def start_workers(study_name: str, settings: RunSettings) -> list[subprocess.Popen[bytes]]:
    """Start ``settings.workers`` processes; worker ``i`` gets GPU ``ids[i % len(ids)]`` (several per GPU is fine).

    Each gets ``settings.worker_threads`` torch threads, by default its share of the cores (a user's
    OMP_NUM_THREADS wins over the share; an explicit ``--threads`` wins over both).
    """
    ids, share = settings.gpu_ids or (), settings.worker_threads
    warn_sqlite(settings.storage, settings.workers)
    procs = []
    for i in range(settings.workers):
        gpu = ids[i % len(ids)] if ids else None
        # the end steps are the launcher's (``sweeper launch`` runs them after its workers)
        cmd = [sys.executable, "-m", "sweeper.cli", "worker", study_name, "--worker-id", str(i), "--no-progress",
               "--no-end-steps"]  # fmt: skip
        if gpu is None:
            cmd += ["--device", "cpu"]
        if settings.population:
            cmd += ["--population", str(settings.population)]
        if settings.threads is not None:
            cmd += ["--threads", str(share)]
        if settings.checkpoint_dir:
            cmd += ["--checkpoint-dir", settings.checkpoint_dir]
        procs.append(subprocess.Popen(cmd, env=worker_env(settings.storage, settings.tracking, gpu, share)))
    return procs


def wait_workers(procs: list[subprocess.Popen[bytes]], grace: float = 30.0) -> list[int]:
    """Wait for every worker; SIGTERM or Ctrl-C here is passed on to them (each stops its trial cleanly)."""

    def forward(signum: int, frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    try:
        with on_stop_signals(forward):
            while any(p.poll() is None for p in procs):
                time.sleep(0.2)
    finally:
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return [p.returncode for p in procs]


def run_workers(study_name: str, settings: RunSettings) -> list[int]:
    """Run the worker processes on the study until its budget is met; their exit codes."""
    codes = wait_workers(start_workers(study_name, settings))
    bad = [f"worker {i}: exit {c}" for i, c in enumerate(codes) if c != 0]
    if bad:
        log.warning("%d worker(s) failed (%s); see their output above", len(bad), "; ".join(bad))
    return codes
