"""The outbox and the outgoing audit: one row per mail we send, or decided not to send.

Input: rendered messages from the pipeline or an agent action (written in the caller's
transaction, so a mail exists exactly when the change that caused it was committed), and
delivery results from the relay worker. Output: rows whose `status` is one of `queued`,
`sending`, `sent`, `deferred`, `failed`, `bounced`, `suppressed`; listings for the CLI.

`sending` marks an attempt in flight, and `data_started_at` is committed before the worker sends
DATA. A crash leaves the row `sending`, and start-up (`recover`) decides: an attempt cut short
before DATA sent nothing and is simply retried; one cut short after DATA began may have been
delivered ("maybe sent"): it is resent with the same Message-ID (so the receiver can drop the
copy), `maybe_sent` counts it, and `last_error` says so. Delivery is therefore at-least-once.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from mailgate.store.db import day_range, like_pattern, now_iso, recipient_keys, transaction

STATUSES = ("queued", "sending", "sent", "deferred", "failed", "bounced", "suppressed")


@dataclass(frozen=True)
class OutboundMail:
    id: int
    ticket_id: int | None
    kind: str
    to_addr: str
    message_id: str
    raw: bytes
    attempts: int
    created_ts: float
    queue_id: str = ""  # the incoming mail that caused it (acknowledgements), else ""
    maybe_sent: int = 0  # earlier attempts that ended without a reply after DATA began


def enqueue(
    conn: sqlite3.Connection, *, ticket_id: int | None, kind: str, automatic: bool, to_addr: str,
    subject: str, message_id: str, raw: bytes | None, status: str = "queued", reason: str = "",
    queue_id: str = "", sender: str = "", to_agent: bool = False,
) -> int:
    """Write an outbox row inside the caller's transaction. A `suppressed` or `failed` row
    records mail that will not be sent, with `reason`. `sender`: the agent whose words it
    carries (agent replies). Automatic mail that is queued is counted for the rate limits
    (`auto_mail_counts`): to its mailbox, and — unless it goes to an agent (`to_agent`) — to
    its domain and in all."""
    if status not in ("queued", "suppressed", "failed"):
        raise ValueError(status)
    ts = time.time()
    mailbox, domain = recipient_keys(to_addr)
    cur = conn.execute(
        "INSERT INTO outbound (ticket_id, kind, automatic, to_addr, subject, message_id, raw,"
        " status, attempts, last_error, created_at, created_ts, next_attempt, updated_at,"
        " queue_id, to_mailbox, to_domain, sender)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, 0, ?, ?, ?, ?, ?) RETURNING id",
        (ticket_id, kind, int(automatic), to_addr, subject, message_id, raw, status, reason,
         now_iso(ts), ts, now_iso(ts), queue_id, mailbox, domain, sender.lower()),
    )
    row = int(cur.fetchone()[0])
    if automatic and status == "queued":
        _count(conn, [f"m:{mailbox}"] if to_agent else [f"m:{mailbox}", f"d:{domain}", "*"],
               ts)
    return row


# Each process adds to rows of its own (nodes on one PostgreSQL never wait on the hot `*` row
# of a minute); the readers sum over all shards.
SHARD = os.getpid() % 64
KEEP_MINUTES = 120  # counters older than this are dropped (the limits look back one hour)


def _count(conn: sqlite3.Connection, keys: list[str], ts: float) -> None:
    minute = int(ts // 60)
    total = 0
    for key in keys:
        total = int(conn.execute(
            "INSERT INTO auto_mail_counts (key, minute, shard, n) VALUES (?, ?, ?, 1)"
            " ON CONFLICT (key, minute, shard) DO UPDATE SET n = auto_mail_counts.n + 1"
            " RETURNING n", (key, minute, SHARD)).fetchone()[0])
    if total == 1 and keys[-1] == "*":  # this process's first automatic mail this minute
        conn.execute("DELETE FROM auto_mail_counts WHERE minute < ?",
                     (minute - KEEP_MINUTES,))


def automatic_counts(conn: sqlite3.Connection, to_addr: str, since_ts: float
                     ) -> tuple[int, int, int]:
    """Automatic mails queued since `since_ts` (to the minute: up to 59 s more), as `enqueue`
    counted them: to the mailbox of `to_addr` (plus-part removed), to its domain and in all
    (the last two without the mail to agents). Each is a sum over at most an hour of
    per-minute counters, whatever the hour's mail. A mail that later failed or bounced still
    counts: the limits are on what was sent out, or tried."""
    mailbox, domain = recipient_keys(to_addr)
    minute = int(since_ts // 60)
    found = dict(conn.execute(
        "SELECT key, SUM(n) FROM auto_mail_counts WHERE key IN (?, ?, ?) AND minute >= ?"
        " GROUP BY key", (f"m:{mailbox}", f"d:{domain}", "*", minute)).fetchall())
    return (int(found.get(f"m:{mailbox}") or 0), int(found.get(f"d:{domain}") or 0),
            int(found.get("*") or 0))


def agent_replies_by_email_since(conn: sqlite3.Connection, agent: str, since_ts: float) -> int:
    """How many of `agent`'s replies by email (an agent_reply caused by an incoming mail) were
    queued or sent since `since_ts` (their rate limit)."""
    row = conn.execute(
        "SELECT COUNT(*) FROM outbound WHERE sender=? AND kind='agent_reply' AND created_ts>=?"
        " AND COALESCE(queue_id, '') != '' AND status NOT IN ('suppressed', 'failed')",
        (agent.lower(), since_ts),
    ).fetchone()
    return int(row[0])


def outbound_for_message_id(conn: sqlite3.Connection, message_id: str) -> int | None:
    row = conn.execute("SELECT id FROM outbound WHERE message_id=? ORDER BY id DESC LIMIT 1",
                       (message_id,)).fetchone()
    return int(row[0]) if row else None


def sent_with_message_id(conn: sqlite3.Connection, message_id: str
                         ) -> tuple[int, int | None] | None:
    """(id, ticket id) of our mail with this Message-ID that went or is going out, else None."""
    row = conn.execute(
        "SELECT id, ticket_id FROM outbound WHERE message_id=?"
        " AND status NOT IN ('suppressed', 'failed') ORDER BY id DESC LIMIT 1",
        (message_id,)).fetchone()
    return (int(row[0]), row[1]) if row else None


def recover(db: sqlite_utils.Database) -> list[tuple[int, bool, str]]:
    """At start-up, attempts cut short by a crash become deferred (due now). Returns one
    (outbound id, maybe sent, what the audit now says) per row: those cut short before DATA
    sent nothing and are simply retried; those cut short after DATA began may have been
    delivered ("maybe sent") and are resent with the same Message-ID."""
    now = now_iso()
    with transaction(db) as conn:
        rows = conn.execute(
            "SELECT id, attempts, data_started_at, message_id FROM outbound"
            " WHERE status='sending'").fetchall()
        settled = []
        for oid, attempts, data_started_at, message_id in rows:
            maybe = data_started_at is not None
            if maybe:
                note = (f"maybe sent: attempt {attempts} was cut short by a restart after DATA"
                        f" began at {data_started_at}, before the relay's reply was recorded;"
                        f" it is resent with the same Message-ID"
                        f" <{message_id.strip().strip('<>')}>, so the receiver can drop the"
                        " copy")
            else:
                note = (f"attempt {attempts} was cut short by a restart before DATA (nothing"
                        " was sent); retried")
            conn.execute(
                "UPDATE outbound SET status='deferred', next_attempt=0, updated_at=?,"
                " last_error=?, maybe_sent=maybe_sent+?, data_started_at=NULL WHERE id=?",
                (now, note, int(maybe), oid))
            settled.append((oid, maybe, note))
    return settled


def claim_due(db: sqlite_utils.Database, limit: int = 20) -> list[OutboundMail]:
    now = time.time()
    with transaction(db) as conn:
        rows = conn.execute(
            "SELECT id, ticket_id, kind, to_addr, message_id, raw, attempts, created_ts,"
            " COALESCE(queue_id, ''), maybe_sent"
            " FROM outbound WHERE status='queued' OR (status='deferred' AND next_attempt<=?)"
            " ORDER BY id LIMIT ?",
            (now, limit),
        ).fetchall()
        conn.executemany(
            "UPDATE outbound SET status='sending', attempts=attempts+1, updated_at=?,"
            " data_started_at=NULL WHERE id=?",
            [(now_iso(now), r[0]) for r in rows],
        )
    return [OutboundMail(r[0], r[1], r[2], r[3], r[4], r[5], r[6] + 1, r[7], r[8], r[9] or 0)
            for r in rows]


def mark_data_started(db: sqlite_utils.Database, outbound_id: int) -> None:
    """Committed just before DATA: from now on, a crash leaves the mail "maybe sent"."""
    with transaction(db) as conn:
        conn.execute(
            "UPDATE outbound SET data_started_at=?, updated_at=? WHERE id=? AND status='sending'",
            (now_iso(), now_iso(), outbound_id),
        )


def mark_sent(db: sqlite_utils.Database, outbound_id: int, reply: str) -> None:
    with transaction(db) as conn:
        conn.execute(
            "UPDATE outbound SET status='sent', sent_at=?, updated_at=?, last_error=?,"
            " data_started_at=NULL WHERE id=?",
            (now_iso(), now_iso(), reply, outbound_id),
        )


def mark_deferred(db: sqlite_utils.Database, outbound_id: int, error: str, delay: float,
                  maybe_sent: bool = False) -> None:
    """`maybe_sent`: the attempt ended without a reply after DATA began (counted)."""
    with transaction(db) as conn:
        conn.execute(
            "UPDATE outbound SET status='deferred', last_error=?, next_attempt=?, updated_at=?,"
            " data_started_at=NULL, maybe_sent=maybe_sent+? WHERE id=?",
            (error, time.time() + delay, now_iso(), int(maybe_sent), outbound_id),
        )


def mark_failed(db: sqlite_utils.Database, outbound_id: int, error: str,
                maybe_sent: bool = False) -> None:
    with transaction(db) as conn:
        conn.execute(
            "UPDATE outbound SET status='failed', last_error=?, updated_at=?,"
            " data_started_at=NULL, maybe_sent=maybe_sent+? WHERE id=?",
            (error, now_iso(), int(maybe_sent), outbound_id),
        )


def mark_bounced(conn: sqlite3.Connection, outbound_id: int, status: str, diagnostic: str
                 ) -> bool:
    """Inside the caller's transaction: the mail came back as a DSN. False if no such mail."""
    cur = conn.execute(
        "UPDATE outbound SET status='bounced', dsn_status=?, last_error=?, updated_at=?"
        " WHERE id=?",
        (status, diagnostic, now_iso(), outbound_id),
    )
    return cur.rowcount == 1


