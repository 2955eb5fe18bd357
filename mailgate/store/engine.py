"""SQLAlchemy engines for the store, on SQLite or PostgreSQL, from a database URL.

Input: a URL written by the operator (trusted to mean their own database, not to be well
formed): `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, or
`postgresql://user:password@host:port/dbname` (also `postgres://`, `postgresql+psycopg://`).
Output: an `Engine` (psycopg 3 for PostgreSQL, the stdlib sqlite3 for SQLite), or UserError
with one line naming the URL (its password hidden) for anything else.

SQLite connections get the pragmas of `mailgate.store.db.open_db` (WAL, synchronous=FULL,
foreign keys on, a 30 s busy timeout) and real transactions: pysqlite's own BEGIN handling is
switched off, and each SQLAlchemy transaction begins with BEGIN — or BEGIN IMMEDIATE (the
write lock at once, as `mailgate.store.db.transaction` takes it) on a connection whose
execution options set `IMMEDIATE`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError

from mailgate.errors import UserError

# Execution option: `conn.execution_options(**{IMMEDIATE: True})` makes SQLite transactions
# on that connection BEGIN IMMEDIATE. Ignored on PostgreSQL.
IMMEDIATE = "mailgate_sqlite_immediate"

SQLITE_PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON",
                  "busy_timeout=30000")
USAGE = "use sqlite:///path/to/file.db or postgresql://user@host/dbname"


def shown(url: str | URL) -> str:
    """The URL as it may appear in a message or a log: without its password."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return repr(url)


def sqlite_url(path: Path) -> str:
    """The URL of the SQLite file at `path` (made absolute)."""
    return f"sqlite:///{Path(path).absolute()}"


def make_engine(url: str, **engine_options: Any) -> Engine:
    """An engine for `url`. Nothing is connected yet (a SQLite file's directory is made)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(f"database URL {shown(url)} is not a URL: {USAGE}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        if not parsed.database:
            raise UserError(f"database URL {shown(parsed)} names no database: {USAGE}")
        return sa.create_engine(parsed.set(drivername="postgresql+psycopg"),
                                pool_pre_ping=True, **engine_options)
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return _sqlite_engine(parsed, **engine_options)
    raise UserError(f"database URL {shown(parsed)}: unsupported database; {USAGE}")


def _sqlite_engine(url: URL, **engine_options: Any) -> Engine:
    if not url.database or url.database == ":memory:":
        raise UserError(f"database URL {shown(url)} names no file: {USAGE}")
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url.set(drivername="sqlite+pysqlite"), **engine_options)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # no BEGIN of pysqlite's own: ours, below
        for pragma in SQLITE_PRAGMAS:
            dbapi_connection.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(IMMEDIATE)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
