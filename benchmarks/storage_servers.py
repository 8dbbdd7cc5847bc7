"""What ``benchmarks/storage_scale.py`` reads off its servers: peak connections and CPU seconds of PostgreSQL
(and PgBouncer) during a run; and how it grows a study to a given number of trials."""

from __future__ import annotations

import datetime
import math
import os
import random
import threading
from collections import Counter
from typing import Any

import optuna
import psycopg
import sqlalchemy as sa
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from sqlalchemy.pool import NullPool

from conftest import PrivatePgBouncer, PrivatePostgres

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int, children_too: bool) -> float:
    """CPU seconds of a process (with its reaped children's, for PostgreSQL's postmaster)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children_too else 0)
    return ticks / _TICK


def _children(ppid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == ppid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


class ServerMeter:
    """Polls (every 0.25 s) PostgreSQL's client connections to one database and PgBouncer's clients; CPU
    seconds of the PostgreSQL server (every backend, live or ended) and PgBouncer between start and stop."""

    def __init__(self, server: PrivatePostgres, database: str, bouncer: PrivatePgBouncer | None) -> None:
        self.server, self.database, self.bouncer = server, database, bouncer
        with open(os.path.join(server.data, "postmaster.pid")) as f:
            self.postmaster = int(f.readline())
        self.peaks = {"pg_peak": 0, "clients_peak": 0}
        self.lost: Counter[str] = Counter()  # the meter's own connection errors, by message
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu0 = 0.0

    def cpu(self) -> float:
        total = _cpu(self.postmaster, True) + sum(_cpu(p, False) for p in _children(self.postmaster))
        return total + (_cpu(self.bouncer.pid(), False) if self.bouncer else 0.0)

    def start(self) -> None:
        self._cpu0 = self.cpu()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread:
            self._thread.join()
        return {**self.peaks, "server_cpu": self.cpu() - self._cpu0, "meter_lost": dict(self.lost)}

    def _poll(self) -> None:
        admin = sa.create_engine(self.server.admin_url, poolclass=NullPool)
        query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d AND backend_type = 'client backend'")
        while not self._stop.is_set():
            try:
                with admin.connect() as conn:
                    while not self._stop.wait(0.25):
                        pg = int(conn.execute(query, {"d": self.database}).scalar_one())
                        conn.rollback()
                        self.peaks["pg_peak"] = max(self.peaks["pg_peak"], pg)
                        if self.bouncer:
                            self.peaks["clients_peak"] = max(self.peaks["clients_peak"], self._pooler_clients())
            except (
                sa.exc.OperationalError
            ) as e:  # the server is full, or its connection was lost: said in the run's errors
                self.lost[str(e.orig).split("\n")[0][:60] if e.orig else type(e).__name__] += 1
                self._stop.wait(1.0)
        admin.dispose()

    def _pooler_clients(self) -> int:
        """Clients PgBouncer holds for the database (active + waiting), from its admin console."""
        assert self.bouncer is not None
        try:
            with psycopg.connect(f"host=127.0.0.1 port={self.bouncer.port} dbname=pgbouncer user=postgres") as c:
                c.autocommit = True
                res = c.pgconn.exec_(b"SHOW POOLS")  # the admin console speaks the simple protocol only
                names = [res.fname(i).decode() for i in range(res.nfields)]
                db, active, waiting = names.index("database"), names.index("cl_active"), names.index("cl_waiting")
                total = 0
                for r in range(res.ntuples):
                    if (res.get_value(r, db) or b"").decode() == self.database:
                        total += int(res.get_value(r, active) or 0) + int(res.get_value(r, waiting) or 0)
                return total
        except psycopg.Error:
            return 0


def _draw(d: BaseDistribution, rng: random.Random) -> Any:
    if isinstance(d, CategoricalDistribution):
        return rng.choice(d.choices)
    low, high = float(d.low), float(d.high)  # type: ignore[attr-defined]
    v = math.exp(rng.uniform(math.log(low), math.log(high))) if d.log else rng.uniform(low, high)  # type: ignore[attr-defined]
    step = getattr(d, "step", None)
    if step:
        v = min(high, low + round((v - low) / step) * step)
    return int(round(v)) if isinstance(d, IntDistribution) else v


def grow(url: str, name: str, size: int) -> None:
    """Add finished trials (seeded random points of one trial's space, 3 reported epochs) until the study has
    ``size`` trials. Bulk inserts into Optuna's own tables (its models: a benchmark's shortcut, not sweeper's
    way in), since ``add_trials`` takes ~30 ms a trial here and 10,000 would take minutes."""
    from optuna.storages._rdb import models

    storage = optuna.storages.RDBStorage(url)
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    template = next(t for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    dists = {k: (d, optuna.distributions.distribution_to_json(d)) for k, d in template.distributions.items()}
    rng, now = random.Random(size), datetime.datetime.now()
    finite = models.TrialValueModel.TrialValueType.FINITE
    step_finite = models.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE
    number = max(t.number for t in trials) + 1
    with storage.engine.begin() as conn:
        study_id = conn.execute(
            sa.select(models.StudyModel.study_id).where(models.StudyModel.study_name == name)
        ).scalar_one()
        for start in range(0, size - len(trials), 1000):
            count = min(1000, size - len(trials) - start)
            rows = [
                {"number": number + start + i, "study_id": study_id, "state": optuna.trial.TrialState.COMPLETE,
                 "datetime_start": now, "datetime_complete": now}
                for i in range(count)
            ]  # fmt: skip
            ids = conn.execute(
                models.TrialModel.__table__.insert().returning(models.TrialModel.__table__.c.trial_id), rows
            ).scalars()
            params, values, steps = [], [], []
            for tid in ids:
                v = rng.uniform(0.5, 0.9)
                for k, (d, js) in dists.items():
                    value = d.to_internal_repr(_draw(d, rng))
                    params.append({"trial_id": tid, "param_name": k, "param_value": value, "distribution_json": js})
                values.append({"trial_id": tid, "objective": 0, "value": v, "value_type": finite})
                for step, iv in enumerate((v - 0.05, v - 0.02, v)):
                    steps.append(
                        {
                            "trial_id": tid,
                            "step": step,
                            "intermediate_value": iv,
                            "intermediate_value_type": step_finite,
                        }
                    )
            conn.execute(models.TrialParamModel.__table__.insert(), params)
            conn.execute(models.TrialValueModel.__table__.insert(), values)
            conn.execute(models.TrialIntermediateValueModel.__table__.insert(), steps)
    storage.engine.dispose()
