"""Where studies live: Optuna's RDB storage on SQLAlchemy, retried through database outages."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from sweeper.errors import StudyError, first_line
from sweeper.study.urls import mask_url, normalize_url


def make_storage(
    url: str,
    heartbeat_interval: int | None = None,
    pool_size: int | None = None,
    grace_period: int | None = None,
    wait: bool = False,
) -> optuna.storages.RDBStorage:
    """RDB storage with health-checked connections; heartbeats mark a killed worker's trial failed.

    Every storage call is retried with backoff while the database is briefly unreachable
    (see ``sweeper.study.retry``), so a PostgreSQL restart mid-study does not crash workers.
    ``wait``: a database server that is down (or still starting) is waited for, as long as a call
    would be (``SWEEPER_DB_RETRY_S``), saying so; without it (``sweeper status``) it is an error at once.
    """
    from sweeper.study.retry import RetryingRDBStorage, with_retry

    _check_heartbeat(heartbeat_interval, grace_period)
    url = normalize_url(url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # several processes on one SQLite file wait for its lock instead of failing at once
        engine_kwargs["connect_args"] = {"timeout": 30}
    else:
        # a worker holds at most two connections at once (its trial loop and its heartbeat thread):
        # N workers need about 2N of the server's max_connections (PostgreSQL's default is 100)
        engine_kwargs.update(pool_size=pool_size or 2, max_overflow=3, pool_recycle=300)
        # no server-side prepared statements (psycopg 3 prepares a query after 5 runs): a transaction pooler
        # such as PgBouncer hands each transaction to any server connection, where the statement is unknown.
        # So --storage may name the pooler as it names the database (README, "Hundreds of workers")
        if url.startswith("postgresql+psycopg:"):
            engine_kwargs["connect_args"] = {"prepare_threshold": None}
    kwargs: dict[str, Any] = {}
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.x; we rely on them on purpose
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat_interval is not None:
            kwargs = dict(
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period or heartbeat_interval * 3,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
            )

        def open_storage() -> optuna.storages.RDBStorage:
            return RetryingRDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)

        try:  # the other arguments are checked: a ValueError from here on is about the URL
            # a file does not come up later: only a database server is waited for
            return with_retry(open_storage, mask_url(url)) if wait and not url.startswith("sqlite") else open_storage()
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ValueError) as e:
            raise StudyError(
                f"invalid study database URL {mask_url(url)!r} ({_reason(e, url)}); give an SQLAlchemy URL such as "
                "sqlite:///sweeper.db or postgresql://user:password@host/db in --storage or SWEEPER_STORAGE"
            ) from None
        except ImportError:
            raise StudyError(
                f"no database driver installed for {mask_url(url)!r}: install the one SQLAlchemy names for "
                f"'{make_url(url).drivername}' (sweeper ships sqlite and postgresql via psycopg 3)"
            ) from None
        except sa_exc.DBAPIError as e:
            where = "the file's folder exists" if url.startswith("sqlite") else "the database server is running"
            raise StudyError(
                f"cannot open the study database {mask_url(url)}: {_reason(e, url)}; "
                f"check --storage / SWEEPER_STORAGE and that {where}"
            ) from None


def _check_heartbeat(interval: int | None, grace: int | None) -> None:
    """Heartbeat settings Optuna would reject (or, for a grace without an interval, silently drop)."""
    for name, value in (("heartbeat_interval", interval), ("grace_period", grace)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise StudyError(
                f"the {name} must be a positive whole number of seconds, but got {value!r} "
                "(SWEEPER_HEARTBEAT / SWEEPER_HEARTBEAT_GRACE set them for workers)"
            )
    if grace is not None and interval is None:
        raise StudyError(
            f"a heartbeat grace_period ({grace!r} s) needs a heartbeat_interval: give both, or neither to "
            "run without heartbeats"
        )


def _reason(e: BaseException, url: str) -> str:
    """The driver's own first line, with the URL's password (if any) masked."""
    text = first_line(getattr(e, "orig", None) or e)
    try:
        password = make_url(url).password
    except Exception:  # the URL did not parse: there is no password to find in the message
        password = None
    return text.replace(str(password), "***") if password else text
