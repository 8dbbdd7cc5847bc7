"""The load of ``benchmarks/storage_scale.py``: simulated workers running sweeper's real trial protocol.

Each simulated worker is a thread with its own storage object (``StudyRecord.open``, as ``sweeper worker``
opens it: its own SQLAlchemy pool, its own sampler with a fresh seed, the study's pruner, heartbeats on)
and runs sweeper's own ``TrialLoop``: the claim under the study lock, the heartbeat thread that beats and
reaps, per-epoch ``trial.report`` + ``should_prune``, ``study.tell``, the end reason / lr writes. Only the
objective is a stand-in: it draws the study's real search space (``Space.suggest``) and sleeps for each
"epoch" instead of training (torch is imported, as sweeper's worker module imports it, but never used).
Threads run in a few processes (fork), so Python's lock makes one process's workers take turns on the
CPU a real worker would have to itself: client CPU is a measured cost.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import optuna

from sweeper.errors import causes
from sweeper.study.record import StudyRecord
from sweeper.study.spec import StudySpec
from sweeper.workers.protocol import TrialProtocol
from sweeper.workers.worker import TrialLoop  # imports torch (the worker module trains): once, before the fork

log = logging.getLogger("sweeper")


class Timings:
    """Latencies (seconds) by what was timed, and errors by kind, for one process's workers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, list[float]] = {}
        self.errors: Counter[str] = Counter()
        self.finished_at: list[float] = []

    def add(self, what: str, seconds: float) -> None:
        with self.lock:
            self.values.setdefault(what, []).append(seconds)

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] += 1

    def as_dict(self) -> dict[str, Any]:
        return {"values": self.values, "errors": dict(self.errors), "finished_at": self.finished_at}


def error_kind(text: str) -> str:
    """A short, password-free name for an error message: what a user would have seen."""
    low = text.lower()
    for needle, kind in (
        ("too many clients", "too many clients"),
        ("remaining connection slots", "too many clients"),
        ("query_wait_timeout", "pooler query_wait_timeout"),
        ("prepared statement", "prepared statement unknown"),
        ("timeout", "timeout"),
        ("deadlock", "deadlock"),
        ("connection", "connection lost"),
    ):
        if needle in low:
            return kind
    return text.split(":")[0][:60]


class _RetryWarnings(logging.Handler):
    """Counts sweeper's "study database unreachable; waiting" warnings by their cause."""

    def __init__(self, timings: Timings) -> None:
        super().__init__(logging.WARNING)
        self.timings = timings

    def emit(self, record: logging.LogRecord) -> None:
        self.timings.error("waited: " + error_kind(record.getMessage()))


class StandIn:
    """The objective: the study's real search space drawn, then ``epochs`` sleeps of ``epoch_s``, each reported."""

    def __init__(self, spec: StudySpec, epochs: int, epoch_s: float, seed: int, timings: Timings) -> None:
        self.spec, self.epochs, self.epoch_s, self.timings = spec, epochs, epoch_s, timings
        self.rng = random.Random(seed)
        self.lr: float | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        hp = self.spec.space.suggest(trial, self.spec.network.n_hidden, self.spec.network.n_conv)
        self.lr = self.spec.train.base_lr * hp.lr_scale
        value = 0.0
        for epoch in range(self.epochs):
            time.sleep(self.epoch_s)
            value = 0.9 - 0.5 * abs(hp.dropout[0] - 0.2) - 0.05 / (epoch + 1) + self.rng.gauss(0, 0.01)
            t0 = time.perf_counter()
            trial.report(value, epoch)
            prune = trial.should_prune()
            self.timings.add("report", time.perf_counter() - t0)
            if prune:
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")
        return value


def _timed(fn: Callable[..., Any], what: str, timings: Timings) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timings.add(what, time.perf_counter() - t0)

    return wrapper


def one_worker(name: str, url: str, index: int, deadline: float, epochs: int, epoch_s: float, timings: Timings) -> None:
    """One simulated ``sweeper worker``: open the study, run the trial loop until the budget is met or the
    deadline; a crash is counted and the worker started again a second later, as compose restarts one."""
    while time.monotonic() < deadline:
        try:
            t0 = time.perf_counter()
            record = StudyRecord.open(name, url, heartbeat=True, fresh_sampler_seed=True)
            timings.add("open", time.perf_counter() - t0)
            study = record.study
            study.ask = _timed(study.ask, "ask", timings)  # type: ignore[method-assign]
            study.tell = _timed(study.tell, "tell", timings)  # type: ignore[method-assign]
            for step in ("infer_relative_search_space", "sample_relative", "sample_independent"):  # TPE's own work
                setattr(study.sampler, step, _timed(getattr(study.sampler, step), "sample", timings))
            objective = StandIn(record.spec, epochs, epoch_s, seed=index, timings=timings)
            done = _Finished(timings)
            protocol = TrialProtocol(study, record.spec, {"worker": str(index)}, callbacks=[done])
            loop = TrialLoop(study, objective, record.budget, protocol)
            loop.run(lambda: time.monotonic() >= deadline)  # type: ignore[arg-type]
            return
        except Exception as e:  # what a real worker would die of (and be restarted after)
            cause = list(causes(e))[-1]  # Optuna's StorageInternalError wraps the driver's error
            timings.error(f"crashed: {type(e).__name__}: {error_kind(f'{e} {cause}')}")
            time.sleep(1.0)


