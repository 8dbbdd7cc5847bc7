"""The GPU acceptance script's dry run, on the CPU: the same steps a GPU machine runs, so the script cannot rot
between the sessions that are lent one (scripts/gpu_acceptance.sh; README, "GPU")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_acceptance_dry_run_passes_every_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "TMPDIR": str(tmp_path)}
    cmd = ["bash", str(ROOT / "scripts" / "gpu_acceptance.sh"), "--dry-run"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    report = (out / "gpu_acceptance.txt").read_text() if (out / "gpu_acceptance.txt").exists() else ""
    assert proc.returncode == 0, report or proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = report.splitlines()
    expected = [
        "PASS imports",
        "SKIP CUDA tests: (no CUDA) 8 skipped",  # collected and skipped with the reason, none failed to import
        "PASS main job: launch --trials 4:",
        "PASS launch --trials 4 --population 4:",
        "PASS launch --trials 4 --workers 2 --gpus all:",
        "SKIP out of GPU memory: (no CUDA) its code path ran on the CPU",
        "PASS best model on a CPU-only process:",
        "PASS bench: reference workload:",
        "PASS bench: MNIST-1D network:",
    ]
    for start in expected:
        assert any(line.startswith(start) for line in lines), (start, report)
    assert lines[0].startswith("gpu_acceptance --dry-run (CPU)") and "CUDA available: False" in lines[1]
    assert "0 FAIL" in report and (out / "gpu_acceptance.log").exists() and (out / "bench_cpu.txt").exists()
    assert "(c) population K=2" in (out / "bench_cpu_mnist1d.txt").read_text()
