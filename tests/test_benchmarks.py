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
