"""Importing a mail archive (archive mode): years of support mail made into closed tickets.

Input: an `Archive` (`parsing.mailboxes`: every message of mbox files, Maildirs and .eml files,
oldest first; the bytes are untrusted mail), the workflow `Policy` (our domains, agents and
mailboxes), the token signer, and `ImportOptions` (the mailbox it belongs to, how recent a
conversation must be to stay open, dry run). Output: for each message one result committed in
the database with its incoming-audit row — `created_ticket` or `appended` (imported), a
`duplicate` (already stored: imported before, or received live), or `ignored` with the reason
it was skipped — and `ImportCounts` with the tally.

Each message goes through the stages live mail goes through — parse, classify, reply text,
threading (tokens, In-Reply-To, References, subject tag) — but in archive mode: its own date is
the date of the message and of its ticket (created, updated, first response, closed), no rule
runs, nothing is sent (no acknowledgement, no notification), and no service-level clock runs
for its ticket (`tickets.imported_at`). Mail from one of our agents, our mailboxes or our
domains is an outgoing agent message (so later replies thread onto it); a conversation that we
began has the first outside recipient as its requester. Bounces, abuse reports, forwarding
confirmations and automatic replies that answer nothing are skipped, each with its reason; an
automatic reply within a conversation, or a message from someone outside it, is kept as an
internal note, as live mail would be. After each batch the tickets it touched are set from
their messages: closed at their last message, or — with `open_since_days`, for a conversation
whose last message is more recent than that — left waiting on whoever is to answer.

Resumable and idempotent: a message's queue id is made from its content digest (which covers
its Message-ID and every header its author wrote, not the trace fields a delivery or an export
adds), so a run interrupted and started again, or an export that overlaps one imported before,
finds what is stored already and adds nothing twice. Messages commit in batches (files made
durable first, then one transaction), so an interruption loses at most the batch in flight and
the running daemon keeps writing between batches. A dry run does all of it inside one
transaction that is rolled back and writes no file.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from mailgate.classify import classify
from mailgate.model import Address, Envelope, ParsedMail, base_mailbox
from mailgate.parsing.digest import content_digest
from mailgate.parsing.mailboxes import Archive, Entry
from mailgate.parsing.parse import parse
from mailgate.parsing.replytext import reply_text
from mailgate.pipeline.deliver import Deliverer, Policy, forward_merged
from mailgate.store import files, filestore
from mailgate.store.audit import IncomingAudit, record_incoming
from mailgate.store.db import now_iso, transaction
from mailgate.store.locks import lock_keys
from mailgate.store.tickets import (
    add_attachment,
    add_incoming_message,
    add_participant,
    create_ticket,
    duplicate_of,
    get_or_create_customer,
    is_participant,
    set_team,
    ticket_row,
)
from mailgate.threading import find_ticket, mailbox_of
from mailgate.threading.keys import conversation_keys
from mailgate.threading.token import Signer

log = logging.getLogger("mailgate.import")

QUEUE_PREFIX = "imp"  # import queue ids: imp + 21 hex digits of the content digest
SKIPPED_KINDS = {
    "bounce": "a delivery status notification (bounce), not a conversation",
    "feedback_report": "an abuse or feedback report, not a conversation",
    "forwarding_confirmation": "a mail provider's forwarding confirmation, not a conversation",
}
IMPORTED = ("created_ticket", "appended")


@dataclass(frozen=True)
class ImportOptions:
    mailbox: str | None = None  # the mailbox the archive belongs to (None: found per message)
    open_since_days: float | None = None  # None: every imported conversation is closed
    dry_run: bool = False
    batch_size: int = 200
    jobs: int = 1  # processes examining messages (parse, classify) beside the one storing


@dataclass
class ImportCounts:
    imported: int = 0
    duplicate: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason → how many
    tickets: set[int] = field(default_factory=set)  # the tickets made or extended
    created: int = 0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def done(self) -> int:
        return self.imported + self.duplicate + self.skipped_total

    def as_dict(self) -> dict[str, Any]:
        return {"imported": self.imported, "duplicate": self.duplicate,
                "skipped": self.skipped_total, "skipped_reasons": dict(self.skipped),
                "tickets_created": self.created, "tickets": len(self.tickets)}


class _RolledBack(Exception):
    """Ends a dry run's transaction without committing it."""


