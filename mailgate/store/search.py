"""Finding tickets: full text, filters, a total, and pages that never stop at a cap.

Input: a `TicketFilter` (from the CLI, the API or the panels: every field untrusted text an
agent typed, validated by the caller for shape), an opaque cursor this module made (or junk:
`BadCursor`) or an offset. Output: a `Page` of ticket rows (`tickets.TICKET_COLUMNS`), most
recently updated first, then newest id, with how many tickets match in all and the cursor of
the next page. Keyset pagination on (updated_at, id): a page costs the same however deep it
is, and a ticket updated while someone pages moves to the front instead of shifting every
later page.

Full text (`q`) matches a ticket when its subject, the subject or text of any of its messages
(internal notes included), or its requester's name or address holds every word of `q` (a word
ending in `*` is a prefix; accents ignored on SQLite). On SQLite that is FTS5: three
external-content indexes over `tickets`, `messages` and `customers`, kept by triggers, made
by `ensure_index` when a database is opened (an existing installation gets them, built from
its rows, the first time).
They are a derived index, not schema: `rebuild_index` makes them again from the rows. On
PostgreSQL the same words go to its own full-text search (`to_tsvector('simple', …) @@
to_tsquery`) computed at query time; a GIN index over the same expressions is how it grows.
The words are always passed as bound parameters, each quoted, so FTS syntax typed into a
search box is searched for, never run.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from mailgate.errors import UserError
from mailgate.store import tickets as ticket_store
from mailgate.store.db import like_pattern, on_postgres, time_window

MAX_QUERY_CHARS = 500
MAX_WORDS = 16
_WORD = re.compile(r"[^\s\"]+")
_TOKEN = re.compile(r"\w+", re.UNICODE)

# The derived full-text indexes on SQLite: (index, table, columns).
FTS_INDEXES = (
    ("tickets_fts", "tickets", ("subject",)),
    ("messages_fts", "messages", ("subject", "text")),
    ("customers_fts", "customers", ("name", "email")),
)
FTS_TABLE_PREFIXES = tuple(name for name, _, _ in FTS_INDEXES)
TRIGGER_NAMES = tuple(f"{name}_{when}" for name in FTS_TABLE_PREFIXES
                      for when in ("ai", "ad", "au"))


class BadCursor(UserError):
    """A cursor this module did not make (edited, truncated, from another list)."""


@dataclass(frozen=True)
class TicketFilter:
    """What an agent asks for; empty fields do not filter. Dates are `YYYY-MM-DD` (UTC) or
    full ISO timestamps: `since` ≤ created_at < `until` (a day as `until` includes it)."""

    q: str = ""
    statuses: tuple[str, ...] = ()
    assignee: str | None = None
    unassigned: bool = False
    team: str | None = None
    mailbox: str | None = None
    default_mailbox: str = ""
    org: str | None = None
    tag: str | None = None
    priority: str | None = None
    since: str | None = None
    until: str | None = None
    breached: bool = False  # evaluated by the caller's `is_breached` (business hours, policies)
    requester_id: int | None = None  # one customer's tickets


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    total: int
    next_cursor: str | None  # None on the last page
    offset: int = 0  # where this page starts (offset paging; 0 with a cursor)


def words(q: str) -> list[str]:
    """The words of a search box: whitespace-separated, quotes dropped, at most MAX_WORDS."""
    return _WORD.findall(q[:MAX_QUERY_CHARS])[:MAX_WORDS]


def _fts_query(q: str) -> str:
    """An FTS5 MATCH expression for `q`: each word a quoted string (a trailing `*` a prefix),
    all of them required."""
    parts = []
    for w in words(q):
        prefix = w.endswith("*") and len(w) > 1
        body = w.rstrip("*") if prefix else w
        if not _TOKEN.search(body):
            continue  # punctuation alone matches nothing in the index: ignore it
        parts.append('"' + body.replace('"', '""') + '"' + ("*" if prefix else ""))
    return " ".join(parts)


def _ts_query(q: str) -> str:
    """A PostgreSQL tsquery for `q`: each word a quoted lexeme (PostgreSQL's parser splits it
    as it split the text: an address stays one token), all required; `*` a prefix."""
    parts = []
    for w in words(q):
        prefix = w.endswith("*") and len(w) > 1
        body = w.rstrip("*") if prefix else w
        if not _TOKEN.search(body):
            continue
        quoted = "'" + body.replace("\\", "\\\\").replace("'", "''") + "'"
        parts.append(quoted + (":*" if prefix else ""))
    return " & ".join(parts)


def encode_cursor(row: Mapping[str, Any]) -> str:
    raw = json.dumps([row["updated_at"] or "", int(row["id"])], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        updated, ticket_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(updated, str) or not isinstance(ticket_id, int):
            raise ValueError(cursor)
        return updated, ticket_id
    except (ValueError, TypeError, UnicodeDecodeError):
        raise BadCursor(f"cursor {cursor[:40]!r} is not one this list made: start from the"
                        " first page") from None


def _where(db: Any, f: TicketFilter) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if f.mailbox:
        mailbox = f.mailbox.lower()
        if mailbox == f.default_mailbox.lower():
            where.append("(t.mailbox = ? OR t.mailbox IS NULL)")
        else:
            where.append("t.mailbox = ?")
        params.append(mailbox)
    if f.team:
        where.append("t.team = ?")
        params.append(f.team)
    if f.statuses:
        where.append(f"t.status IN ({','.join('?' * len(f.statuses))})")
        params.extend(f.statuses)
    if f.org:
        where.append("lower(o.name) = lower(?)")
        params.append(f.org)
    if f.assignee:
        where.append("t.assignee = ?")
        params.append(f.assignee.lower())
    if f.unassigned:
        where.append("t.assignee IS NULL")
    if f.requester_id is not None:
        where.append("t.requester_id = ?")
        params.append(f.requester_id)
    if f.priority:
        where.append("t.priority = ?")
        params.append(f.priority)
    if f.tag:  # tags are a JSON array of strings: the quoted tag inside it
        where.append("t.tags LIKE ? ESCAPE '\\'")
        params.append(like_pattern(json.dumps(f.tag.strip().lower())))
    try:
        window, values = time_window("t.created_at", None, f.since, f.until)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    where += window
    params += values
    if f.q.strip():
        clause, values = _text_clause(db, f.q)
        where.append(clause)
        params.extend(values)
    return where, params


def _text_clause(db: Any, q: str) -> tuple[str, list[Any]]:
    if on_postgres(db):
        tsq = _ts_query(q)
        if not tsq:
            return "1 = 0", []
        return (
            "(to_tsvector('simple', coalesce(t.subject, '')) @@ to_tsquery('simple', ?)"
            " OR t.id IN (SELECT m.ticket_id FROM messages m WHERE to_tsvector('simple',"
            " coalesce(m.subject, '') || ' ' || coalesce(m.text, ''))"
            " @@ to_tsquery('simple', ?))"
            " OR to_tsvector('simple', coalesce(c.name, '') || ' ' || c.email)"
            " @@ to_tsquery('simple', ?))", [tsq] * 3)
    match = _fts_query(q)
    if not match:
        return "1 = 0", []
    # one set of ticket ids, so the matches drive the query (not a scan of every ticket)
    return (
        "t.id IN (SELECT rowid FROM tickets_fts WHERE tickets_fts MATCH ?"
        " UNION SELECT m.ticket_id FROM messages m WHERE m.id IN"
        " (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?)"
        " UNION SELECT r.id FROM tickets r WHERE r.requester_id IN"
        " (SELECT rowid FROM customers_fts WHERE customers_fts MATCH ?))",
        [match] * 3)


def search_tickets(db: sqlite_utils.Database, f: TicketFilter, *, limit: int = 50,
                   cursor: str | None = None, offset: int = 0,
                   is_breached: Callable[[dict[str, Any]], bool] | None = None) -> Page:
    """One page of the tickets `f` matches, the total, and the next page's cursor. With
    `cursor` the page starts after the ticket it names; else at `offset` (the CLI's paging).
    `f.breached` needs `is_breached`: those tickets are then filtered here, row by row, as
    an SLA is judged with its policy's business hours, not in SQL."""
    where, params = _where(db, f)
    base = f" FROM {ticket_store.TICKET_FROM}"
    if where:
        base += " WHERE " + " AND ".join(where)
    order = " ORDER BY t.updated_at DESC, t.id DESC"
    if f.breached:
        if is_breached is None:
            raise ValueError("breached needs is_breached")
        rows = [ticket_store.decode_ticket_row(r) for r in db.query(
            f"SELECT {ticket_store.TICKET_COLUMNS}{base}{order}", params)]
        rows = [r for r in rows if is_breached(r)]
        total = len(rows)
        start = offset
        if cursor:
            after = decode_cursor(cursor)
            start = next((i for i, r in enumerate(rows)
                          if ((r["updated_at"] or ""), r["id"]) < after), len(rows))
        page = rows[start:start + limit]
        more = start + limit < total
        return Page(page, total, encode_cursor(page[-1]) if more and page else None,
                    0 if cursor else offset)
    total = int(db.execute(f"SELECT COUNT(*){base}", params).fetchone()[0])
    sql = f"SELECT {ticket_store.TICKET_COLUMNS}{base}"
    page_params = list(params)
    if cursor:
        updated, ticket_id = decode_cursor(cursor)
        sql += (" AND " if where else " WHERE ") + (
            "(t.updated_at < ? OR (t.updated_at = ? AND t.id < ?))")
        page_params += [updated, updated, ticket_id]
        offset = 0
    sql += order + " LIMIT ?"
    page_params.append(limit + 1)
    if offset:
        sql += " OFFSET ?"
        page_params.append(offset)
    rows = [ticket_store.decode_ticket_row(r) for r in db.query(sql, page_params)]
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, total, encode_cursor(rows[-1]) if more and rows else None, offset)


