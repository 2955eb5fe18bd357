"""Builds the SMTP listener: aiosmtpd's protocol with our replies, limits and TLS.

Input: the validated config and a handler. Output: an asyncio server bound to `[server] listen`
(optionally on an inherited socket). Every reply goes out with an enhanced status code; an
unexpected exception anywhere in a session answers `451 4.3.0` and is logged with the queue id,
never a 500 that names a Python class.

Stopping (`Sessions`): once `begin_drain()` is called, new connections are answered
`421 4.3.2 Service shutting down` and closed, idle sessions get the same and are closed, a new
MAIL gets it too, while a transaction already under way (MAIL given, or DATA being received or
spooled) runs to its reply; `drain()` waits for those up to a deadline and then closes the rest.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import AnyStr

from aiosmtpd.smtp import SMTP, syntax

from mailgate import metrics
from mailgate.config import Config
from mailgate.smtp.handler import MailgateHandler
from mailgate.smtp.replies import (
    AUTH_UNAVAILABLE,
    BAD_RECIPIENT_SYNTAX,
    BAD_SENDER_SYNTAX,
    DATA_REFUSALS,
    SHUTTING_DOWN,
    TEMPORARY,
    TOO_MANY_ERRORS,
    TOO_MANY_UNKNOWN,
    with_enhanced_code,
)

log = logging.getLogger("mailgate.smtp")


def bad_path_syntax(arg: str | None) -> bool:
    """A MAIL/RCPT argument no real client sends: a CR (aiosmtpd splits commands on LF only),
    a NUL, an unbalanced quote or angle bracket. Refused with 501 before aiosmtpd's parser,
    which is lenient with them."""
    if arg is None:
        return False
    _, colon, arg = arg.partition(":")  # after FROM: / TO:
    if not colon:
        return False
    if "\r" in arg or "\x00" in arg:
        return True
    quotes, escaped = 0, False
    for ch in arg:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quotes += 1
    return quotes % 2 == 1 or arg.count("<") != arg.count(">")


class Sessions:
    """The open SMTP sessions of one server, and the orderly stop of all of them."""

    def __init__(self) -> None:
        self.open: set[MailgateSMTP] = set()
        self.draining = False

    def busy(self) -> int:
        """Sessions with a transaction under way (they may be about to get a 250)."""
        return sum(1 for s in self.open if s.in_transaction)

    def begin_drain(self) -> int:
        """Refuse new sessions and transactions from now on; close the idle sessions.
        Returns the number of transactions still under way."""
        self.draining = True
        for session in list(self.open):
            if not session.in_transaction:
                session.shut_down()
        return self.busy()

    async def drain(self, timeout: float, grace: float = 1.0) -> int:
        """Wait up to `timeout` seconds for the transactions under way, then up to `grace`
        seconds more (within `timeout`) for their clients to QUIT; close whatever is left.
        Returns the number of transactions cut short."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while self.busy() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        grace_end = min(deadline, loop.time() + grace)
        while self.open and loop.time() < grace_end:
            await asyncio.sleep(0.05)
        cut = self.busy()
        for session in list(self.open):
            session.shut_down()
        return cut


