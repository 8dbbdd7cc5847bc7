"""Checkpoints of a trial's training, stored where every worker of the study can read them back.

A trial whose worker was killed, preempted or stopped is queued again (``sweeper.workers.heartbeat``,
``sweeper.workers.shutdown``); the retry finds the newest checkpoint of the tries before it (Optuna's
``retry_history``) and continues from it (``sweeper.workers.protocol``). A checkpoint is a ``Training``'s
``state_dict`` (``sweeper.training.train``) with the fingerprint of the study file and the trial's parameters:
one that does not fit (the study file changed, another network) or does not load is skipped with a warning.

Where: a directory (``--checkpoint-dir``: a filesystem every worker mounts), else the artifacts of the study's
MLflow run (``checkpoints/``), which compose, KubeRay and SLURM set-ups already share. Each save is a new file
(``trial-<number>-<seq>.pt``) and the one before it is deleted only once it is written, so a worker killed while
writing leaves the previous checkpoint readable. A trial that ends (complete, pruned, failed for good) deletes
its tries' checkpoints. A checkpoint that cannot be written is a warning; training goes on.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("sweeper")
FORMAT = 1
AUTO_MIN_S = 60.0  # ``checkpoint_every: auto``: at most one checkpoint a minute ...
AUTO_COST_SHARE = 0.05  # ... and never more than this share of training time (20 x a save's time apart)
_NAME = re.compile(r"^trial-(\d+)-(\d+)\.pt$")


class Store(Protocol):
    """Named blobs: the checkpoint files of one study."""

    def names(self) -> list[str]: ...
    def put(self, name: str, data: bytes) -> None: ...
    def get(self, name: str) -> bytes: ...
    def delete(self, name: str) -> None: ...


class DirStore:
    """``<root>/<study>/``: written to a temporary file and renamed, so a reader never sees half a file."""

    def __init__(self, root: str | Path, study: str) -> None:
        self.dir = Path(root) / study
        self.where = str(self.dir)

    def names(self) -> list[str]:
        return os.listdir(self.dir) if self.dir.is_dir() else []

    def put(self, name: str, data: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".writing-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.dir / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, name: str) -> bytes:
        return (self.dir / name).read_bytes()

    def delete(self, name: str) -> None:
        (self.dir / name).unlink(missing_ok=True)


class MlflowStore:
    """The study's MLflow run's artifacts under ``checkpoints/`` (a local store's folder or a server's)."""

    FOLDER = "checkpoints"

    def __init__(self, uri: str, run_id: str) -> None:
        from sweeper.study.urls import mask_url

        self.uri, self.run_id = uri, run_id
        self.where = f"the MLflow run {run_id} at {mask_url(uri)} ({self.FOLDER}/)"
        self._client: Any = None
        self._repo: Any = None

    @property
    def client(self) -> Any:
        """The MLflow client, made at the first use (a server that does not answer then is a failed save)."""
        if self._client is None:
            from sweeper.tracking.client import client_for

            self._client = client_for(self.uri)
        return self._client

    def names(self) -> list[str]:
        return [os.path.basename(f.path) for f in self.client.list_artifacts(self.run_id, self.FOLDER)]

    def put(self, name: str, data: bytes) -> None:
        folder = tempfile.mkdtemp(prefix="sweeper-checkpoint-")
        try:
            path = os.path.join(folder, name)
            with open(path, "wb") as f:
                f.write(data)
            self.client.log_artifact(self.run_id, path, self.FOLDER)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def get(self, name: str) -> bytes:
        folder = tempfile.mkdtemp(prefix="sweeper-checkpoint-")
        try:
            return Path(self.client.download_artifacts(self.run_id, f"{self.FOLDER}/{name}", folder)).read_bytes()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def delete(self, name: str) -> None:
        if self._repo is None:  # MLflow's client has no delete: the run's artifact repository does
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            self._repo = get_artifact_repository(self.client.get_run(self.run_id).info.artifact_uri)
        self._repo.delete_artifacts(f"{self.FOLDER}/{name}")


def fingerprint(spec_fingerprint: str, params: Mapping[str, Any], kind: str) -> str:
    """What a checkpoint must match to be resumed: the study file's results-deciding part, the parameters, the
    trainer (``trial``: one network; ``member``: a population's)."""
    blob = json.dumps([FORMAT, spec_fingerprint, kind, sorted(params.items())], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Checkpoints:
    """A study's checkpoints: when to save (``every``: epochs, ``"auto"`` or ``"off"``), save, find, delete."""

    def __init__(self, store: Store, every: int | str) -> None:
        self.store, self.every = store, every
        self._seq: dict[int, int] = {}  # trial number -> the sequence number of its newest file
        self._last: dict[int, float] = {}  # trial number -> when it last saved (or started)
        self._cost = 0.0  # the last save's seconds
        self._failing = False  # the last save failed: the next failures are not warned about again

    def started(self, number: int) -> None:
        self._last[number] = time.monotonic()

    def due(self, number: int, epochs_done: int | None = None) -> bool:
        """Whether it is time for a checkpoint: at an epoch's end (``epochs_done``) or, with ``auto``, at a step
        (``None``: an epoch of an hour is checkpointed within it, not only at its end)."""
        if self.every == "off":
            return False
        if isinstance(self.every, int):
            return epochs_done is not None and epochs_done % self.every == 0
        since = time.monotonic() - self._last.get(number, time.monotonic())
        return since >= max(AUTO_MIN_S, self._cost / AUTO_COST_SHARE)

    def save(self, number: int, fingerprint: str, state: Mapping[str, Any]) -> bool:
        """Write trial ``number``'s training state; a failure is one warning (training goes on)."""
        import torch

        start = time.monotonic()
        seq = self._seq.get(number, 0) + 1
        try:
            buf = io.BytesIO()
            torch.save({"format": FORMAT, "fingerprint": fingerprint, "trial": number, "state": state}, buf)
            self.store.put(f"trial-{number}-{seq:06d}.pt", buf.getvalue())
        except Exception as e:
            log.log(logging.INFO if self._failing else logging.WARNING,
                    "trial %d: checkpoint not written to %s (%s: %s); training goes on",
                    number, self.store.where, type(e).__name__, str(e)[:200])  # fmt: skip
            self._failing = True
            return False
        if self._failing:
            log.warning("checkpoints are written to %s again", self.store.where)
            self._failing = False
        if seq > 1:
            self._delete([f"trial-{number}-{seq - 1:06d}.pt"])
        self._seq[number] = seq
        self._last[number] = time.monotonic()
        self._cost = time.monotonic() - start
        return True

    def newest(self, tries: Sequence[int], fingerprint: str) -> tuple[int, dict[str, Any]] | None:
        """The newest readable checkpoint among trials ``tries`` (oldest first) that fits ``fingerprint``:
        (the trial that wrote it, its training state); None when there is none."""
        import torch

        try:
            found = self._files(tries)
        except Exception as e:
            log.warning("checkpoints in %s not readable (%s: %s); the trial starts over",
                        self.store.where, type(e).__name__, str(e)[:200])  # fmt: skip
            return None
        order = {n: i for i, n in enumerate(tries)}
        for name, number, _ in sorted(found, key=lambda f: (order[f[1]], f[2]), reverse=True):
            try:
                saved = torch.load(io.BytesIO(self.store.get(name)), map_location="cpu", weights_only=True)
            except Exception as e:
                log.warning("checkpoint %s of trial %d not readable (%s: %s); skipped",
                            name, number, type(e).__name__, str(e)[:200])  # fmt: skip
                continue
            if saved.get("format") != FORMAT or saved.get("fingerprint") != fingerprint:
                log.warning("checkpoint %s of trial %d was written for another study file, network or "
                            "parameters; skipped (the trial starts over)", name, number)  # fmt: skip
                continue
            return number, saved["state"]
        return None

    def saved(self, number: int) -> bool:
        """Whether this process wrote a checkpoint of trial ``number``."""
        return number in self._seq

    def drop(self, numbers: Iterable[int]) -> None:
        """Delete every checkpoint of trials ``numbers`` (a trial that ended, and its earlier tries)."""
        wanted = set(numbers)
        for n in wanted:
            self._seq.pop(n, None)
            self._last.pop(n, None)
        try:
            self._delete([name for name, number, _ in self._files(wanted)])
        except Exception as e:
            log.info("checkpoints of trial(s) %s not deleted (%s)", sorted(wanted), type(e).__name__)

    def _files(self, numbers: Iterable[int]) -> list[tuple[str, int, int]]:
        wanted = set(numbers)
        found = []
        for name in self.store.names():
            m = _NAME.match(name)
            if m and int(m.group(1)) in wanted:
                found.append((name, int(m.group(1)), int(m.group(2))))
        return found

    def _delete(self, names: Iterable[str]) -> None:
        for name in names:
            try:
                self.store.delete(name)
            except Exception as e:  # left behind: harmless (a newer one is read first), cleaned at the trial's end
                log.debug("checkpoint %s not deleted: %s", name, type(e).__name__)


def make_checkpoints(
    every: int | str, study: str, directory: str | None, tracking: str | None, run_id: str | None
) -> Checkpoints | None:
    """The study's checkpoints in ``directory``, else in its MLflow run; None (with one line) when neither."""
    if every == "off":
        return None
    if directory:
        return Checkpoints(DirStore(directory, study), every)
    if tracking and run_id:
        return Checkpoints(MlflowStore(tracking, run_id), every)
    log.info("checkpoints off: tracking is off and no --checkpoint-dir is set (a retried trial starts over)")
    return None
