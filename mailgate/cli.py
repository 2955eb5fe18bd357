"""The command line: a thin click layer over the library.

Input: arguments typed by an administrator (trusted intent, untrusted form). Output: tables for
people or JSON (`--json`) for scripts on stdout; a user mistake prints one line on stderr and
exits 1, never a traceback. Listing values come from mail and are printed as data.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click

from mailgate.config import Config, load_config
from mailgate.errors import NotFound, UserError
from mailgate.model import SPOOL_STATES
from mailgate.spool import Spool
from mailgate.store import audit, tickets
from mailgate.store.db import open_db


class _Cli(click.Group):
    """Turns our own errors, and environment errors, into one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"mailgate: {exc}", err=True)
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
    return text if len(text) <= width else text[: width - 1] + "…"


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


@cli.command("check-config")
@pass_state
def check_config(state: _State) -> None:
    """Validate the configuration file and exit (0 when valid)."""
    cfg = state.config
    click.echo(f"{cfg.path}: ok ({len(cfg.domains)} domains, {len(cfg.mailboxes)} mailboxes,"
               f" {len(cfg.agents)} agents)")


@cli.command()
@pass_state
def serve(state: _State) -> None:
    """Run the daemon: SMTP listener, spool and pipeline worker."""
    from mailgate.daemon import serve as run_daemon
    from mailgate.daemon import setup_logging

    cfg = state.config
    setup_logging(cfg.log_level)
    asyncio.run(run_daemon(cfg))


# --- tickets ------------------------------------------------------------------------------


@cli.group("tickets")
def tickets_group() -> None:
    """List and inspect tickets."""


@tickets_group.command("list")
@click.option("--status", type=click.Choice(tickets.STATUSES), help="Only tickets in this status.")
@click.option("--unassigned", is_flag=True, help="Only tickets nobody is assigned to.")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@json_option
@pass_state
def tickets_list(state: _State, status: str | None, unassigned: bool, limit: int,
                 as_json: bool) -> None:
    """Tickets, most recently updated first."""
    rows = tickets.list_tickets(state.db(), status=status, unassigned=unassigned, limit=limit)
    _emit(rows, as_json, ["id", "subject", "requester", "status", "assignee", "created_at",
                          "updated_at"])


@tickets_group.command("show")
@click.argument("ticket_id", type=int)
@json_option
@pass_state
def tickets_show(state: _State, ticket_id: int, as_json: bool) -> None:
    """One ticket with its messages and attachments."""
    ticket = tickets.get_ticket(state.db(), ticket_id)
    if as_json:
        _emit(ticket, True)
        return
    click.echo(f"#{ticket['id']} {_cell(ticket['subject'], 200)}")
    for key in ("status", "requester", "assignee", "created_at", "updated_at"):
        click.echo(f"  {key}: {_cell(ticket[key], 200)}")
    for m in ticket["messages"]:
        flag = " [internal]" if m["internal"] else ""
        click.echo(f"\n--- message {m['id']} ({m['direction']}, matched by {m['matched_by']})"
                   f"{flag} {m['created_at']}")
        click.echo(f"From: {_cell(m['from'], 200)}\nTo: {_cell(m['to'], 200)}")
        click.echo(f"Subject: {_cell(m['subject'], 200)}\nMessage-ID: {m['message_id'] or '-'}")
        for a in m["attachments"]:
            click.echo(f"Attachment: {_cell(a['filename'], 120)} ({a['content_type']},"
                       f" {a['size']} bytes, sha256 {a['sha256'][:12]}…)")
        click.echo("")
        click.echo(m["text"] or "")


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
    if as_json:
        _emit(data, True)
        return
    click.echo(f"tickets: {data['tickets']}  messages: {data['messages']}")
    for title, key in (("tickets by status", "tickets_by_status"),
                       ("incoming mail by action", "incoming_by_action"), ("spool", "spool")):
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


def main() -> None:
    cli(prog_name="mailgate")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
