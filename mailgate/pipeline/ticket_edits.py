"""What people do to a ticket that sends no mail: an internal note, merging a ticket into
another, splitting messages off into a new ticket; and the canned replies that fill a reply.

Input: ticket and message ids, note text typed by an agent (stored as data, escaped wherever
shown) and `actor`: who did it — the agent's address, or "cli" / "api" until agents sign in (one
parameter, so the signed-in agent can be passed later). Output: the change committed in one
transaction with its record: a note (from `actor`, with the time) on each ticket concerned,
which is what `tickets show` and the ticket page show as the history of a merge or split.
Nothing here queues mail: a note reaches nobody, and closing a merged ticket runs no rules.
"""

from __future__ import annotations

from typing import Any

import sqlite_utils

from mailgate.errors import NotFound, UserError
from mailgate.model import Address
from mailgate.outbound.compose import display_name
from mailgate.outbound.mailer import MailContext
from mailgate.outbound.render import TemplateError
from mailgate.store import actions
from mailgate.store import merge as merging
from mailgate.store.db import now_iso, transaction
from mailgate.store.notes import add_note
from mailgate.store.tickets import ticket_row

MAX_NOTE = 100_000  # characters


def _ticket(conn: Any, ticket_id: int) -> dict[str, Any]:
    ticket = ticket_row(conn, ticket_id)
    if ticket is None:
        raise NotFound(f"no ticket #{ticket_id}")
    return ticket


def _actor(actor: str) -> str:
    actor = " ".join(actor.split())
    if not actor:
        raise UserError("who did it is not known (an agent's address, or cli / api)")
    return actor[:320]


def note(db: sqlite_utils.Database, ticket_id: int, actor: str, body: str) -> dict[str, Any]:
    """An internal note on the ticket: stored, shown to the team, mailed to nobody."""
    actor = _actor(actor)
    if not body.strip():
        raise UserError("the note is empty")
    if len(body) > MAX_NOTE:
        raise UserError(f"the note is longer than {MAX_NOTE} characters")
    with transaction(db) as conn:
        _ticket(conn, ticket_id)
        now = now_iso()
        row = add_note(conn, ticket_id, actor, body, now)
        actions.record(conn, ticket_id, actor, "note", message_row=row)
    return {"ticket_id": ticket_id, "message_row": row, "by": actor, "at": now}


def merge(db: sqlite_utils.Database, source: int, target: int, actor: str) -> dict[str, Any]:
    """Ticket `source` into `target`; a note on both says who merged them and when."""
    actor = _actor(actor)
    with transaction(db) as conn:
        src, dst = _ticket(conn, source), _ticket(conn, target)
        now = now_iso()
        moved = merging.merge(conn, source, target, now)
        add_note(conn, target, actor,
                 f"Ticket #{source} ({src['subject'] or 'no subject'}) was merged into this"
                 f" ticket by {actor}: {moved['messages']} message(s) moved here.", now, "merge")
        add_note(conn, source, actor,
                 f"Merged into ticket #{target} ({dst['subject'] or 'no subject'}) by {actor}."
                 " Mail to this ticket's reply address or about its messages lands there.",
                 now, "merge")
        actions.record(conn, source, actor, "merge", into=target)
        actions.record(conn, target, actor, "merge", source=source)
    return {"ticket_id": source, "merged_into": target, "by": actor, "at": now, **moved}


def split(db: sqlite_utils.Database, ticket_id: int, message_row: int, with_later: bool,
          actor: str) -> dict[str, Any]:
    """Message `message_row` (and the later ones with `with_later`) off into a new ticket
    linked to this one; a note on both says who split them and when."""
    actor = _actor(actor)
    with transaction(db) as conn:
        _ticket(conn, ticket_id)
        now = now_iso()
        new_id, rows = merging.split(conn, ticket_id, message_row, with_later, now)
        listed = ", ".join(f"#{r}" for r in rows)
        add_note(conn, ticket_id, actor,
                 f"Message(s) {listed} split off into ticket #{new_id} by {actor}.", now,
                 "split")
        add_note(conn, new_id, actor,
                 f"Split off ticket #{ticket_id} by {actor}: message(s) {listed}.", now,
                 "split")
        actions.record(conn, ticket_id, actor, "split", new_ticket=new_id, messages=rows)
        actions.record(conn, new_id, actor, "split", source=ticket_id, messages=rows)
    return {"ticket_id": ticket_id, "new_ticket_id": new_id, "messages": rows, "by": actor,
            "at": now}


def canned_names(mail: MailContext) -> list[str]:
    """The canned replies of the default mailbox's templates."""
    return mail.renderer.canned_names()


def canned(db: sqlite_utils.Database, mail: MailContext, ticket_id: int, name: str,
           agent: Address | None) -> dict[str, Any]:
    """Canned reply `name` rendered with the ticket's context (its mailbox's templates):
    `ticket` (id, subject, status, requester…), `customer` (name, email) and `agent` (name,
    email; empty when no agent is given). NotFound for an unknown ticket; UserError naming
    the template for an unknown reply or one that fails."""
    with transaction(db) as conn:
        ticket = _ticket(conn, ticket_id)
    ctx = mail.for_ticket(ticket)
    if name not in ctx.renderer.canned_names():
        known = ", ".join(ctx.renderer.canned_names()) or "none"
        raise NotFound(f"no canned reply {name!r} (there are: {known})")
    context = {
        "ticket": ctx.ticket_view(ticket),
        "customer": {"name": display_name(ticket["requester_name"] or ""),
                     "email": ticket["requester"]},
        "agent": {"name": display_name(agent.name) if agent else "",
                  "email": agent.email if agent else ""},
    }
    try:
        text = ctx.renderer.render_canned(name, context)
    except TemplateError as exc:
        raise UserError(str(exc)) from None
    return {"ticket_id": ticket_id, "name": name, "text": text}
