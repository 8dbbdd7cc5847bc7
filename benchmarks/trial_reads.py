"""One worker's trial while hundreds run: what Optuna's reads cost the worker, and what sweeper's cost.

On a PostgreSQL of its own, a study with F finished trials and R running ones (each with its parameters, TPE's
shared relative parameters and reports, as other workers leave them), then one worker runs trials as
``sweeper worker`` does: the claim (one statement), the study's search space drawn (TPE, multivariate, group,
constant liar), three reports each followed by the median pruner's check, tell. Two workers take turns on the same
study, trial by trial: one with Optuna's own ``TPESampler`` and ``MedianPruner`` (their reads through Optuna's trial
cache, which reads every unfinished trial again, whole, at each call), one with sweeper's (the same classes
reading through ``sweeper.study.search_view``). Per trial: the worker's CPU (one thread: what it costs a worker's
core), its wall time and its SQL statements. Then the reads themselves: finished trials read whole (Optuna's ORM vs
plain rows) by batch size, and a heartbeat (Optuna's vs one upsert).

    flock /tmp/sweeper-bench.lock python benchmarks/trial_reads.py            # ~3 min on 2 cores
    flock /tmp/sweeper-bench.lock python benchmarks/trial_reads.py --quick    # < 1 min

Writes results/trial_reads.txt (``--out``).
"""

from __future__ import annotations

import argparse
import platform
import random
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import optuna  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from optuna.storages._rdb import models  # noqa: E402
from storage_scale import spec_for  # noqa: E402

from conftest import PrivatePostgres, _initdb_dir  # noqa: E402
from sweeper.study import optuna_internals as internals  # noqa: E402
from sweeper.study import optuna_reads as reads  # noqa: E402
from sweeper.study.record import StudyRecord  # noqa: E402
from sweeper.workers.budget import try_claim  # noqa: E402

BIG = 10**6  # a budget no run reaches


def _trial(study: optuna.Study, spec: Any, rng: random.Random, finish: bool, prune: bool = False) -> None:
    trial = try_claim(study, BIG, beat=lambda _tid: None)
    assert trial is not None
    spec.space.suggest(trial, spec.network.n_hidden, spec.network.n_conv)
    for epoch in range(3):
        trial.report(rng.uniform(0.5, 0.9), epoch)
        if prune:
            trial.should_prune()
    if finish:
        study.tell(trial, rng.uniform(0.5, 0.9))


def _worker(url: str, spec: Any, optunas: bool) -> optuna.Study:
    study = StudyRecord.open(spec.name, url, fresh_sampler_seed=True).study
    if optunas:  # the same settings, Optuna's own classes
        s, p = spec.sampler, spec.pruner
        study.sampler = optuna.samplers.TPESampler(
            n_startup_trials=s.n_startup_trials, multivariate=True, group=True, constant_liar=True, seed=1
        )
        study.pruner = optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=1)
    return study


def trial_costs(url: str, running: int, finished: int, trials: int) -> list[str]:
    """Per-trial CPU, wall time and SQL statements of Optuna's reads and sweeper's, taking turns on one study."""
    spec, rng = spec_for("reads", BIG), random.Random(0)
    StudyRecord.create(spec, url)
    others = StudyRecord.open(spec.name, url, fresh_sampler_seed=True).study
    for _ in range(finished):
        _trial(others, spec, rng, finish=True)
    for _ in range(running):
        _trial(others, spec, rng, finish=False)
    workers = {"optuna": _worker(url, spec, True), "sweeper": _worker(url, spec, False)}
    counts = dict.fromkeys(workers, 0)
    for name, study in workers.items():
        engine = internals.rdb_backend(study).engine
        sa.event.listen(engine, "before_cursor_execute", lambda *_a, n=name: counts.__setitem__(n, counts[n] + 1))
        _trial(study, spec, rng, finish=True, prune=True)  # each worker's first: its cache reads the study once
    cpu, wall = dict.fromkeys(workers, 0.0), dict.fromkeys(workers, 0.0)
    counts = dict.fromkeys(workers, 0)
    for _ in range(trials):
        for name, study in workers.items():
            c0, w0 = time.process_time(), time.perf_counter()
            _trial(study, spec, rng, finish=True, prune=True)
            cpu[name] += time.process_time() - c0
            wall[name] += time.perf_counter() - w0
    return [
        f"{running:>8}{finished:>9}  {name:<8}{1e3 * cpu[name] / trials:>12.0f}{1e3 * wall[name] / trials:>10.0f}"
        f"{counts[name] / trials:>8.1f}{cpu['optuna'] / cpu[name]:>10.1f}x"
        for name in workers
    ]