def next_due_in(db: sqlite_utils.Database) -> float | None:
    row = db.execute(
        "SELECT MIN(CASE WHEN status='queued' THEN 0 ELSE next_attempt END) FROM outbound"
        " WHERE status IN ('queued', 'deferred')"
    ).fetchone()
    if row is None or row[0] is None:
        return None
    return max(0.0, row[0] - time.time())


_COLUMNS = (
    "id, ticket_id, kind, to_addr AS \"to\", subject, message_id, status, attempts, last_error,"
    " maybe_sent, dsn_status, created_at, sent_at"
)


def list_outgoing(
    db: sqlite_utils.Database, status: str | None = None, ticket_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    return search_outgoing(db, status=status, ticket_id=ticket_id, limit=limit)


def get_raw(db: sqlite_utils.Database, outbound_id: int) -> bytes | None:
    row = db.execute("SELECT raw FROM outbound WHERE id=?", [outbound_id]).fetchone()
    return row[0] if row else None


def counts_by_status(db: sqlite_utils.Database) -> dict[str, int]:
    rows = db.execute("SELECT status, COUNT(*) FROM outbound GROUP BY status").fetchall()
    return dict(rows)


# --- searches for the admin endpoint (q over address, subject, Message-ID; a day) ----------


def search_outgoing(
    db: sqlite_utils.Database, *, status: str | None = None, ticket_id: int | None = None,
    q: str | None = None, day: str | None = None, limit: int = 50,
) -> list[dict[str, Any]]:
    """Like `list_outgoing`, plus `q` (a substring of the recipient, the subject or the
    Message-ID) and `day` (YYYY-MM-DD, UTC, of `created_at`). Newest first."""
    where, params = [], []
    if status:
        where.append("status = ?")
        params.append(status)
    if ticket_id is not None:
        where.append("ticket_id = ?")
        params.append(ticket_id)
    if q and q.strip():
        text = q.strip()
        pattern = like_pattern((text.strip("<>") or text).lower())
        where.append("(lower(to_addr) LIKE ? ESCAPE '\\' OR lower(subject) LIKE ? ESCAPE '\\'"
                     " OR lower(message_id) LIKE ? ESCAPE '\\')")
        params += [pattern] * 3
    if day:
        start, end = day_range(day)
        where += ["created_at >= ?", "created_at < ?"]
        params += [start, end]
    sql = f"SELECT {_COLUMNS}, automatic FROM outbound"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ?"
    params.append(limit)
    rows = list(db.query(sql, params))
    for r in rows:
        r["automatic"] = bool(r["automatic"])
    return rows
