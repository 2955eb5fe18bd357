"""The aiosmtpd handler: envelope checks at MAIL/RCPT, the spool hand-off at DATA.

Input: SMTP commands and DATA from any client (untrusted). Output: a spool entry per accepted
message, and a reply per command. `250 2.0.0 Ok: queued as <id>` is sent only after the spool
writer committed the entry; any failure before that answers 4xx. Refusals at DATA (bare CR or LF,
too big) are spooled as `rejection` entries without the message bytes, so the incoming audit
can record them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SMTPEnvelope

from mailgate.model import KIND_REJECTION, Envelope, new_queue_id
from mailgate.smtp.recipients import RecipientPolicy
from mailgate.smtp.replies import (
    BARE_LINE_END,
    NO_SPACE,
    QUEUED,
    RECIPIENT_OK,
    SENDER_OK,
    TEMPORARY,
    TOO_MANY_RCPTS,
)

log = logging.getLogger("mailgate.smtp")

# What one accepted message may take on disk before the pipeline has run: its bytes in the
# spool's WAL and again in spool.db once checkpointed, plus the rows around them.
SPOOL_COPIES = 2
SPOOL_OVERHEAD = 64 * 1024


class SpoolSubmitter(Protocol):
    def submit(
        self, envelope: Envelope, content: bytes | None, kind: str = ..., reason: str | None = ...
    ) -> Future[None]: ...


def has_bare_line_ending(data: bytes) -> bool:
    """True when a CR or LF appears that is not part of a CRLF pair."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") != crlf or data.count(b"\r") != crlf


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

    def _envelope(self, session: Session, envelope: SMTPEnvelope, size: int) -> Envelope:
        queue_id = getattr(session, "mailgate_queue_id", None) or new_queue_id()
        session.mailgate_queue_id = queue_id  # type: ignore[attr-defined]
        peer = session.peer
        client_ip = peer[0] if isinstance(peer, tuple) else str(peer)
        return Envelope(
            queue_id=queue_id,
            received_at=time.time(),
            client_ip=client_ip,
            helo=session.host_name or "",
            mail_from=envelope.mail_from or "",
            rcpt_to=tuple(envelope.rcpt_tos),
            size=size,
            tls=session.ssl is not None,
        )

    async def record_refusal(
        self, session: Session, envelope: SMTPEnvelope, size: int, reason: str
    ) -> None:
        """Spool a rejection record (no message bytes) so the incoming audit shows it."""
        env = self._envelope(session, envelope, size)
        log.info("queue_id=%s refused at DATA from %s: %s", env.queue_id, env.client_ip, reason)
        try:
            await asyncio.wrap_future(self.spool.submit(env, None, KIND_REJECTION, reason))
        except Exception:
            log.exception("queue_id=%s could not record the refusal", env.queue_id)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SMTPEnvelope) -> str:
        content: bytes = envelope.original_content or b""
        if has_bare_line_ending(content):
            await self.record_refusal(session, envelope, len(content), "bare CR or LF in DATA")
            return BARE_LINE_END
        if self._unhealthy():
            return TEMPORARY
        if not self.has_room_for(len(content)):
            await self.record_refusal(
                session, envelope, len(content), "free space under data_dir below min_free_bytes"
            )
            return NO_SPACE
        env = self._envelope(session, envelope, len(content))
        promised = SPOOL_COPIES * len(content) + SPOOL_OVERHEAD
        self.reserved += promised
        try:
            await asyncio.wrap_future(self.spool.submit(env, content))
        finally:
            self.reserved -= promised
        self.accepted += 1
        if self.notify is not None:
            self.notify()
        log.info(
            "queue_id=%s queued from=<%s> to=%s size=%d client=%s",
            env.queue_id, env.mail_from, ",".join(env.rcpt_to), env.size, env.client_ip,
        )
        return QUEUED.format(queue_id=env.queue_id)


def _declared_size(mail_options: list[str]) -> int:
    """The SIZE= a client declared at MAIL FROM (RFC 1870), 0 when none."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0
