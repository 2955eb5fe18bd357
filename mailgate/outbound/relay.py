"""The relay worker: delivers the outbox through the configured smarthost over SMTP.

Input: outbox rows claimed from the database (mailgate rendered them; the recipient address came
from mail headers, so it is checked for CR/LF, spaces and angle brackets before it reaches an SMTP
command), the `[relay]` settings (trusted), and the relay's replies (untrusted text, stored as
given, whitespace collapsed). Output: each claimed row ends its attempt as `sent` (with the
relay's reply), `deferred` (4xx, connection failure, timeout, anything unexpected; retried with
exponential backoff) or `failed` (a 5xx at MAIL, RCPT or DATA, an address that cannot be put on
an SMTP command line, a message that cannot be signed, or the retry period
`give_up_after_seconds` exhausted). The worker never crashes on one mail; every log line about a
mail carries `outbound_id=N`.

The worker has its own database connection, used from one dedicated thread: the fsyncing
database calls stay off the event loop and never interleave. It claims at most `concurrency`
(≤ 4) mails at a time and delivers them concurrently, one SMTP connection each, so `stop()` only
ever waits for mails that are actually in flight; no claimed row is left behind `sending`
unless the task is cancelled or the process dies (`recover()` at the next start defers those).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib

from mailgate import metrics
from mailgate.config import Relay
from mailgate.errors import PermanentFailure, TemporaryFailure
from mailgate.store.db import open_db
from mailgate.store.outbound import (
    OutboundMail,
    claim_due,
    mark_deferred,
    mark_failed,
    mark_sent,
    next_due_in,
    recover,
)

log = logging.getLogger("mailgate.outbound.relay")

T = TypeVar("T")

MAX_CONCURRENCY = 4
# An address we are willing to put after MAIL FROM:/RCPT TO: — no controls, spaces, <, > or ,.
_ADDRESS = re.compile(r"[^\x00-\x20\x7f<>,;]+@[^\x00-\x20\x7f<>,;@]+\Z")


class _Permanent(Exception):
    """The relay (or the mail itself) said no for good: mark the mail failed."""

    def __init__(self, text: str, relay_answered: bool = False) -> None:
        super().__init__(text)
        self.relay_answered = relay_answered


class _Temporary(Exception):
    """A 4xx at MAIL, RCPT or DATA: defer."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _printable(text: str) -> str:
    """For log lines: the text itself, or its repr when it holds line breaks or controls."""
    return text if text.isprintable() else repr(text)


def _reply(code: int, message: str) -> str:
    return _one_line(f"{code} {message}")


def check_address(address: str) -> str:
    """The address unchanged if it can go on an SMTP command line, else ValueError."""
    if not _ADDRESS.match(address):
        raise ValueError(f"not a deliverable address: {address!r}")
    return address


def backoff(relay: Relay, attempts: int) -> float:
    """Seconds to wait after failed attempt number `attempts` (1-based)."""
    return min(relay.retry_max_seconds, relay.retry_base_seconds * 2 ** max(0, attempts - 1))


