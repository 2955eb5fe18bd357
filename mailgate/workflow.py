"""The ticket workflow: what a threaded message does to its ticket.

Input: a `Situation` — the message's class, the ticket it matched (if any) and that ticket's
state, who the sender is to that ticket (agent, participant, stranger), and the policy from the
config. Output: a `Decision`: create a ticket or append to one, as a customer message, an agent
message or an internal note, the new status, whether to acknowledge or relay, and the reason
for the audit. A pure function: the pipeline looks things up and applies the decision.

Statuses: open (new, unassigned) → pending_customer (an agent replied) → pending_agent (the
customer replied); a customer reply to a resolved ticket reopens it; a reply to a ticket closed
more than `reopen_closed_days` ago opens a new ticket linked to the old one. Automatic replies
and strangers never change a status and never cause mail to the customer.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    if s.ticket_id is None:
        reason = (f"unauthenticated sender ({s.unauthenticated}): ticket made, nothing sent to"
                  " the sender" if s.unauthenticated else "")
        return Decision("create", acknowledge=not s.unauthenticated, reason=reason)
    if (s.ticket_status == "closed" and s.closed_days_ago is not None
            and s.closed_days_ago > s.reopen_closed_days):
        return Decision(
            "create", linked_ticket_id=s.ticket_id, acknowledge=not s.unauthenticated,
            reason=(f"ticket #{s.ticket_id} was closed {s.closed_days_ago:.0f} days ago (more"
                    f" than reopen_closed_days = {s.reopen_closed_days:g}): new ticket linked"
                    " to it"),
        )
    if s.unauthenticated:
        return Decision("append", internal_reason=f"unauthenticated sender: {s.unauthenticated}",
                        reason="stored as an internal note: unauthenticated sender")
    if s.sender_role == AGENT:
        return Decision("append", direction="out", new_status="pending_customer",
                        relay_agent_reply=True,
                        reason=f"agent reply by email from {s.sender}: sent on to the customer")
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
