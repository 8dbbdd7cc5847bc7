"""RunSettings: a run's options checked once, when the value is made, and what follows from them kept in it."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from sweeper.cli import main
from sweeper.errors import SpecError
from sweeper.settings import RunSettings, cpu_cores


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"trials": 0}, "--trials must be >= 1, but got 0"),
        ({"population": 0}, "--population must be >= 1 (trials trained together), but got 0"),
        ({"workers": 0}, "--workers must be >= 1, but got 0"),
        ({"threads": 0}, "--threads must be >= 1 (torch threads per worker), but got 0"),
        ({"ray": "auto", "gpus": "0"}, "with --ray, use --gpus-per-worker"),
        ({"ray": "auto", "cpus_per_worker": 0.0}, "--cpus-per-worker must be > 0, but got 0"),
        ({"ray": "auto", "gpus_per_worker": 1.5}, "--gpus-per-worker above 1 must be a whole number"),
        ({"gpus_per_worker": 1.0}, "add --ray"),
        ({"workers": 2, "gpus": "0,x"}, "--gpus takes 'all', 'none' or GPU ids like '0,2', but got '0,x'"),
        ({"tracking": "ftp://host"}, "unsupported MLflow tracking URI"),
    ],
)
def test_a_bad_option_is_named_when_the_settings_are_made(options: dict, words: str) -> None:
    with pytest.raises(SpecError) as e:
        RunSettings(**options)
    assert words in str(e.value)


def test_what_follows_from_the_options_is_worked_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPER_STORAGE", "sqlite:///env.db")
    here = RunSettings(threads=3)  # one worker, in this process: the threads as asked, no GPUs to pin
    assert (here.storage, here.in_processes, here.gpu_ids, here.worker_threads) == ("sqlite:///env.db", False, None, 3)
    local = RunSettings(workers=2, gpus="none")
    assert local.in_processes and local.gpu_ids == () and local.worker_threads == max(1, cpu_cores() // 2)
    ray = RunSettings(ray="", workers=4, cpus_per_worker=2.0)
    assert (ray.cpus_per_worker, ray.gpus_per_worker, ray.worker_threads, ray.in_processes) == (2.0, 0.0, 2, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ray.workers = 1  # type: ignore[misc]


def test_the_cli_reports_a_bad_option_as_a_usage_error_before_anything_runs(tmp_path: object) -> None:
    for args in (["--workers", "0"], ["--cpus-per-worker", "0", "--ray"], ["--population", "0"]):
        result = CliRunner().invoke(main, ["launch", "missing.yaml", *args, "--storage", "sqlite:///x.db"])
        assert result.exit_code == 2 and args[0] in result.output and "Traceback" not in result.output, result.output
