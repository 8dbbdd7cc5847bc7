"""Connecting to a Ray cluster for ``--ray``: fail at once, with one message, when it cannot be used.

Ray (2.52 and later) has token authentication. A head node runs with it when ``RAY_AUTH_MODE=token`` is
set, or, with ``RAY_AUTH_MODE`` unset, when a token already exists where Ray looks: ``RAY_AUTH_TOKEN``,
the file named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` (which ``ray get-auth-token
--generate`` and any ``ray.init()`` that starts a local Ray create). Every other node and every driver
must then have ``RAY_AUTH_MODE=token`` and the same token; only ``ray.init(address="auto")`` turns
token mode on by itself when it finds a token. Without it Ray retries for 20 s, logging one
``InvalidAuthToken`` warning a second, and reports only that it cannot connect. So before
``ray.init`` the cluster's GCS is asked for its id once, with Ray's logging silenced, and a refusal
becomes one message naming the fix.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from sweeper.errors import SpecError, StudyError, causes, first_line

log = logging.getLogger("sweeper")

LOCAL = ("", "local")  # --ray with no address: start a Ray for this machine, stopped at the end
TOKEN_HELP = "`ray get-auth-token` on the head node prints the cluster's token"


def init(ray: ModuleType, address: str) -> None:
    """``ray.init``: a new local Ray for ``''``/``local``, else the cluster at ``address``."""
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    try:
        if address in LOCAL:
            log.info("starting a local Ray for this machine")
            ray.init(address="local", include_dashboard=False, **quiet)
            return
        if address != "auto":
            probe(address)
        check_token(address)
        ray.init(address=address, **quiet)
    except ConnectionError as e:
        if _refused_token(e):
            raise StudyError(token_refused(address)) from None
        raise StudyError(
            f"cannot reach a Ray cluster at --ray {address!r} ({first_line(e)}); start one with 'ray start --head' "
            "or give its address: auto, host:6379 or ray://host:10001"
        ) from None
    except ValueError as e:  # a malformed address, or ray:// without Ray's client
        raise SpecError(f"--ray {address!r}: {first_line(e)}") from None
    except Exception as e:  # ray.exceptions.AuthenticationError: token mode on, but no usable token here
        if type(e).__name__ != "AuthenticationError":
            raise
        raise StudyError(token_refused(address)) from None


def probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a host:port that does not answer (``ray.init`` would retry for about a minute)."""
    hostport = address.removeprefix("ray://").rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: ray.init says what is wrong with it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise StudyError(
            f"cannot reach a Ray cluster at --ray {address!r} ({e.strerror or e}); check that 'ray start --head' "
            "runs there and the port is open, or use --ray auto on a node of the cluster"
        ) from None


def check_token(address: str, timeout_ms: int = 5000) -> None:
    """Raise one ``StudyError`` if the cluster's GCS at ``address`` refuses this process's token (or its lack).

    Only a GCS address (host:port, or ``auto`` resolved as ``ray.init`` does) is asked; a Ray Client
    address (``ray://``) or a Ray without token authentication is left to ``ray.init``. Anything but a
    refusal (no GCS there, a timeout) is left to ``ray.init`` too, which says it in its own words.
    """
    if address.startswith("ray://"):
        return
    try:
        from ray._private import services
        from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, InnerGcsClient, get_authentication_mode
    except ImportError:  # a Ray before token authentication
        return
    shown = address
    with quiet_ray():
        try:
            if address == "auto":
                from ray._private.authentication.authentication_token_setup import (
                    maybe_enable_token_auth_if_token_available,
                )

                maybe_enable_token_auth_if_token_available(warn_if_disabled=False)  # what ray.init("auto") does
                address = services.canonicalize_bootstrap_address(address) or ""
        except Exception:  # no Ray on this node: ray.init says so
            return
        if not address:
            return
        if get_authentication_mode() == AuthenticationMode.TOKEN:
            why = "no token was found (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
            try:
                found = AuthenticationTokenLoader.instance().has_token()
            except Exception:  # none found, or RAY_AUTH_TOKEN_PATH names a missing or empty file
                found, path = False, os.environ.get("RAY_AUTH_TOKEN_PATH")
                why = f"RAY_AUTH_TOKEN_PATH names a missing or empty file ({path})" if path else why
            if not found:  # without one Ray aborts this process at its first call
                raise StudyError(
                    f"Ray token authentication is on here (RAY_AUTH_MODE=token) but {why}; {TOKEN_HELP}: "
                    "export RAY_AUTH_TOKEN=<that token> and launch again"
                )
        try:
            InnerGcsClient.standalone(address, None, timeout_ms)
        except Exception as e:
            if _refused_token(e):
                raise StudyError(token_refused(shown)) from None
            log.debug("Ray GCS at %s did not answer the token check: %s", address, first_line(e))


def token_refused(address: str) -> str:
    """The message for a cluster that refused this process: what Ray needs here, from where."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return (
            f"the Ray cluster at --ray {address!r} requires token authentication and this process sends no token "
            f"(RAY_AUTH_MODE is not 'token'); {TOKEN_HELP}: export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<that token> "
            "here and launch again"
        )
    source = (
        "RAY_AUTH_TOKEN"
        if os.environ.get("RAY_AUTH_TOKEN")
        else "the file in RAY_AUTH_TOKEN_PATH"
        if os.environ.get("RAY_AUTH_TOKEN_PATH")
        else "~/.ray/auth_token"
    )
    return (
        f"the Ray cluster at --ray {address!r} refused this process's authentication token (from {source}); "
        f"{TOKEN_HELP}: export RAY_AUTH_TOKEN=<that token> and launch again"
    )


@contextmanager
def quiet_ray() -> Iterator[None]:
    """Silence Ray while it is asked: its Python loggers, and its C++ log lines on file descriptor 2."""
    ray_log = logging.getLogger("ray")
    level = ray_log.level
    ray_log.setLevel(logging.CRITICAL)
    sys.stderr.flush()
    try:
        saved: int | None = os.dup(2)
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
    except OSError:  # no stderr to silence
        saved = None
    try:
        yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        ray_log.setLevel(level)


def _refused_token(e: BaseException) -> bool:
    """Whether Ray's error (or what caused it) is a refused or missing authentication token."""
    return any(type(c).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(c) for c in causes(e))


__all__ = ["LOCAL", "check_token", "init", "probe", "quiet_ray", "token_refused"]
