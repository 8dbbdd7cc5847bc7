"""The MLflow client for a tracking URI, whether a tracking server answers, and which failures pass."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from sweeper.study.db_errors import is_transient
from sweeper.study.urls import mask_url

if TYPE_CHECKING:
    from mlflow import MlflowClient


def client_for(uri: str) -> MlflowClient:
    """An ``MlflowClient`` on ``uri``; raises ``ConnectionError`` at once when a server does not answer."""
    from mlflow import MlflowClient  # heavy: only where tracking is used

    if uri.startswith(("http://", "https://")):
        # MLflow's HTTP client retries for minutes by default; a worker should not stall that long
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        if not reachable(uri):
            raise ConnectionError(f"nothing answers at {mask_url(uri)}")
    return MlflowClient(tracking_uri=uri)


def reachable(uri: str, timeout: float = 3.0) -> bool:
    """Whether a tracking server accepts connections (always True for a local store)."""
    from urllib.parse import urlsplit

    if not uri.startswith(("http://", "https://")):
        return True
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "localhost", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def worth_resending(e: BaseException) -> bool:
    """A failure that passes (server down, restarting, overloaded): worth sending again later.

    MLflow reports a refused connection as an ``MlflowException`` with status 500, like a server error; a
    database store's own errors pass as the study database's do (``sweeper.study.db_errors``: a lock, a restart).
    """
    from mlflow.exceptions import MlflowException
    from sqlalchemy import exc as sa_exc

    if isinstance(e, MlflowException):
        status = e.get_http_status_code()
        return status >= 500 or status == 429
    if isinstance(e, sa_exc.SQLAlchemyError):
        return is_transient(e)
    return isinstance(e, OSError)  # requests' errors are OSErrors


def not_mlflow(e: BaseException) -> bool:
    """The server answered, but has no MLflow REST API (a wrong host or port, another web server)."""
    return getattr(e, "error_code", None) == "ENDPOINT_NOT_FOUND"


def describe(e: BaseException) -> str:
    """What a failed MLflow call says about the server, without the URL (it may carry a password)."""
    if not_mlflow(e):
        return "answers, but is not an MLflow tracking server (HTTP 404 from its REST API); check the host and port"
    code = getattr(e, "error_code", None)
    status = getattr(e, "get_http_status_code", lambda: None)()
    if worth_resending(e):  # MLflow wraps a refused connection: name what lies under it
        cause = e.__cause__ or e.__context__
        detail = type(cause).__name__ if cause else f"HTTP {status}" if code else type(e).__name__
        return f"does not answer ({detail})"
    return f"refused the request ({code}, HTTP {status})" if code else f"failed ({type(e).__name__})"


def server_problem(uri: str) -> str | None:
    """Why the tracking server at ``uri`` cannot take sweeper's runs (see ``describe``), or None."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        client_for(uri).search_experiments(max_results=1)
    except Exception as e:
        return describe(e)
    return None
