"""Customers, tickets, messages and attachments: the writes the pipeline makes and the reads
the CLI and the threading look-ups need.

Input: values already parsed and decided by the stages (untrusted text, stored as data, bound as
SQL parameters, never interpolated). Output: rows, and plain dicts for display. Write functions
take a connection inside a transaction opened by the caller (the pipeline), so one message's
changes and its audit row commit together.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

import sqlite_utils

from mailgate.errors import NotFound
from mailgate.model import Address, ParsedMail
from mailgate.store.spam import decode_verdict, verdict_field

STATUSES = ("open", "pending_customer", "pending_agent", "resolved", "closed")


def get_or_create_customer(conn: sqlite3.Connection, addr: Address, now: str) -> int:
    row = conn.execute("SELECT id, name FROM customers WHERE email=?", (addr.email,)).fetchone()
    if row:
        if addr.name and not row[1]:
            conn.execute("UPDATE customers SET name=? WHERE id=?", (addr.name, row[0]))
        return int(row[0])
    cur = conn.execute(
        "INSERT INTO customers (email, name, created_at) VALUES (?, ?, ?) RETURNING id",
        (addr.email, addr.name, now),
    )
    return int(cur.fetchone()[0])


def create_ticket(conn: sqlite3.Connection, subject: str, requester_id: int, now: str,
                  linked_ticket_id: int | None = None, mailbox: str | None = None) -> int:
    cur = conn.execute(
        "INSERT INTO tickets (subject, requester_id, status, assignee, created_at, updated_at,"
        " linked_ticket_id, last_activity_at, organization_id, mailbox) VALUES (?, ?, 'open',"
        " NULL, ?, ?, ?, ?, (SELECT organization_id FROM customers WHERE id=?), ?) RETURNING id",
        (subject, requester_id, now, now, linked_ticket_id, now, requester_id, mailbox),
    )
    return int(cur.fetchone()[0])


def add_participant(conn: sqlite3.Connection, ticket_id: int, email: str, role: str, now: str
                    ) -> None:
    conn.execute(
        "INSERT INTO participants (ticket_id, email, role, added_at) VALUES (?,?,?,?)"
        " ON CONFLICT DO NOTHING",
        (ticket_id, email.lower(), role, now),
    )


REMOVED = "removed"  # the role of a participant an agent took off the ticket


def is_participant(conn: sqlite3.Connection, ticket_id: int, email: str) -> bool:
    row = conn.execute("SELECT 1 FROM participants WHERE ticket_id=? AND email=? AND role!=?",
                       (ticket_id, email.lower(), REMOVED)).fetchone()
    return row is not None


def participants(conn: sqlite3.Connection, ticket_id: int) -> list[dict[str, str]]:
    """Everyone on the ticket, removed ones included (role `removed`), in the order added (the
    requester first, then by address within one second: the same on both engines)."""
    rows = conn.execute("SELECT email, role, added_at FROM participants WHERE ticket_id=?"
                        " ORDER BY added_at, CASE WHEN role = 'requester' THEN 0 ELSE 1 END, email",
                        (ticket_id,)).fetchall()
    return [{"email": r[0], "role": r[1], "added_at": r[2]} for r in rows]


def copied_participants(conn: sqlite3.Connection, ticket_id: int) -> list[str]:
    """Who an agent's reply is copied to (Cc): the participants but the requester and the
    removed ones."""
    return [p["email"] for p in participants(conn, ticket_id)
            if p["role"] not in ("requester", REMOVED)]


def set_participant_role(conn: sqlite3.Connection, ticket_id: int, email: str, role: str,
                         now: str) -> None:
    """Add `email` with `role`, or change the role it has (`removed` takes it off)."""
    conn.execute(
        "INSERT INTO participants (ticket_id, email, role, added_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(ticket_id, email) DO UPDATE SET role=excluded.role",
        (ticket_id, email.lower(), role, now))


def set_team(conn: sqlite3.Connection, ticket_id: int, team: str | None, now: str) -> None:
    conn.execute("UPDATE tickets SET team=?, updated_at=? WHERE id=?", (team, now, ticket_id))


def thread_index_of(conn: sqlite3.Connection, ticket_id: int) -> str | None:
    """The ticket's latest Thread-Index (base64), None before the first."""
    row = conn.execute("SELECT thread_index FROM tickets WHERE id=?", (ticket_id,)).fetchone()
    return row[0] if row and row[0] else None


