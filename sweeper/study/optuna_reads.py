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
    """These trials of the study, whole: the finished ones Optuna's cache holds (its sampler read them), the
    others read in plain rows (``_trials``)."""
    from optuna.storages._cached_storage import _CachedStorage
    from optuna.storages._rdb import models

    st, rdb, found = study._storage, rdb_backend(study), []
    if isinstance(st, _CachedStorage):
        with st._lock:
            found = [t for t in map(st._get_cached_trial, ids) if t is not None]
    rest = ids - {t._trial_id for t in found}
    if rdb is None or not rest:
        return found
    return found + _trials(rdb, study._study_id, models.TrialModel.trial_id.in_(sorted(rest)), whole=True)


def running_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's RUNNING trials as a sampler reads them, by number: number, start, parameters and system
    attributes (where TPE's constant liar finds the parameters a running trial was given before it stored them);
    no intermediate values or user attributes. Optuna's cache builds each whole through its ORM: 256 running
    trials, ~0.5 s of a worker's CPU, three times a trial."""
    from optuna.storages._rdb import models

    rdb = rdb_backend(study)
    if rdb is None:
        return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return _trials(rdb, study._study_id, models.TrialModel.state == TrialState.RUNNING, whole=False)


def _trials(rdb: RDBStorage, study_id: int, where: Any, whole: bool) -> list[FrozenTrial]:
    """The study's trials that ``where`` selects, by number, built from plain rows as Optuna's
    ``_build_frozen_trial_from_trial_model`` builds them, one query a table on one connection (Optuna's ORM makes
    an object of every row first: most of a worker's CPU at hundreds of workers). ``whole``: with their values,
    intermediate values and user attributes; else without."""
    from optuna.storages._rdb import models as m
    from sqlalchemy import select

    t = m.TrialModel
    chosen = (t.study_id == study_id, where)
    tables = [  # each table of a trial's rows, its columns read
        (m.TrialParamModel, ["param_name", "param_value", "distribution_json"]),
        (m.TrialSystemAttributeModel, ["key", "value_json"]),
    ]
    if whole:
        tables += [
            (m.TrialUserAttributeModel, ["key", "value_json"]),
            (m.TrialValueModel, ["objective", "value", "value_type"]),
            (m.TrialIntermediateValueModel, ["step", "intermediate_value", "intermediate_value_type"]),
        ]
    c = t.__table__.c
    rows, *children = _read(
        rdb,
        [select(c.trial_id, c.number, c.state, c.datetime_start, c.datetime_complete).where(*chosen)]
        + [
            select(model.trial_id, *(model.__table__.c[name] for name in names))
            .join(t, t.trial_id == model.trial_id)
            .where(*chosen)
            .order_by(*model.__table__.primary_key.columns)  # the order Optuna's rows come in: parameters' order
            for model, names in tables
        ],
    )
    parts: dict[int, dict[str, Any]] = {
        int(tid): dict(params={}, distributions={}, system_attrs={}, user_attrs={}, values={}, intermediate_values={})
        for tid, *_ in rows
    }
    for (table, *_), table_rows in zip(tables, children, strict=True):
        for tid, *row in table_rows:
            if (part := parts.get(int(tid))) is not None:  # not a trial that came between the queries
                _add(part, table, row)
    found = []
    for tid, number, state, start, complete in rows:
        part = parts[int(tid)]
        values = part.pop("values")
        found.append(
            FrozenTrial(
                number=number, state=TrialState(state), value=None,
                values=[values[k] for k in sorted(values)] if values else None,
                datetime_start=_local(start), datetime_complete=_local(complete), trial_id=int(tid), **part,
            )
        )  # fmt: skip
    return sorted(found, key=lambda trial: trial.number)


def _add(part: dict[str, Any], table: Any, row: list[Any]) -> None:
    """One child row of a trial, as Optuna's trial holds it."""
    from optuna.storages._rdb import models as m

    if table is m.TrialParamModel:
        name, value, dist_json = row
        distribution = part["distributions"][name] = _distribution(dist_json)
        part["params"][name] = distribution.to_external_repr(value)
    elif table is m.TrialSystemAttributeModel:
        part["system_attrs"][row[0]] = json.loads(row[1])
    elif table is m.TrialUserAttributeModel:
        part["user_attrs"][row[0]] = json.loads(row[1])
    elif table is m.TrialValueModel:
        objective, value, kind = row
        part["values"][objective] = m.TrialValueModel.stored_repr_to_value(value, kind)
    else:
        step, value, kind = row
        part["intermediate_values"][step] = m.TrialIntermediateValueModel.stored_repr_to_intermediate_value(value, kind)


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
