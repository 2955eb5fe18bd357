"""`mailgate tickets …`: list, show, export, reply to (with attachments, or a canned reply),
set the status of and assign tickets, manage their participants, add internal notes, merge and
split tickets.

Input: ticket and message ids, agent addresses and reply text typed by an administrator.
Output: tables or JSON (`--json`); values that came from mail are printed as data. Changes go
through the library (`ops.app.desk`), one transaction each.
"""

from __future__ import annotations

import mimetypes
import sys
from pathlib import Path
from typing import Any

import click

from mailgate.cli.base import (
    State,
    cell,
    emit,
    json_option,
    pass_state,
    say_more,
    spam_line,
)
from mailgate.config import PRIORITIES
from mailgate.errors import UserError
from mailgate.model import Address, Upload
from mailgate.ops import app
from mailgate.pipeline import ticket_edits
from mailgate.store import actions, downloads, search, tickets
from mailgate.store import merge as merging

# --- tickets ------------------------------------------------------------------------------


@click.group("tickets")
def tickets_group() -> None:
    """List and inspect tickets."""


@tickets_group.command("list")
@click.argument("words", nargs=-1)
@click.option("--status", type=click.Choice(tickets.STATUSES), help="Only tickets in this status.")
@click.option("--unassigned", is_flag=True, help="Only tickets nobody is assigned to.")
@click.option("--assignee", metavar="EMAIL", help="Only tickets assigned to this agent.")
@click.option("--org", metavar="NAME", help="Only tickets of this organization.")
@click.option("--team", metavar="NAME", help="Only tickets of this team ([[teams]]).")
@click.option("--breached", is_flag=True, help="Only tickets whose SLA is breached.")
@click.option("--mailbox", metavar="ADDRESS",
              help="Only tickets of this mailbox (its address or public_address).")
@click.option("--tag", metavar="TAG", help="Only tickets with this tag.")
@click.option("--priority", type=click.Choice(PRIORITIES), help="Only tickets of this priority.")
@click.option("--since", metavar="DATE", help="Only tickets created on or after this day"
              " (YYYY-MM-DD) or time (ISO 8601).")
@click.option("--until", metavar="DATE", help="Only tickets created before this time, or up to"
              " and including this day (YYYY-MM-DD).")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True,
              help="Skip this many matching tickets (the next page: --offset 50).")
@json_option
@pass_state
def tickets_list(state: State, words: tuple[str, ...], status: str | None, unassigned: bool,
                 assignee: str | None, org: str | None, team: str | None, breached: bool,
                 mailbox: str | None, tag: str | None, priority: str | None,
                 since: str | None, until: str | None, limit: int, offset: int,
                 as_json: bool) -> None:
    """Tickets, most recently updated first; WORDS searches subjects, messages (internal notes
    too) and customers' names and addresses (every word must match; `word*` a prefix). Says
    how many more there are when the list goes on."""
    cfg = state.config
    if mailbox is not None:
        wanted = mailbox.strip().lower()
        box = next((m for m in cfg.support_mailboxes if wanted in m.addresses()), None)
        if box is None:
            known = ", ".join(a for m in cfg.support_mailboxes for a in m.addresses())
            raise UserError(f"no mailbox {mailbox!r} in {cfg.path} (mailboxes: {known})")
        mailbox = box.address
    team_name = None
    if team is not None:
        found = cfg.team(team)
        if found is None:
            raise UserError(f"no team {team!r} ([[teams]] in {cfg.path})")
        team_name = found.name
    wanted_tickets = search.TicketFilter(
        q=" ".join(words), statuses=(status,) if status else (), assignee=assignee,
        unassigned=unassigned, team=team_name, mailbox=mailbox,
        default_mailbox=cfg.support_mailboxes[0].address, org=org, tag=tag,
        priority=priority, since=since, until=until, breached=breached)
    found_page = search.search_tickets(
        state.db(), wanted_tickets, limit=limit, offset=offset,
        is_breached=app.sla_breached(cfg) if breached else None)
    rows = found_page.rows
    for r in rows:
        r["status_label"] = state.config.status_label(r["status"])
        app.describe_mailbox(cfg, r)
    table = [{**r, "status": r["status_label"]} for r in rows]  # people see the labels
    columns = ["id", "subject", "requester", "organization", "status", "priority", "team",
               "assignee", "created_at", "updated_at"]
    if len(cfg.support_mailboxes) > 1:
        columns.insert(3, "mailbox")
    emit(rows if as_json else table, as_json, columns)
    say_more(found_page.total, offset, len(rows), "tickets")


