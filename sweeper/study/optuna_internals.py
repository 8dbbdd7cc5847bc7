"""The one door into Optuna's private API: every use of ``study._storage``, ``trial._trial_id`` and
``optuna.storages._...`` in sweeper goes through a named function here, so an Optuna release that
moves one of them touches this file alone (and ``optuna_reads``, its reads of Optuna's tables), and a reader sees
exactly what sweeper relies on.

Checked against Optuna 5.1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.orm import Session

#: private methods that Optuna's ``_CachedStorage`` calls on its RDB backend (ask, suggest, best trial,
#: stale-trial check): they need the same outage handling as the public ones (``sweeper.study.retry``);
#: its ``_create_new_trial`` goes to ``NewTrialRDBStorage.new_trial``
CACHED_BACKEND_CALLS = (
    "_get_stale_trial_ids",
    "_set_trial_param",
    "_get_best_trial_id",
    "_get_trials",
)


class NewTrialRDBStorage(RDBStorage):
    """An RDBStorage whose new trials are made by ``new_trial``, which a subclass overrides: Optuna's
    ``create_new_trial`` and its cache (``_CachedStorage``) both make them in the private ``_create_new_trial``."""

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        return self.new_trial(study_id, template_trial)

    def new_trial(self, study_id: int, template_trial: FrozenTrial | None) -> FrozenTrial:
        return super()._create_new_trial(study_id, template_trial)


def check_schema(rdb: RDBStorage) -> None:
    """Optuna's check that the database's schema is this Optuna's, one connection at a time. Optuna's own
    check reads the schema's revision on a second connection while its first holds a transaction open:
    through a transaction pooler, workers that open the study at once each hold a server connection and wait
    for a second, and once they hold the whole pool none goes on until PgBouncer's query_wait_timeout fails them
    (256 workers through 40 server connections: 645 such crashes, 27 of 532 trials done in 5 minutes). Optuna's
    own check runs only to raise its message, when the revisions differ."""
    if rdb.get_current_version() != rdb.get_head_version():
        rdb._version_manager.check_table_schema_compatibility()


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def frozen(study: optuna.Study, tid: int) -> FrozenTrial:
    """A trial as stored now, by id (not through the study's trial list)."""
    return study._storage.get_trial(tid)


def rdb_backend(study: optuna.Study) -> RDBStorage | None:
    """The RDB storage behind the study's cache, or None for another kind of storage."""
    st = study._storage
    st = getattr(st, "_backend", st)
    return st if isinstance(st, RDBStorage) else None


def heartbeat_storage(study: optuna.Study) -> Any | None:
    """The study's storage when it records heartbeats (a worker's), else None."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    st = study._storage
    return st if isinstance(st, BaseHeartbeat) and is_heartbeat_enabled(st) else None


def record_heartbeat(rdb: RDBStorage, trial_id: int) -> None:
    """Optuna's ``record_heartbeat``, on PostgreSQL as one statement: the trial's heartbeat row made or set to the
    server's clock, as Optuna's own sets it (its ORM reads the row, then the clock, then writes: four round trips,
    and at 256 workers an eighth of the workers' CPU); inside ``one_transaction``, in its transaction, as Optuna's
    own would be. Elsewhere Optuna's own."""
    if rdb.engine.dialect.name != "postgresql":
        return RDBStorage.record_heartbeat(rdb, trial_id)
    from optuna.storages._rdb import models
    from sqlalchemy import func
    from sqlalchemy.dialects.postgresql import insert

    beats = models.TrialHeartbeatModel.__table__
    upsert = insert(beats).values(trial_id=trial_id, heartbeat=func.current_timestamp())
    upsert = upsert.on_conflict_do_update(
        index_elements=[beats.c.trial_id], set_={"heartbeat": upsert.excluded.heartbeat}
    )
    session = open_transaction(rdb)
    if session is not None:  # a claim's first beat, in the claim's transaction (its trial not yet committed)
        session.execute(upsert)
        return
    with rdb.engine.begin() as conn:
        conn.execute(upsert)


def fail_and_retry(study: optuna.Study, tid: int) -> bool:
    """Fail a RUNNING trial as stale and hand it to the storage's stale-trial callback (its retry), as
    ``fail_stale_trials`` does; False if it had ended already (another worker was first)."""
    st = study._storage
    try:
        if not st.set_trial_state_values(tid, state=optuna.trial.TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    callback = st.get_heartbeat_stale_trial_callback()
    if callback is not None:
        callback(study, st.get_trial(tid))
    return True


def pop_or_create(study: optuna.Study, waiting: bool) -> int:
    """What ``study.ask()`` stores, without making the ``Trial``: a WAITING trial popped (a queued retry or start
    point), or a new trial; its id. ``waiting=False`` (the caller counted none, under the study lock) skips ask's
    read of every unfinished trial (Optuna's cache re-reads them whole to find waiting ones: 60 ms at 256
    running trials on 2 cores, under the lock, where it was every other worker's wait)."""
    tid = study._pop_waiting_trial_id() if waiting else None
    return study._storage.create_new_trial(study._study_id) if tid is None else tid


def study_id(study: optuna.Study) -> int:
    return study._study_id


def remember_trial(study: optuna.Study, tid: int, number: int | None, started: datetime) -> None:
    """Put a trial stored without Optuna (``sweeper.study.pg_claim``) in the study's cache, as Optuna's
    ``create_new_trial`` puts the trials it makes (its parameters are set through the cache, which must know it):
    ``number`` given, the new RUNNING trial Optuna's ``_create_new_trial`` returns; None, the trial as stored."""
    from optuna.storages._cached_storage import _CachedStorage, _StudyInfo

    st = study._storage
    if not isinstance(st, _CachedStorage):
        return
    if number is None:
        trial = st._backend.get_trial(tid)
    else:
        trial = FrozenTrial(
            number=number,
            state=TrialState.RUNNING,
            value=None,
            values=None,
            datetime_start=started,
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=tid,
        )
    with st._lock:
        st._studies.setdefault(study._study_id, _StudyInfo())
        st._add_trials_to_cache(study._study_id, [trial])


def as_trial(study: optuna.Study, tid: int) -> optuna.Trial:
    """The ``Trial`` that ``study.ask()`` returns for a trial it stored (``pop_or_create``)."""
    study._thread_local.cached_all_trials = None  # as ask does: the next read of the trials syncs the storage
    return optuna.Trial(study, tid)


@contextmanager
def one_transaction(rdb: RDBStorage) -> Iterator[Session]:
    """A session whose transaction is committed once, when the block ends. Optuna's own storage methods
    called in the block (by this thread) run inside it: their commits are not sent, their rollback ends
    it. So an Optuna write and sweeper's record of it land together or not at all. Opened inside another
    (a claim that creates a trial), it is that one: the outer block commits it all."""
    outer = open_transaction(rdb)
    if outer is not None:
        yield outer
        return
    with rdb.engine.connect() as conn:
        transaction = conn.begin()
        # "rollback_only": the session's commit() leaves the connection's transaction to us
        session = Session(bind=conn, join_transaction_mode="rollback_only")
        session.info[_TRANSACTION] = transaction
        rdb.scoped_session.registry.set(session)  # what Optuna's methods take as their session
        try:
            yield session
            session.flush()
            if transaction.is_active:  # not when Optuna rolled it back (and said so in its result)
                transaction.commit()
        finally:
            rdb.scoped_session.remove()  # the connection's close rolls back whatever was not committed


_TRANSACTION = "sweeper.transaction"


def open_transaction(rdb: RDBStorage) -> Session | None:
    """This thread's session of an open ``one_transaction`` on ``rdb``, if any."""
    registry = rdb.scoped_session.registry
    session = registry() if registry.has() else None
    return session if session is not None and _TRANSACTION in session.info else None


def rolled_back(session: Session) -> bool:
    """Whether Optuna rolled back the transaction of ``one_transaction``'s session (nothing of it will land)."""
    return not session.info[_TRANSACTION].is_active


def lock_study(session: Session, study_id: int) -> None:
    """Lock the study's row until the transaction ends, as Optuna does to number a new trial (KeyError: no study)."""
    from optuna.storages._rdb import models

    models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)


def lock_trial(session: Session, trial_id: int) -> None:
    """Lock the trial's row until the transaction ends, as Optuna does to change its state (KeyError: no trial)."""
    from optuna.storages._rdb import models

    models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)


def add_trial(session: Session, rdb: RDBStorage, study_id: int, template: FrozenTrial | None) -> int:
    """Optuna's new trial (from ``template``, if any) in ``session``, the study's row locked; its id.

    Optuna's own ``new_trial`` would commit it in a loop of its own that sends the insert again when a
    commit fails, even one that landed: this is its body, one try, committed by the caller."""
    lock_study(session, study_id)
    trial = rdb._get_prepared_new_trial(study_id, template, session)
    session.flush()
    return int(trial.trial_id)


def rdb_method(name: str) -> Callable[..., Any]:
    """An RDBStorage method by name, public or one of ``CACHED_BACKEND_CALLS``."""
    return getattr(RDBStorage, name)
