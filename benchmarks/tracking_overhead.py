"""What MLflow tracking costs a trial: the same trials with tracking off and on, against a real ``mlflow server``.

    python benchmarks/tracking_overhead.py [--trials 8] [--epochs 10] [--repeats 2] [--dataset mnist1d]

Each repeat runs the same seeded study twice (same sampler seed, so the same trials): once without
tracking, once logging to a local ``mlflow server`` over HTTP (as workers on other machines do). Runs
alternate off/on so background load hits both alike. Writes results/tracking_overhead.txt.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sweeper import api
from sweeper.settings import RunSettings
from sweeper.study.spec import parse_spec
from sweeper.tracking.tracker import MlflowTracker
from sweeper.tracking.ui import start_server, stop_server
from sweeper.workers.worker import run_worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec_dict(name: str, args: argparse.Namespace) -> dict:
    return {
        "name": name,
        "trials": args.trials,
        "seed": 0,
        "sampler": {"type": "tpe", "n_startup_trials": 4},
        "pruner": {"type": "none"},
        "data": {"dataset": args.dataset, **({"num_samples": args.samples} if args.dataset == "mnist1d" else {})},
        "network": {"hidden": args.hidden},
        "train": {"epochs": args.epochs, "batch_size": 128, "base_lr": 0.01, "device": "cpu"},
    }


WAITED = [0.0]  # seconds the training thread spent inside the tracker's hooks


def _timed(fn: Callable[..., None]) -> Callable[..., None]:
    def wrapper(*args: object, **kwargs: object) -> None:
        start = time.perf_counter()
        try:
            fn(*args, **kwargs)
        finally:
            WAITED[0] += time.perf_counter() - start

    return wrapper


# what a trial waits on is what tracking costs it; wall time on a shared machine is noisier
MlflowTracker.on_epoch = _timed(MlflowTracker.on_epoch)  # type: ignore[method-assign]
MlflowTracker.__call__ = _timed(MlflowTracker.__call__)  # type: ignore[method-assign]


def time_study(name: str, tmp: Path, tracking: str, args: argparse.Namespace) -> tuple[float, float]:
    """Seconds per trial of one worker running the whole study, and of those spent waiting on tracking."""
    storage = f"sqlite:///{tmp}/{name}.db"
    api.create(parse_spec(spec_dict(name, args)), storage=storage, tracking=tracking)
    WAITED[0] = 0.0
    start = time.perf_counter()
    n = run_worker(name, RunSettings(storage=storage, tracking=tracking))
    return (time.perf_counter() - start) / n, WAITED[0] / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dataset", choices=["digits", "mnist1d"], default="mnist1d")
    p.add_argument("--samples", type=int, default=4000, help="mnist1d: samples generated")
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128], help="hidden layer widths")
    p.add_argument("--out", default="results/tracking_overhead.txt")
    p.add_argument("--append", action="store_true", help="add to --out instead of replacing it")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="sweeper-bench-") as d:
        tmp = Path(d)
        port = free_port()
        server = start_server(f"sqlite:///{tmp}/mlflow.db", port=port, artifacts=str(tmp / "artifacts"))
        uri = f"http://127.0.0.1:{port}"
        off: list[float] = []
        on: list[float] = []
        waited: list[float] = []
        try:
            time_study("warmup", tmp, uri, argparse.Namespace(**{**vars(args), "trials": 1}))  # imports, caches
            for r in range(args.repeats):
                off.append(time_study(f"off-{r}", tmp, "", args)[0])
                t, w = time_study(f"on-{r}", tmp, uri, args)
                on.append(t)
                waited.append(w)
                print(
                    f"repeat {r}: off {off[-1]:.3f} s/trial, on {t:.3f} s/trial ({w:.3f} waiting on tracking)",
                    file=sys.stderr,
                )
        finally:
            stop_server(server)

    t_off, t_on, t_wait = statistics.median(off), statistics.median(on), statistics.median(waited)
    lines = [
        f"tracking overhead: {args.trials} trials x {args.epochs} epochs, {args.dataset}"
        f"{f' ({args.samples} samples)' if args.dataset == 'mnist1d' else ''}, "
        f"MLP {'-'.join(map(str, args.hidden))}, CPU "
        f"({os.cpu_count()} cores), median of {args.repeats} alternating repeats; "
        "MLflow: local 'mlflow server' over HTTP (SQLite store)",
        f"{'tracking':<10}{'s/trial':>10}{'per repeat':>30}",
        f"{'off':<10}{t_off:>10.3f}{'  '.join(f'{x:.3f}' for x in off):>30}",
        f"{'on':<10}{t_on:>10.3f}{'  '.join(f'{x:.3f}' for x in on):>30}",
        f"wall-clock overhead: {t_on - t_off:+.3f} s/trial ({100 * (t_on - t_off) / t_off:+.1f}%)",
        f"time a trial waits on tracking: {t_wait:.3f} s/trial ({100 * t_wait / t_off:.1f}% of a trial)",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a" if args.append else "w") as f:
        f.write(text + ("\n" if args.append else ""))


if __name__ == "__main__":
    main()