@tickets_group.command("show")
@click.argument("ticket_id", type=int)
@json_option
@pass_state
def tickets_show(state: State, ticket_id: int, as_json: bool) -> None:
    """One ticket with its messages and attachments."""
    ticket = tickets.get_ticket(state.db(), ticket_id)
    cfg = state.config
    app.describe_mailbox(cfg, ticket)
    ticket["reply_address"] = app.mail_context(cfg).for_ticket(ticket).reply_address(ticket_id)
    ticket["sla"] = app.automation(cfg, None).sla(ticket)
    ticket.update(merging.links(state.db(), ticket_id))
    if as_json:
        emit(ticket, True)
        return
    click.echo(f"#{ticket['id']} {cell(ticket['subject'], 200)}")
    for key in ("status", "requester", "mailbox", "mailbox_from", "organization", "priority",
                "tags", "team", "assignee", "participants", "reply_address", "sla", "created_at",
                "updated_at"):
        click.echo(f"  {key}: {cell(ticket[key], 200)}")
    for key in ("merged_into", "merged_from", "linked_ticket_id", "linked_from"):
        if ticket[key]:
            click.echo(f"  {key}: {cell(ticket[key], 200)}")
    for m in ticket["messages"]:
        flag = (" [internal note]" if m["direction"] == "note"
                else " [internal]" if m["internal"] else "")
        click.echo(f"\n--- message {m['id']} ({m['direction']}, matched by {m['matched_by']})"
                   f"{flag} {m['created_at']}")
        click.echo(f"From: {cell(m['from'], 200)}\nTo: {cell(m['to'], 200)}")
        click.echo(f"Subject: {cell(m['subject'], 200)}\nMessage-ID: {m['message_id'] or '-'}")
        if m.get("spam"):
            click.echo(f"Spam: {spam_line(m['spam'])}")
        for a in m["attachments"]:
            click.echo(f"Attachment {a['id']}: {cell(a['filename'], 120)}"
                       f" ({cell(a['content_type'], 80)}, {a['size']} bytes,"
                       f" sha256 {a['sha256'][:12]}…){_attachment_note(a['details'])}")
        click.echo("")
        click.echo(m["text"] or "")


def _attachment_note(details: dict[str, str]) -> str:
    """What `tickets show` adds after an attachment: TNEF origin, a forwarded message."""
    notes = []
    if details.get("tnef"):
        notes.append(f"TNEF container, {details.get('files', '?')} file(s) unpacked")
    if details.get("from_tnef"):
        notes.append(f"from {cell(details['from_tnef'], 80)}")
    if "subject" in details or "from" in details:
        notes.append(f"forwarded message: {cell(details.get('subject', ''), 120)!r}"
                     f" from {cell(details.get('from', '-'), 120)}")
    return "".join(f" [{n}]" for n in notes)


