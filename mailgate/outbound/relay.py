"""The relay worker: delivers the outbox through the configured smarthost over SMTP (or, for a
mailbox with its own `[mailboxes.relay]`, through that one: `relay_for`).

Input: outbox rows claimed from the database (mailgate rendered them; the recipient address came
from mail headers, so it is checked for CR/LF, spaces and angle brackets before it reaches an SMTP
command), the `[relay]` settings (trusted), and the relay's replies (untrusted text, stored as
given, whitespace collapsed). Output: each claimed row ends its attempt as `sent` (with the
relay's reply), `deferred` (4xx, connection failure, timeout, anything unexpected; retried with
exponential backoff) or `failed` (a 5xx at MAIL, RCPT or DATA, an address that cannot be put on
an SMTP command line, a message that cannot be signed, or the retry period
`give_up_after_seconds` exhausted). The worker never crashes on one mail; every log line about a
mail carries `outbound_id=N`.

Timeouts per stage (RFC 5321 §4.5.3.2): every reply before DATA (greeting, EHLO, STARTTLS,
AUTH, MAIL, RCPT) within `[relay] timeout`; the DATA command (354, the transfer and the reply to
the end of data) within `[relay] data_timeout` (10 minutes by default), so a slow relay is not
given up on while it may be accepting the mail.

At-least-once: the start of the data phase is committed before DATA is sent. An attempt that
ends after that without a reply from the relay (a timeout, a lost connection, or a crash: see
`mailgate.store.outbound.recover`) is "maybe sent": deferred and resent with the same
Message-ID, so the receiver can drop the copy, and its audit row says so. An outcome that cannot
be written (database locked, disk full) is kept and written again with backoff until it lands.

The worker has its own database connection, used from one dedicated thread: the fsyncing
database calls stay off the event loop and never interleave. It claims at most `concurrency`
(≤ 4) mails at a time and delivers them concurrently, one SMTP connection each, so `stop()` only
ever waits for mails that are actually in flight; no claimed row is left behind `sending`
unless the task is cancelled or the process dies (`recover()` at the next start settles those).

Several nodes on one database (`node_id`): each claim holds a lease long enough for one attempt
(`lease_before_data`, extended at DATA to `lease_for_data`, both from the relay's timeouts);
start-up settles only this node's rows, and every `settle_every` seconds the worker settles
the rows other nodes left `sending` past their lease (they died). An attempt whose claim was
taken over by another node meanwhile sends no DATA, and its outcome is not written (the other
node's attempt decides; see `mailgate.store.outbound`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosmtplib

from mailgate.config import Relay, Webhook
from mailgate.errors import PermanentFailure, TemporaryFailure, temporary_cause
from mailgate.ops import metrics
from mailgate.outbound.queue_worker import QueueWorker
from mailgate.store import webhooks as hooks
from mailgate.store.outbound import (
    OutboundMail,
    claim_due,
    extend_lease,
    mark_data_started,
    mark_deferred,
    mark_failed,
    mark_sent,
    next_due_in,
    recover,
    settle_expired,
)

log = logging.getLogger("mailgate.outbound.relay")


MAX_CONCURRENCY = 4
RECORD_RETRY_FIRST = 0.1  # seconds before writing an outcome again after the database said no
RECORD_RETRY_MAX = 10.0
# Replies the relay may owe before DATA, each within `[relay] timeout`: the greeting, EHLO,
# STARTTLS, EHLO again, AUTH (two round trips), MAIL and RCPT.
REPLIES_BEFORE_DATA = 8
LEASE_MARGIN = 60.0  # seconds on top: signing, the database writes, a slow event loop
SETTLE_EVERY = 30.0  # seconds between looks for rows a dead node left `sending`
# An address we are willing to put after MAIL FROM:/RCPT TO: — no controls, spaces, <, > or ,.
_ADDRESS = re.compile(r"[^\x00-\x20\x7f<>,;]+@[^\x00-\x20\x7f<>,;@]+\Z")


class _Permanent(Exception):
    """The relay (or the mail itself) said no for good: mark the mail failed."""

    def __init__(self, text: str, relay_answered: bool = False) -> None:
        super().__init__(text)
        self.relay_answered = relay_answered


class _Temporary(Exception):
    """A 4xx at MAIL, RCPT or DATA: defer."""


class _ClaimLost(Exception):
    """Before DATA: this attempt's lease ran out and another node took the row."""


