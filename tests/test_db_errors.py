"""Transient or permanent, per database, on real errors: a lock held too long (SQLite) or a lost
connection (PostgreSQL) is waited out; no such table, a read-only file, a missing permission is one
message at once, naming the database and the fix, exit 2."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from conftest import PrivatePostgres, tiny_spec_dict
from sweeper import api
from sweeper.cli import main
from sweeper.study.db_errors import DatabaseError, is_transient
from sweeper.study.spec import parse_spec
from sweeper.study.storage import make_storage


@pytest.fixture(autouse=True)
def _long_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPER_DB_RETRY_S", "120")  # a permanent error waited out would take this long


def _error(call: Any) -> BaseException:
    try:
        call()
    except Exception as e:
        return e
    raise AssertionError("no error")


def test_sqlite_lock_timeout_is_transient_other_errors_are_not(tmp_path: Any) -> None:
    path = tmp_path / "x.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    with engine.connect() as conn:
        locked = _error(lambda: conn.execute(sa.text("INSERT INTO t VALUES (1)")))
    holder.rollback()
    with engine.connect() as conn:
        missing = _error(lambda: conn.execute(sa.text("SELECT * FROM no_such_table")))
    assert "database is locked" in str(locked) and is_transient(locked)
    assert "no such table" in str(missing) and not is_transient(missing)


def test_postgresql_lost_connection_is_transient_syntax_error_is_not(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        syntax = _error(lambda: conn.execute(sa.text("SELEC 1")))
    with engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:p, 10000)"), {"p": pid})
        lost = _error(lambda: conn.execute(sa.text("SELECT 1")))
    engine.dispose()
    assert not is_transient(syntax)
    assert is_transient(lost), lost


def _study_db(tmp_path: Any) -> str:
    url = f"sqlite:///{tmp_path}/study.db"
    api.create(parse_spec(tiny_spec_dict("perm", trials=2)), storage=url, tracking="")
    return url


def test_sqlite_table_gone_is_one_message_at_once(tmp_path: Any) -> None:
    url = _study_db(tmp_path)
    study = optuna.load_study(study_name="perm", storage=make_storage(url))
    with sqlite3.connect(tmp_path / "study.db") as raw:
        raw.execute("DROP TABLE trial_heartbeats")  # a file emptied or changed under a running worker
        raw.execute("DROP TABLE trials")
    start = time.monotonic()
    with pytest.raises(DatabaseError) as e:
        study.ask()
    assert time.monotonic() - start < 5
    message = str(e.value)
    assert "no such table: trials" in message and str(tmp_path / "study.db") in message
    assert "not a sweeper study database" in message


def test_read_only_sqlite_file_is_one_message_at_once(tmp_path: Any) -> None:
    _study_db(tmp_path)
    study = optuna.load_study(
        study_name="perm", storage=make_storage(f"sqlite:///file:{tmp_path}/study.db?mode=ro&uri=true")
    )
    start = time.monotonic()
    with pytest.raises(DatabaseError) as e:
        study.ask()
    assert time.monotonic() - start < 5
    assert "readonly database" in str(e.value) and "writable" in str(e.value) and "study.db" in str(e.value)


@pytest.fixture
def reader_url(private_pg: PrivatePostgres) -> Iterator[tuple[str, str]]:
    """A study database on the session's own server and a role that may read it, not write it (roles are the
    server's: made on ours, not on the machine's)."""
    private_pg.ensure_up()
    admin = sa.create_engine(private_pg.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    base = private_pg.admin_url.rsplit("/", 1)[0]
    with admin.connect() as c:
        c.execute(sa.text("DROP DATABASE IF EXISTS perm WITH (FORCE)"))
        c.execute(sa.text("CREATE DATABASE perm"))
        c.execute(sa.text("DROP ROLE IF EXISTS reader"))
        c.execute(sa.text("CREATE ROLE reader LOGIN"))
    owner = f"{base}/perm"
    api.create(parse_spec(tiny_spec_dict("perm", trials=2)), storage=owner, tracking="")
    grant = sa.create_engine(owner, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with grant.connect() as c:
        c.execute(sa.text("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader"))
    try:
        yield owner, base.replace("postgres@", "reader@") + "/perm"
    finally:
        with admin.connect() as c:
            c.execute(sa.text("DROP DATABASE IF EXISTS perm WITH (FORCE)"))
            c.execute(sa.text("DROP ROLE IF EXISTS reader"))


def test_postgresql_permission_denied_is_one_message_at_once(reader_url: tuple[str, str]) -> None:
    _, reader = reader_url
    study = optuna.load_study(study_name="perm", storage=make_storage(reader))
    start = time.monotonic()
    with pytest.raises(DatabaseError) as e:
        study.ask()
    assert time.monotonic() - start < 5
    message = str(e.value)
    assert "permission denied" in message and "reader@127.0.0.1" in message and "GRANT" in message, message


def test_a_worker_without_write_permission_stops_at_once_exit_2(reader_url: tuple[str, str]) -> None:
    _, reader = reader_url
    start = time.monotonic()
    result = CliRunner().invoke(main, ["worker", "perm", "--storage", reader, "--no-progress", "--device", "cpu"])
    assert time.monotonic() - start < 60, result.output
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "waiting up to" not in result.output, result.output
    assert result.output.count("permission denied") == 1 and "GRANT" in result.output, result.output
