"""The store's SQL on PostgreSQL: a psycopg 3 connection that takes the statements the store
writes for SQLite.

Input: a PostgreSQL URL (the operator's; the password is never shown) and the store's own SQL
text (ours, trusted; every value from mail is a bound parameter, never part of the text).
Output: `PgDatabase`, which offers what the pipeline, the CLI and the admin endpoint use of a
sqlite-utils `Database` — `execute`, `query` (rows as dicts), `conn` (for `transaction()`),
`close` — and `PgConnection`, which offers what they use of a sqlite3 connection — `execute`
and `executemany` returning a cursor (`fetchone`, `fetchall`, `rowcount`, iteration) and
`in_transaction`.

One set of queries for both engines: the store's SQL is written in the part of SQL the two
share (ON CONFLICT, RETURNING, lower() … LIKE), with qmark placeholders. Here each statement is
translated once (and cached): `?` outside string literals becomes psycopg's `%s`, a literal `%`
becomes `%%`, and SQLite's `BEGIN IMMEDIATE` becomes `BEGIN` (PostgreSQL's row locks and the
unique constraints do what SQLite's database lock did). The connection is in autocommit mode
outside the store's explicit transactions, as sqlite3 is with `isolation_level=None`.

Why not SQLAlchemy for the statements themselves: SQLAlchemy Core describes the schema and runs
the migrations (`schema.py`, `upgrade.py`), but on the pipeline's path every statement would pay
its per-call overhead on the embedded default too; the store's statements stay plain SQL on
the driver of each engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import pq
from sqlalchemy.engine import make_url

from mailgate.errors import UserError
from mailgate.store.engine import shown


@lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """The store's SQLite-flavoured statement as psycopg takes it: `?` → `%s` and `%` → `%%`
    outside string literals and quoted names; `BEGIN IMMEDIATE` → `BEGIN`."""
    if sql.strip().upper() == "BEGIN IMMEDIATE":
        return "BEGIN"
    out: list[str] = []
    quote = ""
    for c in sql:
        if quote:
            out.append("%%" if c == "%" else c)
            if c == quote:
                quote = ""  # a doubled quote closes and reopens: the same result
            continue
        if c in ("'", '"'):
            quote = c
            out.append(c)
        elif c == "?":
            out.append("%s")
        elif c == "%":
            out.append("%%")
        else:
            out.append(c)
    return "".join(out)


class PgCursor:
    """The result of one statement: what the store reads of a sqlite3 cursor."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def description(self) -> Any:
        return self._cursor.description

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cursor.fetchall() if self._cursor.description else []

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())


class PgConnection:
    """A psycopg connection with sqlite3's calling conventions (see the module docstring).
    A connection that was lost (the server restarted, the network failed) is made again by the
    next statement outside a transaction; inside one, the error reaches the caller, whose
    transaction is retried (`errors.temporary_cause` counts it as a shortage)."""

    dialect = "postgresql"  # what store.db.on_postgres asks

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn = psycopg.connect(conninfo, autocommit=True)

    def _live(self) -> psycopg.Connection[Any]:
        if self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self._conninfo, autocommit=True)
        return self._conn

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> PgCursor:
        cursor = self._live().cursor()
        cursor.execute(translate(sql), tuple(params or ()))
        return PgCursor(cursor)

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> PgCursor:
        cursor = self._live().cursor()
        cursor.executemany(translate(sql), [tuple(p) for p in seq])
        return PgCursor(cursor)

    @property
    def in_transaction(self) -> bool:
        if self._conn.closed or self._conn.broken:
            return False
        return self._conn.info.transaction_status != pq.TransactionStatus.IDLE

    def close(self) -> None:
        self._conn.close()


class PgDatabase:
    """What the rest of mailgate uses of a sqlite-utils `Database`, on PostgreSQL."""

    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql":
            raise UserError(f"not a PostgreSQL URL: {shown(url)}")
        conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            self.conn = PgConnection(conninfo)
        except psycopg.Error as exc:
            raise UserError(f"cannot connect to {shown(url)}: {exc}".strip()) from None
        self.url = url

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> PgCursor:
        return self.conn.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> Iterator[dict[str, Any]]:
        cursor = self.conn.execute(sql, params)
        names = [column.name for column in cursor.description or ()]
        for row in cursor.fetchall():
            yield dict(zip(names, row, strict=True))

    def close(self) -> None:
        self.conn.close()