def set_thread_index(conn: sqlite3.Connection, ticket_id: int, value: str) -> None:
    conn.execute("UPDATE tickets SET thread_index=? WHERE id=?", (value, ticket_id))


def ticket_exists(conn: sqlite3.Connection, ticket_id: int) -> bool:
    return conn.execute("SELECT 1 FROM tickets WHERE id=?", (ticket_id,)).fetchone() is not None


def touch_ticket(conn: sqlite3.Connection, ticket_id: int, now: str) -> None:
    """Something happened on the ticket (a message): resets the idle clock."""
    conn.execute("UPDATE tickets SET updated_at=?, last_activity_at=? WHERE id=?",
                 (now, now, ticket_id))


def mark_first_response(conn: sqlite3.Connection, ticket_id: int, now: str) -> None:
    conn.execute("UPDATE tickets SET first_response_at=COALESCE(first_response_at, ?)"
                 " WHERE id=?", (now, ticket_id))


def set_priority(conn: sqlite3.Connection, ticket_id: int, priority: str, now: str) -> None:
    conn.execute("UPDATE tickets SET priority=?, updated_at=? WHERE id=?",
                 (priority, now, ticket_id))


def set_tags(conn: sqlite3.Connection, ticket_id: int, tags: list[str], now: str) -> None:
    conn.execute("UPDATE tickets SET tags=?, updated_at=? WHERE id=?",
                 (json.dumps(sorted(set(tags))), now, ticket_id))



def _addr_json(addrs: tuple[Address, ...]) -> str:
    return json.dumps([a.email for a in addrs])


def add_incoming_message(
    conn: sqlite3.Connection,
    ticket_id: int,
    queue_id: str,
    parsed: ParsedMail,
    raw_path: str,
    matched_by: str,
    now: str,
    internal_reason: str = "",
    reply_text: str = "",
    classification: str = "normal",
    direction: str = "in",
    auth: dict[str, Any] | None = None,
    digest: str | None = None,
    thread_index: str | None = None,
) -> int:
    cur = conn.execute(
        "INSERT INTO messages (ticket_id, direction, queue_id, message_id, in_reply_to,"
        " references_, from_addr, from_name, to_addrs, cc_addrs, subject, date, text, html,"
        " raw_path, defects, matched_by, internal, internal_reason, created_at, reply_text,"
        " classification, auth, digest, thread_index)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " RETURNING id",
        (
            ticket_id, direction, queue_id, parsed.message_id, " ".join(parsed.in_reply_to),
            json.dumps(list(parsed.references)), parsed.from_.email, parsed.from_.name,
            _addr_json(parsed.to), _addr_json(parsed.cc), parsed.subject, parsed.date,
            parsed.text, parsed.html, raw_path, json.dumps(list(parsed.defects)), matched_by,
            1 if internal_reason else 0, internal_reason, now, reply_text or parsed.text,
            classification, json.dumps(auth) if auth else None, digest, thread_index,
        ),
    )
    row = int(cur.fetchone()[0])
    if parsed.message_id:
        index_message_id(conn, parsed.message_id, ticket_id, row)
    return row


def index_message_id(
    conn: sqlite3.Connection, message_id: str, ticket_id: int, row: int | None
) -> None:
    """Record that `ticket_id` sent or received `message_id` (one row per id and ticket: the
    same id may be on several tickets, when a sender reused it or a stranger used it first)."""
    conn.execute(
        "INSERT INTO message_ids (message_id, ticket_id, message_row) VALUES (?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (message_id, ticket_id, row),
    )