class _ShuttingDown(asyncio.Protocol):
    """What a connection made while draining gets instead of a greeting."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(SHUTTING_DOWN.encode() + b"\r\n")
        transport.close()


class MailgateSMTP(SMTP):
    """aiosmtpd's protocol, with enhanced status codes and refusals at DATA recorded."""

    mailgate_handler: MailgateHandler
    mailgate_sessions: Sessions | None = None
    _mailgate_counted = False  # this session is in the sessions gauge (STARTTLS calls
    # connection_made again, and connection_lost can run twice)
    hard_error_limit = 20  # 5xx replies before the session is closed (Postfix's default)
    unknown_recipient_limit = 10  # RCPTs to mailboxes we do not have (address harvesting)
    _hard_errors = 0
    _unknown_recipients = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._mailgate_counted:
            self._mailgate_counted = True
            metrics.SMTP_SESSIONS.inc()
            metrics.SMTP_SESSIONS_TOTAL.inc()
        super().connection_made(transport)
        if self.mailgate_sessions is not None:
            self.mailgate_sessions.open.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        if self._mailgate_counted:
            self._mailgate_counted = False
            metrics.SMTP_SESSIONS.dec()
        if self.mailgate_sessions is not None:
            self.mailgate_sessions.open.discard(self)
        super().connection_lost(error)

    @property
    def in_transaction(self) -> bool:
        """MAIL was accepted and the transaction has not had its final reply yet (aiosmtpd
        resets the envelope just before it sends the reply to DATA)."""
        return self.envelope is not None and self.envelope.mail_from is not None

    def shut_down(self) -> None:
        """Say `421 4.3.2` and close the connection, whatever the session is doing."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(SHUTTING_DOWN.encode() + b"\r\n")
        transport.close()

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if self.mailgate_sessions is not None and self.mailgate_sessions.draining:
            self.shut_down()  # no new transaction once we are stopping
            return
        if bad_path_syntax(arg):
            await self.push(BAD_SENDER_SYNTAX)
            return
        await super().smtp_MAIL(arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if bad_path_syntax(arg):
            await self.push(BAD_RECIPIENT_SYNTAX)
            return
        await super().smtp_RCPT(arg)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str | None) -> None:
        await self.push(AUTH_UNAVAILABLE)

    async def push(self, status: AnyStr) -> None:
        text = status.decode() if isinstance(status, bytes) else status
        reason = DATA_REFUSALS.get(text)
        if reason is not None and self.envelope is not None and self.session is not None:
            await self.mailgate_handler.record_refusal(self.session, self.envelope, 0, reason)
        reply = with_enhanced_code(text)
        verdict = self._count_error(reply) if reply[:1] == "5" and reply[3:4] != "-" else None
        if verdict is None:
            await super().push(reply)
            return
        log.warning("queue_id=%s closing session from %s: %s",
                    getattr(self.session, "mailgate_queue_id", "-"),
                    getattr(self.session, "peer", "?"), verdict)
        await super().push(verdict)  # instead of the refusal that went over the limit
        if self.transport is not None:
            self.transport.close()

    def _count_error(self, reply: str) -> str | None:
        """Postfix's hard error limit, and a tighter one for unknown recipients: a client that
        keeps failing (or probes for mailboxes) gets 421 and is disconnected. Returns that
        421 when this refusal goes over a limit."""
        self._hard_errors += 1
        if reply.startswith("550 5.1.1"):
            self._unknown_recipients += 1
        if self._unknown_recipients > self.unknown_recipient_limit:
            return TOO_MANY_UNKNOWN
        if self._hard_errors >= self.hard_error_limit:
            return TOO_MANY_ERRORS
        return None

    async def handle_exception(self, error: Exception) -> str:
        queue_id = getattr(self.session, "mailgate_queue_id", "-")
        log.error(
            "queue_id=%s unexpected error in SMTP session from %s: %s: %s",
            queue_id, getattr(self.session, "peer", "?"), type(error).__name__, error,
            exc_info=error,
        )
        return TEMPORARY


def tls_context(config: Config) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    return ctx


def protocol_factory(
    config: Config, handler: MailgateHandler, sessions: Sessions | None = None
) -> Callable[[], asyncio.Protocol]:
    ctx = tls_context(config)

    def factory() -> asyncio.Protocol:
        if sessions is not None and sessions.draining:
            return _ShuttingDown()
        proto = MailgateSMTP(
            handler,
            hostname=config.hostname,
            ident="mailgate",
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=ctx,
            require_starttls=False,
        )
        proto.mailgate_handler = handler
        proto.mailgate_sessions = sessions
        proto.hard_error_limit = config.hard_error_limit
        proto.unknown_recipient_limit = config.unknown_recipient_limit
        return proto

    return factory


async def start_server(
    config: Config, handler: MailgateHandler, sock: socket.socket | None = None,
    sessions: Sessions | None = None,
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    factory = protocol_factory(config, handler, sessions)
    if sock is not None:
        return await loop.create_server(factory, sock=sock)
    return await loop.create_server(
        factory, host=config.listen_host, port=config.listen_port, reuse_address=True
    )