class RelayWorker:
    """Delivers due outbox rows until `stop()`; see the module docstring."""

    def __init__(
        self,
        db_path: Path,
        relay: Relay,
        envelope_from: Callable[[OutboundMail], str],
        signer: Callable[[bytes], bytes] | None,
        hostname: str,
        *,
        concurrency: int = MAX_CONCURRENCY,
        idle_poll: float = 1.0,
    ) -> None:
        self.relay = relay
        self.envelope_from = envelope_from
        self.signer = signer
        self.hostname = hostname
        self.concurrency = max(1, min(MAX_CONCURRENCY, concurrency))
        self.idle_poll = max(0.05, min(1.0, idle_poll))
        self.db = open_db(db_path)
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-db")
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        # Health, for the admin endpoint and `doctor`.
        self.last_ok: bool | None = None  # the last attempt was accepted (or refused for good)
        self.last_attempt_at: float | None = None  # time.time() of the last attempt's end
        self.last_error: str = ""  # the error of the last attempt that did not succeed
        self.sent = 0
        self.deferred = 0
        self.failed = 0

    # --- control (callable from any thread) ---------------------------------------------------

    def wake(self) -> None:
        """New mail is in the outbox: look now instead of at the next poll."""
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        """Let the mails in flight finish, then return from `run()`."""
        self._stopping = True
        self.wake()

    def close(self) -> None:
        """Release the database connection and its thread (after `run()` has returned)."""
        self._db_thread.shutdown(wait=True)
        self.db.close()

    # --- the loop -----------------------------------------------------------------------------

    async def _in_db(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, fn, self.db, *args)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(0.0, seconds))

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()  # bound to this loop
        recovered = False
        while not self._stopping:
            self._wake.clear()
            try:
                if not recovered:
                    count = await self._in_db(recover)
                    recovered = True
                    if count:
                        log.warning("relay: %d interrupted attempt(s) deferred for a retry", count)
                batch = await self._in_db(claim_due, self.concurrency)
            except Exception:
                log.exception("relay: cannot read the outbox; retrying in 1s")
                await self._sleep(1.0)
                continue
            if batch:
                await asyncio.gather(*(self._attempt(mail) for mail in batch))
                continue
            try:
                due = await self._in_db(next_due_in)
            except Exception:
                log.exception("relay: cannot read the outbox; retrying in 1s")
                due = None
            await self._sleep(self.idle_poll if due is None else min(self.idle_poll, due))

    # --- one mail -----------------------------------------------------------------------------

    async def _attempt(self, mail: OutboundMail) -> None:
        """Deliver one claimed mail and record the result. Never raises (but cancellation)."""
        try:
            reply = await metrics.timed(metrics.RELAY_SECONDS, self._deliver(mail))
        except _Permanent as exc:
            # A 5xx means the relay is up and answering; a bad address or message says nothing.
            await self._finish(mail, "failed", str(exc),
                               relay_ok=True if exc.relay_answered else None)
        except Exception as exc:
            error = self._describe(mail, exc)
            delay = backoff(self.relay, mail.attempts)
            if time.time() + delay > mail.created_ts + self.relay.give_up_after_seconds:
                await self._finish(mail, "failed",
                                   f"gave up after {mail.attempts} attempts: {error}",
                                   relay_ok=False)
            else:
                await self._finish(mail, "deferred", error, delay, relay_ok=False)
        else:
            await self._finish(mail, "sent", reply, relay_ok=True)

    async def _deliver(self, mail: OutboundMail) -> str:
        """The SMTP conversation; returns the relay's reply to DATA."""
        try:
            sender = check_address(self.envelope_from(mail))
            recipient = check_address(mail.to_addr)
        except ValueError as exc:
            raise _Permanent(str(exc)) from None
        data = mail.raw
        if not data:
            raise _Permanent("the outbox row has no message content")
        if self.signer is not None:
            try:
                data = await asyncio.get_running_loop().run_in_executor(
                    None, self.signer, data)
            except PermanentFailure as exc:
                raise _Permanent(str(exc)) from None
        utf8 = not (sender.isascii() and recipient.isascii())
        relay = self.relay
        try:
            _refused, message = await aiosmtplib.send(
                data,
                sender=sender,
                recipients=[recipient],
                mail_options=["SMTPUTF8"] if utf8 else None,
                hostname=relay.host,
                port=relay.port,
                username=relay.username or None,
                password=relay.password or None,
                local_hostname=self.hostname,
                timeout=relay.timeout,
                use_tls=False,
                start_tls=relay.starttls,  # False: no opportunistic STARTTLS either
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            text = _reply(first.code, first.message)
            if first.code >= 500:
                raise _Permanent(text, relay_answered=True) from None
            raise _Temporary(text) from None
        except (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPRecipientRefused,
                aiosmtplib.SMTPDataError) as exc:
            text = _reply(exc.code, exc.message)
            if exc.code >= 500:
                raise _Permanent(text, relay_answered=True) from None
            raise _Temporary(text) from None
        return _reply(250, message)

    def _describe(self, mail: OutboundMail, exc: Exception) -> str:
        """A one-line error for a temporary failure, logged at the right level."""
        where = f"relay {self.relay.host}:{self.relay.port}"
        if isinstance(exc, _Temporary):
            return str(exc)
        if isinstance(exc, TemporaryFailure):  # from the signer: the DKIM key is unusable
            return _one_line(str(exc))
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            return f"{where} refused authentication: {_reply(exc.code, exc.message)}"
        if isinstance(exc, aiosmtplib.SMTPResponseException):  # greeting, EHLO, STARTTLS
            return f"{where} answered {_reply(exc.code, exc.message)}"
        if isinstance(exc, TimeoutError):
            return f"timeout talking to {where}"
        if isinstance(exc, OSError | aiosmtplib.SMTPException):  # refused, reset, TLS, ...
            return _one_line(f"cannot talk to {where}: {exc}")
        log.error("outbound_id=%d unexpected error (will retry)", mail.id, exc_info=exc)
        return _one_line(f"{type(exc).__name__}: {exc}")

    async def _finish(self, mail: OutboundMail, status: str, text: str, delay: float = 0.0,
                      *, relay_ok: bool | None) -> None:
        oid, to = mail.id, _printable(mail.to_addr)
        ids = {"queue_id": mail.queue_id} if mail.queue_id else {}  # JSON logs: a field
        self.last_attempt_at = time.time()
        if relay_ok is not None:
            self.last_ok = relay_ok
        self.last_error = "" if status == "sent" else text
        try:
            if status == "sent":
                self.sent += 1
                log.info("outbound_id=%d sent to %s (attempt %d): %s",
                         oid, to, mail.attempts, text, extra=ids)
                await self._in_db(mark_sent, oid, text)
            elif status == "failed":
                self.failed += 1
                log.warning("outbound_id=%d failed (attempt %d, to %s): %s",
                            oid, mail.attempts, to, text, extra=ids)
                await self._in_db(mark_failed, oid, text)
            else:
                self.deferred += 1
                log.warning("outbound_id=%d deferred for %.1fs (attempt %d, to %s): %s",
                            oid, delay, mail.attempts, to, text, extra=ids)
                await self._in_db(mark_deferred, oid, text, delay)
        except Exception:
            log.exception("outbound_id=%d could not record %r; the row stays 'sending' until"
                          " the next start (a sent mail may then be sent again)", oid, status)
