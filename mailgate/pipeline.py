"""The pipeline: the one orchestrator that takes a spooled message through the stages.

Input: spool entries (the bytes are untrusted; the envelope was checked by the SMTP stage).
Output: for each entry exactly one result committed in the database in one transaction with its
incoming-audit row — a ticket message (`created_ticket`, `appended`), a `duplicate`, a
`rejected` refusal record, or a `held` message with its error — and only then the spool entry
marked done. Stages (parse, threading) are pure functions; their database look-ups are passed in.
Re-running an entry whose result is already committed changes nothing (the audit's unique queue
id), so a crash between the commit and the spool update cannot store a message twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import sqlite_utils

from mailgate.bounces import read_dsn
from mailgate.errors import PermanentFailure, TemporaryFailure
from mailgate.model import KIND_REJECTION, Address, ParsedMail, SpoolEntry, base_mailbox
from mailgate.outbound.mailer import MailContext, queue_ticket_mail
from mailgate.parse import parse
from mailgate.spool import Spool
from mailgate.store import files
from mailgate.store import outbound as outbox
from mailgate.store.audit import IncomingAudit, audited, record_incoming
from mailgate.store.db import now_iso, transaction
from mailgate.store.tickets import (
    add_attachment,
    add_incoming_message,
    create_ticket,
    get_or_create_customer,
    ticket_for_message_id,
    ticket_row,
    touch_ticket,
)
from mailgate.threading import find_ticket

log = logging.getLogger("mailgate.pipeline")

UNKNOWN_SENDER = Address(email="unknown-sender@invalid", name="(no sender address)")


@dataclass(frozen=True)
class Outcome:
    queue_id: str
    action: str
    ticket_id: int | None = None
    reason: str = ""


class Pipeline:
    def __init__(
        self, db: sqlite_utils.Database, spool: Spool, data_dir: Path, max_attempts: int = 3,
        mail: MailContext | None = None, verify_bounce: Callable[[str], int | None] | None = None,
    ) -> None:
        self.db = db
        self.spool = spool
        self.data_dir = data_dir
        self.max_attempts = max_attempts
        self.mail = mail  # None: this pipeline sends no mail (tools, tests of ingest alone)
        self.verify_bounce = verify_bounce

    # --- one entry --------------------------------------------------------------------------

    def handle(self, entry: SpoolEntry) -> Outcome:
        """Process one claimed entry and move it to its next spool state. Never raises for a
        bad message: failures become deferred retries, then a held message with its error."""
        qid = entry.queue_id
        try:
            outcome = self.process(entry)
        except TemporaryFailure as exc:
            delay = min(3600.0, 30.0 * 2 ** max(0, entry.attempts - 1))
            log.warning("queue_id=%s deferred for %.0fs: %s", qid, delay, exc)
            self.spool.defer(qid, str(exc), delay)
            return Outcome(qid, "deferred", reason=str(exc))
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, PermanentFailure) or entry.attempts >= self.max_attempts:
                log.error("queue_id=%s held after %d attempts: %s", qid, entry.attempts, reason,
                          exc_info=not isinstance(exc, PermanentFailure))
                self._record_held(entry, reason)
                self.spool.hold(qid, reason)
                return Outcome(qid, "held", reason=reason)
            log.warning("queue_id=%s attempt %d failed, will retry: %s", qid, entry.attempts,
                        reason, exc_info=True)
            self.spool.defer(qid, reason, 1.0 * entry.attempts)
            return Outcome(qid, "deferred", reason=reason)
        self.spool.mark_done(qid)
        log.info("queue_id=%s action=%s ticket=%s%s", qid, outcome.action, outcome.ticket_id,
                 f" reason={outcome.reason!r}" if outcome.reason else "")
        return outcome

    def process(self, entry: SpoolEntry) -> Outcome:
        env = entry.envelope
        if entry.kind == KIND_REJECTION:
            with transaction(self.db) as conn:
                if not audited(conn, env.queue_id):
                    record_incoming(conn, IncomingAudit(
                        env, "rejected", reason=entry.reason or "refused at DATA"))
            return Outcome(env.queue_id, "rejected", reason=entry.reason or "")
        if entry.content is None:
            raise PermanentFailure("spool entry has no message content")
        content = entry.content
        parsed = parse(content)
        raw_path = files.raw_relpath(env.queue_id, env.received_at)
        files.write_durable(self.data_dir / raw_path, content)
        blobs = [files.store_blob(self.data_dir, a.payload) for a in parsed.attachments]
        with transaction(self.db) as conn:
            if audited(conn, env.queue_id):  # committed before a crash: nothing more to do
                return Outcome(env.queue_id, "already_done")
            conn.execute(
                "DELETE FROM audit_incoming WHERE queue_id=? AND action='held'", (env.queue_id,)
            )
            bounce = self._bounce_target(env.rcpt_to)
            if bounce is not None:
                return self._bounce(conn, entry, parsed, content, bounce)
            return self._store(conn, entry, parsed, raw_path, blobs)

    def _bounce_target(self, rcpts: tuple[str, ...]) -> int | None:
        """0 when mail came to a bounce address without a valid token; the outbound id when it
        names one of our mails; None when it is not for a bounce address at all."""
        bounce_rcpts = [r for r in rcpts if base_mailbox(r).startswith("bounces@")]
        if not bounce_rcpts:
            return None
        for r in bounce_rcpts:
            oid = self.verify_bounce(r) if self.verify_bounce else None
            if oid:
                return oid
        return 0

    def _bounce(self, conn: sqlite3.Connection, entry: SpoolEntry, parsed: ParsedMail,
                content: bytes, outbound_id: int) -> Outcome:
        env = entry.envelope
        dsn = read_dsn(content)
        detail = " ".join(x for x in (dsn.status, dsn.diagnostic) if x) or "no status given"
        if outbound_id and outbox.mark_bounced(conn, outbound_id, dsn.status, detail):
            reason = (f"delivery failure for outbound mail #{outbound_id} to {dsn.recipient}:"
                      f" {detail}")
        else:
            reason = f"bounce to our VERP address without a valid token (not matched): {detail}"
        record_incoming(conn, IncomingAudit(
            env, "bounce", reason=reason, message_id=parsed.message_id,
            from_addr=parsed.from_.email, subject=parsed.subject, defects=len(parsed.defects)))
        return Outcome(env.queue_id, "bounce", reason=reason)

    def _store(self, conn: sqlite3.Connection, entry: SpoolEntry, parsed: ParsedMail,
               raw_path: str, blobs: list[str]) -> Outcome:
        env = entry.envelope
        now = now_iso()
        base = IncomingAudit(
            env, "", message_id=parsed.message_id, from_addr=parsed.from_.email,
            subject=parsed.subject, defects=len(parsed.defects),
        )
        if parsed.message_id:
            existing = ticket_for_message_id(conn, parsed.message_id)
            if existing is not None:
                reason = f"Message-ID <{parsed.message_id}> is already stored on ticket #{existing}"
                record_incoming(conn, replace(base, action="duplicate", reason=reason,
                                            ticket_id=existing))
                return Outcome(env.queue_id, "duplicate", existing, reason)

        match = find_ticket(parsed, lambda mid: ticket_for_message_id(conn, mid))
        requester = parsed.from_ if parsed.from_.email else (
            Address(env.mail_from.lower()) if env.mail_from else UNKNOWN_SENDER
        )
        customer_id = get_or_create_customer(conn, requester, now)
        if match.ticket_id is None:
            ticket_id = create_ticket(conn, parsed.subject or "(no subject)", customer_id, now)
            action = "created_ticket"
        else:
            ticket_id = match.ticket_id
            touch_ticket(conn, ticket_id, now)
            action = "appended"
        row = add_incoming_message(conn, ticket_id, env.queue_id, parsed, raw_path,
                                   match.method, now)
        for att, sha in zip(parsed.attachments, blobs, strict=True):
            add_attachment(conn, row, sha, att.filename, att.content_type, len(att.payload),
                           att.content_id, att.inline)
        record_incoming(conn, replace(base, action=action, ticket_id=ticket_id, message_row=row,
                                    matched_by=match.method))
        if action == "created_ticket" and self.mail is not None:
            self._acknowledge(conn, entry, parsed, ticket_id, requester)
        return Outcome(env.queue_id, action, ticket_id)

    def _acknowledge(self, conn: sqlite3.Connection, entry: SpoolEntry, parsed: ParsedMail,
                     ticket_id: int, requester: Address) -> None:
        assert self.mail is not None
        ticket = ticket_row(conn, ticket_id)
        assert ticket is not None
        customer_message = {"subject": parsed.subject, "text": parsed.text,
                            "from": parsed.from_.email}
        queued = queue_ticket_mail(
            conn, self.mail, kind="new_ticket_ack", ticket=ticket, to=requester,
            context={"customer_message": customer_message}, automatic=True, trigger=parsed,
            envelope_sender=entry.envelope.mail_from, in_reply_to=parsed.message_id,
            references=parsed.references, queue_id=entry.queue_id,
        )
        log.info("queue_id=%s new_ticket_ack outbound_id=%d status=%s%s", entry.queue_id,
                 queued.outbound_id, queued.status,
                 f" reason={queued.reason!r}" if queued.reason else "")

    def _record_held(self, entry: SpoolEntry, reason: str) -> None:
        try:
            with transaction(self.db) as conn:
                if not audited(conn, entry.queue_id):
                    conn.execute("DELETE FROM audit_incoming WHERE queue_id=? AND action='held'",
                                 (entry.queue_id,))
                    record_incoming(conn, IncomingAudit(entry.envelope, "held", reason=reason))
        except Exception:  # the spool still holds the message and its reason
            log.exception("queue_id=%s could not write the held audit row", entry.queue_id)

    # --- the worker ---------------------------------------------------------------------------

    def run_once(self, limit: int = 32) -> list[Outcome]:
        return [self.handle(entry) for entry in self.spool.claim(limit)]


class PipelineWorker:
    """Runs the pipeline in a thread whenever the spool has due work."""

    def __init__(self, pipeline: Pipeline, idle_poll: float = 1.0,
                 on_processed: Callable[[], None] | None = None) -> None:
        self.pipeline = pipeline
        self.on_processed = on_processed
        self.idle_poll = idle_poll
        self._wake = asyncio.Event()
        self._stopping = False
        self.processed = 0

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._wake.clear()
            try:
                outcomes = await loop.run_in_executor(None, self.pipeline.run_once)
            except Exception:
                log.exception("pipeline worker: spool access failed; retrying")
                outcomes = []
                await asyncio.sleep(1.0)
            self.processed += len(outcomes)
            if outcomes:
                if self.on_processed is not None:
                    self.on_processed()
                continue
            due = await loop.run_in_executor(None, self.pipeline.spool.next_due_in)
            timeout = self.idle_poll if due is None else min(self.idle_poll, due)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