@dataclass(frozen=True)
class _Staged:
    entry: Entry
    queue_id: str
    content: bytes
    digest: str
    parsed: ParsedMail | None = None  # None: imported before (found by queue id)
    kind: str = ""
    reply: str = ""
    raw_path: str = ""
    blobs: tuple[str, ...] = ()
    error: str = ""  # why it could not be read or parsed


@dataclass(frozen=True)
class Examined:
    """What the stages make of one message's bytes, before the database: its digest, the
    parsed message, its class and reply text — or why it could not be read or parsed."""

    content: bytes
    digest: str = ""
    parsed: ParsedMail | None = None
    kind: str = ""
    reply: str = ""
    error: str = ""


def _read(archive: Archive, entry: Entry) -> bytes | str:
    """The message's bytes, or why they cannot be read."""
    try:
        return archive.read(entry)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"


def examine(content: bytes | str) -> Examined:
    """Digest, parse, classify and reply text of one message (a pure function of its bytes:
    run in worker processes). Never raises: a failure is the message's `error`."""
    if isinstance(content, str):
        return Examined(b"", error=content)
    if not content.strip():
        return Examined(b"", error="empty message")
    digest = content_digest(content)
    try:
        parsed = parse(content)
        values = parsed.headers.get("return-path") or ()
        envelope_sender = values[0].strip().strip("<>") if values else parsed.from_.email
        kind = classify(parsed, content, envelope_sender).kind
        reply = reply_text(parsed.text, parsed.html)
    except Exception as exc:  # the parser is hardened; a failure here is still one message
        return Examined(content, digest,
                        error=f"could not be parsed ({type(exc).__name__}: {exc})")
    return Examined(content, digest, parsed, kind, reply)


