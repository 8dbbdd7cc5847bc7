"""Run a study's workers as Ray tasks: Ray places them (CPUs, GPUs) on its nodes and re-runs a lost one.

The study still coordinates only through its database (Optuna's own distributed model): each task
is one ``run_worker`` joining the study by name. Ray only places the worker processes and restarts
them: a task whose node dies is re-run elsewhere (``max_retries``), while the trial it was training
is failed by its heartbeat and queued again by whichever worker looks next (``sweeper.workers.budget``).

Ray is an optional extra (``pip install 'sweeper[ray]'``), imported only here and only by ``--ray``.
Nodes import ``sweeper`` themselves, so every node needs the same image or environment. Database
URLs travel as task arguments, never in a runtime environment or a log line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from types import ModuleType
from typing import Any

from sweeper.errors import SpecError, first_line
from sweeper.launchers.ray_cluster import init
from sweeper.settings import RunSettings
from sweeper.study.urls import mask_url

log = logging.getLogger("sweeper")

RETRIES = 3  # re-runs of a worker whose node or process was lost (Ray's own default for tasks)
STOP_GRACE_S = 60.0  # after Ctrl-C / SIGTERM: how long workers get to queue their trials again
_FORWARDED = ("SWEEPER_", "MLFLOW_")  # settings (heartbeat, retries, MLflow client) the workers read
_URLS = ("SWEEPER_STORAGE", "MLFLOW_TRACKING_URI")  # passed as task arguments instead


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise SpecError("--ray needs Ray, an optional extra: pip install 'sweeper[ray]'") from None
    return ray


class RayWorkers:
    """A connection to a Ray cluster (or a Ray started here for this machine) that runs a study's workers.

    ``RayWorkers.connect`` checks, before the study exists, that the cluster can be reached, that its
    nodes can share the study database and MLflow store, and that a node has what a worker asks for.
    Use it as a context manager: a Ray started here is stopped at the end.
    """

    def __init__(self, ray: ModuleType, address: str, owned: bool, settings: RunSettings) -> None:
        self.ray, self.address, self.owned, self.settings = ray, address, owned, settings
        assert settings.cpus_per_worker is not None and settings.gpus_per_worker is not None, "set with --ray"
        self.resources = {"num_cpus": settings.cpus_per_worker, "num_gpus": settings.gpus_per_worker}

    # -- connect and check ---------------------------------------------------------------------------
    @classmethod
    def connect(cls, settings: RunSettings) -> RayWorkers:
        """Connect to the cluster at ``settings.ray`` (the settings were checked when they were made)."""
        ray = import_ray()
        address = (settings.ray or "").strip()
        owned = not ray.is_initialized()  # a caller's own connection is left as it is
        if owned:
            init(ray, address)  # with the checks of sweeper.launchers.ray_cluster: reachable, token accepted
        self = cls(ray, address or "local", owned, settings)
        try:
            self._check()
        except BaseException:
            self.close()
            raise
        return self

    def nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def _check(self) -> None:
        storage, tracking, workers = self.settings.storage, self.settings.tracking, self.settings.workers
        cpus, gpus = self.resources["num_cpus"], self.resources["num_gpus"]
        nodes = self.nodes()
        shared = len(nodes) > 1 or self.address.startswith("ray://")  # a Ray client runs off the cluster
        files = [f"the study database {mask_url(storage)}"] if storage.startswith("sqlite") else []
        if tracking and tracking.split(":", 1)[0] in ("sqlite", "file"):
            files.append(f"the MLflow store {mask_url(tracking)}")
        if shared and files:
            where = f"{len(nodes)} nodes" if len(nodes) > 1 else "nodes other than this machine"
            raise SpecError(
                f"{' and '.join(files)} {'are files' if len(files) > 1 else 'is a file'} on this machine, which "
                f"the Ray cluster's {where} cannot share; use PostgreSQL (--storage postgresql://user@db-host/sweeper) "
                "and an MLflow server (--tracking-uri http://mlflow-host:5000), both reachable from every node"
            )
        fits = [n for n in nodes if _has(n, "CPU", cpus) and _has(n, "GPU", gpus)]
        if not fits:
            most_gpus = max((n["Resources"].get("GPU", 0.0) for n in nodes), default=0.0)
            most_cpus = max((n["Resources"].get("CPU", 0.0) for n in nodes), default=0.0)
            short = (
                f"--gpus-per-worker {gpus:g} but no node of the Ray cluster has more than {most_gpus:g} GPU(s)"
                if gpus > most_gpus
                else f"--cpus-per-worker {cpus:g} but no node of the Ray cluster has more than {most_cpus:g} CPU(s)"
                if cpus > most_cpus
                else f"--cpus-per-worker {cpus:g} with --gpus-per-worker {gpus:g}, but no node has both"
            )
            raise SpecError(f"{short}; ask for less (fractions like 0.25 share a GPU) or add a bigger node")
        total = sum(n["Resources"].get("CPU", 0.0) for n in nodes)
        log.info(
            "Ray cluster at %s: %d node(s), %g CPU(s), %g GPU(s)",
            self._gcs_address(),
            len(nodes),
            total,
            sum(n["Resources"].get("GPU", 0.0) for n in nodes),
        )
        if workers * cpus > total:
            log.warning(
                "%d workers x %g CPU(s) is more than the cluster's %g CPU(s): the rest wait for a free slot",
                workers,
                cpus,
                total,
            )

    def _gcs_address(self) -> str:
        try:
            return str(self.ray.get_runtime_context().gcs_address)
        except Exception:  # a Ray client has no GCS address of its own
            return self.address

    # -- run -------------------------------------------------------------------------------------------
    def run(self, study_name: str) -> list[int]:
        """Run ``settings.workers`` Ray tasks on the study until its budget is met; how many trials each ran.

        SIGTERM or Ctrl-C here cancels every task, which Ray delivers as SIGINT to the worker: it stops
        within a training step and queues its trial again, as a local worker does. A second signal (after
        a couple of seconds) force-kills them.
        """
        from sweeper.workers.shutdown import Shutdown

        ray, settings = self.ray, self.settings
        task = ray.remote(sweeper_worker).options(
            **self.resources, max_retries=RETRIES, retry_exceptions=False, scheduling_strategy="SPREAD"
        )
        env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED) and k not in _URLS}
        storage, tracking = settings.storage, settings.tracking
        # the launching process shows the bar; a task's working folder is not the launch folder
        worker = dataclasses.replace(
            settings, storage=_absolute(storage), tracking=_absolute(tracking) if tracking else tracking, progress=False
        )
        log.info("starting %d Ray worker(s), each %s", settings.workers, _asks(self.resources))
        refs = [task.remote(study_name, i, worker, env) for i in range(settings.workers)]
        bar = _StudyProgress(study_name, storage) if settings.progress else None
        try:
            with Shutdown() as stop:
                try:
                    self._wait(refs, stop, bar)
                except KeyboardInterrupt:  # a second signal: stop at once
                    for ref in refs:
                        ray.cancel(ref, force=True)
                    raise
        finally:
            if bar:
                bar.close()
        return [self._result(i, ref) for i, ref in enumerate(refs)]

    def _wait(self, refs: list[Any], stop: Any, bar: _StudyProgress | None) -> None:
        pending, deadline = list(refs), None
        while pending:
            _, pending = self.ray.wait(pending, num_returns=len(pending), timeout=1.0)
            if bar:
                bar.update()
            if stop() and deadline is None:
                log.info("stopping %d Ray worker(s): each queues its running trial again", len(pending))
                for ref in pending:
                    self.ray.cancel(ref)  # non-force: SIGINT in the task, caught by the worker's clean stop
                deadline = time.monotonic() + STOP_GRACE_S
            if deadline is not None and time.monotonic() > deadline:
                log.warning("%d Ray worker(s) did not stop within %g s: killing them", len(pending), STOP_GRACE_S)
                for ref in pending:
                    self.ray.cancel(ref, force=True)
                deadline = float("inf")

    def _result(self, worker_id: int, ref: Any) -> int:
        exc = self.ray.exceptions
        try:
            return int(self.ray.get(ref))
        except exc.TaskCancelledError:  # stopped before it started a trial
            return 0
        except exc.RayTaskError as e:  # the worker raised: show why, in one line
            cause = e.cause if isinstance(e.cause, BaseException) else e
            log.warning("Ray worker %d failed: %s: %s", worker_id, type(cause).__name__, first_line(cause))
        except exc.RayError as e:  # lost more often than it could be re-run
            log.warning("Ray worker %d was lost: %s", worker_id, first_line(e))
        return 0

    # -- close -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Disconnect from the cluster; a Ray started here is stopped with it."""
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()
            self.owned = False

    def __enter__(self) -> RayWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sweeper_worker(study_name: str, worker_id: int, settings: RunSettings, env: dict[str, str]) -> int:
    """The body of one Ray task: a sweeper worker, labelled with the Ray node and GPU it got."""
    import optuna
    import ray
    import torch

    from sweeper.workers.worker import run_worker

    os.environ.update(env)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as in `sweeper worker`: no line per finished trial
    if settings.worker_threads is not None:
        torch.set_num_threads(settings.worker_threads)
    gpu_ids = ",".join(str(g) for g in ray.get_gpu_ids())
    labels = {
        "node": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "gpu": gpu_ids or "none",
    }
    device = "cuda" if settings.gpus_per_worker else "cpu"
    return run_worker(study_name, settings, worker_id=worker_id, device=device, labels=labels)


