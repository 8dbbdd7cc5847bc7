"""Trials per minute of ``--workers 2`` on the CPU: every worker on all cores (before) vs its share (after).

    python benchmarks/cpu_threads.py [--trials 8] [--epochs 5] [--repeats 3] [--out results/cpu_threads.txt]

Each run creates a fresh study (SQLite, MLflow off) with the main study's data and network
(MNIST-1D standard split, MLP 40-512-512-10) and fixed hyperparameters, so every trial does the same
work, and runs it with two local worker processes on the CPU:

  before: each worker uses one torch thread per core (what torch does by default; ``--threads`` = cores)
  after:  each worker gets its share, cores / workers (sweeper's default now)

Runs alternate before/after so background load hits both alike. Reported: trials per minute over the
span from the first trial's start to the last trial's end (worker start-up excluded), the whole launch
in wall-clock seconds, and the workers' CPU seconds per trial (``getrusage(RUSAGE_CHILDREN)``).
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

from sweeper import api
from sweeper.launchers.local import run_workers
from sweeper.settings import RunSettings, cpu_cores
from sweeper.study.record import StudyRecord
from sweeper.study.spec import load_spec, parse_spec

STUDY = Path(__file__).resolve().parents[1] / "studies" / "mnist1d_mlp.yaml"
FIXED = {  # mid-range values of the main study's space: every trial trains the same way
    "dropout_input": 0.1,
    "dropout_hidden": 0.3,
    "weight_decay": 1e-4,
    "l1": False,
    "momentum": 0.9,
    "lr_scale": 10,
    "max_norm": False,
    "batch_norm": False,
    "r_drop_alpha": False,
    "lr_decay": 1.0,
}


def spec_for(name: str, trials: int, epochs: int) -> dict:
    main = load_spec(STUDY)
    return {
        "name": name,
        "trials": trials,
        "sampler": "random",
        "pruner": "none",
        "data": main.data.model_dump(exclude_none=True),
        "network": {"hidden": list(main.network.hidden)},
        "train": {"epochs": epochs, "batch_size": main.train.batch_size, "device": "cpu"},
        "space": FIXED,
    }


def run_once(mode: str, workers: int, trials: int, epochs: int, tmp: str, i: int) -> dict[str, float]:
    url = f"sqlite:///{tmp}/{mode}-{i}.db"
    spec = parse_spec(spec_for(f"threads-{mode}-{i}", trials, epochs), base_dir=STUDY.parent)
    api.create(spec, storage=url, tracking="")
    threads = cpu_cores() if mode == "before" else None
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    codes = run_workers(spec.name, RunSettings(storage=url, tracking="", workers=workers, gpus="none", threads=threads))
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert codes == [0] * workers, codes
    done = [t for t in StudyRecord.open(spec.name, url).study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == trials, f"{len(done)} of {trials} trials complete"
    start = min(t.datetime_start for t in done if t.datetime_start)
    end = max(t.datetime_complete for t in done if t.datetime_complete)
    span = (end - start).total_seconds()
    child_cpu = (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)
    return {"per_min": 60 * trials / span, "wall": wall, "cpu_per_trial": child_cpu / trials}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, help="also write the table here, e.g. results/cpu_threads.txt")
    args = p.parse_args()
    cores = cpu_cores()
    share = max(1, cores // args.workers)
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for mode in ("before", "after") if i % 2 == 0 else ("after", "before"):
                r = run_once(mode, args.workers, args.trials, args.epochs, tmp, i)
                runs[mode].append(r)
                print(
                    f"repeat {i} {mode:<6} {r['per_min']:6.1f} trials/min  {r['wall']:6.1f} s  "
                    f"{r['cpu_per_trial']:5.2f} CPU s/trial",
                    file=sys.stderr,
                    flush=True,
                )
    lines = [
        f"--workers {args.workers} on {cores} cores (CPU), {args.trials} trials of {args.epochs} epochs each, "
        f"MNIST-1D standard split (3400 training samples), MLP 40-512-512-10, batch 128, fixed hyperparameters",
        f"repeats={args.repeats} (alternating) torch threads per worker: before={cores} (one per core), "
        f"after={share} (cores / workers); python={platform.python_version()}",
        "trials/min: trials over the span from the first trial's start to the last one's end (median of repeats); "
        "launch s: the whole run_workers call, process start-up included (wall clock); "
        "CPU s/trial: the workers' CPU time (getrusage children)",
        "",
        f"{'threads per worker':<26} {'trials/min':>10} {'launch s':>9} {'CPU s/trial':>11}   per repeat (trials/min)",
    ]
    for mode, label in (("before", f"before: {cores} (all cores)"), ("after", f"after: {share} (share)")):
        rs = runs[mode]
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        each = " ".join(f"{r['per_min']:.1f}" for r in rs)
        lines.append(f"{label:<26} {med['per_min']:>10.1f} {med['wall']:>9.1f} {med['cpu_per_trial']:>11.2f}   {each}")
    gain = statistics.median(r["per_min"] for r in runs["after"]) / statistics.median(
        r["per_min"] for r in runs["before"]
    )
    lines.append(f"\nafter / before (trials/min): {gain:.2f}x")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