def _leave_with(parent: int) -> None:
    """In a worker process: exit once the importing process is gone (killed, say), instead of
    waiting forever for work that will not come."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # another user's process now has the number: ours is gone
                os._exit(1)

    threading.Thread(target=watch, name="leave-with-parent", daemon=True).start()


def _examine_all(contents: list[bytes | str]) -> list[Examined]:
    """`examine` for a worker process: the bytes are not sent back (the caller has them)."""
    return [replace(examine(c), content=b"") for c in contents]


def queue_id_for(digest: str) -> str:
    return f"{QUEUE_PREFIX}{digest[:21]}"


class Importer(Deliverer):
    """Stores an archive's messages in archive mode (see the module docstring). Shares the
    live deliverer's look-ups (threading, organizations, teams, copied participants)."""

    def __init__(self, db: Any, data_dir: Path, policy: Policy, tokens: Signer | None,
                 options: ImportOptions) -> None:
        super().__init__(policy, None, tokens)
        self.db = db
        self.data_dir = data_dir
        self.options = options
        self.started = time.time()
        self.counts = ImportCounts()

    # --- the run ----------------------------------------------------------------------------

    def run(self, archive: Archive, progress: Callable[[ImportCounts], None] | None = None
            ) -> ImportCounts:
        """Import every message of `archive`; `progress` is called after each batch. With
        `jobs` > 1 the messages are examined (parsed, classified) in that many processes while
        this one stores the batch before."""
        entries = archive.entries
        size = max(1, self.options.batch_size)
        batches = [entries[i:i + size] for i in range(0, len(entries), size)]
        pool = None
        if self.options.jobs > 1 and len(entries) > size:
            pool = ProcessPoolExecutor(self.options.jobs,
                                       mp_context=multiprocessing.get_context("forkserver"),
                                       initializer=_leave_with, initargs=(os.getpid(),))
        try:
            examined = self._examined(archive, batches, pool)
            if self.options.dry_run:
                try:
                    with transaction(self.db) as conn:
                        for batch, results in examined:
                            staged = [self._stage(e, r, None) for e, r in zip(batch, results,
                                                                            strict=True)]
                            self._store_batch(conn, archive, staged)
                            if progress is not None:
                                progress(self.counts)
                        raise _RolledBack
                except _RolledBack:
                    pass
            else:
                for batch, results in examined:
                    self._import_batch(archive, batch, results)
                    if progress is not None:
                        progress(self.counts)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            archive.close()
        return self.counts

    def _examined(self, archive: Archive, batches: list[list[Entry]],
                  pool: ProcessPoolExecutor | None) -> Iterator[tuple[list[Entry], list[Examined]]]:
        """Each batch with its messages examined; with a pool, the next batch is examined
        while the caller stores this one."""
        if pool is None:
            for batch in batches:
                yield batch, [examine(_read(archive, e)) for e in batch]
            return
        def send(batch: list[Entry]) -> tuple[list[bytes | str], Future[list[Examined]]]:
            contents = [_read(archive, e) for e in batch]
            return contents, pool.submit(_examine_all, contents)

        ahead = send(batches[0]) if batches else None
        for i, batch in enumerate(batches):
            assert ahead is not None
            contents, future = ahead
            # the next batch goes out before this one is stored
            ahead = send(batches[i + 1]) if i + 1 < len(batches) else None
            yield batch, [replace(r, content=c if isinstance(c, bytes) else b"")
                          for r, c in zip(future.result(), contents, strict=True)]

    def _import_batch(self, archive: Archive, batch: list[Entry], results: list[Examined]
                      ) -> None:
        files_batch = filestore.batch_for(self.db, self.data_dir)
        staged = [self._stage(e, r, files_batch) for e, r in zip(batch, results, strict=True)]
        try:
            files_batch.commit()
            with transaction(self.db) as conn:
                lock_keys(conn, {k for s in staged if s.parsed is not None
                                 for k in conversation_keys(s.parsed, s.parsed.from_.email)})
                files_batch.write(conn)
                self._store_batch(conn, archive, staged)
        except BaseException:
            files_batch.discard()
            raise

    # --- before the database ------------------------------------------------------------------

    def _stage(self, entry: Entry, found: Examined, batch: filestore.FileBatch | None
               ) -> _Staged:
        """An examined message with its files written into `batch` (none in a dry run)."""
        if found.error and not found.digest:
            return _Staged(entry, "", b"", "", error=found.error)
        queue_id = queue_id_for(found.digest)
        parsed = found.parsed
        if parsed is None:
            return _Staged(entry, queue_id, found.content, found.digest, error=found.error)
        if batch is not None:
            raw_path = files.raw_relpath(queue_id, self._when(entry, parsed))
            batch.add(raw_path, found.content)
            blobs = tuple(batch.add_blob(a.payload) for a in parsed.attachments)
        else:
            raw_path, blobs = "", tuple("" for _ in parsed.attachments)
        return _Staged(entry, queue_id, found.content, found.digest, parsed, found.kind,
                       found.reply, raw_path, blobs)

    def _when(self, entry: Entry, parsed: ParsedMail | None) -> float:
        """The message's time: its Date, else the archive's (From_ line, Maildir name, file
        time), else the import's; never later than the import."""
        when = 0.0
        if parsed is not None and parsed.date:
            try:
                when = datetime.fromisoformat(parsed.date).timestamp()
            except ValueError:
                when = 0.0
        if when <= 0:
            when = entry.when
        return when if 0 < when <= self.started else self.started

    # --- in the transaction --------------------------------------------------------------------

    def _store_batch(self, conn: sqlite3.Connection, archive: Archive, staged: list[_Staged]
                     ) -> None:
        touched: set[int] = set()
        for item in staged:
            conn.execute("SAVEPOINT message")
            try:
                ticket_id = self._store(conn, archive, item)
            except Exception as exc:
                if not conn.in_transaction:
                    raise
                conn.execute("ROLLBACK TO message")
                conn.execute("RELEASE message")
                reason = f"could not be stored ({type(exc).__name__}: {exc})"
                log.warning("import %s: %s", archive.where(item.entry), reason)
                self.counts.skipped[reason] += 1
                continue
            conn.execute("RELEASE message")
            if ticket_id is not None:
                touched.add(ticket_id)
        for ticket_id in sorted(touched):
            self._settle(conn, ticket_id)

    def _envelope(self, item: _Staged, sender: str) -> Envelope:
        rcpt = (self.options.mailbox,) if self.options.mailbox else ()
        return Envelope(queue_id=item.queue_id, received_at=self.started, client_ip="",
                        helo="mailgate import", mail_from=sender, rcpt_to=rcpt,
                        size=len(item.content))

    def _skip(self, conn: sqlite3.Connection, item: _Staged, base: IncomingAudit | None,
              reason: str) -> None:
        self.counts.skipped[reason] += 1
        if base is not None:
            record_incoming(conn, replace(base, action="ignored",
                                          reason=f"archive import: skipped, {reason}"))

    def _store(self, conn: sqlite3.Connection, archive: Archive, item: _Staged) -> int | None:
        """One message's rows; the ticket it went to (None: not imported)."""
        if item.error and not item.queue_id:
            self._skip(conn, item, None, item.error)
            return None
        earlier = conn.execute("SELECT action, ticket_id, reason FROM audit_incoming"
                               " WHERE queue_id=? AND action != 'held'",
                               (item.queue_id,)).fetchone()
        if earlier is not None:  # imported (or skipped) by an earlier run, or earlier in this
            if earlier[0] in IMPORTED or earlier[0] == "duplicate":
                self.counts.duplicate += 1
            else:
                reason = str(earlier[2] or "").removeprefix("archive import: skipped, ")
                self.counts.skipped[reason or earlier[0]] += 1
            return None
        parsed = item.parsed
        source = {"source": archive.where(item.entry)}
        if parsed is None:
            base = IncomingAudit(self._envelope(item, ""), "", details={"import": source})
            self._skip(conn, item, base, item.error)
            return None
        sender = parsed.from_.email
        when = self._when(item.entry, parsed)
        base = IncomingAudit(
            self._envelope(item, sender), "", message_id=parsed.message_id, from_addr=sender,
            subject=parsed.subject, defects=len(parsed.defects), classification=item.kind,
            details={"import": {**source, "date": now_iso(when)}})
        if item.kind in SKIPPED_KINDS:
            self._skip(conn, item, base, SKIPPED_KINDS[item.kind])
            return None
        existing = duplicate_of(conn, parsed.message_id, item.digest, sender) \
            if parsed.message_id else None
        if existing is not None:
            self.counts.duplicate += 1
            record_incoming(conn, replace(base, action="duplicate", ticket_id=existing, reason=(
                f"archive import: Message-ID <{parsed.message_id}> from {sender} with the"
                f" same content is already stored on ticket #{existing}")))
            return None
        ours = self._is_ours(sender)
        match = forward_merged(conn, find_ticket(parsed, base.envelope.rcpt_to,
                                                 self._lookups(conn, sender)))
        ticket_id = match.ticket_id if match.ticket_id is not None \
            and ticket_row(conn, match.ticket_id) is not None else None
        internal = ""
        if item.kind == "auto_reply":
            if ticket_id is None:
                self._skip(conn, item, base, "an automatic reply that answers no conversation")
                return None
            internal = "automatic reply (out-of-office or similar), imported from the archive"
        elif ticket_id is not None and not ours and sender \
                and not is_participant(conn, ticket_id, sender):
            if self.policy.strangers == "new_ticket":
                ticket_id = None
            else:
                internal = (f"sender {sender} is not a participant of ticket #{ticket_id}"
                            " (imported from the archive)")
        at = now_iso(when)
        if ticket_id is None:
            made = self._create_archived(conn, parsed, base.envelope, ours, at)
            if made is None:
                self._skip(conn, item, base,
                           "sent by us to no one outside (no customer to make a ticket for)")
                return None
            ticket_id, action, matched_by = made, "created_ticket", "new"
            self.counts.created += 1
        else:
            action, matched_by = "appended", match.method
            if not ours and not internal:
                self._add_copied(conn, parsed, ticket_id, sender, at)
        direction = "out" if ours and not internal else "in"
        row = add_incoming_message(
            conn, ticket_id, item.queue_id, parsed, item.raw_path, matched_by, at,
            internal_reason=internal, reply_text=item.reply, classification=item.kind,
            direction=direction, digest=item.digest)
        for att, sha in zip(parsed.attachments, item.blobs, strict=True):
            add_attachment(conn, row, sha, att.filename, att.content_type, len(att.payload),
                           att.content_id, att.inline, att.details)
        why = "archive import: " + (
            "an outgoing message of ours" if direction == "out" else "a received message")
        if internal:
            why += f", kept as an internal note: {internal}"
        if match.notes:
            why += "; " + "; ".join(match.notes)
        record_incoming(conn, replace(base, action=action, reason=why, ticket_id=ticket_id,
                                      message_row=row, matched_by=matched_by))
        self.counts.imported += 1
        self.counts.tickets.add(ticket_id)
        return ticket_id

    def _is_ours(self, sender: str) -> bool:
        """Mail from one of our agents, our mailboxes (the company's public addresses) or our
        domains: what we sent."""
        email = sender.lower()
        return bool(email) and (
            email in self.policy.agents or base_mailbox(email) in self.policy.own_addresses
            or email.rpartition("@")[2].rstrip(".") in self.policy.domains)

    def _create_archived(self, conn: sqlite3.Connection, parsed: ParsedMail, env: Envelope,
                         ours: bool, at: str) -> int | None:
        """A ticket for a conversation the archive begins: its requester the sender, or for one
        we began the first recipient outside; None when there is none."""
        if ours:
            outside = [a for a in (*parsed.to, *parsed.cc)
                       if a.email and not self._is_ours(a.email)]
            if not outside:
                return None
            requester = outside[0]
        else:
            requester = parsed.from_ if parsed.from_.email else Address(
                "unknown-sender@invalid", "(no sender address)")
        customer_id = get_or_create_customer(conn, requester, at)
        self._join_organization(conn, customer_id, requester.email)
        mailbox = self._mailbox(parsed, env, ours)
        ticket_id = create_ticket(conn, parsed.subject or "(no subject)", customer_id, at,
                                  mailbox=mailbox)
        team = self._team_of(env.rcpt_to, mailbox)
        if team:
            set_team(conn, ticket_id, team, at)
        add_participant(conn, ticket_id, requester.email, "requester", at)
        for other in (*parsed.to, *parsed.cc):
            email = other.email.lower()
            if email and email != requester.email and not self._is_ours(email):
                add_participant(conn, ticket_id, email, "cc", at)
        conn.execute("UPDATE tickets SET imported_at=? WHERE id=?", (now_iso(self.started),
                                                                    ticket_id))
        return ticket_id

    def _mailbox(self, parsed: ParsedMail, env: Envelope, ours: bool) -> str | None:
        if not self.policy.mailboxes:
            return self.options.mailbox
        if self.options.mailbox:
            return self.options.mailbox
        if ours:  # what we sent: the mailbox it was sent from
            sender = base_mailbox(parsed.from_.email)
            for box in self.policy.mailboxes:
                if sender in box.addresses():
                    return box.address
        return mailbox_of(env.rcpt_to, parsed, self.policy.mailboxes)[0]

    def _settle(self, conn: sqlite3.Connection, ticket_id: int) -> None:
        """An imported ticket's dates and status from its messages: created at the first,
        updated at the last, first response at our first reply; closed at the last message,
        or left open when it is more recent than `open_since_days` — waiting on the customer
        when we wrote last, else on us. A live ticket an archived message joined keeps its
        own."""
        row = conn.execute("SELECT imported_at FROM tickets WHERE id=?", (ticket_id,)).fetchone()
        if row is None or row[0] is None:
            return
        first, last = conn.execute(
            "SELECT MIN(created_at), MAX(created_at) FROM messages WHERE ticket_id=?",
            (ticket_id,)).fetchone()
        answered = conn.execute(
            "SELECT MIN(created_at) FROM messages WHERE ticket_id=? AND direction='out'"
            " AND internal=0", (ticket_id,)).fetchone()[0]
        latest = conn.execute(
            "SELECT direction FROM messages WHERE ticket_id=? AND internal=0"
            " ORDER BY created_at DESC, id DESC LIMIT 1", (ticket_id,)).fetchone()
        days = self.options.open_since_days
        recent = days is not None and last is not None \
            and last >= now_iso(self.started - days * 86400)
        if not recent:
            status, closed = "closed", last
        elif latest is not None and latest[0] == "out":
            status, closed = "pending_customer", None
        else:
            status, closed = ("pending_agent" if answered else "open"), None
        conn.execute(
            "UPDATE tickets SET status=?, created_at=?, updated_at=?, last_activity_at=?,"
            " closed_at=?, resolved_at=?, first_response_at=? WHERE id=?",
            (status, first, last, last, closed, closed, answered, ticket_id))
