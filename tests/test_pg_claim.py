"""The claim as one statement on PostgreSQL (``sweeper.study.pg_claim``): its rows are Optuna's own, its trials
work as Optuna's do, workers that start together make the function once, and a database where it cannot be made
claims as Optuna's calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState
from sqlalchemy.pool import NullPool

from conftest import PrivatePostgres
from sweeper.study import pg_claim
from sweeper.study.optuna_internals import rdb_backend
from sweeper.study.storage import make_storage
from sweeper.workers.budget import claims, try_claim

_COLUMNS = "t.number, t.state, t.datetime_start IS NOT NULL, t.datetime_complete IS NULL, h.trial_id IS NOT NULL"


def _rows(url: str, study_name: str) -> list[Any]:
    """Each trial of a study as the database holds it: what Optuna's and the function's writes must agree on."""
    engine = sa.create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT {_COLUMNS} FROM trials t JOIN studies s USING (study_id) "
                "LEFT JOIN trial_heartbeats h USING (trial_id) WHERE s.study_name = :n ORDER BY t.trial_id"
            ),
            {"n": study_name},
        )
        return [tuple(r) for r in rows]


def test_a_claims_start_is_optunas_in_any_time_zone(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Optuna 5.1 stores a trial's start in UTC and shows it in the host's zone: on a host whose clock is not UTC
    (+5:30), a claimed trial's start, new or popped, reads back as the host's now, as Optuna's own trial's does."""
    monkeypatch.setenv("TZ", "XST-5:30")  # POSIX: 5 h 30 min east of UTC, no zone files needed
    time.tzset()
    try:
        study = optuna.create_study(storage=make_storage(pg_url))
        study.enqueue_trial({"x": 0.5})
        before = datetime.now()
        ours = [try_claim(study, budget=3, beat=lambda tid: None) for _ in range(2)]  # popped, then new
        optunas = study.ask()
        reader = make_storage(pg_url)  # a cache of its own: the starts as stored
        starts = [reader.get_trial(t._trial_id).datetime_start for t in [*ours, optunas]]
        assert all(abs((start - before).total_seconds()) < 60 for start in starts), (before, starts)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_claim_writes_what_optuna_writes(pg_url: str) -> None:
    """The same claims made by Optuna's calls (SQLite's path: ``ask`` with its first beat) and by the function: the
    same rows (number, state, start, heartbeat), queued trials popped in order with their parameters, and the trials
    then suggested, reported and told through Optuna as usual."""
    storage = make_storage(pg_url, heartbeat_interval=60)
    assert pg_claim.available(storage)
    for name in ("optuna", "function"):
        study = optuna.create_study(storage=storage, study_name=name)
        study.enqueue_trial({"x": 0.25})
        study.enqueue_trial({"x": 0.75})
        made = []
        for _ in range(3):
            if name == "optuna":
                trial = study.ask()
                storage.record_heartbeat(trial._trial_id)
            else:
                trial = try_claim(study, budget=3, beat=lambda tid: None)
            assert trial is not None
            made.append(trial)
        if name == "function":
            assert try_claim(study, budget=3, beat=lambda tid: None) is None  # the budget is met
        xs = [t.suggest_float("x", 0, 1) for t in made]
        assert xs[:2] == [0.25, 0.75]
        for i, t in enumerate(made):
            t.report(0.1, step=0)
            study.tell(t, float(i))
        assert [t.number for t in made] == [0, 1, 2]
        assert study.best_trial.params["x"] == 0.25
    assert _rows(pg_url, "function") == _rows(pg_url, "optuna")
    assert [r[1] for r in _rows(pg_url, "function")] == ["COMPLETE"] * 3


def test_claims_by_many_threads_meet_the_budget_exactly(pg_url: str) -> None:
    """Eight workers (threads, each with its own storage and connections) claim against one budget at once."""
    budget, made, lock = 12, [], threading.Lock()
    optuna.create_study(storage=make_storage(pg_url), study_name="race")

    def worker() -> None:
        study = optuna.load_study(study_name="race", storage=make_storage(pg_url, heartbeat_interval=60))
        while (trial := try_claim(study, budget, beat=lambda tid: None)) is not None:
            with lock:
                made.append(trial.number)
            study.tell(trial, 1.0)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    study = optuna.load_study(study_name="race", storage=make_storage(pg_url))
    assert sorted(made) == list(range(budget)) and claims(study) == (budget, 0)


def test_workers_starting_together_make_the_function_once(pg_url: str) -> None:
    """A study made by an earlier sweeper (tables, no function): eight workers open it at once."""
    make_storage(pg_url).engine.dispose()  # the tables (Optuna's own creation of them is not made for a race)
    with sa.create_engine(pg_url, poolclass=NullPool).begin() as conn:
        conn.execute(sa.text(f"DROP FUNCTION {pg_claim.SIGNATURE}"))
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            assert pg_claim.available(make_storage(pg_url))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []


@pytest.fixture
def limited_url(private_pg: PrivatePostgres) -> Iterator[str]:
    """A study database whose user may read and write Optuna's tables but not create anything (the function
    absent): a deployment where an administrator made the schema."""
    with private_pg.database("sweeper_limited") as name:
        owner = sa.create_engine(private_pg.url(name), poolclass=NullPool)
        make_storage(private_pg.url(name)).engine.dispose()  # Optuna's tables and sweeper's, and the function
        with owner.begin() as conn:
            conn.execute(sa.text(f"DROP FUNCTION {pg_claim.SIGNATURE}"))
            conn.execute(sa.text("DROP ROLE IF EXISTS sweeper_limited"))
            conn.execute(sa.text("CREATE ROLE sweeper_limited LOGIN"))
            conn.execute(sa.text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
            conn.execute(sa.text("GRANT USAGE ON SCHEMA public TO sweeper_limited"))
            grant = "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO sweeper_limited"
            conn.execute(sa.text(grant))
            conn.execute(sa.text("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO sweeper_limited"))
        try:
            yield private_pg.url(name).replace("postgres@", "sweeper_limited@")
        finally:
            with owner.begin() as conn:
                conn.execute(sa.text("DROP OWNED BY sweeper_limited"))
            owner.dispose()
    with sa.create_engine(private_pg.admin_url, poolclass=NullPool).begin() as conn:
        conn.execute(sa.text("DROP ROLE sweeper_limited"))


def test_without_the_right_to_make_it_claims_are_optunas_calls(limited_url: str) -> None:
    storage = make_storage(limited_url, heartbeat_interval=60)
    assert not pg_claim.available(storage)
    study = optuna.create_study(storage=storage, study_name="limited")
    while (trial := try_claim(study, 3, storage.record_heartbeat)) is not None:
        study.tell(trial, 1.0)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3
    assert rdb_backend(study) is storage
