"""One trial budget for all workers: exactly N finished trials, never N + (workers - 1).

Optuna's ``MaxTrialsCallback`` looks at the count after a trial ends, so every worker that started
a trial while the last slot was free would overshoot. Instead a worker claims a slot:

1. before asking for a trial it waits until ``finished + running < budget`` (a running trial is a
   claim; if it fails, e.g. its worker was killed, the claim frees up and its retry takes it);
2. after ``study.ask()`` it checks the claims made *before* its own trial (ordered by start time, then
   trial number: a total order every worker computes alike, so two workers that asked at the same
   moment never both run the last slot, and never both wait for each other).
   The second waits; if the slot is not freed it ends its trial untrained as FAIL (``Surplus``), with
   the reason in the user attr ``end_reason``, and stops. Finished trials never exceed the budget.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class Surplus(Exception):
    """The budget was claimed by other workers' trials while this one was being created."""


def _fail_stale(study: optuna.Study) -> None:
    """Fail trials whose worker stopped sending heartbeats (and queue their retries)."""
    with warnings.catch_warnings():  # a no-op unless the storage has heartbeats on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _order(t: FrozenTrial) -> tuple[datetime, int]:
    return t.datetime_start or datetime.max, t.number


def claims(study: optuna.Study, before: FrozenTrial | None = None) -> tuple[int, int]:
    """(finished, running) trials; with ``before``, only the running trials that started before it."""
    finished = running = 0
    for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)):
        if t.state == TrialState.RUNNING:
            running += before is None or _order(t) < _order(before)
        else:
            finished += 1
    return finished, running


def wait_for_slot(study: optuna.Study, budget: int, poll: float, stop: Callable[[], bool] = lambda: False) -> bool:
    """Block until a trial may start (True) or the budget is met or a stop is asked for (False)."""
    while not stop():
        _fail_stale(study)
        finished, running = claims(study)
        if finished >= budget:
            return False
        if finished + running < budget:
            return True
        time.sleep(poll)  # every slot is claimed by a running trial: wait for it to finish or fail
    return False


def check_claim(trial: optuna.Trial, budget: int, poll: float, stop: Callable[[], bool] = lambda: False) -> None:
    """Raise ``Surplus`` unless this new trial fits in the budget after the trials created before it."""
    study = trial.study
    me = study._storage.get_trial(trial._trial_id)
    while True:
        finished, earlier = claims(study, before=me)
        if finished + earlier < budget:
            return
        if finished >= budget or stop():
            raise Surplus(f"budget of {budget} finished trials met by other workers; trial not trained")
        time.sleep(poll)
        _fail_stale(study)
