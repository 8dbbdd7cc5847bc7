"""The sampler and the pruner decide as Optuna's do, reading only what finished since they last looked, and the
running trials lean."""

from __future__ import annotations

import pickle
import random

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from sweeper.study import optuna_internals as internals
from sweeper.study import optuna_reads as reads
from sweeper.study.search_view import FinishedTrials, search_view
from sweeper.study.storage import make_storage
from sweeper.study.strategy import MedianPruner, TPESampler


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
        if i == 5:  # a running trial numbered among finished ones
            _objective_part(study.ask())
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


def _objective_part(trial: optuna.Trial) -> float:
    """A search space with a conditional parameter (its own group in TPE's decomposition)."""
    x = trial.suggest_float("x", 1e-4, 1.0, log=True)
    kind = trial.suggest_categorical("kind", ["a", "b"])
    n = trial.suggest_int("n", 1, 8)
    z = trial.suggest_float("z", -1.0, 1.0) if kind == "a" else 0.0
    return x * n + z


def _study_with_running_trials(url: str) -> optuna.Study:
    """Twelve finished trials (complete, pruned, failed) and six running: four with every parameter (one numbered
    among the finished), one given its relative parameters (TPE's constant liar keeps them in system attributes)
    but none stored, one bare."""
    rng = random.Random(1)
    sampler = optuna.samplers.TPESampler(seed=3, n_startup_trials=4, multivariate=True, group=True, constant_liar=True)
    study = optuna.create_study(storage=make_storage(url), direction="maximize", sampler=sampler)
    for i in range(12):
        if i == 5:  # a running trial numbered among finished ones
            _objective_part(study.ask())
        trial = study.ask()
        value = _objective_part(trial)
        _report(trial, rng, 2)
        state = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL][i % 4]
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    for _ in range(3):
        _objective_part(study.ask())
    assert study.ask().relative_params  # sampled and shared, not yet suggested
    study.ask()
    return study


def test_the_samplers_view_is_optunas(storage_url: str) -> None:
    """The trials TPE reads through the view are Optuna's own, field for field, in the same order."""
    study = _study_with_running_trials(storage_url)
    view = search_view(study, number=-1)
    for states in [(TrialState.COMPLETE,), (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]:
        for cached in (True, False):
            ours = view._get_trials(deepcopy=False, states=states, use_cache=cached)
            optunas = study._get_trials(deepcopy=False, states=states, use_cache=False)
            fields = ("number", "state", "params", "distributions", "system_attrs", "value", "datetime_start")
            assert [[getattr(t, f) for f in fields] for t in ours] == [[getattr(t, f) for f in fields] for t in optunas]
    assert len(study._get_trials(states=(TrialState.RUNNING,))) == 6


def test_its_samples_are_optunas(storage_url: str) -> None:
    """With finished and running trials in the study, sweeper's TPE and Optuna's, seeded alike, give a new trial
    the same search space and the same parameters, relative and independent."""
    study = _study_with_running_trials(storage_url)
    settings = dict(seed=11, n_startup_trials=4, multivariate=True, group=True, constant_liar=True)
    trial = internals.frozen(study, internals.trial_id(study.ask()))
    ours = pickle.loads(pickle.dumps(TPESampler(**settings)))  # it pickles, as Optuna's samplers do
    optunas = optuna.samplers.TPESampler(**settings)
    space = ours.infer_relative_search_space(study, trial)
    assert space == optunas.infer_relative_search_space(study, trial)
    assert set(space) == {"x", "kind", "n", "z"}
    sampled = ours.sample_relative(study, trial, space)
    assert sampled == optunas.sample_relative(study, trial, space) and set(sampled) == set(space)
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    assert ours.sample_independent(study, trial, "w", dist) == optunas.sample_independent(study, trial, "w", dist)


def test_a_trial_reads_the_running_trials_lean(storage_url: str) -> None:
    """With 20 trials running, a trial's sampling reads them in plain rows: Optuna's storage is not asked for them
    (its cache would build each whole, with its attributes and intermediate values, three times a trial)."""
    study = _study_with_running_trials(storage_url)
    for _ in range(15):
        _objective_part(study.ask())
    sampler = TPESampler(seed=5, n_startup_trials=4, multivariate=True, group=True, constant_liar=True)
    worker = optuna.load_study(study_name=study.study_name, storage=make_storage(storage_url), sampler=sampler)
    built: list[FrozenTrial] = []  # trials Optuna's storage built whole
    rdb = internals.rdb_backend(worker)
    read = rdb._get_trials
    rdb._get_trials = lambda *args, **kwargs: built.extend(found := read(*args, **kwargs)) or found  # type: ignore[method-assign]
    trial = internals.as_trial(worker, internals.pop_or_create(worker, waiting=False))  # a claim's new trial
    _objective_part(trial)
    running = [t.number for t in built if t.state == TrialState.RUNNING and t.number != trial.number]
    assert not running, f"running trials read whole: {running}"
    assert trial.relative_params  # TPE past its start-up trials: it read the finished ones


def test_trials_read_in_plain_rows_are_optunas(storage_url: str) -> None:
    """Trials of every kind (values infinite, intermediate values NaN and infinite, attributes, parameters of
    every distribution) read in plain rows are the trials Optuna's storage builds, field for field."""
    study = optuna.create_study(storage=make_storage(storage_url), direction="maximize")
    for i in range(6):
        trial = study.ask()
        _objective_part(trial)
        trial.set_user_attr("list", [i, "x"])
        study._storage.set_trial_system_attr(trial._trial_id, "note", {"i": i})
        for step, value in enumerate([0.5, float("nan"), float("inf"), float("-inf")][: i + 1]):
            trial.report(value, step)
        value, state = [(1.5, None), (float("inf"), None), (None, TrialState.PRUNED), (None, TrialState.FAIL)][i % 4]
        study.tell(trial, value, state=state)
    _objective_part(study.ask())  # one running
    fresh = optuna.load_study(study_name=study.study_name, storage=make_storage(storage_url))  # nothing cached
    ids = {internals.trial_id(t) for t in study.get_trials()}
    ours = reads.read_trials(fresh, ids)
    optunas = internals.rdb_backend(fresh)._get_trials(internals.study_id(fresh), None, ids, 2**31 - 1)
    assert [repr(t) for t in sorted(ours, key=lambda t: t.number)] == [repr(t) for t in optunas]
    assert [t.state for t in optunas].count(TrialState.RUNNING) == 1 and len(optunas) == 7
