"""SIGTERM and Ctrl-C: stop the worker within seconds and leave its trial to be retried.

The signal handler only records the request: raising from a handler would land at an arbitrary
bytecode (inside an import, a database commit, MLflow's client) and leave that half done. The
training loop calls ``check()`` after every step, which raises ``WorkerStopped`` (a
``KeyboardInterrupt``, so Optuna marks the trial FAIL and re-raises it) at that safe point, i.e.
within one training step; between trials the worker loop sees ``stop()`` and ends. The worker then
queues the stopped trial again, ends its MLflow run and exits 0. A second signal while stopping
raises ``KeyboardInterrupt`` at once, for a user who does not want to wait; one within
``REPEAT_S`` of the first is the same Ctrl-C reaching the worker twice (from the terminal and
from ``sweeper launch``, which passes signals on) and is ignored.
"""

from __future__ import annotations

import signal
import time
import warnings
from contextlib import ExitStack
from types import FrameType, TracebackType

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.signals import on_stop_signals
from sweeper.study import optuna_internals as internals
from sweeper.study.record import retry_copy

REPEAT_S = 2.0


class WorkerStopped(KeyboardInterrupt):
    """The worker was asked to stop (SIGTERM or SIGINT) while a trial was training."""


class Shutdown:
    """Context manager installing the SIGTERM/SIGINT handler (``sweeper.signals``; main thread only)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._at = 0.0
        self._handlers = ExitStack()

    def __enter__(self) -> Shutdown:
        self._handlers.enter_context(on_stop_signals(self._handle))
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._handlers.close()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is None:
            self.requested, self._at = signal.Signals(signum).name, time.monotonic()
        elif time.monotonic() - self._at > REPEAT_S:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name} while stopping")

    def check(self) -> None:
        """Raise ``WorkerStopped`` if a stop was asked for: called by the training loop at safe points."""
        if self.requested is not None:
            raise WorkerStopped(f"worker stopped by {self.requested}")

    def __call__(self) -> bool:
        """True once a stop was asked for (usable as a ``stop`` predicate)."""
        return self.requested is not None


def requeue(study: optuna.Study, trial_id: int) -> FrozenTrial:
    """Queue a trial stopped by a signal again; return it as it ended (FAIL).

    The retry is the one Optuna gives a heartbeat-stale trial: same parameters, ``failed_trial`` and
    ``retry_history`` system attributes, at most 3 retries.
    """
    frozen = internals.frozen(study, trial_id)
    if frozen.state == TrialState.FAIL:
        retry = retry_copy(frozen)
        with warnings.catch_warnings():  # experimental since 2.8, the one retry API Optuna 5 keeps
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, retry)
    return frozen
