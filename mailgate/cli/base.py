"""The command line: a thin click layer over the library.

Input: arguments typed by an administrator (trusted intent, untrusted form). Output: tables for
people or JSON (`--json`) for scripts on stdout; a user mistake — a usage error click finds (an
unknown option or command, a bad value) as much as one of ours — prints one line on stderr and
exits 1, never a traceback. `--config PATH` is taken before the command name and after it.
Listing values come from mail and are printed as data.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click

from mailgate.config import Config, load_config
from mailgate.errors import NotFound, UserError
from mailgate.model import SPOOL_STATES
from mailgate.ops import app
from mailgate.ops.doctor import doctor_command
from mailgate.ops.setup_wizard import init_command
from mailgate.spool import Spool
from mailgate.store import audit, downloads, tickets
from mailgate.store import outbound as outbox
from mailgate.store import spam as spam_store
from mailgate.store.db import open_db


def _usage_line(exc: click.UsageError) -> None:
    """A usage error as one line on stderr: what is wrong and where the help is."""
    where = exc.ctx.command_path if exc.ctx is not None else "mailgate"
    message = " ".join(exc.format_message().split())
    click.echo(f"mailgate: {message} (see '{where} --help')", err=True)


class _Cli(click.Group):
    """Turns our own errors, usage errors and environment errors into one line and exit
    status 1."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:  # the options before the command name
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            _usage_line(exc)
            raise click.exceptions.Exit(1) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"mailgate: {exc}", err=True)
            ctx.exit(1)
        except click.UsageError as exc:  # the command, its options and arguments
            _usage_line(exc)
            ctx.exit(1)
        except (OSError, sqlite3.Error) as exc:
            click.echo(f"mailgate: {type(exc).__name__}: {exc}", err=True)
            ctx.exit(1)


class _State:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    def db(self) -> Any:
        return open_db(self.config.db_path)

    def spool(self) -> Spool:
        return Spool(self.config.spool_path)


