"""Locks that make nodes sharing one PostgreSQL take turns on a conversation.

Input: a connection inside the pipeline's transaction and string keys (made from untrusted
headers by `threading.keys`; only their hash reaches the database). Output: on PostgreSQL,
each key's transaction-scoped advisory lock held (`pg_advisory_xact_lock`), taken in one
statement in ascending order — so two nodes never wait on each other in a circle — and
released by the commit or rollback. On SQLite nothing: `BEGIN IMMEDIATE` already holds the
whole database for one writer.

The locks decide who goes first; the unique indexes (one incoming copy of a message,
`uq_messages_incoming`; one customer per address) are the backstop: a message that still
collides is rolled back alone and tried again, and then finds the row the other node stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any


def key_id(key: str) -> int:
    """A key as the signed 64-bit number PostgreSQL's advisory locks take."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big",
                          signed=True)


def lock_keys(conn: Any, keys: Iterable[str]) -> int:
    """Hold the lock of every key until the transaction ends; how many were taken."""
    if getattr(conn, "dialect", "sqlite") != "postgresql":
        return 0
    ids = sorted({key_id(k) for k in keys})
    if ids:
        conn.execute("SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT unnest(?::bigint[])"
                     " AS k ORDER BY 1 OFFSET 0) AS ordered", (ids,))
    return len(ids)
