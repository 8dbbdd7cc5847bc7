"""One trial budget for all workers: exactly N finished trials, and no trial created past it.

Optuna's ``MaxTrialsCallback`` looks at the count after a trial ends, so every worker that started a
trial while the last slot was free would overshoot. Instead a worker claims a slot: under the
study's lock (``sweeper.study.lock``) it counts finished and running trials (a running trial is a
claim; if it fails, e.g. its worker was killed, the claim frees up and its retry takes it) and
creates its trial only if ``finished + running < budget``. Every trial that exists was created
while a slot was free, so finished trials never exceed the budget and no surplus trial is ever
made (a fault-free study shows no failed trial).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from sweeper.study import optuna_internals as internals
from sweeper.study import pg_claim
from sweeper.study.lock import Stop, locked_write
from sweeper.study.record import FINISHED, count_states

Beat = Callable[[int], None]


def claims(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials of the study, as stored now."""
    return _claims(count_states(study))


def _claims(counts: Counter[TrialState]) -> tuple[int, int]:
    return sum(counts[s] for s in FINISHED), counts[TrialState.RUNNING]


def try_claim(study: optuna.Study, budget: int, beat: Beat, stop: Stop = lambda: False) -> optuna.Trial | None:
    """A new trial in a free slot of the budget; None when there is none (the budget is met, or every free
    slot is claimed by a running trial, or ``stop()`` came true while it waited for the study lock).

    ``beat(trial_id)`` records the trial's first heartbeat under the lock too, so no other worker ever sees
    it without one (see ``sweeper.workers.heartbeat``). On PostgreSQL the whole claim is one statement
    (``sweeper.study.pg_claim``: the count, the trial, its first beat when the study has heartbeats) or, where
    that function cannot be made, one transaction with the lock (``lock.locked_write``). What runs under the lock
    costs the same whatever the number of running trials (one count; a pop only when a trial waits: a queued
    retry or start point), so a claim's wait does not grow with the workers.
    """
    rdb = internals.rdb_backend(study)
    if pg_claim.available(rdb):
        beats = internals.heartbeat_storage(study) is not None
        made = pg_claim.claim(rdb, study.study_name, internals.study_id(study), budget, beat=beats, stop=stop)
        if made is None:
            return None
        internals.remember_trial(study, made.trial_id, made.number, made.started)
        return internals.as_trial(study, made.trial_id)

    def take_slot() -> int | None:
        counts = count_states(study)
        if sum(_claims(counts)) >= budget:
            return None
        tid = internals.pop_or_create(study, waiting=counts[TrialState.WAITING] > 0)
        beat(tid)
        return tid

    tid = locked_write(study, take_slot, stop)
    return None if tid is None else internals.as_trial(study, tid)


def claim(study: optuna.Study, budget: int, beat: Beat, poll: float, stop: Stop = lambda: False) -> optuna.Trial | None:
    """Block until a slot is free and return a new trial in it; ``None`` once the budget is met or on a stop.

    While every free slot is claimed by running trials it waits for them to finish or fail (a dead worker's trials
    are failed by the heartbeat threads), looking again after ``poll`` s, then less and less often, up to
    ``LONGEST_POLL`` times that, at random moments: at a study's tail every worker waits so, and 256 looking every
    2 s sent the database 128 claims and 128 counts a second over every trial of the study (the heartbeat's grace
    already delays a dead worker's retry by tens of seconds)."""
    pause = poll
    while not stop():
        trial = try_claim(study, budget, beat, stop)
        if trial is not None:
            return trial
        if claims(study)[0] >= budget:
            return None
        _sleep(random.uniform(0.5, 1.0) * pause, stop)
        pause = min(pause * 2, poll * LONGEST_POLL)
    return None


LONGEST_POLL = 5  # x poll: 10 s at the default heartbeat (poll 2 s), about its interval


def _sleep(seconds: float, stop: Stop) -> None:
    """Sleep, but wake within half a second of a stop request."""
    deadline = time.monotonic() + seconds
    while not stop() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))