def add_attachment(
    conn: sqlite3.Connection, message_row: int, sha256: str, filename: str, content_type: str,
    size: int, content_id: str, inline: bool, details: Mapping[str, str] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO attachments (message_row, sha256, filename, content_type, size, content_id,"
        " inline, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (message_row, sha256, filename, content_type, size, content_id, int(inline),
         json.dumps(dict(details), ensure_ascii=False) if details else None),
    )


MAX_TICKETS_PER_ID = 20  # how many tickets sharing one Message-ID are looked at


def ticket_for_message_id(conn: sqlite3.Connection, message_id: str, sender: str = ""
                          ) -> int | None:
    """The ticket that sent or received `message_id`. When several did (the id was reused, or
    a stranger sent it first), the only one of them that `sender` takes part in; when that
    does not settle it, None — the id decides nothing, other evidence has to."""
    rows = conn.execute(
        "SELECT ticket_id FROM message_ids WHERE message_id=? ORDER BY ticket_id LIMIT ?",
        (message_id, MAX_TICKETS_PER_ID),
    ).fetchall()
    tickets = [int(r[0]) for r in rows]
    if len(tickets) <= 1:
        return tickets[0] if tickets else None
    mine = [t for t in tickets if sender and is_participant(conn, t, sender)]
    return mine[0] if len(mine) == 1 else None


def duplicate_of(conn: sqlite3.Connection, message_id: str, digest: str, from_addr: str
                 ) -> int | None:
    """The ticket holding the same message already: the same Message-ID, the same content
    digest and the same From address (never another sender's message with that id), among the
    messages that came in by mail. Messages stored before digests existed are compared by
    Message-ID and From alone."""
    row = conn.execute(
        "SELECT ticket_id FROM messages WHERE message_id=? AND from_addr=?"
        " AND queue_id IS NOT NULL AND (digest=? OR digest IS NULL) ORDER BY id LIMIT 1",
        (message_id, from_addr, digest),
    ).fetchone()
    return int(row[0]) if row else None


# --- reads for people -----------------------------------------------------------------------

TICKET_COLUMNS = (
    "t.id, t.subject, c.email AS requester, c.name AS requester_name, t.status, t.assignee,"
    " o.name AS organization, t.priority, t.tags, t.created_at, t.updated_at, t.closed_at,"
    " t.linked_ticket_id, t.first_response_at, t.resolved_at, t.mailbox, t.team,"
    " t.requester_id, t.imported_at"
)
TICKET_FROM = (
    "tickets t JOIN customers c ON c.id = t.requester_id"
    " LEFT JOIN organizations o ON o.id = t.organization_id"
)


def decode_ticket_row(row: dict[str, Any]) -> dict[str, Any]:
    row["tags"] = json.loads(row.get("tags") or "[]")
    row["organization"] = row.get("organization") or ""
    row["team"] = row.get("team") or ""
    return row


def get_ticket(db: sqlite_utils.Database, ticket_id: int) -> dict[str, Any]:
    rows = list(
        db.query(
            f"SELECT {TICKET_COLUMNS} FROM {TICKET_FROM} WHERE t.id = ?",
            [ticket_id],
        )
    )
    if not rows:
        raise NotFound(f"no ticket #{ticket_id}")
    ticket = decode_ticket_row(rows[0])
    messages = list(
        db.query(
            "SELECT id, direction, from_addr AS \"from\", from_name, to_addrs AS \"to\","
            " cc_addrs AS cc, subject, message_id, date, created_at, text, reply_text,"
            " matched_by, internal, internal_reason, classification, queue_id, raw_path,"
            " defects, outbound_id, auth, thread_index, " + verdict_field("messages") +
            " FROM messages WHERE ticket_id = ? ORDER BY id",
            [ticket_id],
        )
    )
    for m in messages:
        m["to"] = json.loads(m["to"] or "[]")
        m["cc"] = json.loads(m["cc"] or "[]")
        m["defects"] = json.loads(m["defects"] or "[]")
        m["auth"] = json.loads(m["auth"]) if m.get("auth") else None
        m["spam"] = decode_verdict(m)
        m["internal"] = bool(m["internal"])
        m["attachments"] = [
            _attachment(a) for a in db.query(
                f"SELECT {_ATTACHMENT_COLUMNS} FROM attachments WHERE message_row = ?"
                " ORDER BY id", [m["id"]])
        ]
    ticket["messages"] = messages
    ticket["participants"] = [
        r[0] for r in db.execute(
            "SELECT email FROM participants WHERE ticket_id=? AND role!=?"
            " ORDER BY added_at, email", [ticket_id, REMOVED]).fetchall()
    ]
    return ticket


