"""The daemons that run on one database: who they are, where, and when each was last seen.

Input: the store (trusted), this node's `[storage] node_id` and where it runs (host and spool
path, from the config: trusted). Output: a `nodes` row per node — written at start (`register`)
and refreshed every `BEAT_SECONDS` (`beat`), taken away when the node stops cleanly (`leave`)
— and `recent()` for `doctor`. `register` refuses (one line) a node_id that another node,
elsewhere, used within `STALE_SECONDS`: two nodes under one name would each take the other's
outgoing mail in flight for their own after a restart. The same node restarting (same host
and spool) is welcome.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailgate.errors import UserError
from mailgate.store.db import now_iso, transaction

BEAT_SECONDS = 30.0
STALE_SECONDS = 3 * BEAT_SECONDS  # not seen for this long: the node is down (or stopped)


@dataclass(frozen=True)
class Node:
    node_id: str
    where: str  # "host spool-path"
    version: str
    started_at: str
    seen_at: str

    def seen_seconds_ago(self, now: float | None = None) -> float:
        seen = datetime.fromisoformat(self.seen_at.replace("Z", "+00:00")).timestamp()
        return max(0.0, (time.time() if now is None else now) - seen)

    @property
    def up(self) -> bool:
        return self.seen_seconds_ago() < STALE_SECONDS


def register(db: Any, node_id: str, where: str, version: str) -> None:
    now = now_iso()
    with transaction(db) as conn:
        row = conn.execute("SELECT hostname, seen_at FROM nodes WHERE node_id = ?",
                           (node_id,)).fetchone()
        if row is not None and row[0] != where:
            other = Node(node_id, row[0], "", "", row[1])
            if other.up:
                raise UserError(
                    f"[storage] node_id {node_id!r} is in use by another node ({row[0]}),"
                    f" seen {other.seen_seconds_ago():.0f} s ago: give each node its own"
                    " node_id")
        conn.execute(
            "INSERT INTO nodes (node_id, hostname, version, started_at, seen_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET"
            " hostname = excluded.hostname, version = excluded.version,"
            " started_at = excluded.started_at, seen_at = excluded.seen_at",
            (node_id, where, version, now, now))


def leave(db: Any, node_id: str, where: str) -> None:
    """A node that stops cleanly takes its row away: its name is free at once, and `doctor`
    lists only the nodes that run, or died."""
    db.execute("DELETE FROM nodes WHERE node_id = ? AND hostname = ?", (node_id, where))


def beat(db: Any, node_id: str) -> None:
    db.execute("UPDATE nodes SET seen_at = ? WHERE node_id = ?", (now_iso(), node_id))


def recent(db: Any) -> list[Node]:
    rows = db.execute("SELECT node_id, hostname, version, started_at, seen_at FROM nodes"
                      " ORDER BY node_id").fetchall()
    return [Node(*(str(v or "") for v in row)) for row in rows]
