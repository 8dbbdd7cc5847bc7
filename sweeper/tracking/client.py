"""The MLflow client for a tracking URI, and whether a tracking server answers at all."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from sweeper.study.storage import mask_url

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
