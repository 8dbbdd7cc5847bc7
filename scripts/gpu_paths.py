"""The acceptance's end-to-end checks: a user's ``sweeper launch`` run as a command, then its study database and
MLflow store read back (budget exact, every trial finished, one MLflow run per trial, the device of each).

Each check returns ``(status, detail)``: "PASS", "FAIL" or "SKIP", and one line of figures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CPU_MAIN_JOB = "CPU: 84 s wall, 59 s of trials on 2 cores (README)"


@dataclass
class Ran:
    code: int
    output: str
    seconds: float
    timed_out: bool


def run_cmd(cmd: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None, tag: str = "") -> Ran:
    """Run ``cmd``, its output streamed into ours (the log) line by line; killed with its children at ``timeout``."""
    cwd.mkdir(parents=True, exist_ok=True)
    print(f"$ (cd {cwd} && {' '.join(cmd)})", flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)  # fmt: skip
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            print(f"  {tag} {time.monotonic() - start:6.1f}s| {line.rstrip()}", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # the launch and the workers it started
        proc.wait()
    reader.join(timeout=5)
    return Ran(proc.returncode, "".join(lines), time.monotonic() - start, timed_out)


def result_of(ran: Ran) -> dict[str, Any]:
    """The ``RESULT {json}`` line a probe printed."""
    for line in reversed(ran.output.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"no RESULT line (exit {ran.code}): {ran.output[-500:]}")


def dry_study(source: Path, dest: Path, **top: Any) -> Path:
    """``source`` cut to seconds for the CPU dry run: the same file and keys, a tiny network, 2 epochs."""
    spec = {**yaml.safe_load(source.read_text()), **top}
    spec["network"]["hidden"] = [32, 32]
    spec["train"] = {**spec.get("train", {}), "epochs": 2}
    spec["pruner"] = {**spec.get("pruner", {}), "warmup_epochs": 1}
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(spec, sort_keys=False))
    return dest


def sweeper_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweeper.cli", *args]


def read_study(workdir: Path, name: str) -> dict[str, Any]:
    """What the study database and the MLflow store hold about a finished launch."""
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    from sweeper.study.record import StudyRecord, where_ran

    record = StudyRecord.open(name, f"sqlite:///{workdir}/sweeper.db")
    trials = record.study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    trial_runs = "tags.`sweeper.role` = 'trial'"
    runs = [] if exp is None else client.search_runs([exp.experiment_id], trial_runs, max_results=5000)
    return {
        "budget": record.budget,
        "trials": trials,
        "finished": finished,
        "states": {s.name.lower(): n for s, n in _count(t.state for t in trials).items()},
        "devices": _count(where_ran(t).get("device", "?") for t in trials),
        "workers": _count(where_ran(t).get("worker", "?") for t in finished),
        "span": (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan"),
        "runs": runs,
        "test": record.result("test"),
        "best": record.study.best_value if finished else None,
    }


def _count(items: Any) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def launch_path(
    study_file: Path, args: list[str], *, workdir: Path, timeout: float, device: str, name: str
) -> tuple[str, str, dict[str, Any]]:
    """``sweeper launch STUDY ARGS`` in ``workdir`` (SQLite + a local MLflow store), then its record checked."""
    shutil.rmtree(workdir, ignore_errors=True)
    ran = run_cmd(sweeper_cli("launch", str(study_file), *args), cwd=workdir, timeout=timeout, tag=workdir.name)
    info: dict[str, Any] = {"ran": ran}
    if ran.timed_out:
        return "FAIL", f"timed out after {ran.seconds:.0f} s", info
    if ran.code != 0:
        return "FAIL", f"exit {ran.code}: {ran.output.strip().splitlines()[-1:]}", info
    printed = re.search(r"best trial's test accuracy ([0-9.]+)", ran.output)
    info["printed_test"] = float(printed.group(1)) if printed else None
    s = read_study(workdir, name)
    info.update(s)
    problems = []
    if len(s["finished"]) != s["budget"] or len(s["trials"]) != s["budget"]:
        problems.append(f"{len(s['finished'])} finished of {len(s['trials'])} trials, budget {s['budget']}")
    run_numbers = sorted(int(r.data.tags.get("optuna.trial_number", -1)) for r in s["runs"])
    if run_numbers != sorted(t.number for t in s["trials"]):
        problems.append(f"MLflow trial runs {run_numbers} do not match the trials")
    unfinished = [r.info.run_name for r in s["runs"] if r.info.status != "FINISHED"]
    if unfinished:
        problems.append(f"MLflow runs not FINISHED: {unfinished}")
    wrong = {d: n for d, n in s["devices"].items() if not str(d).startswith(device)}
    run_devices = _count(r.data.tags.get("sweeper.device", "?") for r in s["runs"])
    if wrong or any(not str(d).startswith(device) for d in run_devices):
        problems.append(f"devices {s['devices']} (MLflow {run_devices}), expected {device}")
    if s["test"] is None or info["printed_test"] is None:
        problems.append("no test accuracy printed or stored")
    if "worker(s) failed" in ran.output:  # launch goes on when a worker process dies: the others meet the budget
        problems.append("a worker process failed (see the log)")
    if "--workers" in args and device == "cuda" and len(s["workers"]) < 2:
        problems.append(f"trials per worker {s['workers']}: the workers did not share the GPU")
    states = ", ".join(f"{n} {k}" for k, n in s["states"].items())
    detail = (
        f"{ran.seconds:.0f} s wall, {s['span']:.0f} s of trials; {len(s['finished'])}/{s['budget']} finished "
        f"({states}); {len(s['runs'])} MLflow trial runs; device {dict(s['devices'])}"
    )
    if len(s["workers"]) > 1:
        detail += f"; trials per worker {dict(sorted(s['workers'].items()))}"
    if s["best"] is not None and info["printed_test"] is not None:
        detail += f"; best val {s['best']:.4f}, test {info['printed_test']:.4f}"
    return ("FAIL", "; ".join(problems) + " | " + detail, info) if problems else ("PASS", detail, info)


def oom_path(workdir: Path, *, timeout: float, cuda: bool) -> tuple[str, str]:
    """A study whose first trained trial runs out of GPU memory: it must end FAIL with the reason, and the same
    worker free the memory and train the next trials to the budget (``scripts/gpu_oom_net.py``)."""
    from optuna.trial import TrialState

    from sweeper.study.record import StudyRecord, end_reason, where_ran

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    shutil.copy(HERE / "gpu_oom_net.py", workdir)
    study = {"name": "oom", "trials": 3, "seed": 0, "pruner": "none", "warm_start": "none", "refit": False,
             "data": {"dataset": "digits"}, "network": {"type": "python", "factory": "gpu_oom_net.py:build"},
             "train": {"epochs": 2, "device": "auto"}}  # fmt: skip
    (workdir / "oom.yaml").write_text(yaml.safe_dump(study))
    ran = run_cmd(sweeper_cli("launch", "oom.yaml", "--tracking-uri", ""), cwd=workdir, timeout=timeout, tag="oom")
    if ran.timed_out or ran.code != 0:
        return "FAIL", f"launch {'timed out' if ran.timed_out else f'exit {ran.code}'}: {ran.output[-300:]!r}"
    trials = StudyRecord.open("oom", f"sqlite:///{workdir}/sweeper.db").study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    reason = end_reason(trials[0]) or ""
    workers = {where_ran(t).get("worker") for t in trials}
    problems = []
    if states != [TrialState.FAIL] + [TrialState.COMPLETE] * 3:
        problems.append(f"states {[s.name for s in states]}, expected FAIL then 3 COMPLETE")
    if "OutOfMemoryError" not in reason:
        problems.append(f"trial 0's reason {reason!r} does not name the OutOfMemoryError")
    if len(workers) != 1:
        problems.append(f"trials ran in workers {workers}: the OOM worker did not take the next trial")
    probes = [json.loads(line) for line in (workdir / "oom_probe.jsonl").read_text().splitlines()]
    detail = f"trial 0 FAIL ({reason[:90]}); trials 1-3 COMPLETE in the same worker; {ran.seconds:.0f} s"
    if cuda:
        at = next((i for i, p in enumerate(probes) if p["event"] == "held"), None)
        held = probes[at]["held"] if at is not None else 0
        after = [p for p in probes[at:] if p["event"] == "build"] if at is not None else []  # the next trial's
        if not held or not after:
            problems.append(f"no GPU memory probe after the OOM trial: {probes}")
        else:
            alloc, reserved = after[0]["allocated"], after[0]["reserved"]
            detail += (
                f"; it held {held / 2**30:.1f} GiB, the next trial started with {alloc / 2**20:.0f} MiB allocated, "
                f"{reserved / 2**20:.0f} MiB reserved"
            )
            if alloc > held / 2:
                problems.append(f"the next trial started with {alloc / 2**30:.1f} GiB still allocated")
            if reserved > held / 2:  # a worker beside it on the same GPU (--workers 4 --gpus all) cannot have it
                problems.append(
                    "the OOM trial's memory went back to this worker's cache, not to the GPU (worker.py's "
                    "_free_memory runs while the exception's traceback still holds the trial's tensors)"
                )
    return ("FAIL", "; ".join(problems) + " | " + detail) if problems else ("PASS", detail)
