"""Agent accounts: passwords (Argon2), personal API tokens (SHA-256) and the sign-in check.

Input: the config's `[[agents]]` (trusted: who is an agent and their role), passwords and
tokens typed or presented by people (untrusted: only ever hashed or compared, never logged or
stored in clear), and the store. Output: hashes written through `mailgate.store.accounts`, a
new token shown once to the one who made it, and verdicts: which agent a password or a token
belongs to, or None. A password check costs the same whether the account exists or not (a
dummy hash is verified), so the answer's time does not tell which e-mails are agents.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from mailgate.config import Agent, Config
from mailgate.errors import UserError
from mailgate.store import accounts

MIN_PASSWORD = 10
MAX_PASSWORD = 1024
_HASHER = PasswordHasher()  # argon2id with the library's recommended parameters
_DUMMY = _HASHER.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class AgentAccount:
    email: str
    name: str
    role: str
    password: bool
    password_set_at: str | None
    token: bool
    token_set_at: str | None
    sessions: int


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def configured(config: Config, email: str) -> Agent:
    """The configured agent of `email`, else UserError (one line naming the config)."""
    agent = config.agent(email.strip())
    if agent is None:
        raise UserError(f"{email.strip()} is not a configured agent ([[agents]] in"
                        f" {config.path})")
    return agent


def check_password_text(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password is too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"the password is too long: at most {MAX_PASSWORD} characters")
    if password != password.strip() or any(c in password for c in "\r\n\0"):
        raise UserError("the password may not start or end with spaces, nor hold line breaks")


def set_password(db: Any, config: Config, email: str, password: str) -> int:
    """Hash and store the agent's password; every session of the agent ends. Returns how many
    sessions ended."""
    agent = configured(config, email)
    check_password_text(password)
    return accounts.set_password(db, agent.email, _HASHER.hash(password))


def new_token(db: Any, config: Config, email: str, rotate: bool) -> str:
    """A new personal API token for the agent (its hash stored; the token itself returned to
    be shown once). UserError when the agent has one already and `rotate` is not given."""
    agent = configured(config, email)
    found = accounts.credentials(db, agent.email)
    if found is not None and found.token_set_at and not rotate:
        raise UserError(f"{agent.email} has a token already (made {found.token_set_at}; it is"
                        " shown only when made): --rotate replaces it")
    token = "mga_" + secrets.token_urlsafe(32)
    accounts.set_token(db, agent.email, sha256(token))
    return token


def list_accounts(db: Any, config: Config) -> list[AgentAccount]:
    found = accounts.all_credentials(db)
    sessions = accounts.session_counts(db)
    out = []
    for agent in config.agents:
        c = found.get(agent.email)
        out.append(AgentAccount(
            email=agent.email, name=agent.name, role=agent.role,
            password=bool(c and c.password_hash), password_set_at=c and c.password_set_at,
            token=bool(c and c.token_set_at), token_set_at=c and c.token_set_at,
            sessions=sessions.get(agent.email, 0)))
    return out


def check_password(db: Any, config: Config, email: str, password: str) -> Agent | None:
    """The agent whose password this is, else None (an unknown e-mail, no password set, or the
    wrong one: the same time and the same answer for each)."""
    agent = config.agent(email.strip())
    found = accounts.credentials(db, agent.email) if agent is not None else None
    stored = found.password_hash if found is not None else None
    try:
        _HASHER.verify(stored or _DUMMY, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if agent is None or stored is None:
        return None
    if _HASHER.check_needs_rehash(stored):
        accounts.rehash_password(db, agent.email, stored, _HASHER.hash(password))
    return agent


def agent_for_token(db: Any, config: Config, token: str) -> Agent | None:
    """The configured agent whose personal API token this is, else None."""
    if not token.startswith("mga_") or len(token) > 200:
        return None
    email = accounts.email_for_token(db, sha256(token))
    return None if email is None else config.agent(email)
