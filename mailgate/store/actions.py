"""Who did what to a ticket: one `ticket_actions` row per change a person made.

Input: a connection inside the transaction that makes the change (so the record and the change
commit together), the ticket id, the actor (an agent's e-mail, `admin-token` or `cli`: set by
the caller from how the request was authenticated, never from a form field), the action and
its details (plain values, stored as JSON). Output: the rows, oldest first, for the API, the
CLI and the ticket page.
"""

from __future__ import annotations

import json
from typing import Any

from mailgate.store.db import now_iso

ACTIONS = ("reply", "assign", "status", "participant_add", "participant_remove", "note",
           "merge", "split", "tags")
ADMIN_TOKEN = "admin-token"  # the actor of a change made with the shared admin token
CLI = "cli"  # the actor of a change made on the command line


def record(conn: Any, ticket_id: int, actor: str, action: str, **details: Any) -> None:
    conn.execute("INSERT INTO ticket_actions (ticket_id, at, actor, action, details)"
                 " VALUES (?, ?, ?, ?, ?)",
                 (ticket_id, now_iso(), actor, action,
                  json.dumps(details, ensure_ascii=False, sort_keys=True)))


def for_ticket(db: Any, ticket_id: int, limit: int = 500) -> list[dict[str, Any]]:
    rows = db.execute("SELECT id, at, actor, action, details FROM ticket_actions"
                      " WHERE ticket_id = ? ORDER BY id LIMIT ?", (ticket_id, limit)).fetchall()
    return [{"id": r[0], "at": r[1], "actor": r[2], "action": r[3],
             "details": json.loads(r[4] or "{}")} for r in rows]
