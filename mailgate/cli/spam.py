"""The command line for the quarantine (`mailgate spam list|show|release`).

Input: a queue id typed by an administrator. Output: listings of quarantined mail with score,
symbols, sender and subject (tables, or JSON with `--json`; values from mail printed as data),
one message with its headers and the start of its text, and a release — the message back into
the spool as if it had just arrived, processed by the running daemon (or at its next start).
A queue id that is not in quarantine, or one released already, is one line and exit 1.
"""

from __future__ import annotations

import getpass

import click

from mailgate.cli.base import State, cell, emit, json_option, pass_state, say_more
from mailgate.pipeline import quarantine
from mailgate.store import spam as spam_store


@click.group("spam")
def spam_group() -> None:
    """Quarantined mail: doubtful spam held back from the tickets."""


def _symbols(symbols: dict[str, float], limit: int = 4) -> str:
    shown = [f"{name}({score:g})" for name, score in list(symbols.items())[:limit]]
    return ",".join(shown) + ("…" if len(symbols) > limit else "")


@spam_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Released messages too.")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True,
              help="Skip this many (the next page: --offset 50).")
@json_option
@pass_state
def spam_list(state: State, show_all: bool, limit: int, offset: int, as_json: bool) -> None:
    """Quarantined mail, newest first: score, symbols, sender, subject."""
    db = state.db()
    which = None if show_all else spam_store.QUARANTINED
    rows = spam_store.list_quarantine(db, which, limit, offset)
    if as_json:
        emit(rows, True)
    else:
        table = [{**r, "symbols": _symbols(r["symbols"])} for r in rows]
        emit(table, False, ["queue_id", "received_at", "state", "score", "from", "subject",
                             "symbols", "released_as"])
    say_more(spam_store.count_quarantine(db, which), offset, len(rows), "messages")


@spam_group.command("show")
@click.argument("queue_id")
@json_option
@pass_state
def spam_show(state: State, queue_id: str, as_json: bool) -> None:
    """One quarantined message: its verdict, envelope, headers and the start of its text."""
    row = quarantine.show(state.db(), state.config.data_dir, queue_id)
    if as_json:
        emit(row, True)
        return
    click.echo(f"{row['queue_id']}  {row['state']}  score {row['score']}")
    for key in ("received_at", "reason", "from", "subject", "mail_from", "rcpt_to",
                "client_ip", "helo", "message_id", "size", "raw_path", "released_at",
                "released_by", "released_as"):
        if row.get(key) not in (None, ""):
            click.echo(f"  {key}: {cell(row[key], 200)}")
    click.echo("  symbols:")
    for name, score in row["symbols"].items():
        click.echo(f"    {cell(name, 100)} {score:g}")
    click.echo("\n--- headers")
    click.echo(row["headers"])
    click.echo("\n--- text")
    click.echo(row["text"])


@spam_group.command("release")
@click.argument("queue_id")
@pass_state
def spam_release(state: State, queue_id: str) -> None:
    """Let a quarantined message in: it goes through the pipeline as if it had just arrived
    (never quarantined again); who released it and when is kept."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name in this environment
        user = "unknown user"
    by = f"cli ({user}, mailgate spam release)"
    result = quarantine.release(state.db(), state.spool(), state.config.data_dir, queue_id, by)
    click.echo(f"{queue_id}: released as {result['released_as']}; the running daemon processes"
               " it as new mail")
