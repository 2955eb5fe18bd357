"""The webhooks' outbox and audit: one row per event and webhook, one row per attempt.

Input: events from the orchestrators (a new ticket, a stored message, a status or assignee
change, outgoing mail given up), written by `emit` inside the caller's transaction — so an event
exists exactly when the change that caused it was committed; and the outcome of each POST from
the delivery worker. Ticket and message values are untrusted mail text, stored as JSON data.
Output: `webhook_deliveries` rows (`state`: queued, delivered, failed) and `webhook_attempts`
rows; listings for `mailgate audit webhooks`.

Several nodes on one database: a delivery is claimed by one node (`claimed_by`, its `[storage]
node_id`) until `lease_until` (the database's clock), with FOR UPDATE SKIP LOCKED on PostgreSQL,
as outgoing mail is. A claimed row stays `queued`: when the node dies its lease runs out and any
node claims it again; at start-up a node gives back its own claims at once (`release_own`).
The outcome of an attempt is written only while that attempt (node and attempt number) still
holds the claim. Delivery is therefore at least once: a POST cut short after the receiver took
it is sent again, with the same `X-Mailgate-Delivery` id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from mailgate.config import Webhook
from mailgate.store.db import now_iso, on_postgres, time_window, transaction
from mailgate.store.outbound import db_clock
from mailgate.store.tickets import REMOVED, ticket_row

STATES = ("queued", "delivered", "failed")
OUTCOMES = ("delivered", "retry", "failed")


@dataclass(frozen=True)
class Delivery:
    """One claimed delivery: `attempts` is this attempt's number (the claim's)."""

    id: int
    event: str
    webhook: str
    url: str
    ticket_id: int | None
    payload: str
    attempts: int
    created_ts: float


def wanted(webhooks: Iterable[Webhook], event: str) -> list[Webhook]:
    """The webhooks subscribed to `event`."""
    return [w for w in webhooks if event in w.events]


def ticket_fields(conn: Any, ticket_id: int) -> dict[str, Any] | None:
    """The ticket as `mailgate tickets show --json` gives it, without its messages."""
    ticket = ticket_row(conn, ticket_id)
    if ticket is None:
        return None
    ticket.pop("organization_id", None)
    ticket["participants"] = [r[0] for r in conn.execute(
        "SELECT email FROM participants WHERE ticket_id=? AND role<>?"
        " ORDER BY added_at, email", (ticket_id, REMOVED)).fetchall()]
    return ticket


_MESSAGE_KEYS = ("id", "direction", "from", "from_name", "to", "cc", "subject", "message_id",
                 "date", "created_at", "text", "reply_text", "matched_by", "internal",
                 "internal_reason", "classification", "queue_id")


def message_fields(conn: Any, message_row: int) -> dict[str, Any] | None:
    """A stored message as `tickets show --json` lists it (its attachments by name, type and
    size; not the raw file's path)."""
    row = conn.execute(
        "SELECT id, direction, from_addr, from_name, to_addrs, cc_addrs, subject, message_id,"
        " date, created_at, text, reply_text, matched_by, internal, internal_reason,"
        " classification, queue_id FROM messages WHERE id=?", (message_row,)).fetchone()
    if row is None:
        return None
    message = dict(zip(_MESSAGE_KEYS, row, strict=True))
    message["to"] = json.loads(message["to"] or "[]")
    message["cc"] = json.loads(message["cc"] or "[]")
    message["internal"] = bool(message["internal"])
    message["attachments"] = [
        {"filename": r[0], "content_type": r[1], "size": r[2]} for r in conn.execute(
            "SELECT filename, content_type, size FROM attachments WHERE message_row=?"
            " ORDER BY id", (message_row,)).fetchall()]
    return message


def emit(conn: Any, webhooks: Iterable[Webhook], event: str, ticket_id: int | None,
         **details: Any) -> list[int]:
    """Queue `event` for every webhook subscribed to it, inside the caller's transaction. The
    body: `{"event", "at", "ticket": <the ticket's fields or null>, **details}`. Nothing is
    read or written when no webhook wants the event. Returns the delivery ids."""
    targets = wanted(webhooks, event)
    if not targets:
        return []
    ts = db_clock(conn)
    body = {"event": event, "at": now_iso(ts),
            "ticket": ticket_fields(conn, ticket_id) if ticket_id is not None else None,
            **details}
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str)
    ids = []
    for hook in targets:
        cur = conn.execute(
            "INSERT INTO webhook_deliveries (event, webhook, url, ticket_id, payload, state,"
            " attempts, created_at, created_ts, next_attempt)"
            " VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, 0) RETURNING id",
            (event, hook.name, hook.url, ticket_id, payload, now_iso(ts), ts))
        ids.append(int(cur.fetchone()[0]))
    return ids