class _StudyProgress:
    """The launching process's bar of the shared budget, read from the study database."""

    def __init__(self, study_name: str, storage: str) -> None:
        from sweeper.study.record import StudyRecord
        from sweeper.workers.progress import ProgressBar

        record = StudyRecord.open(study_name, storage)
        self.study, self.bar = record.study, ProgressBar(record.study, record.budget)
        self._at = 0.0

    def update(self) -> None:
        if time.monotonic() - self._at >= 2.0:
            self._at = time.monotonic()
            try:
                self.bar(self.study, None)  # type: ignore[arg-type]  # the bar reads the study, not the trial
            except Exception as e:  # a database hiccup must not stop the launch; the workers retry on their own
                log.debug("progress: %s", e)

    def close(self) -> None:
        self._at = 0.0  # the final count, however recent the last update
        self.update()
        self.bar.close()


def _absolute(url: str) -> str:
    """An SQLite URL with its file made absolute: a Ray worker's working folder is not the launch folder."""
    if not url.startswith("sqlite"):
        return url
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.database or parsed.database == ":memory:" or os.path.isabs(parsed.database):
        return url
    return parsed.set(database=os.path.abspath(parsed.database)).render_as_string(hide_password=False)


def _has(node: dict[str, Any], resource: str, amount: float) -> bool:
    return amount <= 0 or node["Resources"].get(resource, 0.0) >= amount


def _asks(resources: dict[str, float]) -> str:
    gpus = resources["num_gpus"]
    return f"{resources['num_cpus']:g} CPU(s)" + (f" and {gpus:g} GPU(s)" if gpus else ", no GPU")


__all__ = ["RETRIES", "RayWorkers", "import_ray", "sweeper_worker"]