pass_state = click.make_pass_decorator(_State)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _emit(data: Any, as_json: bool, columns: Sequence[str] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    elif columns is not None:
        click.echo(format_table(data, columns))
    else:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _cell(value: Any, width: int = 48) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    text = " ".join(str(value).split())  # no control characters or newlines from mail
    if len(text) <= width:
        return text
    if text.startswith("/"):  # a path: its end says more than its start
        return "…" + text[-(width - 1):]
    return text[: width - 1] + "…"


def spam_line(verdict: dict[str, Any]) -> str:
    """A stored spam verdict in one line: `score 2.1 (accept)`, and why, for `tickets show`."""
    score = verdict.get("score")
    text = "not scanned" if score is None else f"score {score:g}"
    text += f" ({verdict.get('action')})"
    for key in ("note", "reason"):
        if verdict.get(key):
            text += f"; {verdict[key]}"
    return _cell(text, 300)


def format_table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    rows = list(rows)
    if not rows:
        return "(none)"
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


@click.group(cls=_Cli)
@click.option("--config", "config_path", metavar="PATH", envvar=None,
              help="Config file (default: $MAILGATE_CONFIG, then ./mailgate.toml).")
@click.version_option(package_name="mailgate")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """mailgate: inbound mail server for a customer-support helpdesk."""
    ctx.obj = _State(config_path)


cli.add_command(init_command)  # mailgate init: the setup wizard (mailgate/setup_wizard.py)
cli.add_command(doctor_command)  # mailgate doctor: one line per check (mailgate/doctor.py)


@cli.command("check-config")
@pass_state
def check_config(state: _State) -> None:
    """Validate the configuration file and exit (0 when valid)."""
    cfg = state.config
    ruleset = app.ruleset(cfg)  # rules and SLAs are part of the configuration
    click.echo(f"{cfg.path}: ok ({len(cfg.domains)} domains, {len(cfg.mailboxes)} mailboxes,"
               f" {len(cfg.agents)} agents, {len(ruleset.rules)} rules)")


@cli.command()
@pass_state
def serve(state: _State) -> None:
    """Run the daemon: SMTP listener, spool, pipeline, relay, scheduler, admin endpoint."""
    from mailgate.ops.daemon import serve as run_daemon
    from mailgate.ops.logsetup import setup_logging

    cfg = state.config
    setup_logging(cfg.log_level, cfg.log_format)
    asyncio.run(run_daemon(cfg))


# --- tickets ------------------------------------------------------------------------------


@cli.group("tickets")
def tickets_group() -> None:
    """List and inspect tickets."""


@tickets_group.command("list")
@click.option("--status", type=click.Choice(tickets.STATUSES), help="Only tickets in this status.")
@click.option("--unassigned", is_flag=True, help="Only tickets nobody is assigned to.")
@click.option("--assignee", metavar="EMAIL", help="Only tickets assigned to this agent.")
@click.option("--org", metavar="NAME", help="Only tickets of this organization.")
@click.option("--breached", is_flag=True, help="Only tickets whose SLA is breached.")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@json_option
@pass_state
def tickets_list(state: _State, status: str | None, unassigned: bool, assignee: str | None,
                 org: str | None, breached: bool, limit: int, as_json: bool) -> None:
    """Tickets, most recently updated first."""
    rows = tickets.list_tickets(state.db(), status=status, unassigned=unassigned,
                                assignee=assignee, org=org, limit=100000 if breached else limit)
    if breached:
        automation = app.automation(state.config, None)
        rows = [r for r in rows if (automation.sla(r) or {}).get("breached")][:limit]
    for r in rows:
        r["status_label"] = state.config.status_label(r["status"])
    table = [{**r, "status": r["status_label"]} for r in rows]  # people see the labels
    _emit(rows if as_json else table, as_json,
          ["id", "subject", "requester", "organization", "status", "priority", "assignee",
           "created_at", "updated_at"])


@tickets_group.command("show")
@click.argument("ticket_id", type=int)
@json_option
@pass_state
def tickets_show(state: _State, ticket_id: int, as_json: bool) -> None:
    """One ticket with its messages and attachments."""
    ticket = tickets.get_ticket(state.db(), ticket_id)
    cfg = state.config
    ticket["reply_address"] = app.signer(cfg).reply_address(cfg.from_address, ticket_id)
    ticket["sla"] = app.automation(cfg, None).sla(ticket)
    if as_json:
        _emit(ticket, True)
        return
    click.echo(f"#{ticket['id']} {_cell(ticket['subject'], 200)}")
    for key in ("status", "requester", "organization", "priority", "tags", "assignee",
                "reply_address", "sla", "created_at", "updated_at"):
        click.echo(f"  {key}: {_cell(ticket[key], 200)}")
    for m in ticket["messages"]:
        flag = " [internal]" if m["internal"] else ""
        click.echo(f"\n--- message {m['id']} ({m['direction']}, matched by {m['matched_by']})"
                   f"{flag} {m['created_at']}")
        click.echo(f"From: {_cell(m['from'], 200)}\nTo: {_cell(m['to'], 200)}")
        click.echo(f"Subject: {_cell(m['subject'], 200)}\nMessage-ID: {m['message_id'] or '-'}")
        if m.get("spam"):
            click.echo(f"Spam: {spam_line(m['spam'])}")
        for a in m["attachments"]:
            click.echo(f"Attachment {a['id']}: {_cell(a['filename'], 120)}"
                       f" ({_cell(a['content_type'], 80)}, {a['size']} bytes,"
                       f" sha256 {a['sha256'][:12]}…){_attachment_note(a['details'])}")
        click.echo("")
        click.echo(m["text"] or "")


def _attachment_note(details: dict[str, str]) -> str:
    """What `tickets show` adds after an attachment: TNEF origin, a forwarded message."""
    notes = []
    if details.get("tnef"):
        notes.append(f"TNEF container, {details.get('files', '?')} file(s) unpacked")
    if details.get("from_tnef"):
        notes.append(f"from {_cell(details['from_tnef'], 80)}")
    if "subject" in details or "from" in details:
        notes.append(f"forwarded message: {_cell(details.get('subject', ''), 120)!r}"
                     f" from {_cell(details.get('from', '-'), 120)}")
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
def tickets_attachment(state: _State, attachment_id: int, out: str, force: bool) -> None:
    """Save an attachment (ID as `tickets show` lists it) byte for byte."""
    found = downloads.attachment(state.db(), state.config.data_dir, attachment_id)
    _write_out(found.data, out, force)
    if out != "-":
        click.echo(f"attachment {attachment_id} ({_cell(found.filename, 120)},"
                   f" {_cell(found.content_type, 80)}, {len(found.data)} bytes) written to"
                   f" {out}")


@tickets_group.command("raw")
@click.argument("message_id", type=click.IntRange(1, 2**62))
@_OUT
@_FORCE
@pass_state
def tickets_raw(state: _State, message_id: int, out: str, force: bool) -> None:
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
@pass_state
def tickets_reply(state: _State, ticket_id: int, agent_email: str, body: str | None,
                  body_file: Any) -> None:
    """Reply to the customer as an agent: stored on the ticket and sent through the relay."""
    if (body is None) == (body_file is None):
        raise UserError("give exactly one of --body and --body-file")
    text = body if body is not None else body_file.read()
    result = app.desk(state.config, state.db()).reply(ticket_id, agent_email, text)
    q = result.queued
    if q.status != "queued":
        raise UserError(f"reply stored on ticket #{ticket_id} (message {result.message_row}) but"
                        f" not sent: outbound #{q.outbound_id} {q.status}: {q.reason}")
    click.echo(f"ticket #{ticket_id}: reply queued as outbound #{q.outbound_id}"
               f" <{q.message_id}>")


@tickets_group.command("status")
@click.argument("ticket_id", type=int)
@click.argument("status", type=click.Choice(tickets.STATUSES))
@pass_state
def tickets_status(state: _State, ticket_id: int, status: str) -> None:
    """Set a ticket's status (open, pending_customer, pending_agent, resolved, closed)."""
    ticket = app.desk(state.config, state.db()).set_status(ticket_id, status)
    click.echo(f"ticket #{ticket_id} is now {state.config.status_label(ticket['status'])}")


@tickets_group.command("assign")
@click.argument("ticket_id", type=int)
@click.argument("agent_email")
@pass_state
def tickets_assign(state: _State, ticket_id: int, agent_email: str) -> None:
    """Assign a ticket to an agent (who gets an assignee_notification)."""
    q = app.desk(state.config, state.db()).assign(ticket_id, agent_email)
    note = f"notification outbound #{q.outbound_id} {q.status}"
    click.echo(f"ticket #{ticket_id} assigned to {agent_email.lower()}; {note}"
               + (f" ({q.reason})" if q.reason else ""))


# --- templates and DKIM -----------------------------------------------------------------


@cli.group("templates")
def templates_group() -> None:
    """Outgoing mail templates."""


@templates_group.command("list")
@json_option
@pass_state
def templates_list(state: _State, as_json: bool) -> None:
    """Template kinds, whether each is enabled, and the files used."""
    _emit(app.renderer(state.config).kinds(), as_json,
          ["kind", "enabled", "html_source", "text_source"])


@templates_group.command("preview")
@click.argument("kind")
@click.option("--ticket", "ticket_id", type=int, help="Render with this ticket's real data.")
@click.option("--html", "part", flag_value="html", help="Print only the HTML part.")
@click.option("--text", "part", flag_value="text", help="Print only the text part.")
@pass_state
def templates_preview(state: _State, kind: str, ticket_id: int | None, part: str | None) -> None:
    """Render a template kind with sample data or a real ticket."""
    from mailgate.outbound.render import TemplateError

    cfg = state.config
    renderer = app.renderer(cfg)
    context = renderer.sample_context(kind)
    if ticket_id is not None:
        db = state.db()
        ticket = tickets.ticket_row(db.conn, ticket_id)
        if ticket is None:
            raise NotFound(f"no ticket #{ticket_id}")
        ticket["reply_address"] = app.signer(cfg).reply_address(cfg.from_address, ticket_id)
        context["ticket"] = ticket
        latest = tickets.latest_customer_message(db.conn, ticket_id)
        if latest is not None:
            context["customer_message"] = latest
        context["recipient"] = {"name": ticket["requester_name"] or "",
                                "email": ticket["requester"]}
    try:
        rendered = renderer.render(kind, context)
    except TemplateError as exc:
        raise UserError(f"template error: {exc}") from None
    if part != "html":
        click.echo(f"Subject: {rendered.subject}\n" if part is None else "", nl=False)
        click.echo(rendered.text)
    if part != "text":
        click.echo(rendered.html)


@cli.group("dkim")
def dkim_group() -> None:
    """DKIM keys for signing outgoing mail."""


@dkim_group.command("keygen")
@click.option("--selector", required=True, help="DNS selector, e.g. mail2026.")
@click.option("--domain", help="Signing domain (default: the first of [mail] domains).")
@click.option("--force", is_flag=True, help="Overwrite an existing key for this selector.")
@pass_state
def dkim_keygen(state: _State, selector: str, domain: str | None, force: bool) -> None:
    """Write an RSA key under data_dir and print the DNS TXT record to publish."""
    from mailgate.outbound.dkim_sign import keygen

    cfg = state.config
    domain = domain or (cfg.domains[0] if cfg.domains else "")
    if not domain:
        raise UserError(f"no domain: pass --domain or set [mail] domains in {cfg.path}")
    path, record = keygen(cfg.data_dir, selector, domain, force=force)
    click.echo(f"key written to {path}")
    click.echo("publish this DNS record:")
    click.echo(record)
    click.echo(f"then add to {cfg.path}:\n[dkim]\ndomain = \"{domain}\"\n"
               f"selector = \"{selector}\"\nkey_file = \"{path}\"")


# --- audit ----------------------------------------------------------------------------------


@cli.group("audit")
def audit_group() -> None:
    """What happened to each mail."""


@audit_group.command("incoming")
@click.option("--action", type=click.Choice(audit.ACTIONS), help="Only rows with this action.")
@click.option("--queue-id", help="Only the row of this queue id.")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@json_option
@pass_state
def audit_incoming(state: _State, action: str | None, queue_id: str | None, limit: int,
                   as_json: bool) -> None:
    """Every mail that reached DATA: what was done with it and why, newest first."""
    rows = audit.list_incoming(state.db(), action=action, limit=limit, queue_id=queue_id)
    _emit(rows, as_json, ["received_at", "queue_id", "mail_from", "from", "subject", "action",
                          "ticket_id", "reason"])


@audit_group.command("outgoing")
@click.option("--status", type=click.Choice(outbox.STATUSES), help="Only mail in this status.")
@click.option("--ticket", "ticket_id", type=int, help="Only mail about this ticket.")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@json_option
@pass_state
def audit_outgoing(state: _State, status: str | None, ticket_id: int | None, limit: int,
                   as_json: bool) -> None:
    """Every mail we sent or decided not to send: delivery state and failure reason."""
    rows = outbox.list_outgoing(state.db(), status=status, ticket_id=ticket_id, limit=limit)
    _emit(rows, as_json, ["id", "ticket_id", "kind", "to", "subject", "status", "attempts",
                          "last_error", "created_at", "sent_at"])


@cli.group("forwarding")
def forwarding_group() -> None:
    """Forwarding confirmations (Gmail, Outlook) waiting for an administrator."""


@forwarding_group.command("pending")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@json_option
@pass_state
def forwarding_pending(state: _State, limit: int, as_json: bool) -> None:
    """Confirmation mails received, with the code and the link that finish forwarding setup."""
    rows = []
    for r in audit.list_incoming(state.db(), action="forwarding_confirmation", limit=limit):
        d = r.get("details") or {}
        rows.append({"received_at": r["received_at"], "queue_id": r["queue_id"],
                     "from": r["from"], "subject": r["subject"], **d})
    _emit(rows, as_json, ["received_at", "provider", "code", "link", "subject"])


# --- stats and spool ---------------------------------------------------------------------


@cli.command()
@json_option
@pass_state
def stats(state: _State, as_json: bool) -> None:
    """Counts of tickets, messages, audit actions and spool states."""
    db = state.db()
    data = tickets.counts(db)
    data["incoming_by_action"] = audit.counts_by_action(db)
    data["spool"] = state.spool().counts()
    data["outgoing_by_status"] = outbox.counts_by_status(db)
    data["quarantine"] = spam_store.counts(db)
    if as_json:
        _emit(data, True)
        return
    click.echo(f"tickets: {data['tickets']}  messages: {data['messages']}")
    for title, key in (("tickets by status", "tickets_by_status"),
                       ("incoming mail by action", "incoming_by_action"), ("spool", "spool"),
                       ("outgoing mail by status", "outgoing_by_status"),
                       ("spam quarantine", "quarantine")):
        parts = ", ".join(f"{k}={v}" for k, v in data[key].items()) or "-"
        click.echo(f"{title}: {parts}")


@cli.group("spool")
def spool_group() -> None:
    """Inspect the spool and release held messages."""


@spool_group.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(SPOOL_STATES),
              help="States to show (repeatable; default: all but done).")
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@json_option
@pass_state
def spool_list(state: _State, states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Spool entries that are not done yet, newest first."""
    kwargs: dict[str, Any] = {"limit": limit}
    if states:
        kwargs["states"] = states
    rows = [
        {
            "queue_id": e.queue_id, "state": e.state, "kind": e.kind, "attempts": e.attempts,
            "received_at": e.envelope.received_at, "mail_from": e.envelope.mail_from,
            "rcpt_to": list(e.envelope.rcpt_to), "size": e.envelope.size, "reason": e.reason,
        }
        for e in state.spool().entries(**kwargs)
    ]
    _emit(rows, as_json, ["queue_id", "state", "kind", "attempts", "mail_from", "rcpt_to",
                          "size", "reason"])


@spool_group.command("retry")
@click.argument("queue_id")
@pass_state
def spool_retry(state: _State, queue_id: str) -> None:
    """Move a held (or deferred) message back to incoming for another try."""
    try:
        state.spool().retry(queue_id)
    except KeyError:
        raise NotFound(f"no spool entry {queue_id}") from None
    except ValueError as exc:
        raise UserError(f"spool entry {queue_id} is {exc}, not held or deferred") from None
    click.echo(f"{queue_id}: back to incoming; the running daemon picks it up")


# --- admin endpoint -------------------------------------------------------------------------


@cli.group("admin")
def admin_group() -> None:
    """The admin HTTP endpoint ([admin] listen)."""


@admin_group.command("token")
@click.option("--rotate", is_flag=True,
              help="Make a new token; the old one and every session stop working at once.")
@pass_state
def admin_token(state: _State, rotate: bool) -> None:
    """Print the admin token (created on first use, in data_dir/admin.token, mode 0600)."""
    from mailgate.admin import token as admin_token_file

    data_dir = state.config.data_dir
    token = (admin_token_file.rotate if rotate else admin_token_file.load_or_create)(data_dir)
    click.echo(token)


@cli.command("systemd-unit")
@click.argument("unit", type=click.Choice(["service", "socket"]), default="service")
def systemd_unit(unit: str) -> None:
    """Print the systemd unit shipped with mailgate (mailgate.service, or with `socket` the
    optional mailgate.socket), e.g. `mailgate systemd-unit > /etc/systemd/system/mailgate.service`.
    """
    from mailgate import builtin

    click.echo(builtin.systemd_unit(f"mailgate.{unit}"), nl=False)


def _register_more() -> None:
    """Command groups kept in modules of their own."""
    from mailgate.cli.orgs import customers_group, orgs_group
    from mailgate.cli.rules import rules_group
    from mailgate.cli.spam import spam_group

    cli.add_command(rules_group)
    cli.add_command(spam_group)
    cli.add_command(orgs_group)
    cli.add_command(customers_group)


_register_more()


def _config_after_command(ctx: click.Context, _param: click.Parameter,
                          value: str | None) -> None:
    """`mailgate COMMAND --config PATH`: the same as `mailgate --config PATH COMMAND`."""
    if value is None or ctx.resilient_parsing:
        return
    state = ctx.find_object(_State)
    if state is None:  # pragma: no cover - the root group always makes one
        return
    if state.config_path is not None and state.config_path != value:
        raise click.UsageError(f"--config given twice ({state.config_path!r} and {value!r})",
                               ctx=ctx)
    state.config_path = value


def _finish_commands(group: click.Group) -> None:
    """Give every command and group under `group` its own `--config PATH` option, and make a
    group given no command a usage error like any other (click's default prints the help, with
    an exit status that depends on click's version)."""
    group.no_args_is_help = False
    for command in group.commands.values():
        if not any(p.name == "late_config" for p in command.params):
            command.params.append(click.Option(
                ["--config", "late_config"], metavar="PATH", expose_value=False,
                callback=_config_after_command,
                help="Config file (also accepted before the command name)."))
        if isinstance(command, click.Group):
            _finish_commands(command)


_finish_commands(cli)


def main() -> None:
    cli(prog_name="mailgate")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
