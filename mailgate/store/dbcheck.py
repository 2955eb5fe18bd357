"""Is a database usable by this mailgate: what `mailgate db check` reports.

Input: an `Engine` from `mailgate.store.engine.make_engine` (the operator's database; its
contents are not trusted to be intact: a damaged SQLite file is a finding, never a traceback).
Output: a `DbReport`, the schema state and one `Finding` per check, each ok or not with one line
of detail. Nothing is changed, and a SQLite file that is not there is not made.

- every engine: the schema revision against the head (`mailgate.store.upgrade`);
- SQLite: `PRAGMA integrity_check` (every page, index and record) and
  `PRAGMA foreign_key_check` (no row refers to a missing one);
- PostgreSQL: it can be connected to, and (at head) Alembic's `compare_metadata` finds no
  difference between the database and mailgate/store/schema.py;
- both, at head: every table of the schema is there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mailgate.store import search
from mailgate.store.engine import shown
from mailgate.store.schema import metadata
from mailgate.store.upgrade import SchemaState, schema_state

SHOWN_PROBLEMS = 3  # integrity problems named in the one line (the count says how many more)


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class DbReport:
    database: str  # the URL, its password hidden
    state: SchemaState | None  # None: the database could not be read
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def as_dict(self) -> dict[str, Any]:
        state = self.state
        return {
            "database": self.database,
            "revision": state.revision if state else None,
            "head": state.head if state else None,
            "legacy": state.legacy if state else None,
            "up_to_date": bool(state and state.at_head),
            "ok": self.ok,
            "checks": [{"name": f.name, "ok": f.ok, "detail": f.detail} for f in self.findings],
        }


def one_line(exc: BaseException, engine: Engine) -> str:
    """An error of the database as one line, without the URL's password."""
    inner = getattr(exc, "orig", None) or exc
    text = " ".join(str(inner).split()) or type(inner).__name__
    password = engine.url.password
    if password:
        text = text.replace(str(password), "***")
    return f"{type(inner).__name__}: {text}"


def check_database(engine: Engine, migrations: Path | None = None) -> DbReport:
    where = shown(engine.url.set(drivername=engine.dialect.name))
    sqlite = engine.dialect.name == "sqlite"
    if sqlite and not Path(str(engine.url.database)).is_file():
        return DbReport(where, None, (Finding("file", False,
                                              f"no database file at {engine.url.database}"),))
    try:
        state = schema_state(engine, migrations)
    except sa.exc.SQLAlchemyError as exc:
        problem = f"cannot read the database: {one_line(exc, engine)}"
        return DbReport(where, None, (Finding("connect", False, problem),))
    findings = [_schema_finding(state)]
    steps = [_integrity, _references] if sqlite else []
    if state.at_head:
        steps.append(_tables)
        if sqlite:
            steps.append(_search_index)
        if not sqlite:
            steps.append(_differences)
    for step in steps:
        try:
            with engine.connect() as conn:
                findings.append(step(conn))
        except sa.exc.SQLAlchemyError as exc:
            findings.append(Finding(step.__name__.strip("_"), False, one_line(exc, engine)))
    return DbReport(where, state, tuple(findings))


def _schema_finding(state: SchemaState) -> Finding:
    if state.at_head:
        return Finding("schema", True, str(state) if state.current else
                       f"{state.label}, unstamped: its schema is revision {state.head} (head)")
    if state.empty:
        return Finding("schema", False, f"{state}: 'mailgate db upgrade' creates the schema")
    return Finding("schema", False, f"{state}: run 'mailgate db upgrade' (back it up first)")


def _integrity(conn: Connection) -> Finding:
    try:
        rows = [str(r) for (r,) in conn.exec_driver_sql("PRAGMA integrity_check")]
    except sa.exc.DBAPIError as exc:  # damage that stops the check itself
        rows = [f"{type(exc.orig).__name__}: {exc.orig}"]
    if rows == ["ok"]:
        return Finding("integrity", True, "PRAGMA integrity_check: ok")
    named = "; ".join(" ".join(r.split()) for r in rows[:SHOWN_PROBLEMS])
    more = f" (and {len(rows) - SHOWN_PROBLEMS} more)" if len(rows) > SHOWN_PROBLEMS else ""
    return Finding("integrity", False, f"PRAGMA integrity_check: {named}{more}; restore the"
                   " backup, or recover what is readable with sqlite3's .recover")


def _references(conn: Connection) -> Finding:
    rows = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    if not rows:
        return Finding("references", True, "PRAGMA foreign_key_check: no dangling reference")
    table, rowid, parent, _ = rows[0]
    return Finding("references", False, f"{len(rows)} row(s) refer to a missing row (first:"
                   f" {table} row {rowid} → {parent})")


def _search_index(conn: Connection) -> Finding:
    raw = conn.connection.driver_connection
    if not search.index_made(raw):
        return Finding("search", True, "full-text indexes not made yet: mailgate makes them"
                       " from the rows when it next opens the database")
    problems = search.check_index(raw)
    if problems:
        return Finding("search", False, "; ".join(problems))
    return Finding("search", True, "full-text indexes match their tables")


def _tables(conn: Connection) -> Finding:
    present = set(sa.inspect(conn).get_table_names())
    missing = sorted(set(metadata.tables) - present)
    if missing:
        return Finding("tables", False, f"missing table(s): {', '.join(missing)}")
    return Finding("tables", True, f"all {len(metadata.tables)} tables of the schema are there")


def _differences(conn: Connection) -> Finding:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                     "compare_server_default": True})
    diff = compare_metadata(context, metadata)
    if not diff:
        return Finding("differences", True, "Alembic finds no difference from the schema")
    shown_diff = "; ".join(" ".join(repr(d).split())[:120] for d in diff[:SHOWN_PROBLEMS])
    return Finding("differences", False, f"{len(diff)} difference(s) from the schema:"
                   f" {shown_diff}")
