"""Writes that must land once although the answer to their commit can be lost.

A connection lost while a COMMIT is on its way hides whether it landed. Most of Optuna's writes can
simply be sent again (a parameter, a report, an attribute, a heartbeat are set, not added), but three
cannot: creating a trial (sent again, it makes a second trial), popping a WAITING trial (sent again,
it finds the trial RUNNING, says "taken by another worker" and the trial is orphaned) and ending a
trial (sent again, Optuna raises ``UpdateFinishedTrialError``). Each of those runs in one transaction
with a row of sweeper's own table ``sweeper_writes``: a fresh token and the trial it wrote. A retry
first locks the row the write locks (the study's, the trial's), so an earlier try still in flight has
ended, and asks whether its token is there; if it is, the write landed and is not sent again.

Why a table of our own, not a system attribute of the trial: what users and Optuna see of a trial
(``trials_dataframe()``, optuna-dashboard, exports, Optuna's own storage tests) stays exactly what
Optuna wrote. Tokens are random and only ever looked up by the call that made them, so rows left by a
deleted study (or a SQLite trial id used again) are harmless; one row per trial creation, pop and end.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import optuna
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from sweeper.study.optuna_internals import one_transaction, rolled_back

_metadata = sa.MetaData()
WRITES = sa.Table(
    "sweeper_writes",
    _metadata,
    sa.Column("token", sa.String(32), primary_key=True),
    sa.Column("trial_id", sa.Integer, nullable=False),
)


def create_table(engine: sa.Engine) -> None:
    """``sweeper_writes`` beside Optuna's tables (workers starting together may race to make it)."""
    try:
        _metadata.create_all(engine, checkfirst=True)
    except sa_exc.DBAPIError:
        if not sa.inspect(engine).has_table(WRITES.name):
            raise


def once(
    rdb: optuna.storages.RDBStorage, lock: Callable[[Session], None], write: Callable[[Session], int | None]
) -> Callable[[], int | None]:
    """An attempt at ``write(session)`` (it returns the id of the trial it wrote; None: nothing was written),
    committed with a token, for a retry loop to call until it succeeds: a try after the first returns the
    trial of a try that landed instead of writing again."""
    token = uuid.uuid4().hex
    tries = 0

    def attempt() -> int | None:
        nonlocal tries
        tries += 1
        with one_transaction(rdb) as session:
            lock(session)  # an earlier try still holding it has ended: its token is there or never will be
            if tries > 1:
                found = session.execute(sa.select(WRITES.c.trial_id).where(WRITES.c.token == token)).scalar()
                if found is not None:
                    return int(found)
            trial_id = write(session)
            if trial_id is not None and rolled_back(session):  # an Optuna call in ``write`` rolled back and went on
                raise optuna.exceptions.StorageInternalError("a storage call rolled back the write: nothing was stored")
            if trial_id is not None:
                session.execute(WRITES.insert().values(token=token, trial_id=trial_id))
            return trial_id

    return attempt
