"""Workers as Ray tasks on a real two-node Ray cluster (one machine), the study on the real PostgreSQL.

One cluster for the module: a head node with 2 CPUs and a worker node with 1, so two workers of one
CPU each land one per node (SPREAD). The node-loss test kills the worker node, so it runs last.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
import yaml
from click.testing import CliRunner
from optuna.trial import FrozenTrial, TrialState
from ray.cluster_utils import Cluster

from conftest import _pg_database, tiny_spec_dict
from sweeper.cli import main
from sweeper.study.record import end_reason, where_ran
from sweeper.study.storage import make_storage

WHERE = ("worker", "node", "node_ip", "gpu")


class TwoNodes:
    def __init__(self) -> None:
        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
        self.worker_node = self.cluster.add_node(num_cpus=1)
        self.cluster.wait_for_nodes()
        self.address = self.cluster.address
        assert self.cluster.head_node is not None
        self.head_id: str = self.cluster.head_node.node_id
        self.worker_id: str = self.worker_node.node_id


@pytest.fixture(scope="module")
def nodes() -> Iterator[TwoNodes]:
    two = None
    # ray.init installs its own SIGTERM/SIGINT handlers in this process: later tests get the old ones back
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")  # the test cluster reports nothing anywhere
        try:
            two = TwoNodes()
            yield two
        finally:
            if ray.is_initialized():
                ray.shutdown()
            if two is not None:
                two.cluster.shutdown()
            for s, h in handlers.items():
                signal.signal(s, h)


# Ray workers seed their samplers afresh (scaled workers must not repeat each other), so the drawn
# parameters differ from run to run: a space that never diverges keeps "every trial COMPLETE" exact
SAFE_SPACE = {"lr_scale": [0.5, 2.0], "momentum": [0.9, 0.95]}


def study_file(tmp_path: Path, name: str, **overrides: Any) -> str:
    path = tmp_path / f"{name}.yaml"
    overrides["space"] = {**SAFE_SPACE, **overrides.get("space", {})}
    path.write_text(yaml.safe_dump(tiny_spec_dict(name, **overrides)))
    return str(path)


_storages: dict[str, optuna.storages.BaseStorage] = {}


def trials(storage: str, name: str) -> list[FrozenTrial]:
    """The study's trials, on one storage per database: polling must not open connections by the hundred
    (a new storage per call held its pool until collected: PostgreSQL ran out of clients under load)."""
    st = _storages.get(storage) or _storages.setdefault(storage, make_storage(storage))
    return optuna.load_study(study_name=name, storage=st).get_trials(deepcopy=False)


def states(ts: list[FrozenTrial]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in ts:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def launch_process(args: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``sweeper launch`` in its own process, as a user runs it (signals go to it alone)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "sweeper.cli", "launch", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )


def wait_for(what: Callable[[], Any], timeout: float, proc: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = what()
        except KeyError:  # the study is not created yet
            found = None
        if found:
            return found
        assert proc.poll() is None, f"launch ended early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s:\n{log.read_text()[-3000:]}")


def finish(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert rc == 0, out[-4000:]
    return out


@pytest.fixture
def pg_tracking() -> Iterator[str]:
    """An MLflow store in PostgreSQL: every node reaches it (a file store would not be shared)."""
    yield from _pg_database()


class StartedCluster:
    """Two Ray nodes started as a user starts them, with the `ray start` CLI, under Ray's token authentication.

    As in the README: the head node's user makes the cluster's token (`ray get-auth-token --generate`, kept
    in that HOME's ~/.ray/auth_token), so `ray start --head` turns token authentication on by itself (Ray's
    default once a token exists); the other node joins with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN. Each
    `ray start` runs in a session of its own (its Ray processes keep that process group), so only these are
    stopped at the end, never another Ray of this machine. A short temp dir: Ray's socket paths are limited.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
        self.groups: list[int] = []
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> None:
        head_home, node_home = self.root / "head", self.root / "node"
        head_home.mkdir()
        node_home.mkdir()
        made = self.ray_cli(["get-auth-token", "--generate"], head_home)
        self.token = made.stdout.strip()
        assert len(self.token) >= 32, made.stderr
        common = ["--disable-usage-stats", f"--temp-dir={self.root / 'ray'}"]
        head_args = ["--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false", *common]
        head = self.ray_cli(["start", *head_args], head_home)  # no CPU: every worker runs on the other node
        assert head.returncode == 0 and "Token authentication is enabled" in head.stderr, head.stderr[-3000:]
        node_args = [f"--address={self.address}", "--num-cpus=2", *common]
        node = self.ray_cli(["start", *node_args], node_home, **self.with_token())
        assert node.returncode == 0, node.stderr[-3000:]

    def with_token(self) -> dict[str, str]:
        """What the README has every other node and the launching shell export."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def ray_cli(self, args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), *args],
            env={**_env_without_ray_auth(), "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, which the Ray processes it starts keep
        )
        self.groups.append(proc.pid)
        out, err = proc.communicate(timeout=90)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, to each process of these sessions (Ray workers lead process groups of their own)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _in_sessions(set(self.groups)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            time.sleep(2.0 if sig == signal.SIGTERM else 0.0)
        shutil.rmtree(self.root, ignore_errors=True)


def _in_sessions(sessions: set[int]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split() if entry.name.isdigit() else []
        except OSError:  # ended meanwhile
            continue
        if len(fields) > 3 and int(fields[3]) in sessions:  # state, ppid, process group, session
            found.append(int(entry.name))
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env_without_ray_auth() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}


@pytest.fixture(scope="class")
def started() -> Iterator[StartedCluster]:
    cluster = StartedCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class TestTokenAuthentication:
    """`ray start --head` of Ray >= 2.52 with a token: a launch without it is refused in one line, with it it runs."""

    def test_without_the_token_one_message_says_what_to_export(self, started: StartedCluster, tmp_path: Path) -> None:
        path = study_file(tmp_path, "ray-no-token")
        args = [path, "--ray", started.address, "--storage", "postgresql://u:s3cret@127.0.0.1:1/db"]
        begin = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-m", "sweeper.cli", "launch", *args],
            env=_env_without_ray_auth(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = (r.stdout + r.stderr).strip()
        assert r.returncode == 2, out
        assert "token authentication" in out and "RAY_AUTH_MODE=token RAY_AUTH_TOKEN=" in out, out
        assert "ray get-auth-token" in out and len(out.splitlines()) == 1, out  # one line: no Ray warnings
        assert "InvalidAuthToken" not in out and "Traceback" not in out and "s3cret" not in out, out
        assert time.monotonic() - begin < 15  # not Ray's 20 s of retries

    def test_with_the_token_the_study_runs_on_the_cluster(
        self, started: StartedCluster, pg_url: str, tmp_path: Path
    ) -> None:
        path = study_file(tmp_path, "ray-token", trials=3, pruner="none")
        log = tmp_path / "launch.log"
        args = [path, "--ray", started.address, "--workers", "2", "--storage", pg_url, "--tracking-uri", ""]
        with open(log, "wb") as out:
            r = subprocess.run(
                [sys.executable, "-m", "sweeper.cli", "launch", *args],
                env={**_env_without_ray_auth(), **started.with_token()},
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
            )
        text = log.read_text()
        assert r.returncode == 0, text[-4000:]
        assert "2 node(s), 2 CPU(s)" in text and "InvalidAuthToken" not in text, text[-4000:]
        ts = trials(pg_url, "ray-token")
        assert states(ts) == {"COMPLETE": 3}, states(ts)  # the budget, nothing left RUNNING
        # the head has no CPU: the node that joined with the token ran them all, its workers authenticated too
        assert len({where_ran(t, WHERE)["node"] for t in ts}) == 1


def test_workers_land_on_both_nodes_and_record_where(
    nodes: TwoNodes, pg_url: str, pg_tracking: str, tmp_path: Path
) -> None:
    path = study_file(tmp_path, "ray-place", trials=4, pruner="none")
    args = ["launch", path, "--ray", nodes.address, "--workers", "2", "--storage", pg_url]
    result = CliRunner().invoke(main, [*args, "--tracking-uri", pg_tracking, "--cpus-per-worker", "1"])
    assert result.exit_code == 0, result.output
    ts = trials(pg_url, "ray-place")
    assert states(ts) == {"COMPLETE": 4}  # budget exact, nothing left RUNNING
    where = [where_ran(t, WHERE) for t in ts]
    assert {w["node"] for w in where} == {nodes.head_id, nodes.worker_id}  # both nodes ran trials
    assert {w["worker"] for w in where} == {"0", "1"}
    assert all(w["gpu"] == "none" and w["node_ip"] for w in where)

    import mlflow

    client = mlflow.MlflowClient(pg_tracking)
    exp = client.get_experiment_by_name("ray-place")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "tags.`sweeper.node` != ''")
    assert {r.data.tags["sweeper.node"] for r in runs} == {nodes.head_id, nodes.worker_id}
    assert len(runs) == 4


def test_guard_rails_stop_before_anything_runs(nodes: TwoNodes, pg_url: str, tmp_path: Path) -> None:
    path = study_file(tmp_path, "ray-guard")
    run = CliRunner().invoke

    def launch(*args: str) -> Any:
        return run(main, ["launch", path, *args])

    # a study database file on a two-node cluster: the nodes cannot share it
    r = launch("--ray", nodes.address, "--workers", "2", "--storage", "sqlite:///study.db", "--tracking-uri", "")
    assert r.exit_code == 2 and "PostgreSQL" in r.output and "2 nodes" in r.output, r.output
    assert not Path("study.db").exists()
    # an MLflow file store, likewise
    r = launch("--ray", nodes.address, "--storage", pg_url, "--tracking-uri", "sqlite:///mlflow.db")
    assert r.exit_code == 2 and "MLflow server" in r.output, r.output
    # more GPUs per worker than any node has
    r = launch("--ray", nodes.address, "--storage", pg_url, "--tracking-uri", "", "--gpus-per-worker", "1")
    assert r.exit_code == 2 and "--gpus-per-worker 1 but no node" in r.output, r.output
    with pytest.raises(KeyError):
        trials(pg_url, "ray-guard")  # none of the above created the study
    # a cluster that cannot be reached: said at once, the database password masked
    start = time.monotonic()
    r = launch("--ray", "127.0.0.1:9", "--storage", "postgresql://u:s3cret@127.0.0.1:1/db")
    assert r.exit_code == 2 and "cannot reach a Ray cluster" in r.output, r.output
    assert "s3cret" not in r.output and time.monotonic() - start < 20
    # Ray options without --ray, and --gpus with it
    assert launch("--gpus-per-worker", "0.5").exit_code == 2
    r = launch("--ray", nodes.address, "--gpus", "0")
    assert r.exit_code == 2 and "--gpus-per-worker" in r.output, r.output


def test_without_ray_installed_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    r = CliRunner().invoke(main, ["launch", study_file(tmp_path, "no-ray"), "--ray", "auto"])
    assert r.exit_code == 2 and "pip install 'sweeper[ray]'" in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_sigterm_stops_every_ray_worker_cleanly(nodes: TwoNodes, pg_url: str, pg_tracking: str, tmp_path: Path) -> None:
    path = study_file(
        tmp_path, "ray-stop", trials=4, pruner="none", train={"epochs": 300, "batch_size": 16}, warm_start="none"
    )  # no queued start points: the only queued trials afterwards are the two stopped ones
    log = tmp_path / "launch.log"
    args = [path, "--ray", nodes.address, "--workers", "2", "--storage", pg_url, "--tracking-uri", pg_tracking]
    proc = launch_process(args, log)
    try:

        def both_training() -> bool:
            ts = trials(pg_url, "ray-stop")
            return sum(t.state == TrialState.RUNNING and "node" in t.user_attrs for t in ts) == 2

        wait_for(both_training, 240, proc, log)  # Ray workers import torch: minutes on a loaded machine
        time.sleep(1.0)  # mid-epoch
        proc.send_signal(signal.SIGTERM)
        out = finish(proc, log, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    ts = trials(pg_url, "ray-stop")
    assert "Traceback" not in out, out
    stopped = [t for t in ts if t.state == TrialState.FAIL]
    assert len(stopped) == 2 and states(ts) == {"FAIL": 2, "WAITING": 2}, states(ts)
    assert all("queued again" in (end_reason(t) or "") for t in stopped)
    queued = sorted(str(t.params) for t in ts if t.state == TrialState.WAITING)
    assert queued == sorted(str(t.params) for t in stopped)  # same parameters, to be run again

    import mlflow

    client = mlflow.MlflowClient(pg_tracking)
    exp = client.get_experiment_by_name("ray-stop")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "tags.`sweeper.node` != ''")
    assert len(runs) == 2 and all(
        r.info.status == "FAILED" and r.info.end_time for r in runs
    )  # ended, not left RUNNING


def test_lost_node_is_survived_with_the_budget_exact(nodes: TwoNodes, pg_url: str, tmp_path: Path) -> None:
    """Kill the worker node's raylet mid-trial: Ray re-runs its worker on the head, the trial is retried."""
    budget = 6
    path = study_file(tmp_path, "ray-loss", trials=budget, pruner="none", train={"epochs": 30, "batch_size": 16})
    log = tmp_path / "launch.log"
    args = [path, "--ray", nodes.address, "--workers", "2", "--storage", pg_url, "--tracking-uri", ""]
    proc = launch_process(args, log, SWEEPER_HEARTBEAT="1", SWEEPER_HEARTBEAT_GRACE="3")
    try:

        def on_worker_node() -> FrozenTrial | None:
            for t in trials(pg_url, "ray-loss"):
                if t.state == TrialState.RUNNING and t.user_attrs.get("node") == nodes.worker_id:
                    return t
            return None

        lost = wait_for(on_worker_node, 240, proc, log)
        time.sleep(0.5)  # mid-trial
        nodes.cluster.remove_node(nodes.worker_node, allow_graceful=False)
        killed_at = time.time()
        finish(proc, log, timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    ts = trials(pg_url, "ray-loss")
    counts = states(ts)
    assert counts.get("COMPLETE") == budget and set(counts) == {"COMPLETE", "FAIL"}, counts  # exact, none RUNNING
    failed = [t for t in ts if t.state == TrialState.FAIL]
    assert lost.number in [t.number for t in failed]  # failed by its stopped heartbeat
    # (on a loaded machine a live worker starved past the 3 s grace can lose its trial the same way: every
    # failed trial, the lost one and any such, is retried exactly once with its parameters; one failed before it
    # drew all of them keeps those it had, and its retry draws the rest)
    for f in failed:
        retry = [t for t in ts if t.system_attrs.get("retry_history", [None])[-1] == f.number]  # f's own retry
        assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE, (f.number, retry)
        assert f.params.items() <= retry[0].params.items(), (f.params, retry[0].params)
    lost_worker = lost.user_attrs["worker"]
    rerun = [
        t
        for t in ts
        if t.user_attrs.get("worker") == lost_worker and t.datetime_start and t.datetime_start.timestamp() > killed_at
    ]
    # Ray re-ran the lost worker: it says so; whether the re-run still finds a free slot depends on how fast the
    # surviving worker trains (on a quiet machine it can finish the budget first), so its trials, if any, are
    # checked to be on the head, not required
    assert "the task will be retried" in log.read_text(), log.read_text()[-2000:]
    assert all(t.user_attrs["node"] == nodes.head_id for t in rerun)