_ATTACHMENT_COLUMNS = "id, filename, content_type, size, sha256, content_id, inline, details"


def _attachment(row: dict[str, Any]) -> dict[str, Any]:
    try:
        details = json.loads(row.get("details") or "{}")
    except ValueError:
        details = {}
    row["details"] = details if isinstance(details, dict) else {}
    row["inline"] = bool(row["inline"])
    return row


def get_attachment(db: sqlite_utils.Database, attachment_id: int,
                   message_row: int | None = None) -> dict[str, Any]:
    """One attachment with the message and ticket it belongs to. Raises NotFound when there
    is none, or when `message_row` is given and the attachment is not that message's."""
    rows = list(db.query(
        f"SELECT a.{_ATTACHMENT_COLUMNS.replace(', ', ', a.')}, a.message_row,"
        " m.ticket_id FROM attachments a JOIN messages m ON m.id = a.message_row"
        " WHERE a.id = ?", [attachment_id]))
    if not rows or (message_row is not None and rows[0]["message_row"] != message_row):
        where = f" on message {message_row}" if message_row is not None else ""
        raise NotFound(f"no attachment #{attachment_id}{where}")
    return _attachment(rows[0])


def get_message_source(db: sqlite_utils.Database, message_row: int) -> dict[str, Any]:
    """Where a message's raw .eml is: `raw_path` (relative to data_dir) for mail that came
    in, `outbound_id` for mail we sent. Raises NotFound when there is no such message."""
    rows = list(db.query(
        "SELECT id, ticket_id, direction, queue_id, raw_path, outbound_id FROM messages"
        " WHERE id = ?", [message_row]))
    if not rows:
        raise NotFound(f"no message #{message_row}")
    return rows[0]


def counts(db: sqlite_utils.Database) -> dict[str, Any]:
    tickets = db.execute("SELECT COUNT(*) FROM tickets").fetchone()[0]
    messages = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    by_status = dict(db.execute("SELECT status, COUNT(*) FROM tickets GROUP BY status").fetchall())
    return {"tickets": tickets, "messages": messages, "tickets_by_status": by_status}



# --- reads and writes inside a transaction, for outbound mail and agent actions ----------


def ticket_row(conn: sqlite3.Connection, ticket_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT t.id, t.subject, t.status, t.assignee, c.email, c.name, t.created_at,"
        " t.updated_at, t.closed_at, t.linked_ticket_id, t.priority, t.tags, o.name,"
        " t.organization_id, t.first_response_at, t.resolved_at, t.last_activity_at,"
        f" t.mailbox, t.team, t.imported_at FROM {TICKET_FROM} WHERE t.id=?",
        (ticket_id,),
    ).fetchone()
    if row is None:
        return None
    keys = ("id", "subject", "status", "assignee", "requester", "requester_name", "created_at",
            "updated_at", "closed_at", "linked_ticket_id", "priority", "tags", "organization",
            "organization_id", "first_response_at", "resolved_at", "last_activity_at",
            "mailbox", "team", "imported_at")
    ticket = dict(zip(keys, row, strict=True))
    ticket["tags"] = json.loads(ticket["tags"] or "[]")
    ticket["organization"] = ticket["organization"] or ""
    ticket["team"] = ticket["team"] or ""
    return ticket


