"""Secrets every node of an installation must hold alike, kept in the database they share.

Input: the store (PostgreSQL; trusted), a secret's name, and optionally this node's own copy
from an earlier single-node life (`data_dir/secret.key`). Output: the secret's bytes — the ones
the first node to ask stored (`INSERT … ON CONFLICT DO NOTHING`, then read back), so a reply
address or Message-ID signed on one node verifies on every other. Never logged.

On the embedded SQLite default there is one node and the secret stays the file
`data_dir/secret.key` (`store.files.load_or_create_secret`); `mailgate db copy` carries that
file's secret into the database it copies to, so the reply addresses already sent keep working.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mailgate.store.db import now_iso

log = logging.getLogger("mailgate.store")

REPLY_TOKENS = "reply-tokens"  # the HMAC secret of reply addresses, Message-IDs, VERP tokens
SECRET_FILE = "secret.key"
MIN_BYTES = 16


def put_if_absent(db: Any, name: str, value: bytes) -> bytes:
    """Store `value` under `name` unless a secret is stored there; return the stored one."""
    db.execute("INSERT INTO shared_secrets (name, value, created_at) VALUES (?, ?, ?)"
               " ON CONFLICT (name) DO NOTHING", (name, value, now_iso()))
    row = db.execute("SELECT value FROM shared_secrets WHERE name = ?", (name,)).fetchone()
    stored = bytes(row[0])
    if len(stored) < MIN_BYTES:
        raise ValueError(f"the shared secret {name!r} in the database is truncated")
    return stored


def reply_secret(db: Any, data_dir: Path) -> bytes:
    """The reply-token secret of an installation on PostgreSQL. A node that kept its own
    secret file before offers it (so the addresses it already sent keep verifying); the first
    secret stored wins, and a node whose file differs says so once."""
    path = data_dir / SECRET_FILE
    try:
        own: bytes | None = path.read_bytes()
    except FileNotFoundError:
        own = None
    if own is not None and len(own) < MIN_BYTES:
        own = None
    stored = put_if_absent(db, REPLY_TOKENS, own if own is not None else os.urandom(32))
    if own is not None and own != stored:
        log.warning("%s differs from the reply-token secret in the database; the database's"
                    " is used by every node (reply addresses signed with this file's secret"
                    " no longer verify)", path)
    return stored
