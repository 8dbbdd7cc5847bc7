"""A worker's heartbeat: one thread beats for the trials this worker runs, another reaps other workers' dead ones.

Every ``interval`` seconds the first records a heartbeat for each running trial of this worker (one, or a
whole population), so other workers do not take them for dead; the second fails the trials of dead
workers and queues their retries, so a killed worker's trials are recovered after the grace
period, not after whatever trial another worker happens to be training:

- Optuna's own check: a RUNNING trial whose last heartbeat is older than the grace period;
- a RUNNING trial that never recorded a heartbeat at all (its worker was killed between creating it
  and its first beat; Optuna's check skips those for good, and each would hold a budget slot forever),
  once this thread has seen it without one for the grace period (its own clock: no clock skew).

Two threads, because a reap waits for the study lock (behind every claiming worker) and a beat must not. A kill
makes every other worker's reaper queue for the lock at once: with beats and reaps on one thread, 64 workers
SIGKILLed among 256 (2 cores) left 470 trials failed as dead, most of them live; on two threads (and no worker
reaping its own trials) 19-22 (``results/storage_scale_paced.txt``).
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
# a beat this late is a sign: a little later, other workers take this worker's trials for dead (a CPU starved
# by too many workers per core, a study database too slow)
_LATE = (
    "this worker's heartbeats came %.0f s apart (every %d s expected; after %d s without one its trials are "
    "failed as dead by the other workers): the CPU or the study database is overloaded; run fewer workers per "
    "core or give a longer grace (SWEEPER_HEARTBEAT_GRACE)"
)
_WARN_EVERY = 600.0


class Heartbeat:
    """``with Heartbeat(study, running_ids): ...``: beats on one thread and reaps on another (a reap may wait for the
    study lock, behind hundreds of workers: this worker's own beats must not wait with it, or its live trials would
    be reaped in turn); a no-op without heartbeats."""

    def __init__(self, study: optuna.Study, running_ids: Callable[[], Iterable[int]]) -> None:
        self.study, self.running_ids = study, running_ids
        self.storage = internals.heartbeat_storage(study)
        self.grace = heartbeat_settings()[1]
        self._unbeaten: dict[int, float] = {}  # trial id -> when this thread first saw it RUNNING without a beat
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Heartbeat:
        if self.storage is not None:
            interval = self.storage.get_heartbeat_interval() or 60
            self._threads = [
                threading.Thread(target=run, args=(interval,), name=name, daemon=True)
                for run, name in ((self._beats, "sweeper-heartbeat"), (self._reaps, "sweeper-reaper"))
            ]
            for thread in self._threads:
                thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._threads = []

    def beat(self, trial_id: int) -> None:
        """Record one heartbeat now (a new trial's first, before anything else can fail)."""
        if self.storage is not None:
            self.storage.record_heartbeat(trial_id)

    def reap(self) -> None:
        """Fail (and queue the retry of) every trial of a dead worker; safe to call from any thread.

        Under the study's lock, as a claim is (``sweeper.workers.budget``): a claim never sees a failed trial
        before its retry is queued, which would let it create a new trial in the slot and leave the retry
        waiting past the budget (the killed trial's work lost). The lock is taken only when there is a trial
        to fail. This worker's own trials are never failed: it is alive (stopped a while, they are stale)."""
        if self.storage is None:
            return
        mine = set(self.running_ids())
        if set(internals.stale_trial_ids(self.study)) - mine:
            with study_lock(self.study):  # Optuna's stale-trial check (``fail_stale_trials``) but for our own
                for tid in set(internals.stale_trial_ids(self.study)) - set(self.running_ids()):
                    internals.fail_and_retry(self.study, tid)
        now = time.monotonic()
        unbeaten = set(internals.running_without_heartbeat(self.study))
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

    def _beats(self, interval: float) -> None:
        last: float | None = None  # when the last round of beats was recorded
        warned = -_WARN_EVERY
        while not self._stop.wait(interval):
            beaten = False
            for tid in list(self.running_ids()):
                try:
                    self.beat(tid)
                    beaten = True
                except Exception:  # a missed beat is retried at the next interval
                    pass
            now = time.monotonic()
            if beaten and last is not None and now - last > interval + self.grace / 3 and now - warned > _WARN_EVERY:
                warned = now
                log.warning(_LATE, now - last, interval, self.grace)
            last = now if beaten else None

    def _reaps(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.reap()
            except Exception as e:  # a database outage: the next interval tries again
                log.debug("stale-trial check failed: %s", type(e).__name__)
