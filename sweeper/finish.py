"""The end of a study, exactly once, wherever its last trial ran.

Once the budget is met a study has its end steps left: the selected network scored once on test and
logged as ``best_model``, the refit when the study file asks for it (both ``sweeper.best``), and the
study run's final summary and plots in MLflow. Whoever gets there first runs them: the worker that
finished the last trial (``sweeper worker``: Docker Compose, a SLURM array, workers started by hand),
``sweeper launch`` after its workers, or ``sweeper finish``. Only one does: the end steps are claimed
under the study's lock (``sweeper.study.lock``), and the claim is a lease that a thread renews on the
database's clock. A finisher that dies mid-way (SIGKILL, node lost) stops renewing it; once it is older
than the heartbeat grace, the next worker, ``sweeper launch`` or ``sweeper finish`` takes it over. Each
step checks what already landed (a stored result, a logged model), so a taken-over end repeats nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sweeper.errors import DivergedError, TrackingError
from sweeper.study.lock import db_now, study_lock
from sweeper.study.record import StudyRecord, heartbeat_settings

if TYPE_CHECKING:
    from sweeper.training.data import Dataset

log = logging.getLogger("sweeper")


def end_study(
    record: StudyRecord,
    *,
    tracking: str | None,
    wait: bool = True,
    who: str = "",
    data: Dataset | None = None,
    device: str | None = None,
) -> dict[str, Any] | None:
    """Run the study's end steps unless they are done or being run elsewhere; return their state.

    ``wait``: while another process runs them, wait for it to end them (``sweeper launch``, ``sweeper
    finish``); without it, leave them to that process once it is seen alive (a worker: its claim is renewed
    within a heartbeat interval). A claim not renewed for the heartbeat grace is taken over either way.
    ``None`` while the budget is not met.
    ``data``/``device``: the study's prepared data, or the device to prepare it on.
    """
    claim = _Claim(record, who)
    state = claim.take(wait)
    if state is not None:  # not ours: done, or run by a live other
        return state
    with claim.renewed():
        try:
            notes = _steps(record, tracking, data, device)
        except TrackingError as e:  # the results are in the study database; MLflow lacks some of them
            log.warning("the end steps of study %r failed: %s; run 'sweeper finish %s' once it answers",
                        record.name, e, record.name)  # fmt: skip
            return claim.end("failed", error=str(e))
        except BaseException:  # Ctrl-C, a bug: whoever comes next runs them
            claim.end("pending")
            raise
    return claim.end("done", **notes)


def _steps(record: StudyRecord, tracking: str | None, data: Dataset | None, device: str | None) -> dict[str, Any]:
    """Test score and best model, refit, final summary and plots; each skips what has already landed."""
    from sweeper.best import refit_best, score_best_on_test
    from sweeper.tracking.study_run import log_study_dashboard
    from sweeper.training.objective import prepare_data

    spec, notes = record.spec, {}
    if data is None and (record.result("test") is None or (spec.refit and record.result("refit") is None)):
        data = prepare_data(spec, device)  # loaded once for both
    score_best_on_test(record, tracking=tracking, data=data)
    if spec.refit:
        try:
            refit_best(record, tracking=tracking, data=data)
        except DivergedError as e:  # the study and its selected network stand: say so, do not fail
            log.warning("%s", e)
            notes["refit"] = str(e)
    if tracking and record.parent_run_id:
        log.info("logging the study's summary and plots to MLflow")
        log_study_dashboard(tracking, record, strict=True)
    return notes


class _Claim:
    """This process's claim on a study's end steps: a lease in the study's stored end state."""

    def __init__(self, record: StudyRecord, who: str) -> None:
        self.record, self.study = record, record.study
        self.owner = uuid.uuid4().hex
        self.who = f"{who + ' on ' if who else ''}{socket.gethostname()} (pid {os.getpid()})"
        interval, self.grace = heartbeat_settings()
        self.interval = max(1, interval)  # seconds between renewals (and between looks at another's claim)

    def take(self, wait: bool) -> dict[str, Any] | None:
        """``None`` once the end steps are ours; else their state: done, or run by another process that is alive.

        A claim that is not renewed for the grace period is taken over. Without ``wait`` a claim held by
        another process is watched only until it is renewed once (its owner is alive: leave it to it).
        """
        told, seen = False, None
        while True:
            with study_lock(self.study):
                state = self.record.end_state()
                if state is None or state["state"] == "done":
                    return state
                if state["state"] != "running" or state.get("age", 0.0) > self.grace:
                    return self._claim(state)
            if not wait and seen is not None and state.get("beat") != seen:
                return state  # its owner renewed it: alive, and it will end them
            seen = state.get("beat") if seen is None else seen
            if not told:
                log.info("the end steps of study %r are being run by %s%s", self.record.name, state.get("by"),
                         "; waiting for them" if wait else "")  # fmt: skip
                told = True
            time.sleep(min(2.0, self.interval / 2))

    def _claim(self, state: dict[str, Any]) -> None:
        """Take the end steps (under the study's lock)."""
        if state["state"] == "running":
            log.warning("the end steps of study %r were left by %s (no sign of it for %.0f s): carrying them on",
                        self.record.name, state.get("by"), state["age"])  # fmt: skip
        now = db_now(self.study)
        self.record.set_end_state({"state": "running", "owner": self.owner, "by": self.who, "since": now, "beat": now})
        log.info("running the end steps of study %r (test score, best model%s)", self.record.name,
                 ", refit" if self.record.spec.refit else "")  # fmt: skip
        return None

    @contextmanager
    def renewed(self) -> Iterator[None]:
        """Renew the lease every heartbeat interval while the end steps run."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.interval):
                try:
                    self._update()
                except Exception as e:  # a database outage: the next interval tries again
                    log.debug("could not renew the end-steps lease: %s", type(e).__name__)

        thread = threading.Thread(target=renew, name="sweeper-end-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def end(self, state: str, **extra: Any) -> dict[str, Any] | None:
        """Store how the end steps ended (unless another process took them over meanwhile)."""
        return self._update(state=state, **extra)

    def _update(self, **changes: Any) -> dict[str, Any] | None:
        with study_lock(self.study):
            state = self.record.end_state()
            if state is None or state.get("owner") != self.owner:
                by = (state or {}).get("by")
                log.warning("the end steps of study %r were taken over by %s", self.record.name, by)
                return state
            now = db_now(self.study)
            state.pop("age", None)
            state.update(changes, beat=now)
            if "state" in changes and changes["state"] != "running":
                state.pop("owner", None)
                state["at"] = now
            self.record.set_end_state(state)
            return state
