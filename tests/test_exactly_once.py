"""A lost acknowledgement, really injected: a write's COMMIT lands in the database, then the client sees
its connection fail (PostgreSQL: the server process is terminated right after the commit, so SQLAlchemy's
COMMIT meets a dead connection; SQLite, a local file with no connection to lose: the commit returns
"database is locked" after it landed). Each write a worker makes that cannot be sent twice must still
land once: trial creation with and without a template, the WAITING -> RUNNING pop, the end of a trial,
and the budget claim that makes them."""

from __future__ import annotations

import re
import sqlite3
import threading
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy import exc as sa_exc

from sweeper.study import pg_claim
from sweeper.study.storage import make_storage
from sweeper.workers.budget import try_claim

CREATE = r"^INSERT INTO trials\b"
STATE = r"^UPDATE trials SET .*\bstate="
HEARTBEAT = r"^INSERT INTO trial_heartbeats\b"
CLAIM = r"\bsweeper_claim_1\("  # PostgreSQL: the whole claim is one autocommitted statement (``pg_claim``)


class LostAck:
    """The next ``times`` COMMITs of transactions that ran a statement matching ``pattern`` land, and the
    client is then told its connection failed."""

    def __init__(self, storage: optuna.storages.RDBStorage, pattern: str, times: int = 1) -> None:
        self.engine, self.pattern, self.left = storage.engine, re.compile(pattern), times
        self.fired = self.disconnects = 0  # commits that landed and then failed; disconnects the client saw
        self._tokens: set[Any] = set()
        self._lock = threading.Lock()
        event.listen(self.engine, "after_cursor_execute", self._seen)
        event.listen(self.engine, "commit", self._commit)
        event.listen(self.engine, "handle_error", self._error)

    def remove(self) -> None:
        event.remove(self.engine, "after_cursor_execute", self._seen)
        event.remove(self.engine, "commit", self._commit)
        event.remove(self.engine, "handle_error", self._error)

    @property
    def lost(self) -> int:
        """Acknowledgements really lost: the commit landed and the client saw its connection fail."""
        return self.fired if self.engine.dialect.name == "sqlite" else min(self.fired, self.disconnects)

    def _error(self, context: sa.engine.ExceptionContext) -> None:
        if context.is_disconnect:
            self.disconnects += 1

    def _seen(self, conn: sa.Connection, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if not self.pattern.search(statement.strip()):
            return
        if self.engine.dialect.name != "postgresql" or not conn.connection.dbapi_connection.autocommit:
            conn.info["lost_ack"] = True  # lost at the transaction's COMMIT
            return
        token = params.get("token") if isinstance(params, dict) else None
        if token in self._tokens:  # each write loses one answer: its retry is answered
            return
        self._tokens.add(token)
        self._lose(conn)  # the statement was its transaction: it landed; now its answer is lost

    def _take(self) -> bool:
        """One more answer to lose; False once ``times`` are lost."""
        with self._lock:
            if self.left == 0:
                return False
            self.left -= 1
            self.fired += 1
            return True

    def _terminate(self, pid: int) -> None:
        with sa.create_engine(self.engine.url, poolclass=sa.pool.NullPool).connect() as admin:
            admin.execute(sa.text("SELECT pg_terminate_backend(:p, 10000)"), {"p": pid})

    def _lose(self, conn: sa.Connection) -> None:
        if not self._take():
            return
        dbapi = conn.connection.dbapi_connection
        self._terminate(dbapi.info.backend_pid)
        dbapi.cursor().execute("SELECT 1")  # the client finds its connection dead before it reads the answer

    def _commit(self, conn: sa.Connection) -> None:
        if not conn.info.pop("lost_ack", False) or not self._take():
            return
        dbapi = conn.connection.dbapi_connection
        dbapi.commit()  # the write lands
        if self.engine.dialect.name == "sqlite":
            raise sa_exc.OperationalError("COMMIT", None, sqlite3.OperationalError("database is locked"))
        dbapi.cursor().execute("SELECT 1")  # a transaction open again: SQLAlchemy's own COMMIT goes to the server
        self._terminate(dbapi.info.backend_pid)
        # SQLAlchemy now sends COMMIT down a connection whose server process is gone: the client sees a disconnect


@pytest.fixture
def storage(storage_url: str) -> Any:
    st = make_storage(storage_url)
    yield st
    st.engine.dispose()


def _study(storage: optuna.storages.RDBStorage) -> optuna.Study:
    return optuna.create_study(storage=storage, study_name="lost-ack")


def _states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.get_trials(deepcopy=False)]