def release_own(db: sqlite_utils.Database, node_id: str) -> list[int]:
    """At start-up: this node's claims (attempts cut short by a stop or a crash) are given
    back, due now, each recorded as an attempt that ended without an answer. Returns their
    ids."""
    with transaction(db) as conn:
        lock = " FOR UPDATE" if on_postgres(conn) else ""
        rows = conn.execute(
            "SELECT id, attempts FROM webhook_deliveries WHERE state='queued' AND claimed_by=?"
            f" AND lease_until IS NOT NULL ORDER BY id{lock}", (node_id,)).fetchall()
        for did, attempts in rows:
            conn.execute("UPDATE webhook_deliveries SET lease_until=NULL, next_attempt=0,"
                         " last_error=? WHERE id=?",
                         (f"attempt {attempts} was cut short by a restart", did))
            _attempt_row(conn, did, attempts, node_id, "retry", None, None,
                         "cut short by a restart before an answer was recorded", None)
        return [int(r[0]) for r in rows]


def claim_due(db: sqlite_utils.Database, limit: int, node_id: str, lease_seconds: float
              ) -> list[Delivery]:
    """Up to `limit` due deliveries (queued, due, and nobody's claim running), claimed by
    `node_id` until `lease_seconds` from now (the database's clock), oldest first."""
    with transaction(db) as conn:
        now = db_clock(conn)
        lock = " FOR UPDATE SKIP LOCKED" if on_postgres(conn) else ""
        rows = conn.execute(
            "SELECT id, event, webhook, COALESCE(url, ''), ticket_id, payload, attempts,"
            " created_ts FROM webhook_deliveries WHERE state='queued' AND next_attempt<=?"
            " AND (lease_until IS NULL OR lease_until<?)"
            f" ORDER BY id LIMIT ?{lock}", (now, now, limit)).fetchall()
        if rows:
            conn.executemany(
                "UPDATE webhook_deliveries SET attempts=attempts+1, claimed_by=?,"
                " lease_until=? WHERE id=?",
                [(node_id, now + lease_seconds, r[0]) for r in rows])
    return [Delivery(int(r[0]), r[1], r[2], r[3], r[4], r[5], int(r[6]) + 1, float(r[7]))
            for r in rows]


def _attempt_row(conn: Any, delivery_id: int, attempt: int, node_id: str, outcome: str,
                 status_code: int | None, address: str | None, error: str,
                 seconds: float | None) -> None:
    conn.execute(
        "INSERT INTO webhook_attempts (delivery_id, attempt, at, node, address, status_code,"
        " outcome, error, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (delivery_id, attempt, now_iso(), node_id, address, status_code, outcome, error,
         seconds))


def record(db: sqlite_utils.Database, delivery: Delivery, node_id: str, *, outcome: str,
           status_code: int | None = None, address: str | None = None, error: str = "",
           seconds: float | None = None, retry_in: float = 0.0) -> bool:
    """The attempt's audit row, and — while this attempt still holds the claim — the
    delivery's new state: `delivered`, `failed`, or queued again `retry_in` seconds from now.
    False when the claim was lost (another node took the row after the lease ran out: its
    attempt decides)."""
    if outcome not in OUTCOMES:
        raise ValueError(outcome)
    with transaction(db) as conn:
        now = db_clock(conn)
        _attempt_row(conn, delivery.id, delivery.attempts, node_id, outcome, status_code,
                     address, error, seconds)
        state = {"delivered": "delivered", "failed": "failed", "retry": "queued"}[outcome]
        cur = conn.execute(
            "UPDATE webhook_deliveries SET state=?, last_error=?, next_attempt=?,"
            " delivered_at=?, lease_until=NULL WHERE id=? AND claimed_by=? AND attempts=?"
            " AND state='queued'",
            (state, error, now + retry_in if outcome == "retry" else 0,
             now_iso(now) if outcome == "delivered" else None, delivery.id, node_id,
             delivery.attempts))
        return cur.rowcount == 1


