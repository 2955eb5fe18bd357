"""The command line for automation rules: `mailgate rules explain|check|test`.

Input: a ticket id, or a message file (untrusted mail) to try. Output: for `explain`, each rule
evaluated on the ticket with hit or miss and the deciding condition; for `check`, the rules and
SLAs validated (one line naming file, rule and key on error); for `test`, what classification,
threading, organizations and rules would do with the message — computed inside a transaction
that is rolled back, so nothing changes and nothing is sent.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from mailgate.cli.base import State, emit, json_option, pass_state
from mailgate.errors import UserError
from mailgate.model import Envelope, SpoolEntry, new_queue_id
from mailgate.ops import app
from mailgate.store.connect import open_store
from mailgate.store.tickets import ticket_row


@click.group("rules")
def rules_group() -> None:
    """Automation rules and SLAs."""


@rules_group.command("check")
@pass_state
def rules_check(state: State) -> None:
    """Validate the rules ([[automations]], [rules] file) and the SLAs."""
    cfg = state.config
    ruleset = app.ruleset(cfg)
    source = app.rules_file(cfg)
    click.echo(f"{len(ruleset.rules)} rules ({cfg.path}"
               + (f", {source}" if source else "") + f"), {len(ruleset.slas)} SLAs: ok")


@rules_group.command("explain")
@click.argument("ticket_id", type=int)
@json_option
@pass_state
def rules_explain(state: State, ticket_id: int, as_json: bool) -> None:
    """Every rule evaluated on a ticket: event, hit or miss, and the condition that decided."""
    db = state.db()
    if ticket_row(db.conn, ticket_id) is None:
        raise UserError(f"no ticket #{ticket_id}")
    rows = list(db.query(
        "SELECT at, event, rule, hit, why, depth FROM rule_evaluations WHERE ticket_id=?"
        " ORDER BY id", [ticket_id]))
    for r in rows:
        r["hit"] = bool(r["hit"])
        r["result"] = "hit" if r["hit"] else "miss"
    emit(rows, as_json, ["at", "event", "rule", "result", "why"])


@rules_group.command("test")
@click.argument("eml", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--mail-from", default=None, help="Envelope sender (default: the From address).")
@click.option("--to", "rcpt", default=None, help="Our address it was sent to (default: the"
              " first mailbox).")
@pass_state
def rules_test(state: State, eml: Path, mail_from: str | None, rcpt: str | None) -> None:
    """Run a message file through classification, threading, organizations and rules, and
    print what would happen. Changes nothing."""
    from mailgate.classify import classify
    from mailgate.parsing.parse import parse
    from mailgate.parsing.replytext import reply_text
    from mailgate.pipeline.deliver import Deliverer, Incoming

    cfg = state.config
    raw = eml.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    parsed = parse(raw)
    sender = mail_from if mail_from is not None else parsed.from_.email
    to = rcpt or (cfg.mailboxes[0] if cfg.mailboxes else "")
    env = Envelope(new_queue_id(), time.time(), "127.0.0.1", "rules-test", sender, (to,),
                   len(raw))
    classification = classify(parsed, raw, sender)
    incoming = Incoming(SpoolEntry(env, "message", "active", 1, raw), parsed, raw, "(not stored)",
                        ["0" * 64] * len(parsed.attachments), classification,
                        reply_text(parsed.text, parsed.html))
    db = open_store(cfg.database)
    mail = app.mail_context(cfg)
    deliverer = Deliverer(app.policy(cfg), mail, app.signer(cfg), app.automation(cfg, mail))
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        outcome = deliverer.deliver(conn, incoming)
        result: dict[str, Any] = {"classification": classification.kind,
                                  "classification_reason": classification.reason,
                                  "action": outcome.action, "ticket_id": outcome.ticket_id,
                                  "reason": outcome.reason}
        if outcome.ticket_id is not None:
            ticket = ticket_row(conn, outcome.ticket_id)
            assert ticket is not None
            result["ticket"] = {k: ticket[k] for k in ("subject", "requester", "organization",
                                                       "status", "priority", "tags",
                                                       "assignee")}
            result["rules"] = [
                {"event": r[0], "rule": r[1], "result": "hit" if r[2] else "miss", "why": r[3]}
                for r in conn.execute(
                    "SELECT event, rule, hit, why FROM rule_evaluations WHERE ticket_id=?"
                    " ORDER BY id", (outcome.ticket_id,))]
            result["mail"] = [
                {"kind": r[0], "to": r[1], "status": r[2], "reason": r[3]}
                for r in conn.execute(
                    "SELECT kind, to_addr, status, last_error FROM outbound WHERE queue_id=?"
                    " OR ticket_id=? ORDER BY id", (env.queue_id, outcome.ticket_id))]
    finally:
        conn.execute("ROLLBACK")  # a dry run: nothing is kept, nothing is sent
        db.close()
    click.echo(json.dumps(result, indent=2, ensure_ascii=False, default=str))
