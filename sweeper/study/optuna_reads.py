"""Optuna's trial tables read lean: what workers read often, in as few columns and statements as it needs.

Optuna's own reads build every trial they touch as an object with all its rows (parameters, attributes,
intermediate values, heartbeat), and its trial cache reads every unfinished trial again at each call: with
hundreds of workers that is every running trial, at every worker's every claim, report and reap. These queries
read the same tables (Optuna 5.1's schema, which ``check_schema`` holds the database to) for one purpose each.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple

import optuna
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from sweeper.study.optuna_internals import heartbeat_storage, open_transaction, rdb_backend


class Dead(NamedTuple):
    stale: list[int]  # a heartbeat, but none for the grace period: what Optuna's stale-trial check would fail now
    unbeaten: list[int]  # no heartbeat at all (Optuna's check skips them)


def dead_trials(study: optuna.Study) -> Dead:
    """The RUNNING trials that look dead, by their heartbeats (database clock): Optuna's stale-trial check, and the
    trials it skips, in one query of two columns. Optuna's builds every RUNNING trial as an object with its
    heartbeats, and every worker's reaper checks every interval (256 workers: 25 times a second, each over 256
    running trials, on the workers' CPU)."""
    from datetime import timedelta

    from optuna.storages._rdb import models
    from sqlalchemy import func, select

    rdb = rdb_backend(study)
    if rdb is None:
        return Dead([], [])
    grace = timedelta(seconds=rdb.grace_period or 2 * (rdb.heartbeat_interval or 0))  # Optuna's default grace
    trials, beats = models.TrialModel, models.TrialHeartbeatModel
    query = (
        select(trials.trial_id, beats.heartbeat, func.now())
        .outerjoin(beats, beats.trial_id == trials.trial_id)
        .where(trials.study_id == study._study_id, trials.state == TrialState.RUNNING)
    )
    rows = _rows(rdb, query)
    # now() without its zone, as Optuna's check reads it (a heartbeat is stored without one)
    stale = [int(tid) for tid, beat, now in rows if beat is not None and now.replace(tzinfo=None) - beat > grace]
    unbeaten = [int(tid) for tid, beat, _ in rows if beat is None]
    return Dead(stale if heartbeat_storage(study) is not None else [], unbeaten)


def trial_states_above(study: optuna.Study, low: int) -> list[tuple[int, TrialState]]:
    """(id, state) of each of the study's trials with an id above ``low``: one query of two columns."""
    from optuna.storages._rdb import models
    from sqlalchemy import select

    rdb, trials = rdb_backend(study), models.TrialModel
    query = select(trials.trial_id, trials.state).where(trials.study_id == study._study_id, trials.trial_id > low)
    return [(int(tid), TrialState(state)) for tid, state in _rows(rdb, query)] if rdb is not None else []


def read_trials(study: optuna.Study, ids: set[int]) -> list[FrozenTrial]:
    """These trials of the study: the finished ones Optuna's cache holds (its sampler read them), the others read
    whole, as its cache reads them."""
    from optuna.storages._cached_storage import _CachedStorage

    st, rdb, found = study._storage, rdb_backend(study), []
    if isinstance(st, _CachedStorage):
        with st._lock:
            found = [t for t in map(st._get_cached_trial, ids) if t is not None]
    rest = ids - {t._trial_id for t in found}
    return found + ([] if rdb is None or not rest else rdb._get_trials(study._study_id, None, rest, 2**31 - 1))