def _first_apart(try_claim: Callable[..., Any], timings: Timings) -> Callable[..., Any]:
    """``try_claim`` timed as "claim", but a worker's first attempt as "claim_first": at the start every worker
    claims at once (a queue for the study lock N long), later claims come as trials end."""
    seen = threading.local()

    def timed(*args: Any, **kwargs: Any) -> Any:
        what = "claim" if getattr(seen, "claimed", False) else "claim_first"
        seen.claimed = True
        return _timed(try_claim, what, timings)(*args, **kwargs)

    return timed


def _timed_lock(until_taken: Callable[..., Any], timings: Timings) -> Callable[..., Any]:
    """``lock.until_taken`` timed (a claim on PostgreSQL: its one statement, or Optuna's calls in the lock's
    transaction): "lock", the wait for the study lock (the tries that found it taken); "held", the try that took
    it, as the client waits for it (the one statement: the server's lock time plus one round trip)."""

    def timed(rdb: Any, attempt: Callable[[], Any], *args: Any) -> Any:
        t0, started = time.perf_counter(), []

        def timed_attempt() -> Any:
            started.append(time.perf_counter())
            return attempt()

        try:
            return until_taken(rdb, timed_attempt, *args)
        finally:
            if started:
                timings.add("lock", started[-1] - t0)
                timings.add("held", time.perf_counter() - started[-1])

    return timed


def _timed_reaps(requeue: Callable[..., list[int]], timings: Timings) -> Callable[..., list[int]]:
    """The reaper's ``requeue_dead`` timed: "reap_s", how long each reap that failed trials took, and "reaped", one per
    trial it failed (on SQLite it holds the study lock meanwhile, claims wait; on PostgreSQL it does not)."""

    def timed(*args: Any) -> list[int]:
        t0 = time.perf_counter()
        failed = requeue(*args)
        if failed:
            timings.add("reap_s", time.perf_counter() - t0)
            for _ in failed:
                timings.add("reaped", 0.0)
        return failed

    return timed


def _time_sql(timings: Timings) -> None:
    """Every SQL statement of this process timed as the client waits for it: "sql" once a trial has ended here,
    "sql_first" before (a worker's first trial reads the whole study into Optuna's cache, once)."""
    import sqlalchemy as sa

    started = threading.local()

    @sa.event.listens_for(sa.Engine, "before_cursor_execute")
    def before(*_: Any) -> None:
        started.t = time.perf_counter()

    @sa.event.listens_for(sa.Engine, "after_cursor_execute")
    def after(*_: Any) -> None:
        timings.add("sql" if timings.finished_at else "sql_first", time.perf_counter() - started.t)


class _Finished:
    """A trial-end callback: when each trial ended (the throughput window)."""

    def __init__(self, timings: Timings) -> None:
        self.timings = timings

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with self.timings.lock:
            self.timings.finished_at.append(time.time())


def run_process(
    name: str, url: str, first: int, count: int, seconds: float, epochs: int, epoch_s: float, out: Any
) -> None:
    """``count`` simulated workers as threads of this process; their timings go to the queue ``out``."""
    import sweeper.study.lock as lock
    import sweeper.workers.budget as budget
    import sweeper.workers.heartbeat as heartbeat

    logging.basicConfig(level=logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    timings = Timings()
    logging.getLogger("sweeper.retry").addHandler(_RetryWarnings(timings))
    # one claim attempt (lock, count, ask, first beat), and the wait for the study lock within it; not the
    # waits for a free slot once every slot is claimed (the budget's tail), which are not the database's
    budget.try_claim = _first_apart(budget.try_claim, timings)
    budget.internals.pop_or_create = _timed(budget.internals.pop_or_create, "ask", timings)  # a claim's trial
    budget.pg_claim.claim = _timed(budget.pg_claim.claim, "ask", timings)  # on PostgreSQL: the claim's statement
    lock.until_taken = _timed_lock(lock.until_taken, timings)  # type: ignore[assignment]
    heartbeat.requeue_dead = _timed_reaps(heartbeat.requeue_dead, timings)  # type: ignore[assignment]
    _time_sql(timings)
    warnings.simplefilter("ignore")
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(target=one_worker, args=(name, url, first + i, deadline, epochs, epoch_s, timings))
        for i in range(count)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usage = os.times()
    out.put({**timings.as_dict(), "cpu_s": usage.user + usage.system})
