"""`mailgate audit incoming|outgoing` and `mailgate forwarding pending`: what was done and why.

Input: filters typed by an administrator. Output: rows of the incoming and outgoing audits, and
the forwarding confirmations waiting for a person (tables or JSON; mail values as data).
"""

from __future__ import annotations

import click

from mailgate.cli.base import (
    State,
    emit,
    json_option,
    pass_state,
)
from mailgate.store import audit
from mailgate.store import outbound as outbox

# --- audit ----------------------------------------------------------------------------------


@click.group("audit")
def audit_group() -> None:
    """What happened to each mail."""


@audit_group.command("incoming")
@click.option("--action", type=click.Choice(audit.ACTIONS), help="Only rows with this action.")
@click.option("--queue-id", help="Only the row of this queue id.")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@json_option
@pass_state
def audit_incoming(state: State, action: str | None, queue_id: str | None, limit: int,
                   as_json: bool) -> None:
    """Every mail that reached DATA: what was done with it and why, newest first."""
    rows = audit.list_incoming(state.db(), action=action, limit=limit, queue_id=queue_id)
    emit(rows, as_json, ["received_at", "queue_id", "mail_from", "from", "subject", "action",
                          "ticket_id", "reason"])


@audit_group.command("outgoing")
@click.option("--status", type=click.Choice(outbox.STATUSES), help="Only mail in this status.")
@click.option("--ticket", "ticket_id", type=int, help="Only mail about this ticket.")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@json_option
@pass_state
def audit_outgoing(state: State, status: str | None, ticket_id: int | None, limit: int,
                   as_json: bool) -> None:
    """Every mail we sent or decided not to send: delivery state and failure reason."""
    rows = outbox.list_outgoing(state.db(), status=status, ticket_id=ticket_id, limit=limit)
    emit(rows, as_json, ["id", "ticket_id", "kind", "to", "subject", "status", "attempts",
                          "last_error", "created_at", "sent_at"])


@click.group("forwarding")
def forwarding_group() -> None:
    """Forwarding confirmations (Gmail, Outlook) waiting for an administrator."""


@forwarding_group.command("pending")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@json_option
@pass_state
def forwarding_pending(state: State, limit: int, as_json: bool) -> None:
    """Confirmation mails received, with the code and the link that finish forwarding setup."""
    rows = []
    for r in audit.list_incoming(state.db(), action="forwarding_confirmation", limit=limit):
        d = r.get("details") or {}
        rows.append({"received_at": r["received_at"], "queue_id": r["queue_id"],
                     "from": r["from"], "subject": r["subject"],
                     "mailbox": state.config.support_mailboxes[0].address, **d})
    emit(rows, as_json, ["received_at", "mailbox", "provider", "code", "link", "subject"])