def extend_lease(db: sqlite_utils.Database, delivery: Delivery, node_id: str,
                 lease_seconds: float) -> bool:
    with transaction(db) as conn:
        cur = conn.execute(
            "UPDATE webhook_deliveries SET lease_until=? WHERE id=? AND claimed_by=?"
            " AND attempts=? AND state='queued'",
            (db_clock(conn) + lease_seconds, delivery.id, node_id, delivery.attempts))
        return cur.rowcount == 1


def next_due_in(db: sqlite_utils.Database) -> float | None:
    """Seconds until the next queued delivery is due (0: now), None when there is none."""
    now = db_clock(db)
    row = db.execute(
        "SELECT MIN(CASE WHEN lease_until IS NOT NULL AND lease_until > next_attempt"
        " THEN lease_until ELSE next_attempt END) FROM webhook_deliveries"
        " WHERE state='queued'").fetchone()
    if row is None or row[0] is None:
        return None
    return max(0.0, float(row[0]) - now)


# --- the audit ------------------------------------------------------------------------------

_ATTEMPT_COLUMNS = (
    "a.id, a.at, a.delivery_id, d.event, d.webhook, d.url, d.ticket_id, a.attempt, a.outcome,"
    " a.status_code, a.address, a.error, a.seconds, a.node, d.state"
)


def _attempts_where(event: str | None = None, webhook: str | None = None,
                    ticket_id: int | None = None, outcome: str | None = None,
                    delivery_id: int | None = None, since: str | None = None,
                    until: str | None = None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("d.event", event), ("d.webhook", webhook),
                          ("d.ticket_id", ticket_id), ("a.outcome", outcome),
                          ("a.delivery_id", delivery_id)):
        if value is not None and value != "":
            where.append(f"{column} = ?")
            params.append(value)
    window, values = time_window("a.at", None, since, until)
    return where + window, params + values


_ATTEMPTS_FROM = "webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id"


def search_attempts(db: sqlite_utils.Database, *, limit: int = 50, offset: int = 0,
                    **filters: Any) -> list[dict[str, Any]]:
    """Attempts, newest first, filtered by `count_attempts`'s filters."""
    where, params = _attempts_where(**filters)
    sql = f"SELECT {_ATTEMPT_COLUMNS} FROM {_ATTEMPTS_FROM}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY a.id DESC LIMIT ? OFFSET ?"
    return list(db.query(sql, [*params, limit, offset]))


def count_attempts(db: sqlite_utils.Database, **filters: Any) -> int:
    """How many attempts match: `event`, `webhook` (its name), `ticket_id`, `outcome`,
    `delivery_id`, `since`/`until` (a day YYYY-MM-DD or an ISO time, of the attempt)."""
    where, params = _attempts_where(**filters)
    sql = f"SELECT COUNT(*) FROM {_ATTEMPTS_FROM}" + (
        " WHERE " + " AND ".join(where) if where else "")
    return int(db.execute(sql, params).fetchone()[0])


def deliveries(db: sqlite_utils.Database, state: str | None = None) -> list[dict[str, Any]]:
    """Every delivery (oldest first), for tests and `doctor`-like checks."""
    sql = ("SELECT id, event, webhook, ticket_id, state, attempts, last_error, payload,"
           " created_at, delivered_at FROM webhook_deliveries")
    params: list[Any] = []
    if state:
        sql += " WHERE state = ?"
        params.append(state)
    return list(db.query(sql + " ORDER BY id", params))
