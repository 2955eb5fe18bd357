"""Internal notes: messages of their own kind on a ticket, for the team only.

Input: a connection inside the caller's transaction, a ticket id, who wrote the note (an agent's
address, or "cli"/"api" until agents sign in) and its text (an agent's words: stored as data,
escaped wherever shown). Output: one `messages` row with `direction` 'note' and `internal` 1 —
the kind the workflow rules' notes already have — which nothing ever mails: outgoing mail is
made only from an agent's reply, and the customer's view of a ticket (the mail we send) never
includes notes. `matched_by` says where it came from ('note' for an agent's note, 'merge' and
'split' for the record those actions leave on both tickets).
"""

from __future__ import annotations

import sqlite3

NOTE = "note"  # messages.direction of an internal note


def add_note(conn: sqlite3.Connection, ticket_id: int, actor: str, text: str, now: str,
             source: str = NOTE) -> int:
    """Store a note by `actor` on the ticket (the caller checked that it exists); its row id."""
    reason = {"merge": "merge record", "split": "split record"}.get(source, "internal note")
    cur = conn.execute(
        "INSERT INTO messages (ticket_id, direction, from_addr, from_name, to_addrs, cc_addrs,"
        " subject, text, reply_text, html, defects, matched_by, internal, internal_reason,"
        " created_at, classification) VALUES (?, ?, ?, ?, '[]', '[]', '', ?, ?, '', '[]', ?,"
        " 1, ?, ?, 'note') RETURNING id",
        (ticket_id, NOTE, actor, actor, text, text, source, f"{reason} by {actor}", now),
    )
    conn.execute("UPDATE tickets SET updated_at=? WHERE id=?", (now, ticket_id))
    return int(cur.fetchone()[0])
