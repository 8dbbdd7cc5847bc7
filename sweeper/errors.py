"""Errors the library raises; only ``cli.py`` turns them into click exceptions."""


class SweeperError(Exception):
    """Base of every error sweeper raises on purpose."""


class SpecError(SweeperError):
    """The study file (or a CLI option) is wrong: the message names the value and the fix."""


class StudyError(SweeperError):
    """The study in the storage cannot be used as asked (missing, changed spec, ...)."""


class DivergedError(SweeperError):
    """Training produced a non-finite loss."""


class TrackingError(SweeperError):
    """The MLflow tracking store could not take what had to be logged (the study database has the result)."""