class _MaybeSent(Exception):
    """No reply after DATA began (a timeout, a lost connection): the relay may have the mail."""


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


def lease_before_data(relay: Relay) -> float:
    """How long a claim must hold for an attempt to reach DATA through `relay`."""
    return REPLIES_BEFORE_DATA * relay.timeout + LEASE_MARGIN


def lease_for_data(relay: Relay) -> float:
    """How long a claim must hold from the start of DATA: the DATA command's own time, then
    the QUIT-free recording of the outcome."""
    return relay.data_timeout + relay.timeout + LEASE_MARGIN


def backoff(relay: Relay, attempts: int) -> float:
    """Seconds to wait after failed attempt number `attempts` (1-based)."""
    return min(relay.retry_max_seconds, relay.retry_base_seconds * 2 ** max(0, attempts - 1))


class RelayWorker(QueueWorker):
    """Delivers due outbox rows until `stop()`; see the module docstring."""

    def __init__(
        self,
        database: Path | str,
        relay: Relay,
        envelope_from: Callable[[OutboundMail], str],
        signer: Callable[[bytes], bytes] | None,
        hostname: str,
        *,
        concurrency: int = MAX_CONCURRENCY,
        idle_poll: float = 1.0,
        relay_for: Callable[[OutboundMail], Relay] | None = None,
        node_id: str = "mailgate",
        settle_every: float = SETTLE_EVERY,
        webhooks: tuple[Webhook, ...] = (),
    ) -> None:
        # [[webhooks]]: mail given up is an `outbound_failed` event (replaced on a reload)
        self.webhooks = webhooks
        # This node among those on one database: the name its claims carry.
        self.node_id = node_id
        self.settle_every = settle_every
        self.relay = relay
        # A mailbox's own relay ([mailboxes.relay]); None: every mail through `relay`.
        self.relay_for = relay_for
        self.envelope_from = envelope_from
        self.signer = signer
        self.hostname = hostname
        self.concurrency = max(1, min(MAX_CONCURRENCY, concurrency))
        self.idle_poll = max(0.05, min(1.0, idle_poll))
        super().__init__(database, "relay-db")
        # Health, for the admin endpoint and `doctor`.
        self.last_ok: bool | None = None  # the last attempt was accepted (or refused for good)
        self.last_attempt_at: float | None = None  # time.time() of the last attempt's end
        self.last_error: str = ""  # the error of the last attempt that did not succeed
        self.sent = 0
        self.deferred = 0
        self.failed = 0

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        self._started()
        recovered = False
        settled_at = -float("inf")
        while not self._stopping:
            self._wake.clear()
            try:
                if not recovered:
                    settled = await self._in_db(recover, self.node_id)
                    recovered = True
                    for oid, _maybe, note in settled:
                        log.warning("outbound_id=%d %s", oid, note)
                if time.monotonic() - settled_at >= self.settle_every:
                    settled = await self._in_db(settle_expired, self.node_id)
                    settled_at = time.monotonic()
                    for oid, _maybe, note in settled:
                        log.warning("outbound_id=%d %s", oid, note)
                batch = await self._in_db(claim_due, self.concurrency, self.node_id,
                                          lease_before_data(self.relay))
                self._outbox_down = False
            except Exception as exc:
                self._outbox_failed(exc)
                await self._sleep(1.0)
                continue
            if batch:
                await asyncio.gather(*(self._attempt(mail) for mail in batch))
                continue
            try:
                due = await self._in_db(next_due_in)
            except Exception as exc:
                self._outbox_failed(exc)
                due = None
            await self._sleep(self.idle_poll if due is None else min(self.idle_poll, due))

    _outbox_down = False

    def _outbox_failed(self, exc: Exception) -> None:
        """The outbox could not be read. The database down or gone (a shortage): one warning
        line per outage, not a traceback a second; anything else: the traceback."""
        cause = temporary_cause(exc)
        if cause is None:
            log.exception("relay: cannot read the outbox; retrying in 1s")
        elif not self._outbox_down:
            log.warning("relay: cannot read the outbox (%s); retrying every second", cause)
        self._outbox_down = cause is not None

    # --- one mail -----------------------------------------------------------------------------

    async def _attempt(self, mail: OutboundMail) -> None:
        """Deliver one claimed mail and record the result. Never raises (but cancellation)."""
        smtp: aiosmtplib.SMTP | None = None
        try:
            reply, smtp = await metrics.timed(metrics.RELAY_SECONDS, self._deliver(mail))
        except _Permanent as exc:
            # A 5xx means the relay is up and answering; a bad address or message says nothing.
            await self._finish(mail, "failed", str(exc),
                               relay_ok=True if exc.relay_answered else None)
        except _ClaimLost:
            log.warning("outbound_id=%d not sent by node %r: its claim (attempt %d) ran out"
                        " before DATA and another node has the mail now", mail.id,
                        self.node_id, mail.attempts)
        except _MaybeSent as exc:
            await self._retry_or_give_up(mail, str(exc), maybe_sent=True)
        except Exception as exc:
            await self._retry_or_give_up(mail, self._describe(mail, exc))
        else:
            if mail.maybe_sent:
                reply += (f" (maybe sent twice: {mail.maybe_sent} earlier attempt(s) ended"
                          " without a reply after DATA began and may also have delivered it;"
                          f" same Message-ID {_bracketed(mail.message_id)}, so the receiver"
                          " can drop the copy)")
            await self._finish(mail, "sent", reply, relay_ok=True)
            await self._quit(smtp)

    async def _retry_or_give_up(self, mail: OutboundMail, error: str, *,
                                maybe_sent: bool = False) -> None:
        delay = backoff(self.relay, mail.attempts)
        mid = _bracketed(mail.message_id)
        if time.time() + delay > mail.created_ts + self.relay.give_up_after_seconds:
            if maybe_sent:
                error = (f"maybe sent: {error} after DATA began (the relay may have delivered"
                         f" it; Message-ID {mid})")
            await self._finish(mail, "failed", f"gave up after {mail.attempts} attempts: {error}",
                               relay_ok=False, maybe_sent=maybe_sent)
            return
        if maybe_sent:
            error = (f"maybe sent: {error} after DATA began; it is resent with the same"
                     f" Message-ID {mid}, so the receiver can drop the copy")
        await self._finish(mail, "deferred", error, delay, relay_ok=False, maybe_sent=maybe_sent)

    async def _deliver(self, mail: OutboundMail) -> tuple[str, aiosmtplib.SMTP]:
        """The SMTP conversation up to the relay's reply to the end of data; returns that reply
        and the connection (still open: the caller records the outcome, then QUITs).

        Each stage gets its own time (RFC 5321 §4.5.3.2): the greeting, EHLO, STARTTLS, AUTH,
        MAIL and RCPT `[relay] timeout` each; the DATA command, its 354 and the reply to the end
        of data (the transfer in between included) `[relay] data_timeout`. Just before DATA the
        start of the data phase is committed; an error after it that is not a reply of the relay
        (a timeout, a lost connection) raises `_MaybeSent`."""
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
        relay = self._relay_of(mail)
        slower = lease_before_data(relay) > lease_before_data(self.relay)  # a mailbox's relay
        if slower and not await self._in_db(extend_lease, mail.id, self.node_id, mail.attempts,
                                            lease_before_data(relay)):
            raise _ClaimLost()
        smtp = aiosmtplib.SMTP(
            hostname=relay.host,
            port=relay.port,
            username=relay.username or None,
            password=relay.password or None,
            local_hostname=self.hostname,
            timeout=relay.timeout,
            use_tls=False,
            start_tls=relay.starttls,  # False: no opportunistic STARTTLS either
        )
        await smtp.connect()  # the greeting, then STARTTLS and AUTH when configured
        try:
            if smtp.is_ehlo_or_helo_needed:
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await smtp.helo()
            options = []
            if smtp.supports_extension("size"):
                options.append(f"SIZE={len(data)}")
            if utf8:
                if not smtp.supports_extension("smtputf8"):
                    raise _Temporary(f"relay {relay.host}:{relay.port} does not offer SMTPUTF8,"
                                     " which this mail's addresses need")
                options.append("SMTPUTF8")
            encoding = "utf-8" if utf8 else "ascii"
            try:
                await smtp.mail(sender, options=options, encoding=encoding)
                await smtp.rcpt(recipient, encoding=encoding)
            except (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPRecipientRefused) as exc:
                raise _refusal(exc.code, exc.message) from None
            try:
                held = await self._in_db(mark_data_started, mail.id, self.node_id,
                                         mail.attempts, lease_for_data(relay))
            except Exception as exc:
                raise _Temporary(_one_line(f"cannot record the start of DATA ({exc}); nothing"
                                           " was sent")) from None
            if not held:
                raise _ClaimLost()
            try:
                response = await smtp.data(data, timeout=relay.data_timeout)
            except aiosmtplib.SMTPDataError as exc:  # a reply: the relay did not take it
                raise _refusal(exc.code, exc.message) from None
            except (OSError, aiosmtplib.SMTPException) as exc:  # timeouts and lost connections
                raise _MaybeSent(self._describe_data_error(exc, relay)) from None
        except BaseException:
            smtp.close()
            raise
        return _reply(response.code, response.message), smtp

    async def _quit(self, smtp: aiosmtplib.SMTP | None) -> None:
        """Say goodbye after the outcome is recorded; a relay that does not answer changes
        nothing."""
        if smtp is None:
            return
        with contextlib.suppress(Exception):  # delivered and recorded either way
            await smtp.quit()
        smtp.close()

    def _relay_of(self, mail: OutboundMail) -> Relay:
        """The relay this mail goes through: its mailbox's own, else `[relay]`."""
        if self.relay_for is None:
            return self.relay
        try:
            return self.relay_for(mail)
        except Exception:  # a mail we cannot read the From of goes the default way
            log.exception("outbound_id=%d cannot choose a relay; using [relay]", mail.id)
            return self.relay

    def _describe_data_error(self, exc: Exception, relay: Relay) -> str:
        where = f"relay {relay.host}:{relay.port}"
        if isinstance(exc, TimeoutError):
            return (f"no reply from {where} within [relay] data_timeout ="
                    f" {relay.data_timeout:g}s")
        return _one_line(f"lost the connection to {where}: {exc}")

    def _describe(self, mail: OutboundMail, exc: Exception) -> str:
        """A one-line error for a temporary failure, logged at the right level."""
        relay = self._relay_of(mail)
        where = f"relay {relay.host}:{relay.port}"
        if isinstance(exc, _Temporary):
            return str(exc)
        if isinstance(exc, TemporaryFailure):  # from the signer: the DKIM key is unusable
            return _one_line(str(exc))
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            return f"{where} refused authentication: {_reply(exc.code, exc.message)}"
        if isinstance(exc, aiosmtplib.SMTPResponseException):  # greeting, EHLO, STARTTLS
            return f"{where} answered {_reply(exc.code, exc.message)}"
        if isinstance(exc, TimeoutError):
            return f"timeout talking to {where} ([relay] timeout = {relay.timeout:g}s)"
        if isinstance(exc, OSError | aiosmtplib.SMTPException):  # refused, reset, TLS, ...
            return _one_line(f"cannot talk to {where}: {exc}")
        log.error("outbound_id=%d unexpected error (will retry)", mail.id, exc_info=exc)
        return _one_line(f"{type(exc).__name__}: {exc}")

    async def _finish(self, mail: OutboundMail, status: str, text: str, delay: float = 0.0,
                      *, relay_ok: bool | None, maybe_sent: bool = False) -> None:
        oid, to = mail.id, _printable(mail.to_addr)
        ids = {"queue_id": mail.queue_id} if mail.queue_id else {}  # JSON logs: a field
        self.last_attempt_at = time.time()
        if relay_ok is not None:
            self.last_ok = relay_ok
        self.last_error = "" if status == "sent" else text
        if status == "sent":
            self.sent += 1
            log.info("outbound_id=%d sent to %s (attempt %d): %s",
                     oid, to, mail.attempts, text, extra=ids)
            await self._record(mail, status, mark_sent, oid, text)
        elif status == "failed":
            self.failed += 1
            log.warning("outbound_id=%d failed (attempt %d, to %s): %s",
                        oid, mail.attempts, to, text, extra=ids)
            await self._record(mail, status, mark_failed, oid, text, maybe_sent,
                               also=self._failed_event(mail, text))
        else:
            self.deferred += 1
            log.warning("outbound_id=%d deferred for %.1fs (attempt %d, to %s): %s",
                        oid, delay, mail.attempts, to, text, extra=ids)
            await self._record(mail, status, mark_deferred, oid, text, delay, maybe_sent)

    def _failed_event(self, mail: OutboundMail, error: str) -> Callable[[Any], None] | None:
        """The `outbound_failed` event for the webhooks subscribed to it (None: none is)."""
        webhooks = self.webhooks
        if not hooks.wanted(webhooks, "outbound_failed"):
            return None

        def emit(conn: Any) -> None:
            row = conn.execute("SELECT kind, to_addr, subject, message_id FROM outbound"
                               " WHERE id=?", (mail.id,)).fetchone()
            kind, to, subject, message_id = row if row else (mail.kind, mail.to_addr, "", "")
            hooks.emit(conn, webhooks, "outbound_failed", mail.ticket_id, outbound={
                "id": mail.id, "kind": kind, "to": to, "subject": subject,
                "message_id": message_id, "attempts": mail.attempts, "error": error})
        return emit

    async def _record(self, mail: OutboundMail, status: str, fn: Callable[..., bool],
                      *args: Any, **kwargs: Any) -> None:
        """Write the outcome of an attempt, retrying with backoff while the database says no for
        a reason that passes (locked, disk full, I/O error): the outcome is kept in memory
        meanwhile, so a sent mail is not sent again by this process. Should the process die
        first, the row is still `sending` and `recover` makes it "maybe sent"."""
        ids = {"queue_id": mail.queue_id} if mail.queue_id else {}
        wait = RECORD_RETRY_FIRST
        failures = 0
        while True:
            try:
                held = await self._in_db(fn, *args, node_id=self.node_id, attempt=mail.attempts,
                                         **kwargs)
            except Exception as exc:
                if not isinstance(exc, sqlite3.OperationalError) and temporary_cause(exc) is None:
                    log.exception("outbound_id=%d could not record %r; the row stays 'sending'"
                                  " until the next start", mail.id, status, extra=ids)
                    return
                failures += 1
                log.warning("outbound_id=%d cannot record %r yet (%s); retry %d in %.1fs",
                            mail.id, status, _one_line(str(exc)), failures, wait, extra=ids)
                await asyncio.sleep(wait)
                wait = min(RECORD_RETRY_MAX, wait * 2)
                continue
            if not held:
                log.warning("outbound_id=%d %r not recorded: node %r's claim (attempt %d) ran"
                            " out and another node has taken the mail since; its attempt decides"
                            " (a mail sent by both arrives twice, with the same Message-ID)",
                            mail.id, status, self.node_id, mail.attempts, extra=ids)
            elif failures:
                log.warning("outbound_id=%d %r recorded after %d failed attempt(s) to write it",
                            mail.id, status, failures, extra=ids)
            return


def _bracketed(message_id: str) -> str:
    return f"<{message_id.strip().strip('<>')}>"


def _refusal(code: int, message: str) -> Exception:
    """A reply of the relay refusing the mail: for good (5xx) or for now (4xx)."""
    text = _reply(code, message)
    if code >= 500:
        return _Permanent(text, relay_answered=True)
    return _Temporary(text)
