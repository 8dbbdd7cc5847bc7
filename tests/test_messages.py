"""What a person sees: a clean stop in one line, a worker that had nothing to do, best-* values that stay true."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from conftest import tiny_spec_dict
from sweeper import api
from sweeper.cli import main
from sweeper.study.record import StudyRecord
from sweeper.study.spec import parse_spec


def _running(url: str) -> bool:
    study = optuna.load_study(study_name="term", storage=url)
    return any(t.state == TrialState.RUNNING and t.intermediate_values for t in study.get_trials())


@pytest.mark.parametrize("population", [None, 2], ids=["one-trial", "population"])
def test_sigterm_prints_one_line_and_no_traceback(tmp_path: Path, tracking_uri: str, population: int | None) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    # a worker draws its own sampler seed: a space that cannot diverge, so the first trial is still training
    safe = {"lr_scale": [1.0, 3.0]}
    spec = parse_spec(tiny_spec_dict("term", trials=2, train={"epochs": 30, "batch_size": 8}, space=safe))
    api.create(spec, storage=url, tracking=tracking_uri)
    cmd = [sys.executable, "-m", "sweeper.cli", "worker", "term", "--storage", url, "--tracking-uri", tracking_uri]
    cmd += ["--population", str(population)] if population else []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _running(url):
            assert proc.poll() is None and time.monotonic() < deadline, "no trial started training"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "WorkerStopped" not in out, out
    stopped = [line for line in out.splitlines() if "queued again" in line]
    assert len(stopped) == 1 and "SIGTERM" in stopped[0], out
    queued = [
        t for t in optuna.load_study(study_name="term", storage=url).get_trials() if t.state == TrialState.WAITING
    ]
    assert queued and all(f"{t.system_attrs['failed_trial']}" in stopped[0] for t in queued), out


def test_worker_with_nothing_to_do_says_why_and_leaves_mlflow_alone(tmp_path: Path, tracking_uri: str) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    api.launch(parse_spec(tiny_spec_dict("done", trials=2)), storage=url, tracking=tracking_uri, score_test=False)
    record = StudyRecord.open("done", url)
    client = MlflowClient(tracking_uri=tracking_uri)
    before = client.get_run(record.parent_run_id)
    last_trial = max(t.datetime_complete for t in record.study.get_trials())
    assert before.info.end_time == int(last_trial.timestamp() * 1000)  # the study ended with its last trial

    time.sleep(0.05)
    result = CliRunner().invoke(main, ["worker", "done", "--storage", url, "--tracking-uri", tracking_uri])
    assert result.exit_code == 0, result.output
    assert "met its budget (2/2 trials finished)" in result.output and "ran 0 trial(s)" in result.output
    after = client.get_run(record.parent_run_id)
    assert (after.info.end_time, after.info.status) == (before.info.end_time, "FINISHED")


def test_best_values_describe_the_current_best_trial_only(tracking_uri: str) -> None:
    from sweeper.tracking.study_run import log_study_summary

    study = optuna.create_study(study_name="best", direction="maximize")
    on = {"max_norm.enabled": CategoricalDistribution([True, False]), "max_norm": FloatDistribution(3, 5)}
    off = {"max_norm.enabled": on["max_norm.enabled"]}
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.create_run(client.create_experiment("best")).info.run_id

    study.add_trial(create_trial(params={"max_norm.enabled": True, "max_norm": 3.4}, distributions=on, value=0.5))
    log_study_summary(client, run, study)
    assert client.get_run(run).data.metrics["best.max_norm"] == pytest.approx(3.4)

    study.add_trial(create_trial(params={"max_norm.enabled": False}, distributions=off, value=0.9))
    log_study_summary(client, run, study)
    data = client.get_run(run).data
    assert data.tags["best_trial"] == "1" and data.metrics["best_value"] == pytest.approx(0.9)
    assert data.metrics["best.max_norm.enabled"] == 0.0
    assert math.isnan(data.metrics["best.max_norm"]), "a value left over from an earlier best trial"
    assert '"max_norm": "off"' in data.tags["best_params"]


def test_status_and_best_answer_quickly_without_importing_torch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    api.launch(parse_spec(tiny_spec_dict("quick", trials=1)), storage=url, tracking="", score_test=False)
    code = (
        "import sys; from sweeper.cli import main; "
        f"main(['status', '--storage', {url!r}], standalone_mode=False); "
        "assert 'torch' not in sys.modules and 'mlflow' not in sys.modules, 'a heavy import on the status path'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert out.returncode == 0, out.stderr
    assert "quick: 1 complete (budget 1)" in out.stdout or "quick: 1 pruned" in out.stdout, out.stdout
