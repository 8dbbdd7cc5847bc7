"""A worker's heartbeat thread: it beats for the trials this worker runs and reaps other workers' dead ones.

Every ``interval`` seconds it records a heartbeat for each running trial of this worker (one, or a
whole population), so other workers do not take them for dead; and it fails the trials of dead
workers and queues their retries, so a killed worker's trials are recovered after the grace
period, not after whatever trial another worker happens to be training:

- Optuna's own check: a RUNNING trial whose last heartbeat is older than the grace period;
- a RUNNING trial that never recorded a heartbeat at all (its worker was killed between creating it
  and its first beat; Optuna's check skips those for good, and each would hold a budget slot forever),
  once this thread has seen it without one for the grace period (its own clock: no clock skew).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

import optuna

from sweeper.study import optuna_internals as internals
from sweeper.study.lock import study_lock
from sweeper.study.record import heartbeat_settings

log = logging.getLogger("sweeper")


class Heartbeat:
    """``with Heartbeat(study, running_ids): ...``: beats and reaps on a thread; a no-op without heartbeats."""

    def __init__(self, study: optuna.Study, running_ids: Callable[[], Iterable[int]]) -> None:
        self.study, self.running_ids = study, running_ids
        self.storage = internals.heartbeat_storage(study)
        self.grace = heartbeat_settings()[1]
        self._unbeaten: dict[int, float] = {}  # trial id -> when this thread first saw it RUNNING without a beat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.storage is not None:
            self._thread = threading.Thread(target=self._run, name="sweeper-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def beat(self, trial_id: int) -> None:
        """Record one heartbeat now (a new trial's first, before anything else can fail)."""
        if self.storage is not None:
            self.storage.record_heartbeat(trial_id)

    def reap(self) -> None:
        """Fail (and queue the retry of) every trial of a dead worker; safe to call from any thread.

        Under the study's lock, as a claim is (``sweeper.workers.budget``): a claim never sees a failed trial
        before its retry is queued, which would let it create a new trial in the slot and leave the retry
        waiting past the budget (the killed trial's work lost). The lock is taken only when there is a trial
        to fail."""
        if self.storage is None:
            return
        if internals.has_stale_trials(self.study):
            with study_lock(self.study):
                internals.fail_stale_trials(self.study)
        now = time.monotonic()
        unbeaten = set(internals.running_without_heartbeat(self.study))
        mine = set(self.running_ids())
        self._unbeaten = {t: self._unbeaten.get(t, now) for t in unbeaten - mine}
        due = [tid for tid, since in self._unbeaten.items() if now - since >= self.grace]
        if not due:
            return
        with study_lock(self.study):
            for tid in due:
                if internals.fail_and_retry(self.study, tid):
                    log.info("trial id %d never recorded a heartbeat in %d s: failed and queued again", tid,
                             self.grace)  # fmt: skip
                del self._unbeaten[tid]

    def _run(self) -> None:
        assert self.storage is not None
        interval = self.storage.get_heartbeat_interval() or 60
        while not self._stop.wait(interval):
            for tid in list(self.running_ids()):
                try:
                    self.beat(tid)
                except Exception:  # a missed beat is retried at the next interval
                    pass
            try:
                self.reap()
            except Exception as e:  # a database outage: the next interval tries again
                log.debug("stale-trial check failed: %s", type(e).__name__)
