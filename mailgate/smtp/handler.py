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

log = logging.getLogger("mailgate.smtp")

BARE_LINE_END = "550 5.6.0 Message refused: bare CR or LF in DATA (RFC 5321 section 2.3.8)"
NO_SPACE = "452 4.3.1 Insufficient system storage, try again later"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
TEMPORARY = "451 4.3.0 Temporary local problem, try again later"


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
    ) -> None:
        self.policy = policy
        self.spool = spool
        self.max_recipients = max_recipients
        self.data_dir = data_dir
        self.min_free_bytes = min_free_bytes
        self.notify = notify
        self.accepted = 0

    def free_bytes(self) -> int:
        st = os.statvfs(self.data_dir)
        return st.f_bavail * st.f_frsize

    def low_on_space(self) -> bool:
        return self.min_free_bytes > 0 and self.free_bytes() < self.min_free_bytes

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: SMTPEnvelope, address: str,
        mail_options: list[str],
    ) -> str:
        if self.low_on_space():
            log.warning("refusing MAIL from %s: free space below min_free_bytes", session.peer)
            return NO_SPACE
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        # The transaction's queue id, from MAIL on (as Postfix does): every log line about
        # this message, refused recipients included, carries it.
        session.mailgate_queue_id = new_queue_id()  # type: ignore[attr-defined]
        return "250 2.1.0 Sender OK"

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
        return "250 2.1.5 Recipient OK"

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
        if self.low_on_space():
            await self.record_refusal(
                session, envelope, len(content), "free space under data_dir below min_free_bytes"
            )
            return NO_SPACE
        env = self._envelope(session, envelope, len(content))
        await asyncio.wrap_future(self.spool.submit(env, content))
        self.accepted += 1
        if self.notify is not None:
            self.notify()
        log.info(
            "queue_id=%s queued from=<%s> to=%s size=%d client=%s",
            env.queue_id, env.mail_from, ",".join(env.rcpt_to), env.size, env.client_ip,
        )
        return f"250 2.0.0 Ok: queued as {env.queue_id}"
