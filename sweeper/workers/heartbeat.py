"""A worker's heartbeat: one thread beats for the trials this worker runs, another reaps other workers' dead ones.

Every ``interval`` seconds the first records a heartbeat for each running trial of this worker (one, or a
whole population), so other workers do not take them for dead; the second fails the trials of dead
workers and queues their retries, so a killed worker's trials are recovered after the grace
period, not after whatever trial another worker happens to be training:

- Optuna's own check: a RUNNING trial whose last heartbeat is older than the grace period;
- a RUNNING trial that never recorded a heartbeat at all (its worker was killed between creating it
  and its first beat; Optuna's check skips those for good, and each would hold a budget slot forever),
  once this thread has seen it without one for the grace period (its own clock: no clock skew).

Two threads, because a reap may wait (for the study lock on SQLite, for round trips to a loaded database) and a
beat must not. When reaps queued for the claims' lock, a kill made every other worker's reaper queue at once: with
beats and reaps on one thread, 64 workers SIGKILLed among 256 (2 cores) left 470 trials failed as dead, most of
them live; on two threads (and no worker reaping its own trials) 19-22 (``results/storage_scale_paced.txt``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

import optuna

from sweeper.study import optuna_internals as internals
from sweeper.study import optuna_reads as reads
from sweeper.study.lock import study_lock, try_reapers_lock
from sweeper.study.record import heartbeat_settings
from sweeper.study.retry import call_with_retry

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
    """``with Heartbeat(study, running_ids): ...``: beats on one thread and reaps on another (a reap may wait: this
    worker's own beats must not wait with it, or its live trials would be reaped in turn); a no-op without
    heartbeats."""

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

        Each dead trial's fail and retry land as one write (``requeue_dead``): a claim never sees the trial failed and
        its retry not yet queued, which would let it make a new trial in the slot and leave the retry waiting past
        the budget (the killed trial's work lost). This worker's own trials are never failed: it is alive (stopped
        a while, they are stale)."""
        if self.storage is None:
            return
        mine, now, found = set(self.running_ids()), time.monotonic(), reads.dead_trials(self.study)
        self._unbeaten = {t: self._unbeaten.get(t, now) for t in set(found.unbeaten) - mine}
        due = {tid for tid, since in self._unbeaten.items() if now - since >= self.grace}
        if not due and not set(found.stale) - mine:
            return

        def dead() -> list[int]:  # read again where the reap is written: a trial may have beaten or ended since
            found = reads.dead_trials(self.study)
            return sorted((set(found.stale) | due & set(found.unbeaten)) - set(self.running_ids()))

        for tid in requeue_dead(self.study, dead, self._stop.is_set):
            if tid in due:
                log.info("trial id %d never recorded a heartbeat in %d s: failed and queued again", tid, self.grace)

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


def requeue_dead(study: optuna.Study, dead: Callable[[], list[int]], stop: Callable[[], bool]) -> list[int]:
    """Fail each trial ``dead()`` lists and queue its retry (Optuna's stale-trial callback) as one write; the trials
    so failed. On PostgreSQL each trial is one transaction under the study's reapers' lock, not the claims' lock:
    a claim sees the trial RUNNING or failed with its retry queued, never between, and waits for no reap; one
    reaper writes at a time, and the others, finding the lock taken, leave it to that one (once, every worker's
    reaper waited in turn for the claims' lock after a kill and held it for its round trips: 64 workers killed
    among 256, 320 reaps held it 180 s of the 210 s that followed). Elsewhere (SQLite: one machine's workers)
    under the study lock, as a claim is."""
    rdb = internals.rdb_backend(study)
    if rdb is None or rdb.engine.dialect.name != "postgresql":
        with study_lock(study):
            return [tid for tid in dead() if internals.fail_and_retry(study, tid)]
    failed: list[int] = []
    tried: set[int] = set()

    def reap_one() -> bool:
        """One dead trial failed and queued again, if this reaper holds the lock and one is left; whether to go on."""
        with internals.one_transaction(rdb) as session:
            if not try_reapers_lock(session, study.study_name):
                return False  # another worker's reaper is at it
            left = [tid for tid in dead() if tid not in tried]
            if not left:
                return False
            tid = left[0]
            tried.add(tid)
            done = internals.fail_and_retry(study, tid)  # False: it ended meanwhile (its transaction rolled back)
        if done:  # committed
            failed.append(tid)
        return True

    while not stop() and call_with_retry(rdb, reap_one):
        pass
    return failed
