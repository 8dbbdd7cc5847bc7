"""Errors the library raises (only ``cli.py`` turns them into click exceptions), and how to tell of any error."""

from __future__ import annotations

from collections.abc import Iterator


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


def causes(e: BaseException | None) -> Iterator[BaseException]:
    """``e`` and what led to it (``raise ... from``, or raised while handling), each once."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def first_line(e: BaseException) -> str:
    """An error's first line (its type's name when it says nothing), for one-line messages."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