def _write_out(data: bytes, out: str, force: bool) -> None:
    """`data` to the file `out` ('-': stdout); an existing file only with --force."""
    if out == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = Path(out)
    if path.is_dir():
        raise UserError(f"{out} is a directory; give a file name to --out")
    try:
        with path.open("wb" if force else "xb") as f:
            f.write(data)
    except FileExistsError:
        raise UserError(f"{out} exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None


_OUT = click.option("--out", required=True, metavar="FILE",
                    help="Where to write it ('-' for standard output).")
_FORCE = click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")


@tickets_group.command("attachment")
@click.argument("attachment_id", type=click.IntRange(1, 2**62))
@_OUT
@_FORCE
@pass_state
def tickets_attachment(state: State, attachment_id: int, out: str, force: bool) -> None:
    """Save an attachment (ID as `tickets show` lists it) byte for byte."""
    found = downloads.attachment(state.db(), state.config.data_dir, attachment_id)
    _write_out(found.data, out, force)
    if out != "-":
        click.echo(f"attachment {attachment_id} ({cell(found.filename, 120)},"
                   f" {cell(found.content_type, 80)}, {len(found.data)} bytes) written to"
                   f" {out}")


@tickets_group.command("raw")
@click.argument("message_id", type=click.IntRange(1, 2**62))
@_OUT
@_FORCE
@pass_state
def tickets_raw(state: State, message_id: int, out: str, force: bool) -> None:
    """Save a message's raw .eml (MESSAGE_ID as `tickets show` numbers messages)."""
    found = downloads.raw_message(state.db(), state.config.data_dir, message_id)
    _write_out(found.data, out, force)
    if out != "-":
        click.echo(f"message {message_id} ({len(found.data)} bytes) written to {out}")


@tickets_group.command("reply")
@click.argument("ticket_id", type=int)
@click.option("--agent", "agent_email", required=True, help="A configured agent's address.")
@click.option("--body", help="The reply text.")
@click.option("--body-file", type=click.File("r", encoding="utf-8"),
              help="Read the reply text from a file ('-' for stdin).")
@click.option("--canned", metavar="NAME",
              help="The text of a canned reply (`tickets canned` lists them).")
@click.option("--attach", "attach", multiple=True, metavar="FILE",
              type=click.Path(exists=True, dir_okay=False, readable=True),
              help="Attach FILE (repeatable); [admin] max_upload_bytes limits them together.")
@pass_state
def tickets_reply(state: State, ticket_id: int, agent_email: str, body: str | None,
                  body_file: Any, canned: str | None, attach: tuple[str, ...]) -> None:
    """Reply to the customer as an agent: stored on the ticket and sent through the relay."""
    if sum(x is not None for x in (body, body_file, canned)) != 1:
        raise UserError("give exactly one of --body, --body-file and --canned")
    desk = app.desk(state.config, state.db())
    if canned is not None:
        agent = desk.agent(agent_email)
        text = ticket_edits.canned(state.db(), desk.mail, ticket_id, canned,
                                   Address(agent.email, agent.name))["text"]
    else:
        text = body if body is not None else body_file.read()
    uploads = tuple(_upload(path) for path in attach)
    result = desk.reply(ticket_id, agent_email, text, uploads, by=actions.CLI)
    q = result.queued
    if q.status != "queued":
        raise UserError(f"reply stored on ticket #{ticket_id} (message {result.message_row}) but"
                        f" not sent: outbound #{q.outbound_id} {q.status}: {q.reason}")
    files = f" with {len(uploads)} attachment(s)" if uploads else ""
    click.echo(f"ticket #{ticket_id}: reply{files} queued as outbound #{q.outbound_id}"
               f" <{q.message_id}>")


def _upload(path: str) -> Upload:
    """A file named on the command line, read whole (its name without the directories)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    name = Path(path).name
    return Upload(name, mimetypes.guess_type(name)[0] or "application/octet-stream", data)


@tickets_group.command("status")
@click.argument("ticket_id", type=int)
@click.argument("status", type=click.Choice(tickets.STATUSES))
@pass_state
def tickets_status(state: State, ticket_id: int, status: str) -> None:
    """Set a ticket's status (open, pending_customer, pending_agent, resolved, closed)."""
    ticket = app.desk(state.config, state.db()).set_status(ticket_id, status, by=actions.CLI)
    click.echo(f"ticket #{ticket_id} is now {state.config.status_label(ticket['status'])}")


@tickets_group.command("assign")
@click.argument("ticket_id", type=int)
@click.argument("agent_email")
@pass_state
def tickets_assign(state: State, ticket_id: int, agent_email: str) -> None:
    """Assign a ticket to an agent (who gets an assignee_notification)."""
    q = app.desk(state.config, state.db()).assign(ticket_id, agent_email, by=actions.CLI)
    note = f"notification outbound #{q.outbound_id} {q.status}"
    click.echo(f"ticket #{ticket_id} assigned to {agent_email.lower()}; {note}"
               + (f" ({q.reason})" if q.reason else ""))


@tickets_group.command("history")
@click.argument("ticket_id", type=int)
@json_option
@pass_state
def tickets_history(state: State, ticket_id: int, as_json: bool) -> None:
    """Who changed the ticket and how (reply, assign, status, participants), oldest first:
    an agent's address, admin-token or cli."""
    db = state.db()
    tickets.get_ticket(db, ticket_id)  # NotFound: one line
    rows = actions.for_ticket(db, ticket_id)
    if not as_json:
        for row in rows:
            row["details"] = ", ".join(f"{k}={v}" for k, v in row["details"].items())
    emit(rows, as_json, ["at", "actor", "action", "details"])


@tickets_group.group("participants")
def participants_group() -> None:
    """Who besides the requester takes part in a ticket (copied on agent replies)."""


_PARTICIPANT_COLUMNS = ["email", "role", "added_at"]


@participants_group.command("list")
@click.argument("ticket_id", type=int)
@json_option
@pass_state
def participants_list(state: State, ticket_id: int, as_json: bool) -> None:
    """The ticket's participants with their role (requester, cc, removed)."""
    emit(app.desk(state.config, state.db()).participants(ticket_id), as_json,
         _PARTICIPANT_COLUMNS)


@participants_group.command("add")
@click.argument("ticket_id", type=int)
@click.argument("email")
@pass_state
def participants_add(state: State, ticket_id: int, email: str) -> None:
    """Copy EMAIL on the agents' replies to the ticket."""
    app.desk(state.config, state.db()).add_participant(ticket_id, email, by=actions.CLI)
    click.echo(f"ticket #{ticket_id}: {email.strip().lower()} is a participant (copied on"
               " agent replies)")


@participants_group.command("remove")
@click.argument("ticket_id", type=int)
@click.argument("email")
@pass_state
def participants_remove(state: State, ticket_id: int, email: str) -> None:
    """Stop copying EMAIL; its later mail to the ticket is kept as an internal note."""
    app.desk(state.config, state.db()).remove_participant(ticket_id, email, by=actions.CLI)
    click.echo(f"ticket #{ticket_id}: {email.strip().lower()} removed (no longer copied)")


# --- notes, canned replies, merge and split ------------------------------------------------


def _actor(state: State, agent_email: str | None) -> str:
    """Who did it: the agent named with --agent (a configured one), else "cli"."""
    if agent_email is None:
        return "cli"
    return app.desk(state.config, state.db()).agent(agent_email).email


_AGENT = click.option("--agent", "agent_email", metavar="EMAIL",
                      help="Record this configured agent as the one who did it (else 'cli').")


@tickets_group.command("note")
@click.argument("ticket_id", type=int)
@click.option("--body", help="The note's text (else read from standard input).")
@_AGENT
@pass_state
def tickets_note(state: State, ticket_id: int, body: str | None, agent_email: str | None
                 ) -> None:
    """Add an internal note: shown on the ticket, never mailed to anyone."""
    text = body if body is not None else sys.stdin.read()
    result = ticket_edits.note(state.db(), ticket_id, _actor(state, agent_email), text)
    click.echo(f"ticket #{ticket_id}: internal note added (message {result['message_row']})")


@tickets_group.command("canned")
@click.argument("ticket_id", type=int, required=False)
@click.argument("name", required=False)
@click.option("--agent", "agent_email", metavar="EMAIL",
              help="The agent the reply is signed by (a configured one).")
@json_option
@pass_state
def tickets_canned(state: State, ticket_id: int | None, name: str | None,
                   agent_email: str | None, as_json: bool) -> None:
    """List the canned replies, or print NAME rendered for ticket TICKET_ID."""
    desk = app.desk(state.config, state.db())
    if ticket_id is None or name is None:
        if ticket_id is not None:
            raise UserError("give the canned reply's NAME after the ticket number")
        names = ticket_edits.canned_names(desk.mail)
        emit([{"name": n} for n in names], as_json, ["name"])
        return
    agent = desk.agent(agent_email) if agent_email else None
    result = ticket_edits.canned(state.db(), desk.mail, ticket_id, name,
                                 Address(agent.email, agent.name) if agent else None)
    if as_json:
        emit(result, True)
    else:
        click.echo(result["text"], nl=False)


@tickets_group.command("merge")
@click.argument("ticket_id", type=int)
@click.option("--into", "into", type=int, required=True, metavar="ID",
              help="The ticket that takes over TICKET_ID's messages.")
@_AGENT
@pass_state
def tickets_merge(state: State, ticket_id: int, into: int, agent_email: str | None) -> None:
    """Merge ticket TICKET_ID into ticket --into: its messages, participants and Message-IDs
    move there, it is closed as merged, and later mail to it lands on --into."""
    result = ticket_edits.merge(state.db(), ticket_id, into, _actor(state, agent_email))
    click.echo(f"ticket #{ticket_id} merged into #{into}: {result['messages']} message(s)"
               " moved; it is closed and forwards to it")


@tickets_group.command("split")
@click.argument("ticket_id", type=int)
@click.option("--message", "message_row", type=click.IntRange(1, 2**62), required=True,
              metavar="MSG_ID", help="The message to split off (its number in `tickets show`).")
@click.option("--with-later", is_flag=True, help="Split off the later messages too.")
@_AGENT
@pass_state
def tickets_split(state: State, ticket_id: int, message_row: int, with_later: bool,
                  agent_email: str | None) -> None:
    """Move a message (and with --with-later the ones after it) into a new ticket linked to
    this one (same requester, organization and mailbox)."""
    result = ticket_edits.split(state.db(), ticket_id, message_row, with_later,
                                _actor(state, agent_email))
    moved = ", ".join(str(r) for r in result["messages"])
    click.echo(f"ticket #{ticket_id}: message(s) {moved} split off into new ticket"
               f" #{result['new_ticket_id']}")
