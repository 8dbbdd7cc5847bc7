"""The study as its sampler and pruner read it: finished trials from the worker's copy, running ones read lean.

At every trial TPE reads the study's trials three times (its search space, then each group's sample, with the
running trials its constant liar steers away from) and the median pruner at every report; Optuna's trial cache
answers each by reading again, whole (parameters, attributes, intermediate values), every trial not finished when
it last looked. With hundreds of workers that is every running trial, many times a trial, on every worker: a
worker spent 1.9 s of CPU a trial at 256 running trials, 0.35 s with none (86 % of the workers' CPU in the paced
256-worker run went to the pruner's reads alone). A finished trial never changes, so a worker keeps one copy of
them per study (``FinishedTrials``) and brings it up to date with one query of (id, state) over the trials from
the oldest it last saw unfinished, reading whole only those finished since; the running ones are read in plain
rows, with what a sampler reads of them (``optuna_reads.running_trials``). Trial ids grow in the order trials are
committed within a study (every new trial locks the study's row first, Optuna's and sweeper's claims alike), so no
trial appears below that point later.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Container
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from sweeper.study import optuna_internals as internals
from sweeper.study import optuna_reads as reads


class FinishedTrials:
    """A worker's copy of one study's finished trials."""

    def __init__(self) -> None:
        self._trials: dict[int, FrozenTrial] = {}  # trial id -> the trial, finished
        self._by_number: list[FrozenTrial] = []
        self._low = 0  # every trial with an id up to this one was finished when last read, and is in _trials
        self._lock = threading.Lock()

    def read(self, study: optuna.Study) -> list[FrozenTrial]:
        """The study's finished trials, as stored now, by number (the list is the copy's: do not change it)."""
        with self._lock:
            rows = reads.trial_states_above(study, self._low)
            new = {tid for tid, state in rows if state.is_finished() and tid not in self._trials}
            added = [t for t in reads.read_trials(study, new) if t.state.is_finished()]
            if added:
                self._trials.update((internals.trial_id(t), t) for t in added)
                self._by_number = sorted(self._trials.values(), key=lambda t: t.number)
            unfinished = [tid for tid, state in rows if not state.is_finished()]
            self._low = min(unfinished) - 1 if unfinished else max((tid for tid, _ in rows), default=self._low)
            return self._by_number


_copies: weakref.WeakKeyDictionary[RDBStorage, dict[int, FinishedTrials]] = weakref.WeakKeyDictionary()
_copies_lock = threading.Lock()


def finished_trials(study: optuna.Study) -> FinishedTrials | None:
    """The copy of the study's finished trials this process keeps for its storage object (a worker's sampler and
    pruner share it); None for a storage without SQL (Optuna's in-memory storage reads nothing)."""
    rdb = internals.rdb_backend(study)
    if rdb is None:
        return None
    with _copies_lock:
        return _copies.setdefault(rdb, {}).setdefault(internals.study_id(study), FinishedTrials())


_LEAN = frozenset({TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING})


class SearchView:
    """The study, but its trials in these states read from the worker's copy (finished) and lean (running); the
    rest is the study itself. Its finished trials are read once, at the first call that lets Optuna use its cache
    (``use_cache``), as Optuna's study reads them once a trial (a sampler's view lives for a trial, ``number``)."""

    def __init__(self, study: optuna.Study, finished: FinishedTrials, number: int | None = None) -> None:
        self._study, self._finished, self.number = study, finished, number
        self._cached: list[FrozenTrial] | None = None

    def is_for(self, study: optuna.Study, number: int | None) -> bool:
        return self._study is study and self.number == number

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy, states)

    def _get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        if states is None or not all(s in _LEAN for s in states):  # type: ignore[attr-defined]
            return self._study._get_trials(deepcopy, states, use_cache)
        if use_cache and self._cached is not None:
            finished = self._cached
        else:
            finished = self._finished.read(self._study)
            self._cached = finished if use_cache else self._cached
        trials = [t for t in finished if t.state in states]
        if TrialState.RUNNING in states:
            known = {internals.trial_id(t) for t in trials}  # a trial that finished between the reads: once
            running = [t for t in reads.running_trials(self._study) if internals.trial_id(t) not in known]
            trials = sorted(trials + running, key=lambda t: t.number)
        return copy.deepcopy(trials) if deepcopy else trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


def search_view(study: optuna.Study, number: int | None = None) -> optuna.Study:
    """The study as a sampler or pruner should read it (``number``: the trial a sampler's view is for)."""
    finished = finished_trials(study)
    return study if finished is None else SearchView(study, finished, number)  # type: ignore[return-value]
