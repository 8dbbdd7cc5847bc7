"""Hundreds of workers on one study: where the study database saturates, direct and through PgBouncer.

Starts a PostgreSQL of its own (``max_connections = 100``, as a default server) and a PgBouncer in
transaction-pooling mode before it, then runs N simulated workers (``benchmarks/storage_load.py``:
sweeper's real claim, heartbeat/reaper, per-epoch report + prune and tell, the study's TPE sampler and
median pruner; a sleeping stand-in for training) on one study, direct and pooled, and SQLite for scale.
Each run has a budget of 2N + 20 trials and a time cap. Then a study grown to 100 / 1,000 / 10,000
trials: one worker's ask time and storage time per trial.

    flock /tmp/sweeper-bench.lock python benchmarks/storage_scale.py            # ~20 min on 2 cores
    flock /tmp/sweeper-bench.lock python benchmarks/storage_scale.py --quick    # < 60 s

Writes results/storage_scale.txt and results/storage_scale.png (``--out``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import queue
import resource
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import optuna  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402
from storage_load import run_process  # noqa: E402
from storage_servers import ServerMeter, grow  # noqa: E402

from conftest import PrivatePgBouncer, PrivatePostgres, _initdb_dir, pgbouncer_binary, tiny_spec_dict  # noqa: E402
from sweeper.study.optuna_internals import rdb_backend  # noqa: E402
from sweeper.study.record import StudyRecord  # noqa: E402
from sweeper.study.spec import parse_spec  # noqa: E402
from sweeper.study.storage import make_storage  # noqa: E402

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def spec_for(name: str, budget: int) -> Any:
    return parse_spec(
        tiny_spec_dict(
            name,
            trials=budget,
            sampler={"type": "tpe", "n_startup_trials": 10},
            pruner={"type": "median", "warmup_epochs": 1, "n_startup_trials": 5},
        )
    )


def drive(url: str, name: str, n: int, args: argparse.Namespace, epoch_s: float) -> dict[str, Any]:
    """N simulated workers (threads over up to ``args.procs`` forked processes) on study ``name`` until its
    budget is met or ``args.seconds`` pass: their merged timings, errors, trial end times and client CPU."""
    procs_n = min(n, args.procs)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = []

    def start(p: int, seconds: float) -> Any:
        first, count = p * n // procs_n, (p + 1) * n // procs_n - p * n // procs_n
        work = (name, url, first, count, seconds, args.epochs, epoch_s, out)
        proc = ctx.Process(target=run_process, args=work)
        proc.start()
        return proc

    procs = [start(p, args.seconds) for p in range(procs_n)]
    killed = 0
    if args.kill_at and procs_n > 1:  # SIGKILL one process's workers mid-trial; start them again, as compose would
        time.sleep(args.kill_at)
        procs[0].kill()
        procs[0].join()
        killed = n // procs_n
        procs[0] = start(0, args.seconds - args.kill_at)
    parts, hung = [], 0
    for _ in procs:
        try:
            parts.append(out.get(timeout=args.seconds + 120))
        except queue.Empty:  # a process still running 2 minutes past the cap: stopped, and said in the errors
            break
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()
            hung += n // procs_n
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    merged: dict[str, Any] = {"values": {}, "errors": Counter(), "ends": []}
    for part in parts:
        for k, v in part["values"].items():
            merged["values"].setdefault(k, []).extend(v)
        merged["errors"].update(part["errors"])
        merged["ends"].extend(part["finished_at"])
    merged["ends"].sort()
    if hung:
        merged["errors"][f"still running 2 min past the cap (stopped; timings lost): {hung} workers"] += 1
    merged["killed"] = killed
    merged["client_cpu"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return merged


def load_run(url: str, n: int, args: argparse.Namespace, meter: ServerMeter | None) -> dict[str, Any]:
    """N simulated workers on a fresh study with a budget of 2N + 20; its figures."""
    name, budget = f"scale-{uuid.uuid4().hex[:6]}", (n + 4 if args.quick else 2 * n + 20)
    record = StudyRecord.create(spec_for(name, budget), url)
    backend = rdb_backend(record.study)
    if backend is not None:
        backend.engine.dispose()  # this process's connections are not the workers'
    if meter:
        meter.start()
    began = time.time()
    d = drive(url, name, n, args, args.epoch_s)
    wall = time.time() - began
    server = meter.stop() if meter else {}
    for message, times in server.pop("meter_lost", {}).items():  # the server full even for its admin, or restarted
        d["errors"][f"meter: {message}"] += times
    values, ends = d["values"], d["ends"]
    storage = make_storage(url)
    states = Counter(t.state for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
    storage.engine.dispose()
    finished = sum(states[s] for s in FINISHED)
    window = ends[-1] - ends[0] if len(ends) > 1 else 0.0
    return {
        "n": n,
        "budget": budget,
        "finished": finished,
        "over": max(0, finished - budget),
        "failed": states[TrialState.FAIL],
        "left": states[TrialState.RUNNING] + states[TrialState.WAITING],
        "trials_s": (len(ends) - 1) / window if window > 0 else 0.0,
        "wall": wall,
        "claim_p50": pct(values.get("claim", []), 50),
        "claim_p99": pct(values.get("claim", []), 99),
        "first_p50": pct(values.get("claim_first", []), 50),
        "first_max": max(values.get("claim_first", [float("nan")])),
        "killed": d["killed"],
        "ask_p50": pct(values.get("ask", []), 50),
        "lock_p99": pct(values.get("lock", []), 99),
        "held_p50": pct(values.get("held", []), 50),
        "reaps": len(values.get("reaped", [])),
        "reap_s": sum(values.get("reap_s", [])),
        "report_p99": pct(values.get("report", []), 99),
        "tell_p99": pct(values.get("tell", []), 99),
        "client_cpu_trial": d["client_cpu"] / max(finished, 1),
        "errors": dict(d["errors"]),
        **server,
        "server_cpu_trial": server.get("server_cpu", 0.0) / max(finished, 1),
    }


def study_sizes(server: PrivatePostgres, sizes: list[int], args: argparse.Namespace) -> tuple[list[str], list[Any]]:
    """One worker (direct) on a study grown to each size: ask and storage time per trial (no sleep)."""
    db = new_database(server)
    url = f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/{db}"
    name, measured = "sizes", args.size_trials
    spec = spec_for(name, measured)
    StudyRecord.create(spec, url)
    drive(url, name, 1, args, 0.0)  # its first trials: the distributions to grow it with
    lines = [
        "# study size: one worker, direct, no sleep; ask = the claim's new trial (PostgreSQL: its one statement); "
        "per trial = a trial's claim to tell less ask; TPE = the sampler's own work per trial (its search space "
        "and sampling over every finished trial, client CPU: Optuna 5 samples at the first suggest); "
        "SQL ms = the time the worker waited on its SQL statements per trial, its first trial left out (1st s: "
        "that first trial's, when Optuna's cache reads the whole study once per worker): what the store costs a "
        "trial; PG CPU ms: the database server's CPU per trial, the first trial's read included; "
        f"{measured} trials at each size",
        f"{'trials in study':>16}{'grow s':>8}{'open s':>8}{'ask p50 ms':>12}{'ask p90':>9}{'per trial ms':>14}"
        f"{'TPE ms':>8}{'SQL ms':>8}{'1st s':>7}{'report p50':>12}{'tell p50':>10}{'PG CPU ms':>10}",
    ]
    rows = []
    for size in sizes:
        t0 = time.perf_counter()
        grow(url, name, size)
        grown = time.perf_counter() - t0
        StudyRecord.create(spec, url, trials=size + measured, allow_changed=True)
        meter = ServerMeter(server, db, None)
        meter.start()
        d = drive(url, name, 1, args, 0.0)
        pg_ms = meter.stop()["server_cpu"] / max(len(d["ends"]), 1) * 1e3
        v = d["values"]
        per_trial = [b - a for a, b in zip(d["ends"], d["ends"][1:], strict=False)]
        trial_p50 = pct([t - pct(v.get("ask", []), 50) for t in per_trial], 50)
        tpe = sum(v.get("sample", [])) / max(len(d["ends"]), 1)  # its mean per trial
        r = {
            "size": size,
            "ask_p50": pct(v.get("ask", []), 50),
            "trial_p50": trial_p50,
            "tpe": tpe,
            "sql": sum(v.get("sql", [])) / max(len(d["ends"]) - 1, 1),
            "sql_first": sum(v.get("sql_first", [])),
            "pg_ms": pg_ms,
        }
        rows.append(r)
        line = (
            f"{size:>16}{grown:>8.0f}{pct(v.get('open', []), 50):>8.2f}{r['ask_p50'] * 1e3:>12.0f}"
            f"{pct(v.get('ask', []), 90) * 1e3:>9.0f}{trial_p50 * 1e3:>14.0f}{tpe * 1e3:>8.0f}"
            f"{r['sql'] * 1e3:>8.1f}{r['sql_first']:>7.2f}"
            f"{pct(v.get('report', []), 50) * 1e3:>12.1f}{pct(v.get('tell', []), 50) * 1e3:>10.1f}{pg_ms:>10.1f}"
        )
        print(line, flush=True)
        lines.append(line)
    return lines, rows


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def new_database(server: PrivatePostgres) -> str:
    name = f"scale_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return name


def drop_database(server: PrivatePostgres, name: str) -> None:
    """Its connections go with it (PgBouncer keeps idle server connections to a database for minutes: they
    would count against the next run's max_connections). Tried for a minute while the server is full."""
    admin = sa.create_engine(server.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    for attempt in range(60):
        try:
            with admin.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except sa.exc.OperationalError:
            if attempt == 59:
                raise
            time.sleep(1)


def row(path: str, r: dict[str, Any]) -> str:
    errors = "; ".join(f"{k} x{v}" for k, v in sorted(r["errors"].items())) or "none"
    return (
        f"{path:<16}{r['n']:>5}{r['budget']:>7}{r['finished']:>6}{r['over']:>5}{r['failed']:>5}{r['left']:>5}"
        f"{r['trials_s']:>8.1f}{r['claim_p50'] * 1e3:>9.0f}{r['claim_p99'] * 1e3:>9.0f}{r['ask_p50'] * 1e3:>8.0f}"
        f"{r['lock_p99'] * 1e3:>8.0f}{r['held_p50'] * 1e3:>7.0f}{r['reaps']:>6}{r['reap_s']:>7.1f}"
        f"{r['report_p99'] * 1e3:>9.0f}{r['tell_p99'] * 1e3:>8.0f}"
        f"{r.get('pg_peak', 0):>7}{r.get('clients_peak', 0):>8}"
        f"{r['server_cpu_trial'] * 1e3:>8.1f}{r['client_cpu_trial'] * 1e3:>8.0f}{r['wall']:>6.0f}"
        f"{r['first_p50'] * 1e3:>8.0f}{r['first_max'] * 1e3:>9.0f}{r['killed']:>7}  {errors}"
    )


HEADER = (
    f"{'path':<16}{'N':>5}{'budget':>7}{'done':>6}{'over':>5}{'fail':>5}{'left':>5}{'trial/s':>8}"
    f"{'claim50':>9}{'claim99':>9}{'ask50':>8}{'lock99':>8}{'held50':>7}{'reaps':>6}{'reap s':>7}"
    f"{'report99':>9}{'tell99':>8}{'pgconn':>7}{'clients':>8}"
    f"{'pgCPUms':>8}{'cliCPU':>8}{'wall':>6}"
    f"{'first50':>8}{'firstmax':>9}{'killed':>7}  errors (what workers met)"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 1, 8; sizes 100; short runs (< 60 s)")
    ap.add_argument("--ns", type=int, nargs="+", default=[1, 8, 32, 64, 128, 256])
    ap.add_argument("--sizes", type=int, nargs="*", default=[100, 1000, 10000])
    ap.add_argument("--seconds", type=float, default=90.0, help="time cap of one run")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--epoch-s", type=float, default=0.5, help="the stand-in's sleep per epoch")
    ap.add_argument("--kill-at", type=float, default=0.0, help="SIGKILL one process's workers this many s in")
    ap.add_argument("--procs", type=int, default=4, help="processes the N worker threads are spread over")
    ap.add_argument("--pool", type=int, default=40, help="PgBouncer's server connections (of max_connections 100)")
    ap.add_argument("--small-pool", type=int, default=10, help="also run the largest N with this many")
    ap.add_argument("--paths", nargs="+", default=["direct", "pgbouncer", "sqlite"], help="which to run")
    ap.add_argument("--size-trials", type=int, default=30, help="trials measured at each study size")
    ap.add_argument("--out", default=str(ROOT / "results" / "storage_scale"))
    args = ap.parse_args()
    if args.quick:
        args.ns, args.sizes, args.seconds, args.epoch_s, args.small_pool = [1, 8], [100], 8.0, 0.1, 0
        args.size_trials = 4
    os.environ.setdefault("SWEEPER_HEARTBEAT", "5")
    os.environ.setdefault("SWEEPER_HEARTBEAT_GRACE", "15")
    os.environ.setdefault("SWEEPER_DB_RETRY_S", "30")  # a worker that cannot connect gives up within a run
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    bindir = _initdb_dir()
    if bindir is None or pgbouncer_binary() is None:
        sys.exit("needs PostgreSQL's initdb and pgbouncer (Debian: apt-get install postgresql pgbouncer)")

    lines = [
        "# storage_scale: N simulated sweeper workers (sweeper's claim under the study lock, heartbeat + reaper every "
        f"{os.environ['SWEEPER_HEARTBEAT']} s, {args.epochs} reports + prune checks per trial, tell; TPE + median "
        f"pruner) on one study; {args.epoch_s} s sleep per epoch instead of training; budget "
        f"{'N + 4' if args.quick else '2N + 20'}, cap "
        f"{args.seconds:.0f} s; threads over {args.procs} processes",
        f"# machine: {os.cpu_count()} CPU cores (server, pooler and all clients share them), Python "
        f"{platform.python_version()}, optuna {optuna.__version__}, sqlalchemy {sa.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        f"# PostgreSQL of its own, max_connections = 100, fsync off; PgBouncer transaction pooling, {args.pool} server "
        "connections. ms columns: latencies; pgconn: peak PostgreSQL client connections; clients: peak pooler "
        "clients; pgCPUms / cliCPU: server (+ pooler) and client CPU ms per finished trial; lock99: wait for the "
        "study lock, held50: time a claim holds it; reaps / reap s: trials failed by the reapers and the "
        "reapers' seconds at it in all (on PostgreSQL outside the claims' lock); claim50/99: workers' later "
        "claims, first50/firstmax: each "
        "worker's first (all N claim at once at the start); killed: workers SIGKILLed "
        f"{args.kill_at:.0f} s in and started again (their process's timings are lost; 0: no kill)",
        HEADER,
    ]
    print("\n".join(lines), flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    server = PrivatePostgres(bindir, max_connections=100)
    bouncers = {args.pool: PrivatePgBouncer(server, pool_size=args.pool, query_wait_timeout=60)}
    if args.small_pool:
        bouncers[args.small_pool] = PrivatePgBouncer(server, pool_size=args.small_pool, query_wait_timeout=60)
    try:
        paths = [p for p in ("direct", "pgbouncer") if p in args.paths]
        runs: list[tuple[str, int, int | None]] = [(p, n, args.pool) for p in paths for n in args.ns]
        if args.small_pool and "pgbouncer" in paths:
            runs.append(("pgbouncer", max(args.ns), args.small_pool))
        for path, n, pool in runs:
            db = new_database(server)
            direct = f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/{db}"
            url = direct if path == "direct" else bouncers[pool].url(db)
            label = path if path == "direct" or pool == args.pool else f"pgbouncer/{pool}"
            meter = ServerMeter(server, db, bouncers[pool] if path != "direct" else None)
            try:
                r = load_run(url, n, args, meter)
            finally:
                drop_database(server, db)
            results.setdefault(label, []).append(r)
            print(row(label, r), flush=True)
            lines.append(row(label, r))
        with tempfile.TemporaryDirectory(prefix="sweeper-scale-") as tmp:
            for n in [n for n in args.ns if n <= 8 and "sqlite" in args.paths][-1 if args.quick else 0 :]:
                r = load_run(f"sqlite:///{tmp}/s{n}.db", n, args, None)
                results.setdefault("sqlite", []).append(r)
                print(row("sqlite", r), flush=True)
                lines.append(row("sqlite", r))
        sizes: list[Any] = []
        if args.sizes:
            size_lines, sizes = study_sizes(server, args.sizes, args)
            lines += size_lines
    finally:
        for b in bouncers.values():
            b.remove()
        server.remove()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    plot(results, sizes, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.txt')} and {out.with_suffix('.png')}")


def plot(results: dict[str, list[dict[str, Any]]], sizes: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for label, rs in results.items():
        ns = [r["n"] for r in rs]
        axes[0].plot(ns, [r["trials_s"] for r in rs], "o-", label=label)
        axes[1].plot(ns, [r["claim_p99"] for r in rs], "o-", label=label)
    for ax, title in ((axes[0], "trials / s"), (axes[1], "claim p99 (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("workers N")
        ax.set_title(title)
        ax.legend()
    if sizes:
        xs = [s["size"] for s in sizes]
        axes[2].plot(xs, [s["ask_p50"] for s in sizes], "o-", label="ask p50")
        axes[2].plot(xs, [s["trial_p50"] for s in sizes], "o-", label="per trial, less ask, p50")
        axes[2].plot(xs, [s["tpe"] for s in sizes], "o-", label="TPE's own work, mean")
        axes[2].plot(xs, [s["sql"] for s in sizes], "o-", label="SQL per trial (warm worker)")
        axes[2].set_xscale("log")
        axes[2].set_yscale("log")
        axes[2].set_xlabel("trials in the study")
        axes[2].set_title("one worker: seconds per trial")
        axes[2].legend()
    fig.suptitle(f"sweeper storage scale ({os.cpu_count()} cores shared by server, pooler and clients)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    threading.current_thread().name = "storage_scale"
    main()
