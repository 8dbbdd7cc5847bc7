"""What a worker shows a person: a progress bar of the shared budget (or, without one, a line per trial), and one
line per fault, no tracebacks.

A trial that fails is recorded with its reason (``end_reason``) in the study database and MLflow;
the terminal gets Optuna's one-line warning without the traceback. A trial stopped by SIGTERM or
Ctrl-C is not a failure at all: the worker says it was queued again, in one line of its own.
"""

from __future__ import annotations

import logging

import optuna
from optuna.trial import FrozenTrial

from sweeper.study.record import n_finished
from sweeper.workers.shutdown import WorkerStopped

log = logging.getLogger("sweeper")


class _NoTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], WorkerStopped):
            return False  # the worker's own "queued again" line says it
        record.exc_info, record.exc_text = None, None
        return True


_filter = _NoTraceback()


def quiet_trial_tracebacks() -> None:
    """Optuna's "Trial N failed ..." warning keeps its one line; its traceback is left out."""
    for handler in logging.getLogger("optuna").handlers:
        if _filter not in handler.filters:
            handler.addFilter(_filter)


class ProgressBar:
    """An Optuna callback: a bar of finished trials (all workers) against the budget, with the best value."""

    def __init__(self, study: optuna.Study, budget: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=budget, initial=min(n_finished(study), budget), desc=study.study_name, unit="trial")
        self._shown: tuple[int, str] = (int(self.bar.n), "")

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        n = min(n_finished(study), int(self.bar.total))
        try:
            best = f"{study.best_value:.4f}"
        except ValueError:  # no completed trial yet
            best = ""
        if (n, best) == self._shown:
            return  # off a terminal every refresh is a new line: print each state once
        self._shown = (n, best)
        self.bar.n = n
        if best:
            self.bar.set_postfix(best=best, refresh=False)
        if n < self.bar.total:  # the full bar is drawn once, by close()
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class TrialLines:
    """An Optuna callback for a worker without a bar (``--no-progress``: a container's log, a batch job's
    output): one line per trial it ends, with the shared budget's count and the best value so far."""

    def __init__(self, study: optuna.Study, budget: int) -> None:
        self.budget = budget

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        value = f" {trial.value:.4f}" if trial.value is not None else ""
        try:
            best = f", best {study.best_value:.4f}"
        except ValueError:  # no completed trial yet
            best = ""
        n = min(n_finished(study), self.budget)
        log.info(
            "trial %d %s%s (%d/%d finished%s)", trial.number, trial.state.name.lower(), value, n, self.budget, best
        )

    def close(self) -> None:
        pass
