"""Merging one ticket into another, splitting messages off into a new ticket, and the links
both leave.

Input: a connection inside the caller's transaction and ticket and message ids the caller has
checked exist (from an agent: trusted as a decision, not as a valid one — what the state
refuses is `Refused`). Output: the rows changed in place.

Merge B into A: B's messages (their attachments follow them), participants (the requester as
a copied one), the Message-IDs it sent or received and the mail we queued about it move to A;
B is closed with `merged_into` = A. The audit of incoming mail keeps naming B (it is the record
of what happened then). Mail that still reaches B — its reply token, our Message-IDs decoded
by their token, its subject tag — is forwarded by `resolve`, which the pipeline asks for every
ticket a message matched.

Split: one message of a ticket (and, optionally, every later one) moves to a new ticket with
the same requester, organization, mailbox and team, `linked_ticket_id` naming the old one; the
Message-IDs of the moved messages move with them, so replies to them land on the new ticket.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from mailgate.errors import NotFound, Refused
from mailgate.store.tickets import REMOVED, set_status

MAX_FORWARDS = 20  # a chain of merges longer than this is not followed further


def merged_into(conn: Any, ticket_id: int) -> int | None:
    row = conn.execute("SELECT merged_into FROM tickets WHERE id=?", (ticket_id,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def resolve(conn: Any, ticket_id: int) -> int:
    """The ticket that mail for `ticket_id` belongs on: itself, or the ticket it was merged
    into (followed along a chain of merges)."""
    seen = {ticket_id}
    for _ in range(MAX_FORWARDS):
        target = merged_into(conn, ticket_id)
        if target is None or target in seen:
            return ticket_id
        seen.add(target)
        ticket_id = target
    return ticket_id


def merge(conn: sqlite3.Connection, source: int, target: int, now: str) -> dict[str, int]:
    """Move ticket `source` into `target` (see the module docstring); how many messages,
    participants and Message-IDs moved."""
    if source == target:
        raise Refused(f"cannot merge ticket #{source} into itself")
    for ticket_id in (source, target):
        into = merged_into(conn, ticket_id)
        if into is not None:
            raise Refused(f"ticket #{ticket_id} was merged into #{into} already")
    moved = conn.execute("UPDATE messages SET ticket_id=? WHERE ticket_id=?",
                         (target, source)).rowcount
    conn.execute(
        "INSERT INTO participants (ticket_id, email, role, added_at) SELECT ?, email,"
        " CASE WHEN role = 'requester' THEN 'cc' ELSE role END, added_at FROM participants"
        " WHERE ticket_id=? AND role != ? ON CONFLICT DO NOTHING",
        (target, source, REMOVED))
    people = conn.execute("DELETE FROM participants WHERE ticket_id=?", (source,)).rowcount
    conn.execute(
        "INSERT INTO message_ids (message_id, ticket_id, message_row) SELECT message_id, ?,"
        " message_row FROM message_ids WHERE ticket_id=? ON CONFLICT DO NOTHING",
        (target, source))
    ids = conn.execute("DELETE FROM message_ids WHERE ticket_id=?", (source,)).rowcount
    conn.execute("UPDATE outbound SET ticket_id=? WHERE ticket_id=?", (target, source))
    set_status(conn, source, "closed", now)
    conn.execute("UPDATE tickets SET merged_into=?, updated_at=? WHERE id=?",
                 (target, now, source))
    conn.execute("UPDATE tickets SET updated_at=?, last_activity_at=? WHERE id=?",
                 (now, now, target))
    return {"messages": moved, "participants": people, "message_ids": ids}


def split(conn: sqlite3.Connection, ticket_id: int, message_row: int, with_later: bool,
          now: str) -> tuple[int, list[int]]:
    """Move message `message_row` of the ticket (and every later one with `with_later`) to a
    new ticket linked to it; (the new ticket's id, the moved message rows)."""
    into = merged_into(conn, ticket_id)
    if into is not None:
        raise Refused(f"ticket #{ticket_id} was merged into #{into}; split #{into} instead")
    row = conn.execute("SELECT ticket_id, subject FROM messages WHERE id=?",
                       (message_row,)).fetchone()
    if row is None or int(row[0]) != ticket_id:
        raise NotFound(f"no message #{message_row} on ticket #{ticket_id}")
    op = ">=" if with_later else "="
    rows = [int(r[0]) for r in conn.execute(
        f"SELECT id FROM messages WHERE ticket_id=? AND id {op} ? ORDER BY id",
        (ticket_id, message_row)).fetchall()]
    marks = ",".join("?" * len(rows))
    left = conn.execute(  # mail that stays (notes alone do not make a conversation)
        f"SELECT COUNT(*) FROM messages WHERE ticket_id=? AND direction != 'note'"
        f" AND id NOT IN ({marks})", (ticket_id, *rows)).fetchone()[0]
    if left == 0:
        later = " and the later ones" if with_later else ""
        raise Refused(f"splitting message #{message_row}{later} off would leave ticket"
                      f" #{ticket_id} without messages")
    old = conn.execute(
        "SELECT subject, requester_id, organization_id, mailbox, team, priority, tags"
        " FROM tickets WHERE id=?", (ticket_id,)).fetchone()
    subject = row[1] or old[0]
    new_id = int(conn.execute(
        "INSERT INTO tickets (subject, requester_id, status, created_at, updated_at,"
        " linked_ticket_id, last_activity_at, organization_id, mailbox, team, priority, tags)"
        " VALUES (?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (subject, old[1], now, now, ticket_id, now, old[2], old[3], old[4], old[5], old[6]),
    ).fetchone()[0])
    conn.execute(f"UPDATE messages SET ticket_id=? WHERE id IN ({marks})", (new_id, *rows))
    conn.execute(
        "UPDATE message_ids SET ticket_id=? WHERE ticket_id=? AND (message_row IN"
        f" ({marks}) OR message_id IN (SELECT message_id FROM messages WHERE id IN ({marks})"
        " AND message_id IS NOT NULL AND message_id != ''))",
        (new_id, ticket_id, *rows, *rows))
    conn.execute(
        "INSERT INTO participants (ticket_id, email, role, added_at) SELECT ?, email, role,"
        " added_at FROM participants WHERE ticket_id=? ON CONFLICT DO NOTHING",
        (new_id, ticket_id))
    conn.execute("UPDATE tickets SET updated_at=?, last_activity_at=? WHERE id=?",
                 (now, now, ticket_id))
    return new_id, rows


def links(db: Any, ticket_id: int) -> dict[str, Any]:
    """Both sides of a ticket's links: `merged_into` (or None), `merged_from` (the tickets
    merged into it) and `linked_from` (the tickets that name it as their linked ticket: split
    off it, or opened after it was closed)."""
    into = db.execute("SELECT merged_into FROM tickets WHERE id=?", [ticket_id]).fetchone()
    merged_from = db.execute("SELECT id FROM tickets WHERE merged_into=? ORDER BY id",
                             [ticket_id]).fetchall()
    linked_from = db.execute("SELECT id FROM tickets WHERE linked_ticket_id=? ORDER BY id",
                             [ticket_id]).fetchall()
    return {
        "merged_into": int(into[0]) if into and into[0] is not None else None,
        "merged_from": [int(r[0]) for r in merged_from],
        "linked_from": [int(r[0]) for r in linked_from],
    }
