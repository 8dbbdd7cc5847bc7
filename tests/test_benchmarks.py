"""The search benchmark runs end to end (a smoke run: it asserts nothing about accuracy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_search_quality_quick_run_writes_its_tables(tmp_path: Path) -> None:
    out = tmp_path / "sq"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "search_quality.py"), "--quick", "--tasks", "digits"]
    methods = ["sweeper", "sweeper-v0", "+mixup", "+population", "textbook", "random"]
    cmd += ["--methods", *methods, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = out.with_suffix(".txt").read_text()
    for method in methods:
        assert f"\n{method} " in table, table
    assert "sweeper's best settings refit on train + val" in table, table
    sweeps = json.loads(out.with_suffix(".json").read_text())
    assert {s["method"] for s in sweeps["sweeps"]} == set(methods)
    for sweep in sweeps["sweeps"]:  # every method's trials are recorded, the stacked population's too
        assert sweep["trials"] and sweep["selected"]["test"] is not None, sweep["method"]


def test_storage_scale_quick_run_writes_its_table_and_plot(tmp_path: Path) -> None:
    """Its own PostgreSQL and PgBouncer, workers direct and pooled, SQLite, a grown study: every run meets its
    budget exactly with nothing left running and no error (what the full run reports for N up to 256)."""
    import pytest

    from conftest import _initdb_dir, pgbouncer_binary

    if _initdb_dir() is None or pgbouncer_binary() is None:
        pytest.skip("needs PostgreSQL's initdb and pgbouncer (Debian: apt-get install postgresql pgbouncer)")
    out = tmp_path / "scale"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "storage_scale.py"), "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line.split() for line in out.with_suffix(".txt").read_text().splitlines() if not line.startswith("#")]
    runs = [r for r in rows if r[0] in ("direct", "pgbouncer", "sqlite")]
    assert {r[0] for r in runs} == {"direct", "pgbouncer", "sqlite"}, rows
    for path, n, budget, done, over, failed, left, *rest in runs:
        assert (done, over, failed, left) == (budget, "0", "0", "0"), (path, n, rest)
        assert rest[-1] == "none", (path, n, rest)  # errors the workers met
    assert out.with_suffix(".png").stat().st_size > 0


def test_checkpoint_cost_quick_run_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "cost.txt"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "checkpoint_cost.py"), "--quick", "--epochs", "2"]
    cmd += ["--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("quick MLP")]
    assert [r.split()[4] for r in rows] == ["folder", "MLflow"], rows  # both stores measured


def test_trial_reads_quick_run_writes_its_table(tmp_path: Path) -> None:
    """Optuna's reads and sweeper's measured side by side on a PostgreSQL of its own, and the reads whole."""
    import pytest

    from conftest import _initdb_dir

    if _initdb_dir() is None:
        pytest.skip("needs PostgreSQL's initdb (Debian: apt-get install postgresql)")
    out = tmp_path / "reads.txt"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "trial_reads.py"), "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line.split() for line in out.read_text().splitlines() if not line.startswith("#")]
    runs = [(r[0], r[2]) for r in rows if len(r) == 7]  # running, reads
    assert runs == [("0", "optuna"), ("0", "sweeper"), ("16", "optuna"), ("16", "sweeper")], rows
    assert [r[0] for r in rows if len(r) == 4] == ["1", "5"]  # reads whole, by batch
