"""Worker processes share the CPU cores: each runs torch with its share of threads, not one per core."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from conftest import tiny_spec_dict
from sweeper.cli import main
from sweeper.launchers.local import worker_env
from sweeper.settings import cpu_cores, threads_per_worker

# A network factory that records, in the process that trains the trial, how many threads torch uses.
RECORDING_NET = """
import os
from pathlib import Path

import torch
from torch import nn


def build(in_features, num_classes, dropout, batch_norm):
    with open(Path(__file__).with_name("threads.txt"), "a") as f:
        f.write(f"{os.getpid()} {torch.get_num_threads()}\\n")
    return nn.Sequential(nn.Dropout(dropout[0]), nn.Linear(in_features, 8), nn.ReLU(), nn.Dropout(dropout[1]),
                         nn.Linear(8, num_classes))
"""


@pytest.fixture
def recording_study(tmp_path: Path) -> Path:
    (tmp_path / "net.py").write_text(RECORDING_NET)
    spec = tiny_spec_dict(
        "threads", trials=2, network={"type": "python", "factory": "net.py:build", "hidden_layers": 1}
    )
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _threads_by_process(tmp_path: Path) -> dict[int, int]:
    lines = (tmp_path / "threads.txt").read_text().split()
    return {int(pid): int(n) for pid, n in zip(lines[::2], lines[1::2], strict=True)}


@pytest.mark.parametrize(
    ("user_omp", "option", "expected"),
    [
        (None, None, max(1, cpu_cores() // 2)),  # the default: two workers share the cores
        ("2", None, min(2, cpu_cores())),  # the user's OMP_NUM_THREADS wins over the share (torch caps it at the cores)
        ("2", "3", 3),  # --threads wins over both
    ],
)
def test_launched_workers_run_with_their_share_of_threads(
    recording_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user_omp: str, option: str, expected: int
) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    if user_omp:
        monkeypatch.setenv("OMP_NUM_THREADS", user_omp)
        monkeypatch.setenv("MKL_NUM_THREADS", user_omp)
    args = ["launch", str(recording_study), "--workers", "2", "--gpus", "none", "--tracking-uri", ""]
    args += ["--threads", option] if option else []
    before = torch.get_num_threads()
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    workers = {pid: n for pid, n in _threads_by_process(tmp_path).items() if pid != os.getpid()}
    assert workers, "no trial ran in a worker process"
    assert set(workers.values()) == {expected}, workers
    assert torch.get_num_threads() == before  # launching workers leaves this process alone


def test_threads_option_in_process(recording_study: Path, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(
            main, ["launch", str(recording_study), "--threads", "1", "--tracking-uri", ""], catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        assert set(_threads_by_process(tmp_path).values()) == {1}
        result = CliRunner().invoke(main, ["worker", "threads", "--threads", "2", "--tracking-uri", ""])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_worker_env_sets_the_share_unless_the_user_did(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    env = worker_env("sqlite:///s.db", None, None, threads=1)
    assert env["OMP_NUM_THREADS"] == "1" and env["MKL_NUM_THREADS"] == "7"
    assert threads_per_worker(1) == cpu_cores() and threads_per_worker(cpu_cores() * 4) == 1


def test_bad_threads_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["launch", "x.yaml", "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output
