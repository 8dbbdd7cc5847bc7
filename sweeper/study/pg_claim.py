"""A claim on PostgreSQL in one statement: a function in the study's database does the whole claim.

Under the study's lock a claim counts the study's trials, pops a WAITING trial or creates one, records its first
heartbeat and the claim's token (``sweeper.study.exactly_once``). Sent as Optuna's calls, that is ~19 round trips
with the lock held across all of them, each waiting for the client's CPU (256 workers in 4 processes on 2 cores:
the lock held 472 ms a claim, so claims queued for minutes). ``sweeper_claim_1`` runs them inside the server, in
one autocommitted statement: the lock is held for the server's milliseconds, whatever the client's load.

Its body is Optuna 5.1's own writes, statement for statement (``_create_new_trial`` under the study row's lock,
the number counted from earlier trials; ``set_trial_state_values(RUNNING)`` of the first WAITING trial;
``record_heartbeat``), on the schema ``check_schema`` holds the database to; ``tests/test_pg_claim.py`` compares its
rows with Optuna's. A change to the body is a new name (``_2``): workers of two versions never share one.
Where it cannot be made (no CREATE right on the schema) the claim is sent as Optuna's calls (``lock.locked_write``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from sweeper.study import lock
from sweeper.study.record import FINISHED

_CLAIMED = ", ".join(f"'{state.name}'" for state in (*FINISHED, TrialState.RUNNING))  # the budget's slots taken
NAME = "sweeper_claim_1"
SIGNATURE = f"{NAME}(bigint, integer, integer, varchar, timestamp, boolean)"
_BODY = f"""
CREATE OR REPLACE FUNCTION {NAME}(
    lock_key bigint, the_study integer, budget integer, write_token varchar, started timestamp, beat boolean,
    OUT taken boolean, OUT trial integer, OUT trial_number integer, OUT fresh boolean)
LANGUAGE plpgsql AS $$
DECLARE
    claimed integer;
    waiting integer;
BEGIN
    taken := NOT pg_try_advisory_xact_lock(lock_key);
    IF taken THEN
        RETURN;
    END IF;
    fresh := false;
    SELECT w.trial_id INTO trial FROM sweeper_writes w WHERE w.token = write_token;
    IF FOUND THEN  -- an earlier try of this claim landed; its answer was lost
        RETURN;
    END IF;
    SELECT count(*) FILTER (WHERE t.state IN ({_CLAIMED})),
           count(*) FILTER (WHERE t.state = 'WAITING')
      INTO claimed, waiting FROM trials t WHERE t.study_id = the_study;
    IF claimed >= budget THEN
        RETURN;  -- no free slot: trial is NULL
    END IF;
    IF waiting > 0 THEN  -- Optuna's pop: the first WAITING trial set RUNNING, its start now
        UPDATE trials t SET state = 'RUNNING', datetime_start = started
         WHERE t.trial_id = (SELECT w.trial_id FROM trials w WHERE w.study_id = the_study AND w.state = 'WAITING'
                              ORDER BY w.trial_id LIMIT 1 FOR UPDATE SKIP LOCKED)
           AND t.state = 'WAITING'
        RETURNING t.trial_id INTO trial;
    END IF;
    IF trial IS NULL THEN  -- Optuna's new trial: numbered under the study row's lock
        PERFORM 1 FROM studies s WHERE s.study_id = the_study FOR UPDATE;
        INSERT INTO trials (study_id, state, datetime_start) VALUES (the_study, 'RUNNING', started)
        RETURNING trials.trial_id INTO trial;
        SELECT count(*) INTO trial_number FROM trials t WHERE t.study_id = the_study AND t.trial_id < trial;
        UPDATE trials t SET number = trial_number WHERE t.trial_id = trial;
        fresh := true;
    END IF;
    IF beat THEN
        INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (trial, CURRENT_TIMESTAMP)
        ON CONFLICT (trial_id) DO UPDATE SET heartbeat = EXCLUDED.heartbeat;
    END IF;
    INSERT INTO sweeper_writes (token, trial_id) VALUES (write_token, trial);
END $$
"""


def install(engine: sa.Engine) -> bool:
    """Make the function in the study's database if it is not there (workers starting together wait for the
    first); whether it is there now. False on a database other than PostgreSQL, or where it cannot be made (no
    CREATE right on the schema, a read-only server)."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        if _present(conn):
            return True
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock.lock_key(NAME)})
            if not _present(conn):
                conn.execute(sa.text(_BODY))
        return True
    except (sa.exc.ProgrammingError, sa.exc.InternalError):  # no CREATE right, a read-only database: Optuna's calls
        return False


def _present(conn: sa.Connection) -> bool:
    return conn.execute(sa.text("SELECT to_regprocedure(:s) IS NOT NULL"), {"s": SIGNATURE}).scalar_one()


class Claimed(NamedTuple):
    trial_id: int
    number: int | None  # None: not a trial made by this call (popped, or made by an earlier try): read it
    started: datetime


def claim(rdb: RDBStorage, name: str, study_id: int, budget: int, *, beat: bool, stop: lock.Stop) -> Claimed | None:
    """A trial in a free slot of the budget, exactly once (a try whose answer is lost is found by its token);
    None when there is no free slot, or ``stop()`` came true while the lock was taken."""
    import uuid

    token, started = uuid.uuid4().hex, datetime.now()  # Optuna's start time: the client's clock, as Optuna's own
    stored = started.astimezone(UTC).replace(tzinfo=None)  # Optuna 5.1 stores it in UTC, shows it local
    call = sa.text(f"SELECT * FROM {NAME}(:key, :study, :budget, :token, :started, :beat)")
    params = dict(key=lock.lock_key(name), study=study_id, budget=budget, token=token, started=stored, beat=beat)
    engine = rdb.engine.execution_options(isolation_level="AUTOCOMMIT")  # the statement is its transaction

    def attempt() -> Claimed | None:
        with engine.connect() as conn:
            taken, trial, number, fresh = conn.execute(call, params).one()
        if taken:
            raise lock.Taken
        return None if trial is None else Claimed(int(trial), int(number) if fresh else None, started)

    return lock.until_taken(rdb, attempt, stop)


def available(rdb: RDBStorage | None) -> bool:
    """Whether claims on this storage go through the function (made when the storage was opened)."""
    return bool(getattr(rdb, "pg_claim", False))
