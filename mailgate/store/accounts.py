"""Agent accounts in the database: credentials, sessions and failed sign-ins.

Input: the store (SQLite or PostgreSQL, trusted) and values already checked by the caller:
agent e-mails from the config, hashes made by `mailgate.ops.accounts` (this module never sees
a password or a token in clear), the SHA-256 of a session cookie's secret, and the client's
address. Output: rows read and written in one statement or one transaction each, alike on both
engines, so that every node sharing the database sees the same sessions and counts the same
failures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailgate.store.db import now_iso, transaction


@dataclass(frozen=True)
class Credentials:
    email: str
    password_hash: str | None
    password_set_at: str | None
    token_set_at: str | None


@dataclass(frozen=True)
class Session:
    id: str  # the SHA-256 of the cookie's secret
    email: str  # an agent's, or "admin-token"
    token_mark: str | None
    created_ts: float
    seen_ts: float
    expires_ts: float


# --- credentials ----------------------------------------------------------------------------


def credentials(db: Any, email: str) -> Credentials | None:
    row = db.execute("SELECT email, password_hash, password_set_at, token_set_at"
                     " FROM agent_credentials WHERE email = ?", (email,)).fetchone()
    return None if row is None else Credentials(*row)


def all_credentials(db: Any) -> dict[str, Credentials]:
    rows = db.execute("SELECT email, password_hash, password_set_at, token_set_at"
                      " FROM agent_credentials").fetchall()
    return {r[0]: Credentials(*r) for r in rows}


def set_password(db: Any, email: str, password_hash: str) -> int:
    """Store the agent's new password hash and end every session of the agent (sign-out
    everywhere), in one transaction. Returns how many sessions ended."""
    now = now_iso()
    with transaction(db) as conn:
        conn.execute(
            "INSERT INTO agent_credentials (email, password_hash, password_set_at)"
            " VALUES (?, ?, ?) ON CONFLICT (email) DO UPDATE SET"
            " password_hash = excluded.password_hash,"
            " password_set_at = excluded.password_set_at", (email, password_hash, now))
        ended = conn.execute("DELETE FROM agent_sessions WHERE email = ?", (email,)).rowcount
    return int(ended or 0)


def rehash_password(db: Any, email: str, old_hash: str, new_hash: str) -> None:
    """Replace a hash made with older parameters (the same password), if it is still the one
    stored: sessions are not ended, the password did not change."""
    db.execute("UPDATE agent_credentials SET password_hash = ? WHERE email = ?"
               " AND password_hash = ?", (new_hash, email, old_hash))


def set_token(db: Any, email: str, token_hash: str) -> None:
    db.execute(
        "INSERT INTO agent_credentials (email, token_hash, token_set_at) VALUES (?, ?, ?)"
        " ON CONFLICT (email) DO UPDATE SET token_hash = excluded.token_hash,"
        " token_set_at = excluded.token_set_at", (email, token_hash, now_iso()))


def email_for_token(db: Any, token_hash: str) -> str | None:
    row = db.execute("SELECT email FROM agent_credentials WHERE token_hash = ?",
                     (token_hash,)).fetchone()
    return None if row is None else str(row[0])


# --- sessions -------------------------------------------------------------------------------


def create_session(db: Any, session: Session, remote: str, keep_per_email: int) -> None:
    """Store a new session; beyond `keep_per_email` sessions of one e-mail the oldest end.
    Sessions whose absolute expiry passed are cleared on the way."""
    with transaction(db) as conn:
        conn.execute("DELETE FROM agent_sessions WHERE expires_ts < ?", (session.created_ts,))
        conn.execute(
            "INSERT INTO agent_sessions (id, email, token_mark, created_ts, seen_ts,"
            " expires_ts, remote) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (session.id, session.email, session.token_mark, session.created_ts,
             session.seen_ts, session.expires_ts, remote))
        rows = conn.execute("SELECT id FROM agent_sessions WHERE email = ?"
                            " ORDER BY created_ts DESC, id", (session.email,)).fetchall()
        for (old,) in rows[keep_per_email:]:
            conn.execute("DELETE FROM agent_sessions WHERE id = ?", (old,))


def session(db: Any, session_id: str) -> Session | None:
    row = db.execute("SELECT id, email, token_mark, created_ts, seen_ts, expires_ts"
                     " FROM agent_sessions WHERE id = ?", (session_id,)).fetchone()
    return None if row is None else Session(str(row[0]), str(row[1]), row[2], float(row[3]),
                                            float(row[4]), float(row[5]))


def touch_session(db: Any, session_id: str, now: float) -> None:
    db.execute("UPDATE agent_sessions SET seen_ts = ? WHERE id = ?", (now, session_id))


def end_session(db: Any, session_id: str) -> None:
    db.execute("DELETE FROM agent_sessions WHERE id = ?", (session_id,))


def session_counts(db: Any) -> dict[str, int]:
    rows = db.execute("SELECT email, COUNT(*) FROM agent_sessions GROUP BY email").fetchall()
    return {str(e): int(n) for e, n in rows}


# --- failed sign-ins ------------------------------------------------------------------------


def failures_since(db: Any, key: str, since: float) -> tuple[int, float | None]:
    """How many failures `key` had since `since`, and the oldest of them (when the count
    goes down again)."""
    row = db.execute("SELECT COUNT(*), MIN(at_ts) FROM login_failures WHERE key = ?"
                     " AND at_ts >= ?", (key, since)).fetchone()
    return int(row[0]), (None if row[1] is None else float(row[1]))


def record_failure(db: Any, keys: tuple[str, ...], now: float, forget_before: float) -> None:
    """One failed sign-in for each of `keys`; failures older than `forget_before` go."""
    with transaction(db) as conn:
        conn.execute("DELETE FROM login_failures WHERE at_ts < ?", (forget_before,))
        for key in keys:
            conn.execute("INSERT INTO login_failures (key, at_ts) VALUES (?, ?)", (key, now))


def clear_failures(db: Any, key: str) -> None:
    db.execute("DELETE FROM login_failures WHERE key = ?", (key,))
