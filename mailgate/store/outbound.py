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

Several nodes on one database: a row is claimed by one node (`claimed_by`, its `[storage]
node_id`) until `lease_until` (the database's clock), the claim taken with FOR UPDATE SKIP
LOCKED on PostgreSQL so that two nodes never take the same row. Start-up settles only this
node's rows (and unclaimed ones from before revision 0002); the rows of a node whose lease ran
out (it died) are settled by whichever node sees them first (`settle_expired`), by the same
rule. The outcome of an attempt is written only while that attempt (node and attempt number)
still holds the row; when another node has taken it since, the outcome is dropped and the other
node's attempt decides (the mail may then arrive twice, with the same Message-ID; it is never
lost).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from mailgate.store.db import (
    like_pattern,
    now_iso,
    on_postgres,
    recipient_keys,
    time_window,
    transaction,
)

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
    """One more automatic mail for each of `keys` in this minute (one statement)."""
    minute = int(ts // 60)
    rows = conn.execute(
        "INSERT INTO auto_mail_counts (key, minute, shard, n) VALUES "
        + ", ".join(["(?, ?, ?, 1)"] * len(keys))
        + " ON CONFLICT (key, minute, shard) DO UPDATE SET n = auto_mail_counts.n + 1"
        " RETURNING key, n", [v for key in keys for v in (key, minute, SHARD)]).fetchall()
    if dict(rows).get("*") == 1:  # this process's first automatic mail this minute
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


def db_clock(conn: Any) -> float:
    """Now, in seconds since the epoch, by the database's clock on PostgreSQL (so that the
    leases several nodes stamp and compare do not depend on their clocks agreeing), by this
    host's on SQLite (one host)."""
    if on_postgres(conn):
        return float(conn.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())").fetchone()[0])
    return time.time()


def _settle_note(attempts: int, data_started_at: str | None, message_id: str, why: str) -> str:
    if data_started_at is not None:
        return (f"maybe sent: attempt {attempts} was cut short by {why} after DATA began at"
                f" {data_started_at}, before the relay's reply was recorded; it is resent with"
                f" the same Message-ID <{message_id.strip().strip('<>')}>, so the receiver can"
                " drop the copy")
    return f"attempt {attempts} was cut short by {why} before DATA (nothing was sent); retried"


def _settle(conn: Any, rows: list[tuple[Any, ...]], why: Callable[[str | None], str]
            ) -> list[tuple[int, bool, str]]:
    """Rows (id, attempts, data_started_at, message_id, claimed_by) left `sending` become
    deferred, due now, inside the caller's transaction. `claimed_by` stays (whose attempt it
    was); the lease is gone."""
    now = now_iso()
    settled = []
    for oid, attempts, data_started_at, message_id, claimed_by in rows:
        maybe = data_started_at is not None
        note = _settle_note(attempts, data_started_at, message_id, why(claimed_by))
        conn.execute(
            "UPDATE outbound SET status='deferred', next_attempt=0, updated_at=?,"
            " last_error=?, maybe_sent=maybe_sent+?, data_started_at=NULL, lease_until=NULL"
            " WHERE id=?",
            (now, note, int(maybe), oid))
        settled.append((int(oid), maybe, note))
    return settled


_SENDING = "SELECT id, attempts, data_started_at, message_id, claimed_by FROM outbound"


def recover(db: sqlite_utils.Database, node_id: str) -> list[tuple[int, bool, str]]:
    """At start-up, this node's attempts cut short by a crash become deferred (due now): the
    rows `sending` under `node_id`'s claim, and those with no claim at all (left by a
    mailgate from before revision 0002). Another node's rows are never touched here, however
    old: that node may be sending them right now (`settle_expired` takes them once their lease
    has run out). Returns one (outbound id, maybe sent, what the audit now says) per row:
    those cut short before DATA sent nothing and are simply retried; those cut short after
    DATA began may have been delivered ("maybe sent") and are resent with the same
    Message-ID."""
    with transaction(db) as conn:
        lock = " FOR UPDATE" if on_postgres(conn) else ""
        rows = conn.execute(
            f"{_SENDING} WHERE status='sending' AND (claimed_by=? OR claimed_by IS NULL)"
            f" ORDER BY id{lock}", (node_id,)).fetchall()
        return _settle(conn, rows, lambda _node: "a restart")


def settle_expired(db: sqlite_utils.Database, node_id: str, limit: int = 100
                   ) -> list[tuple[int, bool, str]]:
    """Rows another node left `sending` whose lease has run out (that node died, or lost the
    database for longer than one attempt may take) become deferred, due now, with the rule
    `recover` applies — whichever node sees them first. Returns what `recover` returns."""
    with transaction(db) as conn:
        now = db_clock(conn)
        lock = " FOR UPDATE SKIP LOCKED" if on_postgres(conn) else ""
        rows = conn.execute(
            f"{_SENDING} WHERE status='sending' AND lease_until < ? AND claimed_by <> ?"
            f" ORDER BY id LIMIT ?{lock}", (now, node_id, limit)).fetchall()
        return _settle(conn, rows, lambda node: f"node {node!r} (its lease ran out)")


def claim_due(db: sqlite_utils.Database, limit: int, node_id: str, lease_seconds: float
              ) -> list[OutboundMail]:
    """Up to `limit` due rows, marked `sending` under `node_id`'s claim until `lease_seconds`
    from now (the database's clock). On PostgreSQL the due rows are locked with FOR UPDATE
    SKIP LOCKED inside the claiming transaction, so nodes claiming at the same time never take
    the same row (each skips the rows the other is claiming); on SQLite the transaction holds
    the database's write lock, which does the same. `attempts` (counted up here) is the claim's
    number: the outcome writes below apply only to the attempt that holds it."""
    with transaction(db) as conn:
        now = db_clock(conn)
        lock = " FOR UPDATE SKIP LOCKED" if on_postgres(conn) else ""
        rows = conn.execute(
            "SELECT id, ticket_id, kind, to_addr, message_id, raw, attempts, created_ts,"
            " COALESCE(queue_id, ''), maybe_sent"
            " FROM outbound WHERE status='queued' OR (status='deferred' AND next_attempt<=?)"
            f" ORDER BY id LIMIT ?{lock}",
            (now, limit),
        ).fetchall()
        if rows:
            conn.executemany(
                "UPDATE outbound SET status='sending', attempts=attempts+1, updated_at=?,"
                " data_started_at=NULL, claimed_by=?, lease_until=? WHERE id=?",
                [(now_iso(now), node_id, now + lease_seconds, r[0]) for r in rows],
            )
    return [OutboundMail(r[0], r[1], r[2], r[3], r[4], r[5], r[6] + 1, r[7], r[8], r[9] or 0)
            for r in rows]


# The claim an outcome belongs to: this node's, this attempt's. `sending`: the claim holds.
# `deferred` with the same attempt number: another node settled it after the lease ran out,
# and nobody has claimed it since — the outcome of the attempt is still the truest word.
_HELD = "id=? AND claimed_by=? AND attempts=? AND status IN ('sending', 'deferred')"


def extend_lease(db: sqlite_utils.Database, outbound_id: int, node_id: str, attempt: int,
                 lease_seconds: float) -> bool:
    """Hold this attempt's claim until `lease_seconds` from now. False: the claim is gone."""
    with transaction(db) as conn:
        now = db_clock(conn)
        cur = conn.execute(
            "UPDATE outbound SET lease_until=? WHERE id=? AND claimed_by=? AND attempts=?"
            " AND status='sending'", (now + lease_seconds, outbound_id, node_id, attempt))
        return cur.rowcount == 1


def mark_data_started(db: sqlite_utils.Database, outbound_id: int, node_id: str, attempt: int,
                      lease_seconds: float) -> bool:
    """Committed just before DATA: from now on, a crash leaves the mail "maybe sent". The
    lease is extended to `lease_seconds` from now (the DATA phase's own time). False: this
    attempt no longer holds the claim (its lease ran out and another node took the row), and
    DATA must not be sent."""
    with transaction(db) as conn:
        now = db_clock(conn)
        cur = conn.execute(
            "UPDATE outbound SET data_started_at=?, updated_at=?, lease_until=? WHERE id=?"
            " AND status='sending' AND claimed_by=? AND attempts=?",
            (now_iso(now), now_iso(now), now + lease_seconds, outbound_id, node_id, attempt))
        return cur.rowcount == 1


def _outcome(db: sqlite_utils.Database, assignments: str, values: tuple[Any, ...],
             outbound_id: int, node_id: str, attempt: int,
             also: Callable[[Any], None] | None = None) -> bool:
    """`also`: more to write in the same transaction when the outcome was written."""
    with transaction(db) as conn:
        cur = conn.execute(f"UPDATE outbound SET {assignments}, lease_until=NULL WHERE {_HELD}",
                           (*values, outbound_id, node_id, attempt))
        held = cur.rowcount == 1
        if held and also is not None:
            also(conn)
        return held


def mark_sent(db: sqlite_utils.Database, outbound_id: int, reply: str, *, node_id: str,
              attempt: int) -> bool:
    """The relay took it — written only while attempt `attempt` of `node_id` holds the claim
    (or its row waits, settled, for a retry nobody has begun); False when another node has
    taken the row since: its attempt decides the row, and the mail may arrive twice with the
    same Message-ID (at-least-once)."""
    return _outcome(db, "status='sent', sent_at=?, updated_at=?, last_error=?,"
                    " data_started_at=NULL", (now_iso(), now_iso(), reply), outbound_id,
                    node_id, attempt)


def mark_deferred(db: sqlite_utils.Database, outbound_id: int, error: str, delay: float,
                  maybe_sent: bool = False, *, node_id: str, attempt: int) -> bool:
    """`maybe_sent`: the attempt ended without a reply after DATA began (counted). The claim
    rule of `mark_sent`."""
    return _outcome(db, "status='deferred', last_error=?, next_attempt=?, updated_at=?,"
                    " data_started_at=NULL, maybe_sent=maybe_sent+?",
                    (error, time.time() + delay, now_iso(), int(maybe_sent)), outbound_id,
                    node_id, attempt)


def mark_failed(db: sqlite_utils.Database, outbound_id: int, error: str,
                maybe_sent: bool = False, *, node_id: str, attempt: int,
                also: Callable[[Any], None] | None = None) -> bool:
    """The claim rule of `mark_sent`. `also(conn)` writes what the failure causes (the
    `outbound_failed` webhook event) in the same transaction."""
    return _outcome(db, "status='failed', last_error=?, updated_at=?, data_started_at=NULL,"
                    " maybe_sent=maybe_sent+?", (error, now_iso(), int(maybe_sent)),
                    outbound_id, node_id, attempt, also)


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


def _outgoing_where(status: str | None = None, ticket_id: int | None = None,
                    q: str | None = None, day: str | None = None, since: str | None = None,
                    until: str | None = None, address: str | None = None,
                    message_id: str | None = None, outbound_id: int | None = None
                    ) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if status:
        where.append("status = ?")
        params.append(status)
    if ticket_id is not None:
        where.append("ticket_id = ?")
        params.append(ticket_id)
    if outbound_id is not None:
        where.append("id = ?")
        params.append(outbound_id)
    if address and address.strip():
        where.append("lower(to_addr) = ?")
        params.append(address.strip().lower())
    if message_id and message_id.strip():
        where.append("message_id = ?")
        params.append(message_id.strip().strip("<>"))
    if q and q.strip():
        text = q.strip()
        pattern = like_pattern((text.strip("<>") or text).lower())
        where.append("(lower(to_addr) LIKE ? ESCAPE '\\' OR lower(subject) LIKE ? ESCAPE '\\'"
                     " OR lower(message_id) LIKE ? ESCAPE '\\')")
        params += [pattern] * 3
    window, values = time_window("created_at", day, since, until)
    return where + window, params + values


def search_outgoing(
    db: sqlite_utils.Database, *, limit: int = 50, before_id: int | None = None,
    offset: int = 0, **filters: Any,
) -> list[dict[str, Any]]:
    """Like `list_outgoing`, filtered by `count_outgoing`'s filters. Newest first; with
    `before_id` the rows older than that one (the next page), else from `offset`."""
    where, params = _outgoing_where(**filters)
    if before_id is not None:
        where.append("id < ?")
        params.append(before_id)
    sql = f"SELECT {_COLUMNS}, automatic FROM outbound"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
    params += [limit, offset]
    rows = list(db.query(sql, params))
    for r in rows:
        r["automatic"] = bool(r["automatic"])
    return rows


def count_outgoing(db: sqlite_utils.Database, **filters: Any) -> int:
    """How many rows match: `status`, `ticket_id`, `outbound_id`, `address` (the recipient,
    exactly), `message_id` (exactly), `q` (a substring of the recipient, the subject or the
    Message-ID), `day` (YYYY-MM-DD, UTC, of `created_at`) and `since`/`until`."""
    where, params = _outgoing_where(**filters)
    sql = "SELECT COUNT(*) FROM outbound" + (" WHERE " + " AND ".join(where) if where else "")
    return int(db.execute(sql, params).fetchone()[0])
