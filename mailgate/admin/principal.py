"""Who a request acts for on the admin endpoint, and what that one may open and do.

Input: the verdict of `mailgate.admin.auth` (trusted: it checked the credentials) and request
paths and form values (untrusted). Output: `Principal` (the actor recorded on every change: an
agent's e-mail or `admin-token`; and the role), `may_open` (role `agent`: the dashboard, the
tickets and their downloads, the customers, the canned replies; role `admin`: everything),
and `reply_agent` (the agent a reply goes out as: the signed-in agent themselves; only the
shared admin token may name one).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.errors import UserError
from mailgate.store.actions import ADMIN_TOKEN

ADMIN = "admin"
AGENT = "agent"
# What role `agent` may open: these paths, and everything under them.
AGENT_PATHS = ("/tickets", "/messages", "/customers", "/api/tickets", "/api/messages",
               "/api/customers", "/api/canned")
AGENT_EXACT = frozenset({"/", "/logout", "/api/me", "/api/health"})


class Forbidden(UserError):
    """The request is authenticated but its role or identity may not do this (HTTP 403)."""


@dataclass(frozen=True)
class Principal:
    actor: str  # an agent's e-mail, or "admin-token"
    role: str  # "agent" or "admin"
    name: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    @property
    def is_token_holder(self) -> bool:
        return self.actor == ADMIN_TOKEN


TOKEN_HOLDER = Principal(ADMIN_TOKEN, ADMIN, "admin token")


def may_open(principal: Principal, path: str) -> bool:
    if principal.is_admin or path in AGENT_EXACT:
        return True
    return any(path == p or path.startswith(p + "/") for p in AGENT_PATHS)


def reply_agent(principal: Principal, named: str) -> str:
    """The agent a reply goes out as. An agent (by session or personal token) replies as
    themselves: `named` may be empty or their own address, anything else is Forbidden. The
    shared admin token names the agent (the caller checks it is one)."""
    if principal.is_token_holder:
        return named
    wanted = named.strip().lower()
    if wanted and wanted != principal.actor:
        raise Forbidden(f"you are signed in as {principal.actor}: a reply goes out as you, the"
                        f" agent field may not name {wanted}")
    return principal.actor
