"""The aiosmtpd handler: the policy of a session — envelope checks at MAIL/RCPT, the spool
hand-off once DATA is read.

Input: SMTP commands and the message from any client (untrusted; `smtp.data` has read DATA into
a body the spool gave). Output: a spool entry per accepted message, and a reply per command.
`250 2.0.0 Ok: queued as <id>` is sent only after the spool writer committed the entry; any
failure before that answers 4xx. With `[spam] rspamd` set, the message is scanned once DATA is
read and before that reply (`smtp.spamscan`): spam at or above `reject_score` is refused in the
session with `550 5.7.1` — never accepted and bounced later —, and the verdict (score, symbols,
what to do) travels with the accepted message's envelope to the pipeline. Refusals (too big —
declared at MAIL or found in DATA —, bare CR or LF in reject mode, too slow, no space, spam, the
scanner down with `on_error = "tempfail"`) are spooled as `rejection` entries without the
message bytes, so the incoming audit records them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SMTPEnvelope

from mailgate.model import (
    KIND_REJECTION,
    SPAM_REJECT,
    SPAM_TEMPFAIL,
    Envelope,
    SpamVerdict,
    new_queue_id,
)
from mailgate.smtp import data
from mailgate.smtp.recipients import RecipientPolicy
from mailgate.smtp.replies import (
    BARE_LINE_END,
    DATA_TIMEOUT,
    MESSAGE_TOO_BIG,
    NO_SPACE,
    QUEUED,
    RECIPIENT_OK,
    SCANNER_UNAVAILABLE,
    SENDER_OK,
    SPAM_REFUSED,
    TEMPORARY,
    TOO_MANY_RCPTS,
)
from mailgate.smtp.spamscan import Scanner

log = logging.getLogger("mailgate.smtp")

# What one accepted message may take on disk before the pipeline has run: its bytes in the
# spool's WAL and again in spool.db once checkpointed, plus the rows around them.
SPOOL_COPIES = 2
SPOOL_OVERHEAD = 64 * 1024


class SpoolBody(data.Body, Protocol):
    size: int

    def readable(self) -> bytes | Path: ...


class SpoolSubmitter(Protocol):
    def new_body(self, queue_id: str) -> SpoolBody: ...

    def submit(
        self, envelope: Envelope, content: bytes | SpoolBody | None, kind: str = ...,
        reason: str | None = ...
    ) -> Future[None]: ...


class MailgateHandler:
    def __init__(
        self,
        policy: RecipientPolicy,
        spool: SpoolSubmitter,
        max_recipients: int,
        data_dir: Path,
        min_free_bytes: int,
        notify: Callable[[], None] | None = None,
        refusal: Callable[[], str | None] | None = None,
        scanner: Scanner | None = None,
    ) -> None:
        self.policy = policy
        self.spool = spool
        self.max_recipients = max_recipients
        self.data_dir = data_dir
        self.min_free_bytes = min_free_bytes
        self.notify = notify
        # The daemon's verdict on its own health (database or spool gone): a reason to refuse
        # every new transaction with 451, or None.
        self.refusal = refusal
        self.scanner = scanner  # None, or not enabled: no spam scanning
        self.accepted = 0
        self.reserved = 0  # bytes promised to messages between their space check and commit

    def free_bytes(self) -> int:
        st = os.statvfs(self.data_dir)
        return st.f_bavail * st.f_frsize

    def has_room_for(self, size: int) -> bool:
        """Whether `size` more bytes of mail fit under data_dir, above `min_free_bytes`, after
        what concurrent sessions have already been promised. Checked and reserved in one step
        on the event loop, so two sessions can never both take the last free bytes."""
        need = SPOOL_COPIES * size + SPOOL_OVERHEAD if size else 0
        try:
            free = self.free_bytes()
        except OSError as exc:
            log.warning("cannot read free space under %s: %s", self.data_dir, exc)
            return False
        return free - self.reserved - need >= self.min_free_bytes

    def _unhealthy(self) -> str | None:
        reason = self.refusal() if self.refusal is not None else None
        if reason:
            log.error("refusing mail with 451: %s", reason)
        return reason

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: SMTPEnvelope, hostname: str,
        responses: list[str],
    ) -> list[str]:
        """The EHLO keywords aiosmtpd offers, minus AUTH: nobody can log in here, so it is not
        advertised (a client that tries anyway gets 502)."""
        session.host_name = hostname
        return [r for r in responses if not r[4:].upper().startswith("AUTH")]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: SMTPEnvelope, address: str,
        mail_options: list[str],
    ) -> str:
        if self._unhealthy():
            return TEMPORARY
        declared = _declared_size(mail_options)
        if not self.has_room_for(declared):
            log.warning("refusing MAIL from %s: free space under data_dir below min_free_bytes"
                        " (declared size %d)", session.peer, declared)
            return NO_SPACE
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        # The transaction's queue id, from MAIL on (as Postfix does): every log line about
        # this message, refused recipients included, carries it.
        session.mailgate_queue_id = new_queue_id()  # type: ignore[attr-defined]
        return SENDER_OK

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: SMTPEnvelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return TOO_MANY_RCPTS
        refusal = self.policy.check(address)
        if refusal:
            log.info("queue_id=%s refused RCPT %r from %s: %s",
                     getattr(session, "mailgate_queue_id", "-"), address, session.peer, refusal)
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return RECIPIENT_OK

    async def handle_PROXY(self, server: SMTP, session: Session, envelope: SMTPEnvelope,
                           proxy_data: ProxyData) -> bool:
        """`[server] proxy_protocol`: the load balancer's header names the real client, which
        then counts for the limits, SPF and the audit. A LOCAL/UNKNOWN header (the balancer's
        own health check) keeps the connection's address."""
        if not proxy_data.valid:
            log.warning("refusing a connection from %s: bad PROXY header (%s)", session.peer,
                        proxy_data.error or "not PROXY protocol")
            return False
        if proxy_data.src_addr is None:
            return True
        admit = getattr(server, "admit_proxied", None)
        return True if admit is None else bool(await admit(str(proxy_data.src_addr)))

    def _envelope(self, session: Session, envelope: SMTPEnvelope, size: int) -> Envelope:
        queue_id = getattr(session, "mailgate_queue_id", None) or new_queue_id()
        session.mailgate_queue_id = queue_id  # type: ignore[attr-defined]
        return Envelope(
            queue_id=queue_id,
            received_at=time.time(),
            client_ip=client_address(session),
            helo=session.host_name or "",
            mail_from=envelope.mail_from or "",
            rcpt_to=tuple(envelope.rcpt_tos),
            size=size,
            tls=session.ssl is not None,
        )

    async def record_refusal(
        self, session: Session, envelope: SMTPEnvelope, size: int, reason: str,
        mail_from: str | None = None, spam: SpamVerdict | None = None,
    ) -> None:
        """Spool a rejection record (no message bytes) so the incoming audit shows it."""
        env = self._envelope(session, envelope, size)
        if mail_from is not None:  # refused at MAIL: aiosmtpd has not set it yet
            env = dataclasses.replace(env, mail_from=mail_from)
        if spam is not None:
            env = dataclasses.replace(env, spam=spam)
        log.info("queue_id=%s refused from %s: %s", env.queue_id, env.client_ip, reason)
        try:
            await asyncio.wrap_future(self.spool.submit(env, None, KIND_REJECTION, reason))
        except Exception:
            log.exception("queue_id=%s could not record the refusal", env.queue_id)

    def new_body(self, session: Session) -> SpoolBody:
        """Where DATA goes while it is read (memory, or a spool file once it is big)."""
        queue_id = getattr(session, "mailgate_queue_id", None) or new_queue_id()
        session.mailgate_queue_id = queue_id  # type: ignore[attr-defined]
        return self.spool.new_body(queue_id)

    async def handle_message(self, session: Session, envelope: SMTPEnvelope, body: SpoolBody,
                             result: data.DataResult) -> str:
        """DATA has been read into `body`: refuse it (and say why in the audit), or spool it
        and answer 250 once it is durable."""
        refusal = {
            data.TOO_BIG: (MESSAGE_TOO_BIG, "message exceeds max_message_size"),
            data.BARE_LINE_END: (BARE_LINE_END, "bare CR or LF in DATA"),
            data.TOO_SLOW: (DATA_TIMEOUT, "DATA too slow (timeout or below min_data_rate)"),
        }.get(result.state)
        if result.state == data.NOT_STORED:
            log.error("queue_id=%s could not receive the message: %s",
                      getattr(session, "mailgate_queue_id", "-"), result.error)
            refusal = (NO_SPACE if "space" in result.error.lower() else TEMPORARY, "")
        if refusal is None and self._unhealthy():
            refusal = (TEMPORARY, "")
        spam = None
        if refusal is None and self.scanner is not None and self.scanner.enabled:
            spam, refusal = await self._scan(session, envelope, body, result.size)
        if refusal is None and not self.has_room_for(result.size):
            refusal = (NO_SPACE, "free space under data_dir below min_free_bytes")
        if refusal is not None:
            body.discard()
            reply, reason = refusal
            if reason:
                await self.record_refusal(session, envelope, result.size, reason, spam=spam)
            return reply
        env = dataclasses.replace(self._envelope(session, envelope, result.size), spam=spam)
        promised = SPOOL_COPIES * result.size + SPOOL_OVERHEAD
        self.reserved += promised
        try:
            await asyncio.wrap_future(self.spool.submit(env, body))
        except BaseException:
            body.discard()
            raise
        finally:
            self.reserved -= promised
        self.accepted += 1
        if self.notify is not None:
            self.notify()
        spam_note = ""
        if spam is not None:
            spam_note = f" spam={spam.action}" + (
                f" score={spam.score:g}" if spam.score is not None else "")
        log.info(
            "queue_id=%s queued from=<%s> to=%s size=%d client=%s%s%s",
            env.queue_id, env.mail_from, ",".join(env.rcpt_to), env.size, env.client_ip,
            " (bare LF normalized)" if result.bare_line_ends else "", spam_note,
        )
        return QUEUED.format(queue_id=env.queue_id)


    async def _scan(self, session: Session, envelope: SMTPEnvelope, body: SpoolBody, size: int
                    ) -> tuple[SpamVerdict | None, tuple[str, str] | None]:
        """Ask the spam scanner: its verdict, and the refusal (reply, audit reason) it calls
        for, if any."""
        assert self.scanner is not None
        try:
            source = body.readable()
        except OSError as exc:  # the spool file could not be flushed: nothing is acknowledged
            log.error("queue_id=%s could not write the message before the spam scan: %s",
                      getattr(session, "mailgate_queue_id", "-"), exc)
            return None, (TEMPORARY, "")
        spam = await self.scanner.scan(source, self._envelope(session, envelope, size))
        if spam.action == SPAM_REJECT:
            return spam, (SPAM_REFUSED, f"spam: {spam.reason}; symbols: {spam.symbol_text()}")
        if spam.action == SPAM_TEMPFAIL:
            return spam, (SCANNER_UNAVAILABLE, spam.reason)
        return spam, None


def client_address(session: Session) -> str:
    """The client's IP: the one a PROXY header reported, else the connection's peer."""
    proxied = getattr(session, "proxy_data", None)
    if proxied is not None and proxied.src_addr is not None:
        return str(proxied.src_addr)
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def _declared_size(mail_options: list[str]) -> int:
    """The SIZE= a client declared at MAIL FROM (RFC 1870), 0 when none."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0
