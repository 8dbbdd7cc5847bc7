"""A background sender: one thread sends what the tracker keeps to MLflow, so training never waits on it.

The tracker keeps what is still to send and ``poke()``s the sender; the sender calls ``send()``,
which sends it all and raises if the server fails. Then the sender is ``down``: it says so once,
waits (backoff from 1 s to 10 s, until the server accepts connections again) and sends again,
so a tracking server restarted mid-study loses nothing. Training never waits: ``wait()`` at a
trial's end returns at once while the server is down, and after ``timeout`` seconds otherwise.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable

from sweeper.study.urls import mask_url
from sweeper.tracking.client import describe, reachable

log = logging.getLogger("sweeper.tracking")

RETRY_MIN_S, RETRY_MAX_S = 1.0, 10.0  # while down: one connection probe at most every 10 s


class BackgroundSender:
    """Runs ``send`` on one thread after each ``poke()``, and again with backoff until it succeeds."""

    def __init__(self, uri: str, send: Callable[[], None]) -> None:
        self.uri, self._send = uri, send
        self.down = False  # the last attempt failed: the server is unreachable, the sender retries
        self._cond = threading.Condition()
        self._pending = False  # poked since the last attempt began
        self._busy = False
        self._busy_since = 0.0
        self._hurry = False  # close(): retry now instead of after the backoff
        self._attempts = 0  # attempts ended, ok or not
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        """There is something new to send."""
        with self._cond:
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sweeper-mlflow", daemon=True)
                self._thread.start()
                atexit.register(self.close)  # what is still kept reaches MLflow before the process ends
            self._cond.notify_all()

    def _idle(self) -> bool:
        return not self._pending and not self._busy

    def wait(self, timeout: float) -> bool:
        """Wait until everything poked so far is sent (True), the server is down or ``timeout`` passed.

        A server that takes longer than ``timeout`` to answer one attempt counts as down: not waited for.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._idle() and not self.down:
                if self._busy and time.monotonic() - self._busy_since > timeout:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._idle()

    def close(self, timeout: float = 60.0) -> bool:
        """At the end: send what is left (one more try at once if the server is down); True if all was sent."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._thread is None:
                return True
            start, self._hurry = self._attempts, True
            self._cond.notify_all()
            # down: one attempt after this call is enough to know; up: wait for the backlog to go out
            while not self._idle() and not (self.down and self._attempts > start):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._hurry = False
            return self._idle()

    def _run(self) -> None:
        delay = RETRY_MIN_S
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                self._pending, self._busy, self._busy_since = False, True, time.monotonic()
            error: Exception | None = None
            try:
                self._send()
            except Exception as e:  # send() keeps what failed: it is sent again below
                error = e
            with self._cond:
                self._busy, self._attempts = False, self._attempts + 1
                if error is None:
                    if self.down:
                        log.info(
                            "MLflow tracking at %s answers again: runs kept meanwhile are sent", mask_url(self.uri)
                        )
                    self.down, delay = False, RETRY_MIN_S
                else:
                    if not self.down:
                        log.warning(
                            "MLflow tracking at %s %s; training goes on, trial runs are kept and sent when it "
                            "answers again (results stay in the study database)",
                            mask_url(self.uri),
                            describe(error),
                        )
                    self.down, self._pending = True, True
                self._cond.notify_all()
            if error is not None:
                self._back_off(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _back_off(self, delay: float) -> None:
        """Sleep ``delay`` s, then until the server accepts connections again (or close() asks to hurry)."""
        deadline = time.monotonic() + delay
        while True:
            with self._cond:
                left = deadline - time.monotonic()
                if self._hurry:
                    return
                if left > 0:
                    self._cond.wait(left)
                    continue
            if reachable(self.uri, timeout=2.0):
                return
            deadline = time.monotonic() + min(delay, RETRY_MAX_S)
