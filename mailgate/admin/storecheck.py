"""Is a SQLite file the daemon works on still there, still the same file, and still sound?

Input: the path of a database file (from the config: trusted), watched from the moment a
`StoreCheck` is made (right after the daemon opened it). Output: `problem()`, None when all is
well, else one line saying what is wrong: the file is gone (deleted while the daemon runs: its
writes go to an unlinked file), it was replaced by another file (not the inode that was opened),
or `PRAGMA quick_check` finds it damaged. The file's contents are not trusted: an error reading
them is a finding.

Cheap enough for a health endpoint: the `stat` runs on every call; `quick_check` runs on its own
read-only connection in a thread of its own, at most once per `every` seconds, and the caller
waits at most `wait` seconds for it (a check still running then is reported by a later call;
until then the previous finding stands). A check that runs longer than `budget` seconds is
interrupted and finds nothing. `problem()` is called from one thread at a time.

On PostgreSQL (`DatabaseCheck`) the question is whether the database answers at all: a new
connection and `SELECT 1` per call, bounded by a connect timeout.
"""

from __future__ import annotations

import os
import sqlite3
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

QUICK_CHECK_EVERY = 300.0  # seconds between two quick_checks of one file
QUICK_CHECK_WAIT = 1.0  # seconds a caller waits for a quick_check under way
QUICK_CHECK_BUDGET = 60.0  # seconds after which a quick_check is interrupted
MAX_ERRORS = 3  # quick_check findings kept in the problem


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class StoreCheck:
    def __init__(self, name: str, path: Path, *, every: float = QUICK_CHECK_EVERY,
                 wait: float = QUICK_CHECK_WAIT, budget: float = QUICK_CHECK_BUDGET) -> None:
        self.name = name
        self.path = path.resolve()
        self.every = every
        self.wait = wait
        self.budget = budget
        self.opened = identity(self.path)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-check")
        self._running: Future[str | None] | None = None
        self._checked_at: float | None = None
        self._corrupt: str | None = None
        self._closed = False

    def close(self) -> None:
        self._closed = True  # a check under way stops at its next progress call
        self._thread.shutdown(wait=False, cancel_futures=True)

    def problem(self) -> str | None:
        now = identity(self.path)
        if now is None:
            return (f"the {self.name} {self.path} is gone (deleted while mailgate runs: what it"
                    " writes now is lost at the next restart); stop mailgate and restore it")
        if now != self.opened:
            return (f"the {self.name} {self.path} was replaced by another file while mailgate"
                    " runs (it still uses the one it opened); restart mailgate")
        due = self._checked_at is None or time.monotonic() - self._checked_at >= self.every
        if self._running is None and due:
            self._running = self._thread.submit(self._quick_check)
        if self._running is not None:
            try:
                self._corrupt = self._running.result(timeout=self.wait)
            except TimeoutError:
                return self._corrupt  # still checking: the last finding stands
            self._running = None
            self._checked_at = time.monotonic()
        return self._corrupt

    def _quick_check(self) -> str | None:
        """On the check thread: None, or what is corrupt."""
        try:
            conn = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.Error as exc:
            return self._finding(f"cannot open it: {exc}")
        deadline = time.monotonic() + self.budget
        conn.set_progress_handler(
            lambda: int(self._closed or time.monotonic() > deadline), 10000)
        try:
            rows = conn.execute(f"PRAGMA quick_check({MAX_ERRORS})").fetchall()
        except sqlite3.OperationalError as exc:
            if any(word in str(exc) for word in ("interrupted", "locked", "busy")):
                return None  # too big to check within the budget, or busy: no finding
            return self._finding(str(exc))
        except sqlite3.DatabaseError as exc:  # "database disk image is malformed", ...
            return self._finding(str(exc))
        finally:
            conn.close()
        found = [str(r[0]) for r in rows]
        return None if found == ["ok"] else self._finding("; ".join(found))

    def _finding(self, detail: str) -> str:
        detail = " ".join(detail.split())[:300]
        return (f"the {self.name} {self.path} is damaged or unreadable (PRAGMA quick_check:"
                f" {detail}); stop mailgate and restore it from a backup")


class DatabaseCheck:
    """Is the PostgreSQL database reachable? `problem()` opens a connection of its own (at
    most `timeout` seconds) and runs `SELECT 1`: None when it answers, else one line naming
    the database (never its password) and what went wrong."""

    def __init__(self, url: str, timeout: float = 3.0) -> None:
        self.name = "database"
        self.url = url
        self.timeout = timeout

    def close(self) -> None:
        """Nothing held between checks."""

    def problem(self) -> str | None:
        import psycopg
        from sqlalchemy.engine import make_url

        from mailgate.store.engine import shown

        conninfo = make_url(self.url).set(drivername="postgresql").render_as_string(
            hide_password=False)
        try:
            with psycopg.connect(conninfo, connect_timeout=max(1, round(self.timeout))) as c:
                c.execute("SELECT 1")
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return f"the database {shown(self.url)} is down or unreachable: {first}"
        return None
