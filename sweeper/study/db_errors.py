"""Which database errors are worth waiting out, per database, and what to say about the others.

Waiting helps only when the database is briefly away or busy: on PostgreSQL a connection that failed
or was lost (class 08, a server shutting down or starting: 57P01-57P03, no SQLSTATE because no server
answered), a deadlock or serialization failure (40P01, 40001), too many connections (53300); on SQLite
(a local file, nothing to reconnect to) only a lock held too long by another process. Anything else (no
such table, a read-only file, a full or failing disk, a permission or syntax error) will fail the same
way in two minutes: it is one message at once, naming the database and the fix.
"""

from __future__ import annotations

import optuna
from sqlalchemy import exc as sa_exc

from sweeper.errors import StudyError, first_line

# the server answered and said no: waiting will not change that
_REFUSED = ("does not exist", "authentication failed", "no password supplied", "no pg_hba.conf entry")
_PG_TRANSIENT = {"57P01", "57P02", "57P03", "40P01", "40001", "53300"}
_SQLITE_TRANSIENT = ("database is locked", "database table is locked")
# permanent SQLite errors, by the words of its message: the fix to name
_SQLITE_FIXES = (
    ("no such table", "the file is not a sweeper study database (or was emptied): check --storage / SWEEPER_STORAGE"),
    ("readonly database", "make the file and its folder writable by this user"),
    ("disk i/o error", "check the disk and the file system the file is on (full, failing or a network mount)"),
    ("database or disk is full", "free space on the disk the file is on"),
    ("malformed", "the file is corrupt: restore it from a backup"),
    ("unable to open database file", "check that the file's folder exists and is writable"),
)
_PG_FIXES = (
    ("42501", "grant the database user the rights it lacks (GRANT ... ON ... TO ...)"),
    ("42P01", "a table is missing: the database is not a sweeper study database, or was changed by hand"),
    ("42", "the database's schema does not match this Optuna version: run `optuna storage upgrade`"),
    ("53", "the database server is out of a resource (disk, memory): see its log"),
)


class DatabaseError(StudyError, optuna.exceptions.StorageInternalError):
    """The study database refused a call for a reason waiting will not fix (a ``StorageInternalError`` too,
    as Optuna would raise for it)."""


def _dbapi_error(e: BaseException) -> sa_exc.DBAPIError | None:
    return next((x for x in (e, e.__cause__) if isinstance(x, sa_exc.DBAPIError)), None)


def _is_sqlite(err: sa_exc.DBAPIError) -> bool:
    return type(err.orig).__module__.startswith("sqlite3")


def is_transient(e: BaseException) -> bool:
    """A lost or busy connection (worth retrying), as opposed to an error that will come again."""
    if any(isinstance(x, sa_exc.PendingRollbackError) for x in (e, e.__cause__)):
        return True  # a session whose connection died mid-transaction: the next try runs afresh
    err = _dbapi_error(e)
    if err is None:
        return False
    if err.connection_invalidated:
        return True
    text = str(err.orig)
    if _is_sqlite(err):
        return any(s in text for s in _SQLITE_TRANSIENT)
    if any(s in text for s in _REFUSED):
        return False
    state = getattr(err.orig, "sqlstate", None)
    if state:  # the server answered: only its "try again" codes are
        return state.startswith("08") or state in _PG_TRANSIENT
    return isinstance(err, sa_exc.OperationalError | sa_exc.InterfaceError)  # no server answered


def is_permanent(e: BaseException) -> bool:
    """The database itself failed (not the data a call sent, which Optuna reports in its own errors)."""
    err = _dbapi_error(e)
    return err is not None and not is_transient(e) and not isinstance(err, sa_exc.IntegrityError | sa_exc.DataError)


def driver_words(e: BaseException) -> str:
    """The driver's own first line (Optuna wraps a failed commit in a message about invalid data)."""
    err = _dbapi_error(e) or e
    return first_line(getattr(err, "orig", None) or err)[:200]


def permanent(e: BaseException, where: str) -> DatabaseError:
    """One message for a permanent error: what failed, in which database, and the fix."""
    err = _dbapi_error(e)
    text = driver_words(e)
    fix = "check the database server's log"
    if err is not None and _is_sqlite(err):
        fix = next((f for words, f in _SQLITE_FIXES if words in text.lower()), "check the file")
    elif err is not None:
        state = getattr(err.orig, "sqlstate", None) or ""
        fix = next((f for code, f in _PG_FIXES if state.startswith(code)), fix)
    return DatabaseError(f"the study database {where} refused a call ({text}); {fix}")
