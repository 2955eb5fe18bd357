"""The error hierarchy shared by every layer.

Input: none. Output: exception classes. `UserError` and its subclasses carry a one-line message
meant for a person (the CLI prints it and exits non-zero, no traceback); `TemporaryFailure` means
"defer and retry"; `PermanentFailure` means "hold for an administrator"; `temporary_cause`
tells a passing shortage of the machine (descriptors, disk, memory, a busy database) from a
fault of the message. Stdlib only.
"""

import errno
import sqlite3
import sys


class MailgateError(Exception):
    """Base of every error mailgate raises on purpose."""


class UserError(MailgateError):
    """A mistake by the person running mailgate: shown as one line, exit status 1."""


class ConfigError(UserError):
    """The configuration is invalid; the message names the file and the key."""


class SchemaMismatch(UserError):
    """The database's schema is not the one this mailgate needs (older: `mailgate db upgrade`;
    newer, or not a mailgate database: nothing this mailgate may change)."""


class NotFound(UserError):
    """A ticket, message or spool entry named by the user does not exist."""


class Refused(UserError):
    """A well-formed request the state of things refuses (a ticket merged already, a split
    that would leave a ticket empty): HTTP 409 on the admin endpoint."""


class TooLarge(UserError):
    """What was sent is over a configured size limit (an upload): HTTP 413."""


class TemporaryFailure(MailgateError):
    """Processing failed for a reason that may go away: retry later."""


class PermanentFailure(MailgateError):
    """Processing can never succeed as things are: hold the message with this reason."""


class DatabaseGone(TemporaryFailure):
    """The database file we opened was removed or replaced while open: whatever was written
    went to a file nobody will read again. Nothing may be marked done; new mail is refused."""


# errno values that mean "the machine is short of something for now", not "this mail is bad".
_TEMPORARY_ERRNOS = frozenset(
    getattr(errno, name) for name in
    ("EMFILE", "ENFILE", "ENOSPC", "EDQUOT", "ENOMEM", "EAGAIN", "EINTR", "ENOBUFS")
    if hasattr(errno, name)
)
_TEMPORARY_SQLITE = ("locked", "busy", "disk is full", "unable to open database file",
                     "disk i/o error", "out of memory")


def temporary_cause(exc: BaseException) -> str | None:
    """A short reason when `exc` is a resource problem of this machine that goes away by itself
    (no file descriptors, disk or quota full, memory, the database busy): such failures are
    retried with backoff and never count toward holding a message. None otherwise."""
    if isinstance(exc, TemporaryFailure):
        return str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, OSError) and exc.errno in _TEMPORARY_ERRNOS:
        return f"{errno.errorcode.get(exc.errno or 0, 'OSError')}: {exc.strerror or exc}"
    if _postgres_unavailable(exc):
        return f"database: {str(exc).strip() or type(exc).__name__}"
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        if any(marker in text for marker in _TEMPORARY_SQLITE):
            return f"database: {exc}"
    return None


def _postgres_unavailable(exc: BaseException) -> bool:
    """PostgreSQL is down or unreachable, the connection was lost, or a transaction lost a
    deadlock or serialization race (psycopg's OperationalError and its subclasses): all go away
    by themselves and are retried."""
    psycopg = sys.modules.get("psycopg")  # never imported here: only where PostgreSQL is used
    return psycopg is not None and isinstance(exc, psycopg.OperationalError)
