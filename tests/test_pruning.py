"""The median pruner decides as Optuna's does, reading only what finished since it last looked."""

from __future__ import annotations

import random

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from sweeper.study import optuna_internals as internals
from sweeper.study.pruning import FinishedTrials, MedianPruner
from sweeper.study.storage import make_storage


def _report(trial: optuna.Trial, rng: random.Random, epochs: int) -> None:
    for step in range(epochs):
        trial.report(rng.uniform(0, 1), step)


def test_its_decisions_are_optunas(storage_url: str) -> None:
    """Finished trials of every kind, running ones with reports: for each running trial, the same verdict as
    Optuna's ``MedianPruner`` over the same study, before and after more trials finish."""
    rng = random.Random(0)
    study = optuna.create_study(storage=make_storage(storage_url), direction="maximize")
    ours = MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    optunas = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    running = []
    for i in range(12):
        trial = study.ask()
        if i % 4 == 3:  # left RUNNING, reporting the worst or the best values
            for step in range(4):
                trial.report(0.0 if i % 8 == 3 else 1.0, step)
            running.append(trial)
            continue
        _report(trial, rng, 4)
        value, state = [(rng.uniform(0, 1), None), (None, TrialState.PRUNED), (None, TrialState.FAIL)][i % 3]
        study.tell(trial, value, state=state)
    verdicts = []
    for _ in range(2):
        for trial in running:
            frozen = internals.frozen(study, internals.trial_id(trial))
            assert ours.prune(study, frozen) == optunas.prune(study, frozen)
            verdicts.append(optunas.prune(study, frozen))
        study.tell(running.pop(0), 0.99)  # one finishes; the next round must count it
    assert True in verdicts and False in verdicts  # the comparison covered both answers


def test_a_trial_that_finishes_late_or_new_is_read_once(storage_url: str) -> None:
    """A trial running at one read and finished by the next is in the next; so is a new one. With nothing newly
    finished a read is one query of (id, state), however many trials run: the running ones are not read whole."""
    study = optuna.create_study(storage=make_storage(storage_url))
    first = study.ask()
    study.tell(first, 1.0)
    slow = study.ask()
    running = [study.ask() for _ in range(20)]
    finished = FinishedTrials()
    assert [t.number for t in finished.read(study)] == [first.number]

    statements = []
    engine = internals.rdb_backend(study).engine
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    assert [t.number for t in finished.read(study)] == [first.number]
    assert len(statements) == 1, statements

    study.tell(slow, 2.0)
    study.tell(running[-1], 3.0)
    later = study.ask()
    study.tell(later, 4.0)
    read = finished.read(study)
    assert [(t.number, t.value) for t in read] == [
        (first.number, 1.0), (slow.number, 2.0), (running[-1].number, 3.0), (later.number, 4.0)
    ]  # fmt: skip
