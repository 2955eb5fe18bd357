"""The quarantine: doubtful mail held back from the ticket queue, and let out by a person.

Input: inside the pipeline's transaction, a message the SMTP stage accepted with a spam verdict
(the envelope carries it; the parsed message is untrusted), where its raw bytes were stored, its
authentication result and the threading look-ups; for a release, the queue id a person chose
and who they are. Output:
- `gate`: for a verdict of `quarantine` (rspamd's score between `quarantine_score` and
  `reject_score`), the message quarantined — no ticket, nothing sent, its raw file kept, an
  incoming-audit row `spam` with the score and symbols — unless the mail belongs to a ticket
  (threading finds one) or comes from a known customer whose address is not failing
  authentication: that mail goes on as usual, flagged. Every scanned message's verdict is kept
  (`record_verdict`), so `tickets show` and the audit show its score.
- `release`: the quarantined message back into the spool as a new entry (a new queue id,
  received now), as if it had just arrived; its verdict says `released`, so it is never
  quarantined again. Who released it and when is kept with the quarantine record.
- `autoreply_block`: why no automatic mail may answer a message (its score is at or above
  `[spam] no_autoreply_score`), "" when one may.
An orchestrator, like the pipeline's delivery: it uses the threading stage and the store.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import sqlite_utils

from mailgate.errors import UserError
from mailgate.model import SPAM_QUARANTINE, SPAM_RELEASED, Envelope, ParsedMail, new_queue_id
from mailgate.parsing.parse import parse
from mailgate.spool import Spool
from mailgate.store import filestore
from mailgate.store import spam as spam_store
from mailgate.store.audit import IncomingAudit, record_incoming
from mailgate.store.db import transaction
from mailgate.threading import Lookups, find_ticket

log = logging.getLogger("mailgate.pipeline")


def exemption(conn: sqlite3.Connection, env: Envelope, parsed: ParsedMail,
              auth: dict[str, Any] | None, lookups: Lookups) -> str:
    """Why this message must not be quarantined ("" when nothing speaks for it): it belongs to
    an existing ticket, or its sender is a known customer (and not failing authentication)."""
    match = find_ticket(parsed, env.rcpt_to, lookups)
    if match.ticket_id is not None:
        return f"belongs to ticket #{match.ticket_id} (matched by {match.method})"
    sender = parsed.from_.email
    if spam_store.known_customer(conn, sender):
        if auth is not None and auth.get("verdict") == "fail":
            return ""  # a forged From of a customer earns nothing
        return f"the sender {sender} is a known customer"
    return ""


def gate(conn: sqlite3.Connection, env: Envelope, parsed: ParsedMail,
         auth: dict[str, Any] | None, raw_path: str, base: IncomingAudit,
         lookups: Lookups) -> str | None:
    """Quarantine the message when its verdict says so and nothing exempts it: returns the
    audit reason, or None to let the message go on (flagged, when exempt)."""
    verdict = env.spam
    if verdict is None or verdict.action != SPAM_QUARANTINE:
        return None
    exempt = exemption(conn, env, parsed, auth, lookups)
    if exempt:
        spam_store.record(conn, env, action=spam_store.FLAGGED,
                          note=f"not quarantined: {exempt}")
        log.info("queue_id=%s spam score %s flagged, not quarantined: %s", env.queue_id,
                 verdict.score, exempt)
        return None
    reason = (f"quarantined as spam: {verdict.reason}; symbols: {verdict.symbol_text()}"
              " (no ticket, nothing sent; `mailgate spam release` lets it in)")
    details = {"score": verdict.score, "symbols": dict(verdict.symbols),
               "rspamd_action": verdict.rspamd_action, "raw_path": raw_path}
    record_incoming(conn, replace(base, action="spam", reason=reason, details=details))
    spam_store.record(conn, env, note="quarantined", state=spam_store.QUARANTINED,
                      raw_path=raw_path)
    return reason


def record_verdict(conn: sqlite3.Connection, env: Envelope) -> None:
    """Keep the verdict of a message the gate did not record (every other outcome)."""
    if env.spam is not None and not spam_store.recorded(conn, env.queue_id):
        spam_store.record(conn, env)


def autoreply_block(env: Envelope) -> str:
    """The backscatter rule for spam: why nothing automatic may answer this message."""
    return env.spam.no_autoreply if env.spam is not None else ""


PREVIEW_CHARS = 4000


def show(db: sqlite_utils.Database, data_dir: Path, queue_id: str) -> dict[str, Any]:
    """A quarantined (or released) message for a person deciding: its record, the header block
    of the stored raw mail and the start of its text (untrusted text, for display as data).
    Raises NotFound."""
    row = spam_store.get_quarantined(db, queue_id)
    row["headers"], row["text"] = "", ""
    try:
        raw = filestore.read(db, data_dir, row["raw_path"])
    except OSError as exc:
        row["text"] = f"(the stored message cannot be read: {exc.strerror or exc})"
        return row
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    row["headers"] = head.decode("utf-8", "replace")[:PREVIEW_CHARS]
    row["text"] = parse(raw).text[:PREVIEW_CHARS]
    return row


def release(db: sqlite_utils.Database, spool: Spool, data_dir: Path, queue_id: str,
            by: str) -> dict[str, Any]:
    """Let a quarantined message in: a new spool entry the pipeline takes as just arrived.
    Raises NotFound, or UserError (released already, raw file missing)."""
    with transaction(db) as conn:  # holds the write lock: two releases cannot both go through
        env, raw_path = spam_store.take_for_release(conn, queue_id)
        try:
            content = filestore.read(conn, data_dir, raw_path)
        except OSError as exc:
            raise UserError(f"cannot read the quarantined message"
                            f" {filestore.where(conn, data_dir, raw_path)}:"
                            f" {exc.strerror or exc}") from None
        assert env.spam is not None
        new_id = new_queue_id()
        verdict = replace(env.spam, action=SPAM_RELEASED,
                          reason=f"released from quarantine ({queue_id}) by {by};"
                                 f" {env.spam.reason}")
        spool.resubmit(replace(env, queue_id=new_id, received_at=time.time(),
                               size=len(content), spam=verdict), content)
        when = spam_store.mark_released(conn, queue_id, by, new_id)
    log.info("queue_id=%s released from quarantine by %s as queue_id=%s", queue_id, by, new_id)
    return {"queue_id": queue_id, "released_as": new_id, "released_by": by,
            "released_at": when}
