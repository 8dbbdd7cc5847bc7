"""Stress the shared budget: many tiny trials, many worker processes, SQLite and PostgreSQL, repeated.

Each run creates a study of BUDGET one-epoch trials on a tiny network and starts N real
``sweeper worker NAME`` processes at once (no worker id, as ``docker compose --scale`` does). It
then counts finished trials against the budget (overshoot), trials left RUNNING or WAITING, failed
trials (a fault-free run must have none: no surplus trial is ever created), and pairs of separate
trials with identical parameters (workers repeating each other).

    python benchmarks/budget_stress.py                       # 4 and 8 workers x SQLite, PostgreSQL x 3
    python benchmarks/budget_stress.py --workers 4 --repeat 1 --budget 20   # a quick look

PostgreSQL: ``--pg postgresql+psycopg://postgres@127.0.0.1:5432/test`` (a fresh database per run is
made there and dropped). Output: a table, also written to results/budget_stress.txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import sqlalchemy as sa
import yaml
from optuna.trial import TrialState

from sweeper import api
from sweeper.study.storage import make_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def study_file(folder: Path, name: str, budget: int) -> Path:
    spec = {
        "name": name,
        "trials": budget,
        "sampler": {"type": "tpe", "n_startup_trials": 10},
        "pruner": "none",
        "data": {"dataset": "digits"},
        "network": {"hidden": [8]},
        "train": {"epochs": 1, "batch_size": 256, "device": "cpu"},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def one_run(url: str, workers: int, budget: int, folder: Path) -> dict[str, object]:
    name = f"stress-{uuid.uuid4().hex[:6]}"
    api.create(str(study_file(folder, name, budget)), storage=url, tracking="")
    env = {**os.environ, "SWEEPER_STORAGE": url, "MLFLOW_TRACKING_URI": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sweeper.cli", "worker", name, "--no-progress", "--device", "cpu"]
    began = time.monotonic()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(workers)]
    errors = [p.communicate()[1].decode() for p in procs]
    wall = time.monotonic() - began
    trials = optuna.load_study(study_name=name, storage=make_storage(url)).get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    params = Counter(tuple(sorted(t.params.items())) for t in trials if t.params)
    return {
        "finished": sum(states[s] for s in FINISHED),
        "overshoot": max(0, sum(states[s] for s in FINISHED) - budget),
        "left": states[TrialState.RUNNING] + states[TrialState.WAITING],
        "failed": states[TrialState.FAIL],
        "repeated": sum(n - 1 for n in params.values() if n > 1),
        "exit": ",".join(str(p.returncode) for p in procs),
        "wall_s": wall,
        "stderr_tracebacks": sum("Traceback" in e for e in errors),
    }


def pg_database(admin: str) -> tuple[str, sa.Engine, str]:
    name = f"sweeper_stress_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return admin.rsplit("/", 1)[0] + f"/{name}", engine, name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--storages", nargs="+", default=["sqlite", "postgresql"])
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--out", default="results/budget_stress.txt")
    args = ap.parse_args()

    lines = [
        f"# budget stress: {args.budget} one-epoch trials (digits, MLP 64-8-10) per run; N `sweeper worker` "
        "processes started at once, no worker id",
        f"# machine: {platform.node()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"optuna {optuna.__version__}; {time.strftime('%Y-%m-%d %H:%M')}",
        f"{'storage':<11}{'workers':>8}{'run':>5}{'finished':>10}{'overshoot':>10}{'RUNNING/WAITING left':>22}"
        f"{'failed':>8}{'repeated params':>17}{'exit codes':>19}{'tracebacks':>12}{'wall s':>8}",
    ]
    print("\n".join(lines), flush=True)
    totals = Counter()
    with tempfile.TemporaryDirectory(prefix="sweeper-stress-") as tmp:
        for storage in args.storages:
            for workers in args.workers:
                for rep in range(args.repeat):
                    if storage == "sqlite":
                        url, drop = f"sqlite:///{tmp}/stress-{workers}-{rep}.db", None
                    else:
                        url, engine, db = pg_database(args.pg)
                        drop = (engine, db)
                    try:
                        r = one_run(url, workers, args.budget, Path(tmp))
                    finally:
                        if drop:
                            with drop[0].connect() as c:
                                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{drop[1]}" WITH (FORCE)'))
                    for k in ("overshoot", "left", "failed", "repeated", "stderr_tracebacks"):
                        totals[k] += int(r[k])  # type: ignore[call-overload]
                    totals["runs"] += 1
                    line = (
                        f"{storage:<11}{workers:>8}{rep:>5}{r['finished']:>10}{r['overshoot']:>10}{r['left']:>22}"
                        f"{r['failed']:>8}{r['repeated']:>17}{r['exit']:>19}{r['stderr_tracebacks']:>12}"
                        f"{r['wall_s']:>8.1f}"
                    )
                    print(line, flush=True)
                    lines.append(line)
    summary = (
        f"# {totals['runs']} runs: overshoot {totals['overshoot']}, left RUNNING/WAITING {totals['left']}, "
        f"failed {totals['failed']}, repeated parameters {totals['repeated']}, tracebacks {totals['stderr_tracebacks']}"
    )
    print(summary)
    lines.append(summary)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
