"""SIGTERM and Ctrl-C, handled in one place: every part of sweeper that reacts to a stop installs its handler here."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
Handler = Callable[[int, FrameType | None], Any]


@contextmanager
def on_stop_signals(handler: Handler) -> Iterator[None]:
    """``handler(signum, frame)`` for SIGTERM and SIGINT inside the block; the previous handlers after it.

    Python sets signal handlers from the main thread only: elsewhere (a worker run in a thread) this
    installs nothing, and a stop reaches that code some other way (e.g. Ray's cancel).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def interrupt(signum: int, frame: FrameType | None) -> None:
    """A handler that turns SIGTERM into what Ctrl-C raises."""
    raise KeyboardInterrupt
