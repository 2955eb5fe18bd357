"""The ticket workflow: what a threaded message does to its ticket.

Input: a `Situation` — the message's class, the ticket it matched (if any) and that ticket's
state, who the sender is to that ticket (agent, participant, stranger), whether an agent's mail
is authenticated as that agent, and the policy from the config. Output: a `Decision`: create a
ticket or append to one, as a customer message, an agent message or an internal note, the new
status, whether to acknowledge or relay, and the reason for the audit. Pure functions: the
pipeline looks things up and applies the decision.

Statuses: open (new, unassigned) → pending_customer (an agent replied) → pending_agent (the
customer replied); a customer reply to a resolved ticket reopens it; a reply to a ticket closed
more than `reopen_closed_days` ago opens a new ticket linked to the old one. Automatic replies,
strangers and mail to a ticket's internal-note address (where notifications to agents take
replies) never change a status and never cause mail to the customer. Nor does mail from an
agent's address unless it is authenticated as that agent (`agent_proof`): a From line is
anyone's to write, and an agent's words are sent on to the customer in our name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

AGENT = "agent"
PARTICIPANT = "participant"
STRANGER = "stranger"


@dataclass(frozen=True)
class Situation:
    kind: str  # classification: "normal" or "auto_reply" (other kinds never reach here)
    ticket_id: int | None  # the matched ticket, None for a new conversation
    ticket_status: str | None = None
    closed_days_ago: float | None = None
    sender_role: str = PARTICIPANT
    sender: str = ""
    strangers: str = "internal"  # [threading] strangers
    reopen_closed_days: float = 7.0
    unauthenticated: str = ""  # why the sender could not be trusted, "" when it could
    agent_auth: str = ""  # how an agent's mail was authenticated as that agent
    agent_refused: str = ""  # why an agent's mail may not reach the customer, "" when it may
    note_address: bool = False  # sent to the ticket's internal-note address (notifications)


@dataclass(frozen=True)
class Decision:
    action: str  # "create", "append" or "ignore"
    direction: str = "in"  # "out" for an agent's message
    internal_reason: str = ""  # non-empty: stored as an internal note
    new_status: str | None = None
    linked_ticket_id: int | None = None
    acknowledge: bool = False
    relay_agent_reply: bool = False
    reason: str = ""


def decide(s: Situation) -> Decision:
    if s.kind == "auto_reply":
        if s.ticket_id is None:
            return Decision("ignore", reason="automatic reply that matches no ticket: no ticket"
                                             " made, nothing answered")
        return Decision("append", internal_reason="automatic reply (out-of-office or similar):"
                        " no status change, not answered",
                        reason="automatic reply stored as an internal note")
    if s.note_address and s.ticket_id is not None:
        return Decision("append", internal_reason="sent to the ticket's internal-note address"
                        " (a reply to a notification): for the team only, sent to nobody",
                        reason="stored as an internal note: sent to the internal-note address")
    silent = ""  # why nothing may be sent to the customer of a new ticket
    if s.unauthenticated:
        silent = f"unauthenticated sender ({s.unauthenticated})"
    elif s.sender_role == AGENT and s.agent_refused:
        silent = f"mail from agent {s.sender}, {s.agent_refused}"
    if s.ticket_id is None:
        reason = f"{silent}: ticket made, nothing sent to the sender" if silent else ""
        return Decision("create", acknowledge=not silent, reason=reason)
    if (s.ticket_status == "closed" and s.closed_days_ago is not None
            and s.closed_days_ago > s.reopen_closed_days):
        return Decision(
            "create", linked_ticket_id=s.ticket_id, acknowledge=not silent,
            reason=(f"ticket #{s.ticket_id} was closed {s.closed_days_ago:.0f} days ago (more"
                    f" than reopen_closed_days = {s.reopen_closed_days:g}): new ticket linked"
                    " to it"),
        )
    if s.unauthenticated:
        return Decision("append", internal_reason=f"unauthenticated sender: {s.unauthenticated}",
                        reason="stored as an internal note: unauthenticated sender")
    if s.sender_role == AGENT:
        if s.agent_refused:
            return Decision("append", internal_reason=f"agent reply {s.agent_refused}",
                            reason="stored as an internal note, nothing sent to the customer:"
                                   f" agent reply {s.agent_refused}")
        return Decision("append", direction="out", new_status="pending_customer",
                        relay_agent_reply=True,
                        reason=f"agent reply by email from {s.sender} ({s.agent_auth}): sent on"
                               " to the customer")
    if s.sender_role == STRANGER:
        if s.strangers == "new_ticket":
            return Decision("create", acknowledge=True,
                            reason=f"{s.sender} is not a participant of ticket #{s.ticket_id}:"
                                   " new ticket ([threading] strangers = \"new_ticket\")")
        return Decision(
            "append",
            internal_reason=f"sender {s.sender or '(none)'} is not a participant of ticket"
                            f" #{s.ticket_id}",
            reason="stored as an internal note: the sender is not a participant",
        )
    reopened = s.ticket_status in ("resolved", "closed")
    return Decision(
        "append", new_status="pending_agent",
        reason=f"customer reply; ticket reopened (was {s.ticket_status})" if reopened else "",
    )


@dataclass(frozen=True)
class AgentProof:
    proven: bool
    detail: str  # how the mail was authenticated as the agent, or why it was not


def _ascii(domain: str) -> str:
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def agent_proof(agent: str, auth: Mapping[str, Any] | None, methods: tuple[str, ...],
                token: bool) -> AgentProof:
    """Is this mail from the agent `agent` (its From address) really that agent's?

    `auth`: the authentication stage's result (None when it did not run); `methods`: the
    agent's `reply_auth` — "dkim": a passing DKIM signature aligned with the agent's domain
    (DMARC's alignment: relaxed unless the domain's record says adkim=s; our own domains are
    judged the same way, so only our signature passes); "token": `token` says the mail went to
    the personal reply address made for this agent and this ticket. Any one suffices; no
    method: never. SPF and ARC do not count: neither proves who wrote the From line."""
    if not methods:
        return AgentProof(False, f"from {agent}: replies by email are off for this agent"
                                 " ([[agents]] reply_auth = [])")
    domain = agent.rpartition("@")[2]
    result = auth or {}
    dmarc = result.get("dmarc") or {}
    aligned = dmarc.get("dkim_aligned") or ""
    if ("dkim" in methods and aligned and result.get("verdict") != "fail"
            and dmarc.get("domain") in (domain, _ascii(domain))):
        return AgentProof(True, f"authenticated by a DKIM signature of {aligned} aligned with"
                                f" {domain}")
    if "token" in methods and token:
        return AgentProof(True, "authenticated by the agent's personal reply token")
    missing = []
    if "dkim" in methods:
        missing.append(f"no passing DKIM signature aligned with {domain}")
    if "token" in methods:
        missing.append("not sent to the agent's personal reply token")
    seen = (f"authentication {result.get('verdict')}: {result.get('reason')}" if auth
            else "no authentication result")
    return AgentProof(False, f"not authenticated as {agent}: {' and '.join(missing)} ({seen})")
