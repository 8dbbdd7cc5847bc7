"""The stop request: recorded by the signal handler, raised by the training loop at a safe point."""

from __future__ import annotations

import os
import signal
import time

import pytest

from sweeper.workers import shutdown
from sweeper.workers.shutdown import Shutdown, WorkerStopped


def _signal(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the handler runs in the main thread at its next bytecode


def test_a_signal_only_records_the_request_until_check() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with Shutdown() as stop:
        _signal(signal.SIGTERM)  # no exception here: this could have been inside an import
        assert stop() and stop.requested == "SIGTERM"
        _signal(signal.SIGINT)  # the same Ctrl-C passed on by `sweeper launch`: ignored
        with pytest.raises(WorkerStopped, match="SIGTERM"):
            stop.check()
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_a_later_second_signal_stops_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutdown, "REPEAT_S", 0.0)
    with Shutdown() as stop:
        _signal(signal.SIGINT)
        assert stop.requested == "SIGINT"
        with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
            _signal(signal.SIGINT)


def test_no_request_no_stop() -> None:
    with Shutdown() as stop:
        stop.check()
        assert not stop()