# --- the SQLite full-text indexes -------------------------------------------------------------


def _triggers(index: str, table: str, columns: tuple[str, ...]) -> list[str]:
    cols = ", ".join(columns)
    new = ", ".join(f"new.{c}" for c in columns)
    old = ", ".join(f"old.{c}" for c in columns)
    delete = (f"INSERT INTO {index}({index}, rowid, {cols}) VALUES ('delete', old.id, {old});")
    insert = f"INSERT INTO {index}(rowid, {cols}) VALUES (new.id, {new});"
    return [
        f"CREATE TRIGGER IF NOT EXISTS {index}_ai AFTER INSERT ON {table} BEGIN {insert} END",
        f"CREATE TRIGGER IF NOT EXISTS {index}_ad AFTER DELETE ON {table} BEGIN {delete} END",
        f"CREATE TRIGGER IF NOT EXISTS {index}_au AFTER UPDATE OF {cols} ON {table}"
        f" BEGIN {delete} {insert} END",
    ]


def _present(conn: sqlite3.Connection) -> tuple[set[str], int]:
    """The index tables and the number of their triggers that `conn`'s file has."""
    names = FTS_TABLE_PREFIXES + TRIGGER_NAMES
    found = {name: kind for name, kind in conn.execute(
        f"SELECT name, type FROM sqlite_master WHERE name IN ({','.join('?' * len(names))})",
        names)}
    return ({n for n, kind in found.items() if kind == "table"},
            sum(1 for kind in found.values() if kind == "trigger"))


