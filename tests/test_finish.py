"""The end of a study happens once, wherever its last trial ran: real `sweeper worker` processes on PostgreSQL,
a real MLflow store, and a finisher SIGKILLed during the end steps."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import optuna
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import tiny_spec_dict
from sweeper import api
from sweeper.cli import main
from sweeper.study.record import StudyRecord
from sweeper.study.spec import parse_spec

FAST_LEASE = {"SWEEPER_HEARTBEAT": "1", "SWEEPER_HEARTBEAT_GRACE": "4"}


def _worker(name: str, storage: str, tracking: str, worker_id: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "sweeper.cli", "worker", name, "--worker-id", str(worker_id), "--no-progress"]
    env = {**os.environ, **FAST_LEASE, "SWEEPER_STORAGE": storage, "MLFLOW_TRACKING_URI": tracking}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _create(name: str, storage: str, tracking: str, **overrides: Any) -> None:
    spec = parse_spec(tiny_spec_dict(name, trials=4, refit=True, network={"hidden": [128]}, **overrides))
    api.create(spec, storage=storage, tracking=tracking)


def _models(tracking: str, record: StudyRecord) -> list[tuple[str, str, str]]:
    """(name, status, trial) of every logged model of the study run."""
    client = MlflowClient(tracking)
    exp_id = client.get_run(str(record.parent_run_id)).info.experiment_id
    found = client.search_logged_models([exp_id], filter_string=f"source_run_id = '{record.parent_run_id}'")
    return sorted((m.name, str(m.status), m.tags.get("sweeper.trial", "")) for m in found)


def _assert_ended_once(name: str, storage: str, tracking: str) -> StudyRecord:
    record = StudyRecord.open(name, storage)
    best = record.best_trial()
    assert best is not None
    test, refit = record.result("test", best), record.result("refit", best)
    assert record.end_state()["state"] == "done", record.end_state()
    assert test is not None and test["model"] == "selected"  # the selected network's own weights, not a retrain
    assert abs(test["val_accuracy"] - best.value) < 1e-6  # it is the network that earned the trial its value
    assert refit is not None and refit["trial"] == best.number
    assert _models(tracking, record) == [
        ("best_model", "READY", str(best.number)),
        ("refit_model", "READY", str(best.number)),
    ]
    client = MlflowClient(tracking)
    for metric in ("best.test_accuracy", "refit.test_accuracy"):  # scored and logged once, not once per worker
        assert len(client.get_metric_history(str(record.parent_run_id), metric)) == 1, metric
    assert client.get_run(str(record.parent_run_id)).info.status == "FINISHED"
    return record


def test_two_workers_end_the_study_once(pg_url: str, tracking_uri: str) -> None:
    _create("ends", pg_url, tracking_uri)
    procs = [_worker("ends", pg_url, tracking_uri, i) for i in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("running the end steps" in out for out in outs) == 1, outs
    assert not any("Traceback" in out for out in outs), outs
    lines = re.findall(r"trial (\d+) (?:complete|pruned)(?: [\d.]+)? \((\d)/4 finished", "".join(outs))
    assert sorted(int(t) for t, _ in lines) == [0, 1, 2, 3], outs  # --no-progress: a line per trial, in its worker
    _assert_ended_once("ends", pg_url, tracking_uri)

    status = CliRunner().invoke(main, ["status", "ends", "--storage", pg_url])
    assert status.exit_code == 0, status.output
    assert "test accuracy" in status.output and "end steps" not in status.output
    again = CliRunner().invoke(main, ["finish", "ends", "--storage", pg_url, "--tracking-uri", tracking_uri])
    assert again.exit_code == 0, again.output
    _assert_ended_once("ends", pg_url, tracking_uri)  # nothing logged twice


def test_a_finisher_killed_mid_way_is_taken_over(pg_url: str, tracking_uri: str) -> None:
    _create("killed-end", pg_url, tracking_uri)
    proc = _worker("killed-end", pg_url, tracking_uri, 0)
    study = optuna.load_study(study_name="killed-end", storage=pg_url)
    deadline = time.monotonic() + 240
    while (study.user_attrs.get("sweeper.end") or {}).get("state") != "running":
        assert proc.poll() is None, f"the worker ended before its end steps could be killed: {proc.stdout.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()

    status = CliRunner().invoke(main, ["status", "killed-end", "--storage", pg_url])
    assert "end steps running on worker 0" in status.output, status.output
    assert "sweeper finish killed-end" in status.output  # how to carry them on, if it died

    nxt = _worker("killed-end", pg_url, tracking_uri, 1)  # e.g. the container restarted by its restart policy
    out = nxt.communicate(timeout=240)[0]
    assert nxt.returncode == 0, out
    assert "carrying them on" in out and "Traceback" not in out, out
    _assert_ended_once("killed-end", pg_url, tracking_uri)


def test_finish_before_the_budget_is_met_says_what_to_do(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    api.create(parse_spec(tiny_spec_dict("early-end")), storage=url, tracking="")
    result = CliRunner().invoke(main, ["finish", "early-end", "--storage", url, "--tracking-uri", ""])
    assert result.exit_code == 2, result.output
    assert "0 of its 3 trials finished" in result.output and "sweeper worker early-end" in result.output


def _trials_run_end_steps_left(name: str, tmp_path: Any, tracking_uri: str) -> tuple[str, CliRunner]:
    """A study on SQLite whose budget one `sweeper worker --no-end-steps` met."""
    url, runner = f"sqlite:///{tmp_path}/s.db", CliRunner()
    _create(name, url, tracking_uri)
    ran = runner.invoke(main, ["worker", name, "--storage", url, "--tracking-uri", tracking_uri, "--no-progress",
                               "--no-end-steps"])  # fmt: skip
    assert ran.exit_code == 0, ran.output
    return url, runner


def test_finish_runs_end_steps_a_worker_left(tmp_path: Any, tracking_uri: str) -> None:
    """`sweeper worker --no-end-steps` leaves them (status says so); `sweeper finish` runs them."""
    url, runner = _trials_run_end_steps_left("left-end", tmp_path, tracking_uri)
    status = runner.invoke(main, ["status", "left-end", "--storage", url])
    assert "end steps (test score, best model, refit) not run yet: run 'sweeper finish left-end'" in status.output
    done = runner.invoke(main, ["finish", "left-end", "--storage", url, "--tracking-uri", tracking_uri])
    assert done.exit_code == 0, done.output
    assert "best trial's test accuracy" in done.output and "refit on train + validation" in done.output
    _assert_ended_once("left-end", url, tracking_uri)


def test_end_steps_while_mlflow_is_down_fail_and_finish_completes_them_later(tmp_path: Any, tracking_uri: str) -> None:
    import socket

    url, runner = _trials_run_end_steps_left("down-end", tmp_path, tracking_uri)
    with socket.socket() as s:  # a port nothing listens on: the tracking server is down
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    failed = runner.invoke(main, ["finish", "down-end", "--storage", url, "--tracking-uri", down])
    assert failed.exit_code == 1, failed.output
    assert f"end steps failed: MLflow at {down} did not answer" in failed.output, failed.output
    assert "run 'sweeper finish down-end'" in failed.output and "Traceback" not in failed.output
    record = StudyRecord.open("down-end", url)
    assert record.result("test") is None and record.end_state()["state"] == "failed"  # nothing scored meanwhile
    status = runner.invoke(main, ["status", "down-end", "--storage", url])
    assert "end steps failed" in status.output, status.output
    done = runner.invoke(main, ["finish", "down-end", "--storage", url, "--tracking-uri", tracking_uri])
    assert done.exit_code == 0, done.output
    _assert_ended_once("down-end", url, tracking_uri)