def running_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's RUNNING trials as a sampler reads them, by number: number, start, parameters and system
    attributes (where TPE's constant liar finds the parameters a running trial was given before it stored them),
    in three queries of plain rows; no intermediate values, user attributes or heartbeats. Optuna's cache builds
    each whole, through its ORM: 256 running trials, ~0.5 s of a worker's CPU, three times a trial."""
    from optuna.storages._rdb import models
    from sqlalchemy import select

    rdb = rdb_backend(study)
    if rdb is None:
        return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    trials, params, attrs = models.TrialModel, models.TrialParamModel, models.TrialSystemAttributeModel
    mine = (trials.study_id == study._study_id, trials.state == TrialState.RUNNING)
    rows, param_rows, attr_rows = _read(
        rdb,
        [
            select(trials.trial_id, trials.number, trials.__table__.c.datetime_start).where(*mine),
            select(params.trial_id, params.param_name, params.param_value, params.distribution_json)
            .join(trials, trials.trial_id == params.trial_id)
            .where(*mine),
            select(attrs.trial_id, attrs.key, attrs.value_json)
            .join(trials, trials.trial_id == attrs.trial_id)
            .where(*mine),
        ],
    )
    params_of: dict[int, dict[str, Any]] = {int(tid): {} for tid, _, _ in rows}
    distributions_of: dict[int, dict[str, BaseDistribution]] = {tid: {} for tid in params_of}
    attrs_of: dict[int, dict[str, Any]] = {tid: {} for tid in params_of}
    for tid, name, value, dist_json in param_rows:
        if int(tid) in params_of:  # not a trial that started between the queries
            distribution = distributions_of[int(tid)][name] = _distribution(dist_json)
            params_of[int(tid)][name] = distribution.to_external_repr(value)
    for tid, key, value_json in attr_rows:
        if int(tid) in attrs_of:
            attrs_of[int(tid)][key] = json.loads(value_json)
    found = [
        FrozenTrial(
            number=number, state=TrialState.RUNNING, value=None, values=None, datetime_start=_local(start),
            datetime_complete=None, params=params_of[int(tid)], distributions=distributions_of[int(tid)],
            user_attrs={}, system_attrs=attrs_of[int(tid)], intermediate_values={}, trial_id=int(tid),
        )
        for tid, number, start in rows
    ]  # fmt: skip
    return sorted(found, key=lambda t: t.number)


def _local(utc: datetime | None) -> datetime | None:
    """A time as Optuna 5.1 stores it (naive UTC) as its trials hold it (naive local time)."""
    return None if utc is None else utc.replace(tzinfo=UTC).astimezone().replace(tzinfo=None)


@lru_cache(maxsize=1024)
def _distribution(dist_json: str) -> BaseDistribution:
    return json_to_distribution(dist_json)


def state_counts(study: optuna.Study) -> Counter[TrialState] | None:
    """How many of the study's trials are in each state, counted by the database (one query, whatever the
    study's size); None for a storage without SQL. Optuna's ``get_trials`` would read every unfinished trial
    whole (its cache re-reads them each call): at 256 running trials, 50 ms of a claim held under the lock."""
    from optuna.storages._rdb import models
    from sqlalchemy import func, select

    rdb = rdb_backend(study)
    if rdb is None:
        return None
    query = (
        select(models.TrialModel.state, func.count())
        .where(models.TrialModel.study_id == study._study_id)
        .group_by(models.TrialModel.state)
    )
    return Counter({TrialState(state): int(n) for state, n in _rows(rdb, query)})


def _rows(rdb: RDBStorage, query: Any) -> list[Any]:
    return _read(rdb, [query])[0]


def _read(rdb: RDBStorage, queries: Sequence[Any]) -> list[list[Any]]:
    """Each query's rows, on one connection: inside ``one_transaction``, in its transaction (as Optuna's own
    calls there are); else on a connection of its own, read again while the database is briefly unreachable."""
    from sweeper.study.retry import with_retry
    from sweeper.study.urls import mask_url

    session = open_transaction(rdb)
    if session is not None:
        return [list(session.execute(query)) for query in queries]

    def read() -> list[list[Any]]:
        with rdb.engine.connect() as conn:
            return [list(conn.execute(query)) for query in queries]

    return with_retry(read, mask_url(rdb.engine.url.render_as_string(hide_password=False)))