def latest_customer_message(conn: sqlite3.Connection, ticket_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT id, message_id, references_, subject, text, from_addr, from_name FROM messages"
        " WHERE ticket_id=? AND direction='in' AND internal=0 ORDER BY id DESC LIMIT 1",
        (ticket_id,),
    ).fetchone()
    if row is None:
        return None
    return {
        "id": row[0], "message_id": row[1] or "", "references": tuple(json.loads(row[2] or "[]")),
        "subject": row[3] or "", "text": row[4] or "", "from": row[5] or "",
        "from_name": row[6] or "",
    }


def add_outgoing_message(
    conn: sqlite3.Connection, ticket_id: int, *, from_addr: str, from_name: str, to_addr: str,
    subject: str, text: str, message_id: str, in_reply_to: str, now: str,
    cc_addrs: tuple[str, ...] = (),
) -> int:
    cur = conn.execute(
        "INSERT INTO messages (ticket_id, direction, message_id, in_reply_to, references_,"
        " from_addr, from_name, to_addrs, cc_addrs, subject, text, html, defects, matched_by,"
        " internal, internal_reason, created_at)"
        " VALUES (?, 'out', ?, ?, '[]', ?, ?, ?, ?, ?, ?, '', '[]', 'agent', 0, '', ?)"
        " RETURNING id",
        (ticket_id, message_id, in_reply_to, from_addr, from_name, json.dumps([to_addr]),
         json.dumps(list(cc_addrs)), subject, text, now),
    )
    row = int(cur.fetchone()[0])
    index_message_id(conn, message_id, ticket_id, row)
    return row


def link_outbound(conn: sqlite3.Connection, message_row: int, outbound_id: int) -> None:
    conn.execute("UPDATE messages SET outbound_id=? WHERE id=?", (outbound_id, message_row))


def set_assignee(conn: sqlite3.Connection, ticket_id: int, assignee: str | None, now: str) -> None:
    conn.execute("UPDATE tickets SET assignee=?, updated_at=? WHERE id=?",
                 (assignee, now, ticket_id))


def set_status(conn: sqlite3.Connection, ticket_id: int, status: str, now: str) -> None:
    """Change the status; `closed_at` is set when a ticket is closed and cleared otherwise."""
    if status not in STATUSES:
        raise ValueError(status)
    conn.execute(
        "UPDATE tickets SET status=?, updated_at=?, last_activity_at=?,"
        " closed_at=CASE WHEN ?='closed' THEN COALESCE(closed_at, ?) ELSE NULL END,"
        " resolved_at=CASE WHEN ? IN ('resolved', 'closed') THEN COALESCE(resolved_at, ?)"
        " ELSE NULL END WHERE id=?",
        (status, now, now, status, now, status, now, ticket_id),
    )


# --- reads for the admin endpoint -----------------------------------------------------------


def message_html(db: sqlite_utils.Database, ticket_id: int) -> dict[int, str]:
    """Message row id → its HTML part (already sanitised with nh3 by the pipeline), for the
    messages of one ticket that have one."""
    rows = db.execute(
        "SELECT id, html FROM messages WHERE ticket_id=? AND html IS NOT NULL AND html != ''",
        [ticket_id],
    ).fetchall()
    return {int(r[0]): r[1] for r in rows}


def count_tickets(db: sqlite_utils.Database, *, statuses: tuple[str, ...] = (),
                  unassigned: bool = False, team: str | None = None) -> int:
    """How many tickets have these statuses, team and assignment (the dashboard, the teams)."""
    where: list[str] = []
    params: list[Any] = list(statuses)
    if statuses:
        where.append(f"status IN ({','.join('?' * len(statuses))})")
    if team:
        where.append("team = ?")
        params.append(team)
    if unassigned:
        where.append("assignee IS NULL")
    sql = "SELECT COUNT(*) FROM tickets" + (" WHERE " + " AND ".join(where) if where else "")
    return int(db.execute(sql, params).fetchone()[0])
