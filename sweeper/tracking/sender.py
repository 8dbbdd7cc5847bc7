"""A background sender: MLflow calls run in order on one thread, so training never waits on the server.

Tracking must never stop training: a call that fails logs one warning and tracking is off from then on
(the results stay in the study database).
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

from sweeper.study.storage import mask_url

log = logging.getLogger("sweeper.tracking")
T = TypeVar("T")


class BackgroundSender:
    """``submit(job)`` queues a call for the sender thread; ``flush()`` waits until the queue is empty."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.down = False
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self._thread: threading.Thread | None = None

    def safe(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` now; a failure turns tracking off with one warning."""
        if self.down:
            return None
        try:
            return fn()
        except Exception as e:  # tracking must never stop training
            self.down = True
            log.warning(
                "MLflow tracking at %s failed (%s); training goes on, results stay in the study database",
                mask_url(self.uri),
                type(e).__name__,
            )
            return None

    def submit(self, job: Callable[[], None]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._send_forever, name="sweeper-mlflow", daemon=True)
            self._thread.start()
            atexit.register(self.flush)  # what is still queued reaches MLflow before the process ends
        self._jobs.put(job)

    def _send_forever(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                self.safe(job)
            finally:
                self._jobs.task_done()

    def flush(self) -> None:
        """Wait until everything submitted so far has reached MLflow (or tracking gave up)."""
        if self._thread is not None:
            self._jobs.join()
