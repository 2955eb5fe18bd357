"""`mailgate audit incoming|outgoing|webhooks` and `mailgate forwarding pending`: what was done
and why.

Input: filters typed by an administrator. Output: rows of the incoming and outgoing audits, the
webhooks' delivery attempts, and the forwarding confirmations waiting for a person (tables or
JSON; mail values and receivers' answers as data).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from mailgate.cli.base import (
    State,
    emit,
    json_option,
    pass_state,
    say_more,
)
from mailgate.config import WEBHOOK_EVENTS
from mailgate.errors import UserError
from mailgate.store import audit, retention, webhooks
from mailgate.store import outbound as outbox
from mailgate.store.db import time_window

# --- audit ----------------------------------------------------------------------------------


@click.group("audit")
def audit_group() -> None:
    """What happened to each mail."""


def _window_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The filters and paging both audits take."""
    for option in reversed((
        click.option("--address", metavar="EMAIL", help="Only mail from or to this address."),
        click.option("--message-id", metavar="ID", help="Only the mail with this Message-ID."),
        click.option("--since", metavar="DATE", help="From this day (YYYY-MM-DD) or time."),
        click.option("--until", metavar="DATE", help="Before this time, or up to and"
                     " including this day (YYYY-MM-DD)."),
        click.option("--limit", type=click.IntRange(1, 100000), default=50,
                     show_default=True),
        click.option("--offset", type=click.IntRange(0), default=0, show_default=True,
                     help="Skip this many matching rows (the next page: --offset 50)."),
    )):
        fn = option(fn)
    return fn


def _window(since: str | None, until: str | None) -> dict[str, str | None]:
    try:
        time_window("t", None, since, until)  # checks the two bounds
    except ValueError as exc:
        raise UserError(f"--{exc}") from None
    return {"since": since, "until": until}


@audit_group.command("incoming")
@click.option("--action", type=click.Choice(audit.ACTIONS), help="Only rows with this action.")
@click.option("--queue-id", help="Only the row of this queue id.")
@click.option("--ticket", "ticket_id", type=int, help="Only mail about this ticket.")
@_window_options
@json_option
@pass_state
def audit_incoming(state: State, action: str | None, queue_id: str | None,
                   ticket_id: int | None, address: str | None, message_id: str | None,
                   since: str | None, until: str | None, limit: int, offset: int,
                   as_json: bool) -> None:
    """Every mail that reached DATA: what was done with it and why, newest first."""
    filters = {"action": action, "queue_id": queue_id, "ticket_id": ticket_id,
               "address": address, "message_id": message_id, **_window(since, until)}
    db = state.db()
    rows = audit.search_incoming(db, limit=limit, offset=offset, **filters)
    emit(rows, as_json, ["received_at", "queue_id", "mail_from", "from", "subject", "action",
                          "ticket_id", "reason"])
    say_more(audit.count_incoming(db, **filters), offset, len(rows), "rows")


@audit_group.command("outgoing")
@click.option("--status", type=click.Choice(outbox.STATUSES), help="Only mail in this status.")
@click.option("--ticket", "ticket_id", type=int, help="Only mail about this ticket.")
@_window_options
@json_option
@pass_state
def audit_outgoing(state: State, status: str | None, ticket_id: int | None,
                   address: str | None, message_id: str | None, since: str | None,
                   until: str | None, limit: int, offset: int, as_json: bool) -> None:
    """Every mail we sent or decided not to send: delivery state and failure reason."""
    filters = {"status": status, "ticket_id": ticket_id, "address": address,
               "message_id": message_id, **_window(since, until)}
    db = state.db()
    rows = outbox.search_outgoing(db, limit=limit, offset=offset, **filters)
    emit(rows, as_json, ["id", "ticket_id", "kind", "to", "subject", "status", "attempts",
                          "last_error", "created_at", "sent_at"])
    say_more(outbox.count_outgoing(db, **filters), offset, len(rows), "rows")


@audit_group.command("webhooks")
@click.option("--event", type=click.Choice(WEBHOOK_EVENTS), help="Only this event.")
@click.option("--webhook", metavar="NAME", help="Only this webhook (its name, or its URL when"
              " it has none).")
@click.option("--ticket", "ticket_id", type=int, help="Only events about this ticket.")
@click.option("--outcome", type=click.Choice(webhooks.OUTCOMES),
              help="Only attempts with this outcome.")
@click.option("--delivery", "delivery_id", type=int, metavar="ID",
              help="Only the attempts of this delivery (its X-Mailgate-Delivery).")
@click.option("--since", metavar="DATE", help="From this day (YYYY-MM-DD) or time.")
@click.option("--until", metavar="DATE", help="Before this time, or up to and including this"
              " day (YYYY-MM-DD).")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True,
              help="Skip this many matching rows (the next page: --offset 50).")
@json_option
@pass_state
def audit_webhooks(state: State, event: str | None, webhook: str | None,
                   ticket_id: int | None, outcome: str | None, delivery_id: int | None,
                   since: str | None, until: str | None, limit: int, offset: int,
                   as_json: bool) -> None:
    """Every attempt to deliver a webhook event: the answer and what it led to, newest
    first."""
    filters = {"event": event, "webhook": webhook, "ticket_id": ticket_id, "outcome": outcome,
               "delivery_id": delivery_id, **_window(since, until)}
    db = state.db()
    rows = webhooks.search_attempts(db, limit=limit, offset=offset, **filters)
    emit(rows, as_json, ["at", "delivery_id", "event", "webhook", "ticket_id", "attempt",
                          "outcome", "status_code", "error"])
    say_more(webhooks.count_attempts(db, **filters), offset, len(rows), "attempts")


@audit_group.command("data")
@click.option("--action", type=click.Choice(("retention", "export", "erase")),
              help="Only rows of this action.")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True,
              help="Skip this many matching rows (the next page: --offset 50).")
@json_option
@pass_state
def audit_data(state: State, action: str | None, limit: int, offset: int,
               as_json: bool) -> None:
    """Retention runs, customer exports and erasures: when, who, counts, newest first."""
    db = state.db()
    rows, total = retention.list_actions(db, action, limit, offset)
    if not as_json:
        for r in rows:
            d = r["details"]
            r["counts"] = ", ".join(f"{k}={v}" for k, v in (d.get("counts", d)).items()
                                    if isinstance(v, int) and v)
    emit(rows, as_json, ["id", "at", "action", "actor", "subject", "counts"])
    say_more(total, offset, len(rows), "rows")


@click.group("forwarding")
def forwarding_group() -> None:
    """Forwarding confirmations (Gmail, Outlook) waiting for an administrator."""


@forwarding_group.command("pending")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True,
              help="Skip this many (the next page: --offset 50).")
@json_option
@pass_state
def forwarding_pending(state: State, limit: int, offset: int, as_json: bool) -> None:
    """Confirmation mails received, with the code and the link that finish forwarding setup."""
    rows = []
    db = state.db()
    found = audit.search_incoming(db, action="forwarding_confirmation", limit=limit,
                                  offset=offset)
    for r in found:
        d = r.get("details") or {}
        rows.append({"received_at": r["received_at"], "queue_id": r["queue_id"],
                     "from": r["from"], "subject": r["subject"],
                     "mailbox": state.config.support_mailboxes[0].address, **d})
    emit(rows, as_json, ["received_at", "mailbox", "provider", "code", "link", "subject"])
    say_more(audit.count_incoming(db, action="forwarding_confirmation"), offset, len(found),
             "confirmations")