def read_costs(url: str, batches: list[int]) -> list[str]:
    """Finished trials read whole: Optuna's storage (its ORM) and sweeper's plain rows, ms per trial by batch."""
    spec, rng = spec_for("whole", BIG), random.Random(1)
    StudyRecord.create(spec, url)
    study = StudyRecord.open(spec.name, url, fresh_sampler_seed=True).study
    for _ in range(max(batches) * 2):
        _trial(study, spec, rng, finish=True)
    reader = StudyRecord.open(spec.name, url).study  # nothing cached
    rdb, sid = internals.rdb_backend(reader), internals.study_id(reader)
    ids = sorted(internals.trial_id(t) for t in study.get_trials(deepcopy=False))
    lines = []
    for batch in batches:
        groups = [set(ids[i : i + batch]) for i in range(0, len(ids) - batch + 1, batch)][: max(2, 60 // batch)]
        n = sum(map(len, groups))
        t0 = time.process_time()
        for group in groups:
            rdb._get_trials(sid, None, group, 2**31 - 1)
        orm = 1e3 * (time.process_time() - t0) / n
        t0 = time.process_time()
        for group in groups:
            reads._trials(rdb, sid, models.TrialModel.trial_id.in_(sorted(group)), whole=True)
        plain = 1e3 * (time.process_time() - t0) / n
        lines.append(f"{batch:>6}{orm:>14.2f}{plain:>14.2f}{orm / plain:>8.1f}x")
    tid = ids[0]
    t0 = time.process_time()
    for _ in range(200):
        optuna.storages.RDBStorage.record_heartbeat(rdb, tid)
    optunas = 1e3 * (time.process_time() - t0) / 200
    t0 = time.process_time()
    for _ in range(200):
        internals.record_heartbeat(rdb, tid)
    ours = 1e3 * (time.process_time() - t0) / 200
    lines.append(f"# a heartbeat (CPU ms): Optuna's record_heartbeat {optunas:.2f}, sweeper's upsert {ours:.2f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--running", type=int, nargs="+", default=[0, 64, 256])
    ap.add_argument("--finished", type=int, default=256)
    ap.add_argument("--trials", type=int, default=10, help="trials each worker runs, taking turns")
    ap.add_argument("--quick", action="store_true", help="R = 0, 16; 64 finished; 3 trials")
    ap.add_argument("--out", default=str(ROOT / "results" / "trial_reads.txt"))
    args = ap.parse_args()
    if args.quick:
        args.running, args.finished, args.trials = [0, 16], 64, 3
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bindir = _initdb_dir()
    if bindir is None:
        raise SystemExit("needs PostgreSQL's initdb (Debian: apt-get install postgresql)")
    server = PrivatePostgres(bindir, max_connections=100)
    lines = [
        "# trial_reads: one worker's trial (claim, search space drawn, 3 reports + prune checks, tell) with R trials"
        " running and F finished; Optuna's TPE + median pruner vs sweeper's, taking turns trial by trial on one study",
        f"# machine: Python {platform.python_version()}, optuna {optuna.__version__}, sqlalchemy {sa.__version__}; "
        f"PostgreSQL of its own on this machine (2 cores); {datetime.now():%Y-%m-%d %H:%M}",
        f"{'running':>8}{'finished':>9}  {'reads':<8}{'CPU ms':>12}{'wall ms':>10}{'SQL':>8}{'optuna/this':>12}",
    ]
    url = f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/{{}}"
    try:
        for running in args.running:
            with server.database("reads") as db:
                lines += trial_costs(url.format(db), running, args.finished, args.trials)
                sa.orm.close_all_sessions()
            print("\n".join(lines[-2:]), flush=True)
        with server.database("reads") as db:
            lines += ["# finished trials read whole, CPU ms per trial, by trials per read"]
            lines += [f"{'batch':>6}{'optuna ORM':>14}{'plain rows':>14}{'ratio':>9}"]
            lines += read_costs(url.format(db), [1, 5, 50] if not args.quick else [1, 5])
            sa.orm.close_all_sessions()
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
