"""Where a study and its tracking live, as URLs: defaults, the driver sweeper installs, and the form safe to print."""

from __future__ import annotations

import os

from sqlalchemy.engine import make_url

from sweeper.errors import SpecError

DEFAULT_STORAGE = "sqlite:///sweeper.db"
DEFAULT_TRACKING = "sqlite:///mlflow.db"


def storage_url(url: str | None = None) -> str:
    return url or os.environ.get("SWEEPER_STORAGE") or DEFAULT_STORAGE


# MLflow 3 refuses plain-folder (file:) stores unless MLFLOW_ALLOW_FILE_STORE is set: not offered here
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


def tracking_uri(uri: str | None = None) -> str:
    """The MLflow tracking URI; an empty string turns tracking off."""
    if uri is None:
        uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING)
    scheme = uri.split(":", 1)[0].split("+", 1)[0]  # "databricks" alone is a valid URI too
    if uri and scheme not in TRACKING_SCHEMES:
        raise SpecError(
            f"unsupported MLflow tracking URI {mask_url(uri)!r} in --tracking-uri / MLFLOW_TRACKING_URI: use "
            f"sqlite:///mlflow.db, http://host:5000 (a tracking server) or another {'/'.join(TRACKING_SCHEMES)} URI, "
            "or '' for no tracking"
        )
    return uri


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
