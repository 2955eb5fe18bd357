"""The incoming audit: one row per mail that reached DATA, saying what was done and why.

Input: the envelope and the pipeline's decision (addresses and subjects are untrusted text,
stored as data). Output: rows in `audit_incoming`, and filtered listings for the CLI. The queue
id is unique, which is also how a re-run of the same spool entry (after a crash between the
database commit and the spool update) is recognised as already done.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from mailgate.model import Envelope
from mailgate.store.db import like_pattern, now_iso, time_window
from mailgate.store.spam import decode_verdict, verdict_field

ACTIONS = ("created_ticket", "appended", "duplicate", "bounce", "forwarding_confirmation",
           "ignored", "spam", "rejected", "held")


@dataclass(frozen=True)
class IncomingAudit:
    envelope: Envelope
    action: str
    reason: str = ""
    message_id: str = ""
    from_addr: str = ""
    subject: str = ""
    ticket_id: int | None = None
    message_row: int | None = None
    matched_by: str = ""
    defects: int = 0
    classification: str = ""
    details: dict[str, Any] | None = None
    auth: dict[str, Any] | None = None


def record_incoming(conn: sqlite3.Connection, a: IncomingAudit) -> None:
    if a.action not in ("created_ticket", "appended") and not a.reason:
        raise ValueError(f"audit action {a.action!r} needs a reason")
    env = a.envelope
    conn.execute(
        "INSERT INTO audit_incoming (received_at, queue_id, client_ip, helo, mail_from, rcpt_to,"
        " message_id, from_addr, subject, size, action, ticket_id, message_row, matched_by,"
        " reason, defects, classification, details, auth)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            now_iso(env.received_at), env.queue_id, env.client_ip, env.helo, env.mail_from,
            json.dumps(list(env.rcpt_to)), a.message_id, a.from_addr, a.subject, env.size,
            a.action, a.ticket_id, a.message_row, a.matched_by, a.reason, a.defects,
            a.classification, json.dumps(a.details) if a.details else None,
            json.dumps(a.auth) if a.auth else None,
        ),
    )


def audited(conn: sqlite3.Connection, queue_id: str) -> bool:
    """True when this queue id already has its final result (a `held` row is not final: the
    message can be released and processed again)."""
    row = conn.execute(
        "SELECT 1 FROM audit_incoming WHERE queue_id=? AND action != 'held'", (queue_id,)
    ).fetchone()
    return row is not None


def list_incoming(
    db: sqlite_utils.Database, action: str | None = None, limit: int = 50,
    queue_id: str | None = None,
) -> list[dict[str, Any]]:
    return search_incoming(db, action=action, queue_id=queue_id, limit=limit)


def counts_by_action(db: sqlite_utils.Database) -> dict[str, int]:
    rows = db.execute("SELECT action, COUNT(*) FROM audit_incoming GROUP BY action").fetchall()
    return dict(rows)


# --- searches for the admin endpoint (q over addresses, subject, Message-ID; a day) --------


def _incoming_where(action: str | None = None, queue_id: str | None = None,
                    q: str | None = None, day: str | None = None, since: str | None = None,
                    until: str | None = None, ticket_id: int | None = None,
                    address: str | None = None, message_id: str | None = None
                    ) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if action:
        where.append("action = ?")
        params.append(action)
    if queue_id:
        where.append("queue_id = ?")
        params.append(queue_id)
    if ticket_id is not None:
        where.append("ticket_id = ?")
        params.append(ticket_id)
    if address and address.strip():  # the envelope sender, a recipient or the From address
        addr = address.strip().lower()
        where.append("(lower(mail_from) = ? OR lower(from_addr) = ?"
                     " OR lower(rcpt_to) LIKE ? ESCAPE '\\')")
        params += [addr, addr, like_pattern(json.dumps(addr))]
    if message_id and message_id.strip():
        where.append("message_id = ?")
        params.append(message_id.strip().strip("<>"))
    if q and q.strip():
        text = q.strip()
        pattern = like_pattern((text.strip("<>") or text).lower())
        where.append(
            "(lower(mail_from) LIKE ? ESCAPE '\\' OR lower(rcpt_to) LIKE ? ESCAPE '\\'"
            " OR lower(from_addr) LIKE ? ESCAPE '\\' OR lower(subject) LIKE ? ESCAPE '\\'"
            " OR lower(message_id) LIKE ? ESCAPE '\\'"
            " OR queue_id = ?)"
        )
        params += [pattern] * 5 + [text]
    window, values = time_window("received_at", day, since, until)
    return where + window, params + values


def search_incoming(
    db: sqlite_utils.Database, *, limit: int = 50, before_id: int | None = None,
    offset: int = 0, **filters: Any,
) -> list[dict[str, Any]]:
    """Like `list_incoming`, filtered by `count_incoming`'s filters. Newest first; with
    `before_id` the rows older than that row (the next page), else from `offset`; `details`
    decoded from JSON."""
    where, params = _incoming_where(**filters)
    if before_id is not None:
        where.append("id < ?")
        params.append(before_id)
    sql = (
        "SELECT id, received_at, queue_id, client_ip, helo, mail_from, rcpt_to, message_id,"
        " from_addr AS \"from\", subject, size, action, ticket_id, matched_by, reason, defects,"
        " classification, details, auth, " + verdict_field("audit_incoming") +
        " FROM audit_incoming"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
    params += [limit, offset]
    rows = list(db.query(sql, params))
    for r in rows:
        r["rcpt_to"] = json.loads(r["rcpt_to"] or "[]")
        for key in ("details", "auth"):
            try:
                r[key] = json.loads(r[key]) if r[key] else None
            except ValueError:
                r[key] = {"unreadable": r[key]}
        r["spam"] = decode_verdict(r)
    return rows


def count_incoming(db: sqlite_utils.Database, **filters: Any) -> int:
    """How many rows match: `action`, `queue_id`, `ticket_id`, `address` (the envelope sender,
    a recipient or the From address, exactly), `message_id` (exactly), `q` (a substring of
    the addresses, the subject or the Message-ID, or an exact queue id), `day` (YYYY-MM-DD,
    UTC) and `since`/`until` (a day or an ISO time; `until` a day includes it)."""
    where, params = _incoming_where(**filters)
    sql = "SELECT COUNT(*) FROM audit_incoming" + (" WHERE " + " AND ".join(where)
                                                    if where else "")
    return int(db.execute(sql, params).fetchone()[0])


def last_received_at(db: sqlite_utils.Database) -> str | None:
    """When the newest mail that was accepted (not refused at DATA) arrived, or None."""
    row = db.execute(
        "SELECT MAX(received_at) FROM audit_incoming WHERE action != 'rejected'"
    ).fetchone()
    return row[0] if row else None