def index_complete(conn: sqlite3.Connection) -> bool:
    """Whether every full-text index and trigger is there."""
    tables, triggers = _present(conn)
    return len(tables) == len(FTS_INDEXES) and triggers == len(TRIGGER_NAMES)


def index_made(conn: sqlite3.Connection) -> bool:
    """Whether any full-text index was made in `conn`'s file."""
    return bool(_present(conn)[0])


def ensure_index(conn: sqlite3.Connection) -> bool:
    """Make the SQLite full-text indexes and their triggers when a file lacks them, filled
    from the rows already there (in the caller's transaction). True when it made any."""
    tables, triggers = _present(conn)
    if len(tables) == len(FTS_INDEXES) and triggers == len(TRIGGER_NAMES):
        return False
    for index, table, columns in FTS_INDEXES:
        if index not in tables:
            conn.execute(
                f"CREATE VIRTUAL TABLE {index} USING fts5({', '.join(columns)},"
                f" content='{table}', content_rowid='id',"
                " tokenize='unicode61 remove_diacritics 2')")
            conn.execute(f"INSERT INTO {index}({index}) VALUES ('rebuild')")
        for statement in _triggers(index, table, columns):
            conn.execute(statement)
    return True


def rebuild_index(conn: sqlite3.Connection) -> None:
    """Make every SQLite full-text index again from its table's rows."""
    for index, _, _ in FTS_INDEXES:
        conn.execute(f"INSERT INTO {index}({index}) VALUES ('rebuild')")


def check_index(conn: sqlite3.Connection) -> list[str]:
    """FTS5's own integrity check of each index against its table: the problems found."""
    problems = []
    tables, triggers = _present(conn)
    if len(tables) < len(FTS_INDEXES) or triggers < len(TRIGGER_NAMES):
        problems.append(f"search index: {len(FTS_INDEXES) - len(tables)} index(es) and"
                        f" {len(TRIGGER_NAMES) - triggers} trigger(s) missing"
                        " ('mailgate db reindex' makes them)")
    for index, _, _ in FTS_INDEXES:
        if index not in tables:
            continue
        try:
            conn.execute(f"INSERT INTO {index}({index}, rank) VALUES ('integrity-check', 1)")
        except sqlite3.DatabaseError as exc:
            problems.append(f"search index {index}: {exc} ('mailgate db reindex' makes it"
                            " again from the rows)")
    return problems