def test_create_without_template_lands_once(storage: optuna.storages.RDBStorage) -> None:
    study = _study(storage)
    fault = LostAck(storage, CREATE)
    trial = study.ask()
    assert fault.lost == 1
    assert _states(study) == [TrialState.RUNNING] and trial.number == 0


def test_create_with_template_lands_once(storage: optuna.storages.RDBStorage) -> None:
    """``enqueue_trial`` (the literature start points) and a stale trial's retry (a RUNNING template)."""
    study = _study(storage)
    fault = LostAck(storage, CREATE, times=2)
    study.enqueue_trial({"x": 1.0})
    retry = optuna.trial.FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=None,
        datetime_complete=None,
        params={"x": 2.0},
        distributions={"x": optuna.distributions.FloatDistribution(0, 2)},
        user_attrs={},
        system_attrs={"failed_trial": 0},
        intermediate_values={},
        trial_id=-1,
    )
    storage.create_new_trial(study._study_id, template_trial=retry)
    assert fault.lost == 2
    assert _states(study) == [TrialState.WAITING, TrialState.RUNNING]


def test_pop_of_a_waiting_trial_lands_once(storage: optuna.storages.RDBStorage) -> None:
    """The pop's commit landed: the trial is this worker's (not skipped as taken, left RUNNING without an owner)."""
    study = _study(storage)
    study.enqueue_trial({"x": 1.0})
    fault = LostAck(storage, STATE)
    trial = study.ask()
    assert fault.lost == 1
    assert trial.number == 0 and trial.suggest_float("x", 0, 2) == 1.0
    assert _states(study) == [TrialState.RUNNING]


def test_end_of_a_trial_lands_once(storage: optuna.storages.RDBStorage) -> None:
    study = _study(storage)
    trial = study.ask()
    fault = LostAck(storage, STATE)
    study.tell(trial, 0.5)  # no UpdateFinishedTrialError for the end that already landed
    assert fault.lost == 1
    (t,) = study.get_trials()
    assert t.state == TrialState.COMPLETE and t.value == 0.5


@pytest.mark.parametrize("where", ["create", "pop", "end", "heartbeat", "claim"])
def test_budget_is_exact_through_lost_acknowledgements(storage: optuna.storages.RDBStorage, where: str) -> None:
    """Claims under the study's lock, each write of the named kind losing its acknowledgement: exactly the
    budget's trials, all finished, none RUNNING, none twice. On PostgreSQL a claim's create, pop and first beat are
    one statement of its own (``pg_claim``): "claim" loses the answer of each, the last (no free slot) included;
    the other cases there claim as Optuna's calls in one transaction (``lock.locked_write``)."""
    if where == "claim" and not pg_claim.available(storage):
        pytest.skip("PostgreSQL only")
    if where in ("create", "pop", "heartbeat"):
        storage.pg_claim = False  # PostgreSQL: the claim as Optuna's calls, as where the function cannot be made
    study = _study(storage)
    for x in (0.5, 1.5):  # queued trials, as the literature start points and stale-trial retries are
        study.enqueue_trial({"x": x})
    pattern = {"create": CREATE, "pop": STATE, "end": STATE, "heartbeat": HEARTBEAT, "claim": CLAIM}[where]
    budget, told, fired = 4, 0, 0
    while True:
        fault = LostAck(storage, pattern, times=100) if where != "end" else None
        trial = try_claim(study, budget, storage.record_heartbeat)  # the first beat is written under the lock
        if fault is not None:
            fault.remove()
            fired += fault.lost
        if trial is None:
            break
        fault = LostAck(storage, pattern) if where == "end" else None
        study.tell(trial, trial.suggest_float("x", 0, 2))
        told += 1
        if fault is not None:
            fault.remove()
            fired += fault.lost
    assert fired == {"create": 2, "pop": 2, "end": 4, "heartbeat": 4, "claim": 5}[where]
    trials = study.get_trials()
    assert told == budget and len(trials) == budget, [(t.number, t.state) for t in trials]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert {0.5, 1.5} <= {t.params["x"] for t in trials}  # the queued trials ran, once each
