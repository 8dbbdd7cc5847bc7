"""``sweeper ui``: the MLflow dashboard on the study's tracking store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from sweeper.errors import SpecError
from sweeper.signals import interrupt, on_stop_signals
from sweeper.study.urls import mask_url


def check_store(uri: str) -> None:
    """Only a store (database or folder) needs a server started on it."""
    if not uri:
        raise SpecError("tracking is off (the tracking URI is ''): pass --tracking-uri sqlite:///mlflow.db")
    if uri.startswith(("http://", "https://")):
        raise SpecError(f"the tracking store {mask_url(uri)!r} is already a server: open it in a browser instead")


def experiment_url(uri: str, base: str, study: str | None) -> str:
    """The runs page of the study's experiment (or the UI's home page without a study)."""
    check_store(uri)
    if not study:
        return base
    from mlflow import MlflowClient

    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(study)
    if exp is None:
        raise SpecError(f"no MLflow experiment named {study!r} in the tracking store; run 'sweeper launch' first")
    from sweeper.tracking.study_run import SHARED_VIEW_TAG, TRIALS_VIEW

    # workflowType: the UI's "Model training" side (MLflow 3 opens on its GenAI side, whatever the experiment's kind)
    runs = f"{base}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
    if f"{SHARED_VIEW_TAG}{TRIALS_VIEW}" in exp.tags:  # the trial runs with their parameters as columns
        return f"{runs}&viewStateShareKey={TRIALS_VIEW}"
    query = urllib.parse.urlencode({"searchFilter": "tags.`sweeper.role` = 'trial'"}, quote_via=urllib.parse.quote)
    return f"{runs}&{query}"


def link_hint(url: str) -> str:
    """What the link from ``experiment_url`` opens, in a sentence for the terminal."""
    from sweeper.tracking.study_run import TRIALS_VIEW

    if f"viewStateShareKey={TRIALS_VIEW}" in url:  # the stored view already has the parameter columns
        return "The link lists the trial runs, best first, with a column per searched parameter and the objective."
    if "/runs" in url:  # an experiment made before sweeper stored its view
        return "The link lists the trial runs; add their parameters as table columns with 'Columns'."
    return "Pass a study name (sweeper ui STUDY) for a link to its trial runs."


def start_server(
    uri: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    artifacts: str | None = None,
    allowed_hosts: str | None = None,
    timeout: float = 120,
    log_file: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``mlflow server`` on the store, in its own process group, and wait until it answers.

    ``log_file``: the server's own messages (and no per-request access log) go there, not to the terminal.
    """
    check_store(uri)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if artifacts:
        cmd += ["--artifacts-destination", artifacts]
    if allowed_hosts:
        # MLflow 3 answers only Host headers of localhost and private IPs unless told otherwise
        cmd += ["--allowed-hosts", allowed_hosts]
    # the job runner (GenAI evaluation jobs) would start a dozen huey processes a sweep never uses
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # its own session: mlflow starts uvicorn as a child, and stop_server must reach the whole group
    # the server's log goes to stderr, so stdout carries only the URL (scripts read it)
    out = open(log_file, "ab") if log_file else None  # noqa: SIM115 (the server process owns it)
    if out is not None:
        cmd += ["--uvicorn-opts", "--no-access-log"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=out or 2, stderr=out)
    if out is not None:
        out.close()  # the child has its own descriptor
    probe = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            where = f" (its log: {log_file})" if log_file else ""
            raise SpecError(
                f"mlflow server exited with code {proc.returncode}{where}; is port {port} free? (use --port)"
            )
        try:
            urllib.request.urlopen(f"http://{probe}:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise SpecError(f"mlflow server did not answer on port {port} within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen[bytes], grace: float = 15) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever is left after ``grace`` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # uvicorn children that outlived their parent
    except ProcessLookupError:
        pass
    proc.wait()


def serve_forever(proc: subprocess.Popen[bytes]) -> None:
    """Wait for the server; Ctrl-C or SIGTERM stops it and its children."""

    try:
        with on_stop_signals(interrupt):
            proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(proc)
