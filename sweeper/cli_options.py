"""The ``sweeper`` command's plumbing: its shared options, user errors as exit 2, and its log lines.

Options are parsed here, and checked once, by the API (``sweeper.settings.RunSettings``): a bad value is a
``SpecError`` naming it, exit 2 like click's own usage errors."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import click

from sweeper.errors import SweeperError, causes


class UserError(click.ClickException):
    """A user's mistake: message, exit code 2, no traceback."""

    exit_code = 2


def errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SweeperError as e:
            raise UserError(str(e)) from None
        except Exception as e:  # e.g. the study database gave out inside Optuna, which raised its own error
            cause = _sweeper_cause(e)
            if cause is None:
                raise
            raise UserError(str(cause)) from None

    return wrapper


def _sweeper_cause(e: BaseException) -> SweeperError | None:
    return next((c for c in causes(e) if isinstance(c, SweeperError)), None)


storage_opt = click.option(
    "--storage", envvar="SWEEPER_STORAGE", help="Study database URL [default: sqlite:///sweeper.db]."
)
tracking_opt = click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    help="MLflow tracking URI [default: sqlite:///mlflow.db]; '' turns tracking off.",
)
threads_opt = click.option(
    "--threads",
    type=int,
    help="torch (OpenMP/MKL) threads per worker [default: launch --workers N gives each worker cores/N; "
    "otherwise OMP_NUM_THREADS or every core].",
)
checkpoint_dir_opt = click.option(
    "--checkpoint-dir",
    envvar="SWEEPER_CHECKPOINT_DIR",
    type=click.Path(file_okay=False),
    help="A folder every worker mounts, for the checkpoints a retried trial resumes from [default: the study's "
    "MLflow run's artifacts; none with tracking off].",
)
population_opt = click.option(
    "--population",
    type=int,
    help="Train this many trials at once, stacked on one device (built-in mlp) [default: train.population, 1].",
)


def study_file_opts(fn: Callable[..., Any]) -> Callable[..., Any]:
    """STUDY_FILE and the options of a command that creates or resumes the study in it."""
    for opt in reversed(
        [
            click.argument("study_file", type=click.Path(dir_okay=False)),
            click.option("--trials", type=int, help="Budget of finished trials (overrides file)."),
            storage_opt,
            tracking_opt,
            click.option("--allow-changed-spec", is_flag=True, help="Resume a study even if its study file changed."),
        ]
    ):
        fn = opt(fn)
    return fn


class _Echo(logging.Handler):
    """sweeper's messages as plain lines on stderr (looked up at each message, so CliRunner captures them)."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        click.echo(f"warning: {text}" if record.levelno >= logging.WARNING else text, err=True)


def configure_logging(verbose: bool) -> None:
    """sweeper says what it is doing on stderr; MLflow's own INFO lines only with --verbose."""
    logger = logging.getLogger("sweeper")
    root = logging.getLogger()
    if not root.handlers:
        # importing mlflow.pytorch calls logging.basicConfig(): a root handler that would print every sweeper
        # line a second time ("INFO:sweeper:..."); a root that has a handler makes basicConfig a no-op
        root.addHandler(logging.NullHandler())
    if not any(isinstance(h, _Echo) for h in logger.handlers):
        logger.addHandler(_Echo())
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:  # read by MLflow (here and in every worker process started from here)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a "View run" line per trial
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # loading the selected weights
        # a machine or image without git (the Docker image): logging a model would print GitPython's 20-line
        # notice and three MLflow warnings that the code's git commit cannot be tagged
        os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
        logging.getLogger("mlflow.utils.git_utils").setLevel(logging.ERROR)
