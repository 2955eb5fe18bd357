"""Locks that make nodes sharing one PostgreSQL take turns on a conversation.

Input: a connection inside the pipeline's transaction and string keys (made from untrusted
headers by `threading.keys`; only their hash reaches the database). Output: on PostgreSQL,
each key's transaction-scoped advisory lock held (`pg_advisory_xact_lock`), taken in one
statement in ascending order — so two nodes never wait on each other in a circle — and
released by the commit or rollback. On SQLite nothing: `BEGIN IMMEDIATE` already holds the
whole database for one writer. Also the scheduler's leadership: a session-level advisory lock
one node at a time holds (`take_leadership`, `holds_leadership`, `give_up_leadership`).

The locks decide who goes first; the unique indexes (one incoming copy of a message,
`uq_messages_incoming`; one customer per address) are the backstop: a message that still
collides is rolled back alone and tried again, and then finds the row the other node stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from mailgate.store.db import on_postgres


def key_id(key: str) -> int:
    """A key as the signed 64-bit number PostgreSQL's advisory locks take."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big",
                          signed=True)


def lock_keys(conn: Any, keys: Iterable[str]) -> int:
    """Hold the lock of every key until the transaction ends; how many were taken."""
    if not on_postgres(conn):
        return 0
    ids = sorted({key_id(k) for k in keys})
    if ids:
        conn.execute("SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT unnest(?::bigint[])"
                     " AS k ORDER BY 1 OFFSET 0) AS ordered", (ids,))
    return len(ids)


# --- leadership: one node at a time runs the scheduler ----------------------------------------
# A session-level advisory lock (two int4 keys, "mail" "sche") held on the leader's own
# connection: it goes with that session when the node stops or its connection dies.
LEADER_KEYS = (0x6D61696C, 0x73636865)
_TAKE = f"SELECT pg_try_advisory_lock({LEADER_KEYS[0]}, {LEADER_KEYS[1]})"
_HELD = ("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
         f" AND pid = pg_backend_pid() AND classid = {LEADER_KEYS[0]}"
         f" AND objid = {LEADER_KEYS[1]} AND objsubid = 2")
_GIVE = f"SELECT pg_advisory_unlock({LEADER_KEYS[0]}, {LEADER_KEYS[1]})"


def holds_leadership(db: Any) -> bool:
    """Whether `db`'s session still holds the leader's lock (always True on SQLite)."""
    return not on_postgres(db) or bool(db.execute(_HELD).fetchone()[0])


def take_leadership(db: Any) -> bool:
    """Take the leader's lock if no other session holds it; whether this session has it."""
    return not on_postgres(db) or bool(db.execute(_TAKE).fetchone()[0])


def give_up_leadership(db: Any) -> None:
    if on_postgres(db):
        db.execute(_GIVE)
