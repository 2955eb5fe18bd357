"""`mailgate stats` and `mailgate spool list|retry`: counts, and the queue between SMTP and
the pipeline.

Input: spool states and a queue id typed by an administrator. Output: counts and spool rows
(tables or JSON) of every spool of the data directory — data_dir/spool.db and, after `serve
--workers N`, each worker's, with the node that owns each row; a held or deferred message put
back for the running daemon to retry.
"""

from __future__ import annotations

from typing import Any

import click

from mailgate.cli.base import (
    State,
    emit,
    json_option,
    pass_state,
)
from mailgate.errors import NotFound, UserError
from mailgate.model import SPOOL_STATES
from mailgate.ops.spools import spool_files
from mailgate.spool import Spool
from mailgate.store import audit, tickets
from mailgate.store import outbound as outbox
from mailgate.store import spam as spam_store

# --- stats and spool ---------------------------------------------------------------------


@click.command()
@json_option
@pass_state
def stats(state: State, as_json: bool) -> None:
    """Counts of tickets, messages, audit actions and spool states."""
    db = state.db()
    data = tickets.counts(db)
    data["incoming_by_action"] = audit.counts_by_action(db)
    by_node = _spool_counts(state)
    data["spool"] = {k: sum(c[k] for c in by_node.values())
                     for k in next(iter(by_node.values()))}
    if len(by_node) > 1:  # `serve --workers N`: each worker's spool too
        data["spool_by_node"] = by_node
    data["outgoing_by_status"] = outbox.counts_by_status(db)
    data["quarantine"] = spam_store.counts(db)
    if as_json:
        emit(data, True)
        return
    click.echo(f"tickets: {data['tickets']}  messages: {data['messages']}")
    for title, key in (("tickets by status", "tickets_by_status"),
                       ("incoming mail by action", "incoming_by_action"), ("spool", "spool"),
                       ("outgoing mail by status", "outgoing_by_status"),
                       ("spam quarantine", "quarantine")):
        parts = ", ".join(f"{k}={v}" for k, v in data[key].items()) or "-"
        click.echo(f"{title}: {parts}")


def _spool_counts(state: State) -> dict[str, dict[str, int]]:
    """Each spool's counts by node: data_dir/spool.db's, then each worker's (`serve --workers`)."""
    out = {}
    for found in spool_files(state.config):
        spool = Spool(found.path)
        try:
            out[found.node] = spool.counts()
        finally:
            spool.close()
    return out


@click.group("spool")
def spool_group() -> None:
    """Inspect the spool and release held messages."""


@spool_group.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(SPOOL_STATES),
              help="States to show (repeatable; default: all but done).")
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@json_option
@pass_state
def spool_list(state: State, states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Spool entries that are not done yet, newest first."""
    kwargs: dict[str, Any] = {"limit": limit}
    if states:
        kwargs["states"] = states
    found = spool_files(state.config)
    rows = []
    for where in found:
        spool = Spool(where.path)
        try:
            rows += [
                {
                    "queue_id": e.queue_id, "state": e.state, "kind": e.kind,
                    "attempts": e.attempts, "received_at": e.envelope.received_at,
                    "mail_from": e.envelope.mail_from, "rcpt_to": list(e.envelope.rcpt_to),
                    "size": e.envelope.size, "reason": e.reason, "node": where.node,
                }
                for e in spool.entries(**kwargs)
            ]
        finally:
            spool.close()
    rows = sorted(rows, key=lambda r: r["received_at"], reverse=True)[:limit]
    columns = ["queue_id", "state", "kind", "attempts", "mail_from", "rcpt_to", "size",
               "reason"]
    emit(rows, as_json, columns + (["node"] if len(found) > 1 else []))


@spool_group.command("retry")
@click.argument("queue_id")
@pass_state
def spool_retry(state: State, queue_id: str) -> None:
    """Move a held (or deferred) message back to incoming for another try."""
    for where in spool_files(state.config):  # queue ids are unique across the workers
        spool = Spool(where.path)
        try:
            spool.retry(queue_id)
        except KeyError:
            continue
        except ValueError as exc:
            raise UserError(f"spool entry {queue_id} is {exc}, not held or deferred") from None
        finally:
            spool.close()
        break
    else:
        raise NotFound(f"no spool entry {queue_id}")
    click.echo(f"{queue_id}: back to incoming; the running daemon picks it up")
