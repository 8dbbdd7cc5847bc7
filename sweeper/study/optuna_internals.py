"""The one door into Optuna's private API: every use of ``study._storage``, ``trial._trial_id`` and
``optuna.storages._...`` in sweeper goes through a named function here, so an Optuna release that
moves one of them touches this file alone, and a reader sees exactly what sweeper relies on.

Checked against Optuna 5.0.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial

#: private methods that Optuna's ``_CachedStorage`` calls on its RDB backend (ask, suggest, best trial,
#: stale-trial check): they need the same outage handling as the public ones (``sweeper.study.retry``)
CACHED_BACKEND_CALLS = (
    "_get_stale_trial_ids",
    "_create_new_trial",
    "_set_trial_param",
    "_get_best_trial_id",
    "_get_trials",
)


def storage(study: optuna.Study) -> BaseStorage:
    """The storage a study talks to (Optuna's cache in front of the database)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    return study._study_id


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


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's own check: RUNNING trials whose heartbeat is older than the grace period are failed and retried."""
    with warnings.catch_warnings():  # experimental since 2.x; a no-op unless the storage has heartbeats on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


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


def running_without_heartbeat(study: optuna.Study) -> list[int]:
    """RUNNING trials of the study that never recorded a heartbeat (Optuna's stale check skips them)."""
    from optuna.storages._rdb import models
    from sqlalchemy import select

    rdb = rdb_backend(study)
    if rdb is None:
        return []
    beating = select(models.TrialHeartbeatModel.trial_id)
    query = (
        select(models.TrialModel.trial_id)
        .where(models.TrialModel.study_id == study._study_id)
        .where(models.TrialModel.state == optuna.trial.TrialState.RUNNING)
        .where(models.TrialModel.trial_id.not_in(beating))
    )
    with rdb.engine.connect() as conn:
        return [int(r[0]) for r in conn.execute(query)]


def trial_with_system_attr(rdb: RDBStorage, study_id: int, key: str, value: Any) -> int | None:
    """The id of the study's trial carrying system attribute ``key = value`` (an idempotency token), if any."""
    from optuna.storages._rdb import models
    from sqlalchemy import select

    query = (
        select(models.TrialSystemAttributeModel.trial_id)
        .join(models.TrialModel, models.TrialModel.trial_id == models.TrialSystemAttributeModel.trial_id)
        .where(models.TrialModel.study_id == study_id)
        .where(models.TrialSystemAttributeModel.key == key)
        .where(models.TrialSystemAttributeModel.value_json == json.dumps(value))
    )
    with rdb.engine.connect() as conn:
        row = conn.execute(query).first()
    return int(row[0]) if row else None


def rdb_method(name: str) -> Callable[..., Any]:
    """An RDBStorage method by name, public or one of ``CACHED_BACKEND_CALLS``."""
    return getattr(RDBStorage, name)
