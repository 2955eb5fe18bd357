"""The spam scanner's verdicts and the quarantine, in the database.

Input: the envelope of an incoming message with the SMTP stage's `SpamVerdict` (scores and
symbol names come from rspamd, addresses and subjects from mail: stored as data, bound as SQL
parameters), and the pipeline's decision about it. Output: one `spam` row per scanned message
(its queue id as key): the verdict, what was done (`accept`, `flagged` — would have been
quarantined, but the sender is a known customer or the mail belongs to a ticket —,
`quarantine`, `reject`, `unscanned`, `released`), and for quarantined mail its stored raw file,
its envelope and, once let out, who did it, when, and the queue id it went on as. Listings and
one row for people (CLI, admin endpoint), joined with the incoming audit for sender and subject.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import sqlite_utils

from mailgate.errors import NotFound, UserError
from mailgate.model import Envelope, SpamVerdict
from mailgate.store.db import now_iso

QUARANTINED = "quarantined"
RELEASED = "released"
STATES = (QUARANTINED, RELEASED)
FLAGGED = "flagged"

# The verdict's columns, read for a row of a table with a `queue_id` column (one scalar
# subquery each: plain SQL both engines run, and no column name clashes with the table's own).
VERDICT_COLUMNS = ("action", "score", "symbols", "rspamd_action", "reason", "note")


def verdict_field(table: str) -> str:
    """Select-list items `spam_<column>` with the verdict on `table`'s row (NULLs without)."""
    return ", ".join(f"(SELECT s.{c} FROM spam s WHERE s.queue_id = {table}.queue_id)"
                     f" AS spam_{c}" for c in VERDICT_COLUMNS)


def decode_verdict(row: dict[str, Any]) -> dict[str, Any] | None:
    """The verdict of `verdict_field` as a dict (symbols: name → score, weightiest first),
    None without one; the `spam_*` items are taken out of `row`."""
    values = {c: row.pop(f"spam_{c}", None) for c in VERDICT_COLUMNS}
    if values["action"] is None:
        return None
    try:
        values["symbols"] = json.loads(values["symbols"] or "{}")
    except ValueError:
        values["symbols"] = {"unreadable": values["symbols"]}
    return values


def record(conn: sqlite3.Connection, env: Envelope, *, action: str | None = None,
           note: str = "", state: str | None = None, raw_path: str | None = None) -> None:
    """The verdict on `env` (which must carry one), with what was done (`action`, by default
    the SMTP stage's). Written in the caller's transaction; a re-run replaces it."""
    verdict = env.spam
    if verdict is None:
        raise ValueError(f"queue id {env.queue_id} has no spam verdict")
    conn.execute(
        "INSERT INTO spam (queue_id, received_at, action, score, symbols,"
        " rspamd_action, reason, note, state, raw_path, envelope)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (queue_id) DO UPDATE SET"
        " received_at=excluded.received_at, action=excluded.action, score=excluded.score,"
        " symbols=excluded.symbols, rspamd_action=excluded.rspamd_action,"
        " reason=excluded.reason, note=excluded.note, state=excluded.state,"
        " raw_path=excluded.raw_path, envelope=excluded.envelope, released_at=NULL,"
        " released_by=NULL, released_as=NULL",
        (env.queue_id, now_iso(env.received_at), action or verdict.action, verdict.score,
         json.dumps(dict(verdict.symbols)), verdict.rspamd_action, verdict.reason, note,
         state, raw_path, env.to_json() if state is not None else None),
    )


def recorded(conn: sqlite3.Connection, queue_id: str) -> bool:
    return conn.execute("SELECT 1 FROM spam WHERE queue_id=?", (queue_id,)).fetchone() is not None


def known_customer(conn: sqlite3.Connection, email: str) -> bool:
    """Whether `email` is already a customer (it opened a ticket before)."""
    if not email:
        return False
    row = conn.execute("SELECT 1 FROM customers WHERE email=?", (email.lower(),)).fetchone()
    return row is not None


_LIST_COLUMNS = (
    "s.queue_id, s.received_at, s.state, s.score, s.symbols, s.rspamd_action, s.reason,"
    " s.released_at, s.released_by, s.released_as, a.from_addr AS \"from\", a.subject,"
    " a.mail_from, a.rcpt_to, a.client_ip, a.message_id, a.size"
)


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row["symbols"] = json.loads(row.get("symbols") or "{}")
    row["rcpt_to"] = json.loads(row.get("rcpt_to") or "[]")
    return row


