"""pytest plugin: Optuna's own storage, study and trial tests with another RDB storage in place of ``RDBStorage``.

Loaded by ``scripts/optuna_contract.sh`` (``-p optuna_contract_plugin``) into the tests of the installed
Optuna's sdist. Only how a storage is built changes: ``optuna.testing.storages.StorageSupplier`` builds
``OPTUNA_CONTRACT_STORAGE`` (``optuna``: Optuna's ``RDBStorage``, the baseline; ``sweeper``: sweeper's
``RetryingRDBStorage``) on ``OPTUNA_CONTRACT_DB`` (``sqlite``: a temporary file, as Optuna does;
``postgresql``: a fresh schema of one database on ``OPTUNA_CONTRACT_PG``) for the storage modes
``sqlite`` and ``cached_sqlite``; Optuna's assertions are untouched. Tests parametrized over the other
storage modes (in memory, journal, gRPC), and tests that build no storage, test no RDB storage and are
deselected. Tests that do not
apply are listed in ``EXCLUDED`` with the reason, checked when the list was made.
"""

from __future__ import annotations

import itertools
import os
import uuid
from typing import Any

import pytest

RDB_MODES = ("sqlite", "cached_sqlite")
KIND = os.environ.get("OPTUNA_CONTRACT_STORAGE", "sweeper")
DB = os.environ.get("OPTUNA_CONTRACT_DB", "sqlite")
PG = os.environ.get("OPTUNA_CONTRACT_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

#: node id (without its parameters) -> why the test does not apply to a storage built this way
EXCLUDED: dict[str, str] = {}
_schemas = itertools.count()
_database: str | None = None


def _storage_class() -> type:
    if KIND == "sweeper":
        from sweeper.study.retry import RetryingRDBStorage

        return RetryingRDBStorage
    import optuna

    return optuna.storages.RDBStorage


def _pg_admin() -> Any:
    import sqlalchemy as sa

    return sa.create_engine(PG, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def pytest_configure(config: pytest.Config) -> None:
    global _database
    import optuna
    import sqlalchemy as sa
    from optuna.testing import storages
    from optuna.testing.tempfile_pool import NamedTemporaryFilePool

    if DB == "postgresql":
        _database = f"optuna_contract_{uuid.uuid4().hex[:10]}"
        with _pg_admin().connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{_database}"'))
    original_enter, original_exit = storages.StorageSupplier.__enter__, storages.StorageSupplier.__exit__

    def enter(self: Any) -> Any:
        if self.storage_specifier not in RDB_MODES:
            return original_enter(self)
        if DB == "sqlite":
            self.tempfile = NamedTemporaryFilePool().tempfile()
            url = f"sqlite:///{self.tempfile.name}"
            engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": storages.SQLITE3_TIMEOUT}}
        else:
            self.contract_schema = f"s{next(_schemas)}"
            base = sa.engine.make_url(PG).set(database=_database)
            with sa.create_engine(base, poolclass=sa.pool.NullPool).begin() as c:
                c.execute(sa.text(f"CREATE SCHEMA {self.contract_schema}"))
            url = base.update_query_dict({"options": f"-csearch_path={self.contract_schema}"})
            url = url.render_as_string(hide_password=False)
            engine_kwargs = {}
        rdb = _storage_class()(url, engine_kwargs=engine_kwargs, **self.extra_args)
        self.storage = optuna.storages._CachedStorage(rdb) if "cached" in self.storage_specifier else rdb
        return self.storage

    def exit_(self: Any, *exc: Any) -> None:
        original_exit(self, *exc)
        schema = getattr(self, "contract_schema", None)
        if schema is not None:
            base = sa.engine.make_url(PG).set(database=_database)
            with sa.create_engine(base, poolclass=sa.pool.NullPool).begin() as c:
                c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))

    storages.StorageSupplier.__enter__ = enter  # type: ignore[method-assign]
    storages.StorageSupplier.__exit__ = exit_  # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    if _database is not None:
        import sqlalchemy as sa

        with _pg_admin().connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{_database}" WITH (FORCE)'))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        (keep if _uses_rdb(item) else drop).append(item)
    for item in keep:
        reason = EXCLUDED.get(item.nodeid.split("[")[0])
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"does not apply: {reason}"))
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


def _uses_rdb(item: pytest.Item) -> bool:
    """A test of an RDB storage: parametrized with an RDB storage mode, or building one itself."""
    import inspect

    callspec = getattr(item, "callspec", None)
    mode = callspec.params.get("storage_mode") if callspec is not None else None
    if mode is not None:
        return mode in RDB_MODES
    try:
        return 'StorageSupplier("sqlite")' in inspect.getsource(item.obj)  # type: ignore[attr-defined]
    except (OSError, TypeError):
        return False


def pytest_report_header(config: pytest.Config) -> str:
    return f"optuna contract: {KIND} storage on {DB}"
