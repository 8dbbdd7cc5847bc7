"""Trials per minute: N workers as Ray tasks against N local worker processes, on the same study.

    python benchmarks/ray_vs_local.py [--workers 2] [--trials 24] [--epochs 2] [--repeats 2] [--storage URL]

Each repeat creates the same seeded study twice (fresh study names) and runs it to its budget once
with ``sweeper.launchers.local`` (N ``sweeper worker`` processes) and once with
``sweeper.launchers.ray`` (N Ray tasks on a local Ray, 1 CPU each), alternating the order so
background load hits both alike. The worker phase is timed from the workers' start to the budget;
starting Ray itself is timed apart (``--ray auto`` on a running cluster skips it). Each Ray run is a
new Ray job, as each ``sweeper launch`` is, so its worker processes start cold like local ones. Tiny trials
(scikit-learn digits, MLP 32, CPU) make the orchestration cost visible. Tracking is off: both
backends log to MLflow alike. Appends to results/ray_vs_local.txt.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sweeper import api
from sweeper.launchers.local import run_workers
from sweeper.launchers.ray import RayWorkers
from sweeper.settings import RunSettings
from sweeper.study.record import StudyRecord
from sweeper.study.spec import parse_spec


def spec_dict(name: str, args: argparse.Namespace) -> dict:
    return {
        "name": name,
        "trials": args.trials,
        "seed": 0,
        "sampler": {"type": "tpe", "n_startup_trials": 4},
        "pruner": {"type": "none"},
        "data": {"dataset": "digits"},
        "network": {"hidden": [32]},
        "train": {"epochs": args.epochs, "batch_size": 64, "base_lr": 0.01, "device": "cpu"},
    }


def timings(name: str, storage: str, started: float, ended: float) -> dict[str, float]:
    """From the study database: when the first trial started, the span of the trials, a trial's median time."""
    trials = StudyRecord.open(name, storage).study.get_trials(deepcopy=False)
    times = [(t.datetime_start, t.datetime_complete) for t in trials if t.datetime_start and t.datetime_complete]
    first = min(start.timestamp() for start, _ in times)
    return {
        "wall": ended - started,
        "first": first - started,
        "span": max(end.timestamp() for _, end in times) - first,
        "trial": statistics.median((end - start).total_seconds() for start, end in times),
    }


def run_local(storage: str, args: argparse.Namespace, starts: list[float]) -> dict[str, float]:
    name = f"bench-local-{uuid.uuid4().hex[:6]}"
    api.create(parse_spec(spec_dict(name, args)), storage=storage, tracking="")
    started = time.time()
    run_workers(name, RunSettings(storage=storage, tracking="", workers=args.workers, gpus="none"))
    return timings(name, storage, started, time.time())


def run_ray(storage: str, args: argparse.Namespace, starts: list[float]) -> dict[str, float]:
    """As ``sweeper launch --ray``: a new Ray job each time, so its worker processes start cold too."""
    name = f"bench-ray-{uuid.uuid4().hex[:6]}"
    api.create(parse_spec(spec_dict(name, args)), storage=storage, tracking="")
    start = time.time()
    settings = RunSettings(storage=storage, tracking="", workers=args.workers, ray="local")
    with RayWorkers.connect(settings) as cluster:
        starts.append(time.time() - start)
        started = time.time()
        cluster.run(name)
        ended = time.time()
    return timings(name, storage, started, ended)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--storage", help="study database (a dedicated one) [default: a SQLite file in a temporary folder]")
    ap.add_argument("--out", default="results/ray_vs_local.txt")
    args = ap.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tmp = tempfile.mkdtemp(prefix="ray-bench-")
    storage = args.storage or f"sqlite:///{tmp}/bench.db"
    starts: list[float] = []  # seconds to start a local Ray
    runs: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
    for rep in range(args.repeats):
        for backend in ("local", "ray") if rep % 2 == 0 else ("ray", "local"):
            run = run_local if backend == "local" else run_ray
            runs[backend].append(run(storage, args, starts))
            print(f"repeat {rep}: {backend:5s} {runs[backend][-1]}", file=sys.stderr)

    def med(backend: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[backend])

    db = "PostgreSQL" if storage.startswith("postgresql") else "SQLite"
    n = args.trials
    lines = [
        f"ray vs local: {args.workers} workers, {n} trials x {args.epochs} epochs, digits, MLP 32, CPU "
        f"({os.cpu_count()} cores), study database {db}, tracking off, median of {args.repeats} alternating repeats",
        f"{'backend':<8}{'workers s':>10}{'trials/min':>11}{'1st trial at s':>15}{'trials/min after':>18}"
        f"{'s/trial':>9}   workers s per repeat",
    ]
    for b in ("local", "ray"):
        lines.append(
            f"{b:<8}{med(b, 'wall'):>10.1f}{60 * n / med(b, 'wall'):>11.1f}{med(b, 'first'):>15.1f}"
            f"{60 * n / med(b, 'span'):>18.1f}{med(b, 'trial'):>9.3f}   "
            + "  ".join(f"{r['wall']:.1f}" for r in runs[b])
        )
    lines += [
        "workers s: from starting the workers to the budget met; 1st trial at: when the first trial started;",
        "trials/min after: from the first trial's start to the last one's end; s/trial: median time in a worker",
        f"Ray's overhead per trial: {med('ray', 'span') / n - med('local', 'span') / n:+.3f} s (steady state), "
        f"{med('ray', 'trial') - med('local', 'trial'):+.3f} s inside a trial; once per launch: "
        f"{statistics.median(starts):.1f} s to start a local Ray (none with --ray auto on a running cluster), "
        f"{med('ray', 'first') - med('local', 'first'):+.1f} s to the first trial",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