def list_quarantine(db: sqlite_utils.Database, state: str | None = QUARANTINED,
                    limit: int = 50, offset: int = 0,
                    after: str | None = None) -> list[dict[str, Any]]:
    """Quarantined mail (`state` None: released mail too), newest first; from `offset`, or
    after the message `after` (a queue id: the last row of the page before)."""
    where = "s.state = ?" if state else "s.state IS NOT NULL"
    params: list[Any] = [state] if state else []
    if after is not None:
        at = "(SELECT received_at FROM spam WHERE queue_id = ?)"
        where += f" AND (s.received_at < {at} OR (s.received_at = {at} AND s.queue_id < ?))"
        params += [after, after, after]
    rows = db.query(
        f"SELECT {_LIST_COLUMNS} FROM spam s LEFT JOIN audit_incoming a"
        f" ON a.queue_id = s.queue_id WHERE {where}"
        " ORDER BY s.received_at DESC, s.queue_id DESC LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )
    return [_decode(r) for r in rows]


def count_quarantine(db: sqlite_utils.Database, state: str | None = QUARANTINED) -> int:
    """How many `list_quarantine` would list with no limit."""
    where = "state = ?" if state else "state IS NOT NULL"
    return int(db.execute(f"SELECT COUNT(*) FROM spam WHERE {where}",
                          [state] if state else []).fetchone()[0])


def get_quarantined(db: sqlite_utils.Database, queue_id: str) -> dict[str, Any]:
    """One quarantined (or released) message with its envelope. Raises NotFound."""
    rows = list(db.query(
        f"SELECT {_LIST_COLUMNS}, s.raw_path, s.envelope, a.helo FROM spam s"
        " LEFT JOIN audit_incoming a ON a.queue_id = s.queue_id"
        " WHERE s.queue_id = ? AND s.state IS NOT NULL", [queue_id]))
    if not rows:
        raise NotFound(f"no quarantined message {queue_id} (`mailgate spam list`)")
    row = _decode(rows[0])
    envelope = Envelope.from_json(row.pop("envelope"))
    row["tls"] = envelope.tls
    return row


def take_for_release(conn: sqlite3.Connection, queue_id: str) -> tuple[Envelope, str]:
    """Inside the caller's transaction: the envelope and raw file of a message still in
    quarantine. Raises NotFound, or UserError when it was released already."""
    row = conn.execute(
        "SELECT state, envelope, raw_path, released_as, released_by, released_at FROM spam"
        " WHERE queue_id=? AND state IS NOT NULL", (queue_id,)).fetchone()
    if row is None:
        raise NotFound(f"no quarantined message {queue_id} (`mailgate spam list`)")
    state, envelope, raw_path, released_as, released_by, released_at = row
    if state != QUARANTINED:
        raise UserError(f"{queue_id} was already released (as {released_as}, by {released_by}"
                        f" at {released_at})")
    return Envelope.from_json(envelope), raw_path


def mark_released(conn: sqlite3.Connection, queue_id: str, by: str, new_queue_id: str) -> str:
    """Record who let `queue_id` out of quarantine, when, and as which queue id; returns when."""
    when = now_iso()
    conn.execute(
        "UPDATE spam SET state=?, released_at=?, released_by=?, released_as=?"
        " WHERE queue_id=? AND state=?",
        (RELEASED, when, by, new_queue_id, queue_id, QUARANTINED))
    return when


def counts(db: sqlite_utils.Database) -> dict[str, int]:
    """Quarantined and released messages."""
    rows = db.execute("SELECT state, COUNT(*) FROM spam WHERE state IS NOT NULL"
                      " GROUP BY state").fetchall()
    found = dict.fromkeys(STATES, 0)
    found.update({state: n for state, n in rows})
    return found


def verdict_summary(verdict: SpamVerdict) -> str:
    """`score 7.9 (quarantine): MAILGATE_TEST(8), …` for reasons."""
    score = "unscanned" if verdict.score is None else f"score {verdict.score:g}"
    return f"{score} ({verdict.action}): {verdict.symbol_text()}"
