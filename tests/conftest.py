"""Shared fixtures: tiny seeded data, real SQLite and PostgreSQL databases, a real MLflow store."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sweeper.study.spec import StudySpec, parse_spec

PG_ADMIN = os.environ.get("SWEEPER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def tiny_spec_dict(name: str = "tiny", **overrides: Any) -> dict[str, Any]:
    """A study small enough for a test: scikit-learn digits, one small hidden layer, 2 epochs."""
    d: dict[str, Any] = {
        "name": name,
        "trials": 3,
        "seed": 0,
        "sampler": {"type": "tpe", "n_startup_trials": 2},
        "pruner": {"type": "median", "warmup_epochs": 1, "n_startup_trials": 2},
        "data": {"dataset": "digits"},
        "network": {"hidden": [32]},
        "train": {"epochs": 2, "batch_size": 64, "base_lr": 0.01, "device": "cpu"},
        # the sampler alone, as these tests were written for; tests/test_defaults.py and test_budget.py's
        # scaled workers run the default literature start points
        "warm_start": "none",
        # no refit after the study (one more training and MLflow model each); tests/test_refit.py runs it
        "refit": False,
    }
    for k, v in overrides.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) and isinstance(d.get(k), dict) else v
    return d


@pytest.fixture
def tiny_spec() -> StudySpec:
    return parse_spec(tiny_spec_dict())


@pytest.fixture(autouse=True)
def _workdir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test in its own folder, so default stores (sweeper.db, mlflow.db) never collide."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SWEEPER_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def tracking_uri(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def _pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import sqlalchemy as sa

    name = f"sweeper_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _pg_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """One behaviour suite over every storage backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/study.db"
    else:
        yield from _pg_database()


class PrivatePostgres:
    """A PostgreSQL server of the test session's own (``initdb`` in a temporary folder, a free port on
    127.0.0.1, trust auth): outage tests stop and start this one, never the machine's server, whose
    other clients must not be disconnected."""

    def __init__(self, bindir: str, max_connections: int = 200) -> None:
        self.bindir, self.max_connections = bindir, max_connections
        self.dir = tempfile.mkdtemp(prefix="sweeper-pg-")
        self.data = os.path.join(self.dir, "data")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root: run them as the postgres user
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        self.start()

    def _run(self, tool: str, *args: str, check: bool = True) -> int:
        cmd = [os.path.join(self.bindir, tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, timeout=120).returncode

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -h 127.0.0.1 -c fsync=off -c max_connections={self.max_connections}"
        self._run("pg_ctl", "-D", self.data, "-o", opts, "-l", os.path.join(self.dir, "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def is_up(self) -> bool:
        return self._run("pg_ctl", "-D", self.data, "status", check=False) == 0

    def ensure_up(self) -> None:
        if not self.is_up():
            self.start()

    @contextlib.contextmanager
    def database(self, prefix: str) -> Iterator[str]:
        """A fresh database on this server, dropped afterwards (the server started again first if a test
        stopped it); its name. The admin connection is not pooled, so it survives a restart."""
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.ensure_up()
        admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield name
        finally:
            self.ensure_up()
            with admin.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def url(self, database: str) -> str:
        return self.admin_url.rsplit("/", 1)[0] + f"/{database}"

    def remove(self) -> None:
        try:
            if self.is_up():
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _initdb_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return os.path.dirname(found[-1])
    on_path = shutil.which("initdb")
    return os.path.dirname(on_path) if on_path else None


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivatePostgres]:
    """This session's own PostgreSQL server, for tests that stop it (see ``PrivatePostgres``)."""
    bindir = _initdb_dir()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL initdb found (Debian: apt-get install postgresql): outage tests need a server "
            "of their own to stop"
        )
    server = PrivatePostgres(bindir)
    try:
        yield server
    finally:
        server.remove()


def pgbouncer_binary() -> str | None:
    """Debian's PgBouncer (apt-get install pgbouncer), which installs it outside a user's PATH."""
    return shutil.which("pgbouncer") or next(iter(glob.glob("/usr/sbin/pgbouncer")), None)


class PrivatePgBouncer:
    """A PgBouncer of the test's own in transaction-pooling mode (as the README tells users to run it) in front
    of a ``PrivatePostgres``, on a free port of 127.0.0.1, trust auth, at most ``pool_size`` server connections
    however many clients connect. ``query_wait_timeout``: how long a client waits for a server connection
    before PgBouncer fails its query (its default is 120 s)."""

    def __init__(self, server: PrivatePostgres, pool_size: int = 20, query_wait_timeout: int = 120) -> None:
        binary = pgbouncer_binary()
        assert binary is not None, "pgbouncer_binary() first"
        self.dir = tempfile.mkdtemp(prefix="sweeper-pgbouncer-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.ini = os.path.join(self.dir, "pgbouncer.ini")
        with open(os.path.join(self.dir, "users.txt"), "w") as f:
            f.write('"postgres" ""\n')  # trust auth still wants the user listed
        with open(self.ini, "w") as f:
            f.write(
                f"[databases]\n* = host=127.0.0.1 port={server.port}\n"
                f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
                f"auth_type = trust\nauth_file = {self.dir}/users.txt\nadmin_users = postgres\n"
                f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_db_connections = {pool_size}\n"
                f"max_client_conn = 4000\nquery_wait_timeout = {query_wait_timeout}\n"
                f"logfile = {self.dir}/log\npidfile = {self.dir}/pid\n"
            )
        cmd = [binary, "-d", self.ini]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            shutil.chown(self.dir, "postgres")
            for name in os.listdir(self.dir):
                shutil.chown(os.path.join(self.dir, name), "postgres")
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.1)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def pid(self) -> int:
        with open(os.path.join(self.dir, "pid")) as f:
            return int(f.read().split()[0])

    def remove(self) -> None:
        try:
            os.kill(self.pid(), signal.SIGINT)  # SIGINT: PgBouncer's immediate shutdown
        except (OSError, ValueError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def private_pgbouncer(private_pg: PrivatePostgres) -> Iterator[PrivatePgBouncer]:
    """This session's own PgBouncer (transaction pooling, 4 server connections) before its own PostgreSQL."""
    if pgbouncer_binary() is None:
        pytest.skip("no pgbouncer found (Debian: apt-get install pgbouncer): the pooled-path tests need one")
    bouncer = PrivatePgBouncer(private_pg, pool_size=4, query_wait_timeout=20)
    try:
        yield bouncer
    finally:
        bouncer.remove()
