"""Where studies live: Optuna's RDB storage on SQLAlchemy, and URLs safe to print."""

from __future__ import annotations

import os
import warnings
from typing import Any

import optuna
from sqlalchemy.engine import make_url

DEFAULT_STORAGE = "sqlite:///sweeper.db"
DEFAULT_TRACKING = "sqlite:///mlflow.db"


def storage_url(url: str | None = None) -> str:
    return url or os.environ.get("SWEEPER_STORAGE") or DEFAULT_STORAGE


def tracking_uri(uri: str | None = None) -> str:
    """The MLflow tracking URI; an empty string turns tracking off."""
    if uri is not None:
        return uri
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs, MLflow and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (e.g. http://user:pw@host)
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return urlunsplit(parts._replace(netloc=netloc))
        return url


def normalize_url(url: str) -> str:
    """Plain ``postgresql://`` (and ``postgres://``) URLs go through psycopg 3, the driver sweeper installs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_storage(
    url: str,
    heartbeat_interval: int | None = None,
    pool_size: int | None = None,
    grace_period: int | None = None,
) -> optuna.storages.RDBStorage:
    """RDB storage with health-checked connections; heartbeats mark a killed worker's trial failed.

    Every storage call is retried with backoff while the database is briefly unreachable
    (see ``sweeper.retry``), so a PostgreSQL restart mid-study does not crash workers.
    """
    from sweeper.retry import RetryingRDBStorage

    url = normalize_url(url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # several processes on one SQLite file wait for its lock instead of failing at once
        engine_kwargs["connect_args"] = {"timeout": 30}
    else:
        # a worker holds at most two connections at once (its trial loop and its heartbeat thread):
        # N workers need about 2N of the server's max_connections (PostgreSQL's default is 100)
        engine_kwargs.update(pool_size=pool_size or 2, max_overflow=3, pool_recycle=300)
    kwargs: dict[str, Any] = {}
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.x; we rely on them on purpose
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat_interval:
            kwargs = dict(
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period or heartbeat_interval * 3,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
        return RetryingRDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
