"""Builds the SMTP listener: aiosmtpd's protocol with our replies, limits and TLS.

Input: the validated config and a handler. Output: an asyncio server bound to `[server] listen`
(optionally on an inherited socket). Every reply goes out with an enhanced status code; an
unexpected exception anywhere in a session answers `451 4.3.0` and is logged with the queue id,
never a 500 that names a Python class.

The protocol engine is aiosmtpd's `SMTP`, subclassed: DATA is read by our own `smtp_DATA`
(`mailgate.smtp.data`: long lines, bare LF as Postfix 3.9, only CRLF.CRLF ends it, streamed to
the spool, a deadline), which needs the session's stream reader and aiosmtpd's idle timer and
post-DATA reset — the protected `_reader`, `_reset_timeout` and `_set_post_data_state` of the
class we extend (aiosmtpd 1.4; tests/test_smtp.py and tests/test_data.py fail if they change).

Session limits, each in `[server]`: sessions in all and per client address (`421 4.7.0` at
connect), the idle timeout, NOOP/RSET/VRFY/HELP per session (aiosmtpd's call limit), hard
errors and unknown recipients per session; PROXY protocol v1/v2 when `proxy_protocol` is on
(the client address is then the one the load balancer reports).

Stopping (`Sessions`): once `begin_drain()` is called, new connections are answered
`421 4.3.2 Service shutting down` and closed, idle sessions get the same and are closed, a new
MAIL gets it too, while a transaction already under way (MAIL given, or DATA being received or
spooled) runs to its reply; `drain()` waits for those up to a deadline and then closes the rest.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, syntax

from mailgate.config import Config
from mailgate.ops import metrics
from mailgate.smtp.data import TOO_SLOW, DataLimits, read_data
from mailgate.smtp.handler import MailgateHandler
from mailgate.smtp.replies import (
    AUTH_UNAVAILABLE,
    BAD_RECIPIENT_SYNTAX,
    BAD_SENDER_SYNTAX,
    DATA_SYNTAX,
    MESSAGE_TOO_BIG,
    NEED_RCPT,
    SHUTTING_DOWN,
    START_DATA,
    TEMPORARY,
    TOO_MANY_ERRORS,
    TOO_MANY_FROM_CLIENT,
    TOO_MANY_SESSIONS,
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


_SIZE_PARAM = re.compile(r"\bSIZE=(\d{1,20})\b", re.I)
_PATH = re.compile(r"<([^<>]*)>")

# Junk commands per session (Postfix's smtpd_junk_command_limit counts these): NOOP and friends
# cannot keep a session alive past its idle timeout for ever. Other commands: no practical cap.
JUNK_COMMANDS = ("NOOP", "RSET", "VRFY", "HELP", "EXPN", "ETRN")
OTHER_COMMANDS_LIMIT = 1_000_000
PROXY_TIMEOUT = 10.0  # seconds a load balancer has to send the PROXY header


class Sessions:
    """The open SMTP sessions of one server, their limits, and the orderly stop of them all."""

    def __init__(self, max_sessions: int = 0, per_client: int = 0) -> None:
        self.open: set[MailgateSMTP] = set()
        self.draining = False
        self.max_sessions = max_sessions  # 0: no limit
        self.per_client = per_client
        self.by_client: Counter[str] = Counter()

    def admit(self, session: MailgateSMTP, client: str) -> str | None:
        """Count a new session from `client`; the 421 to send instead, when over a limit."""
        if self.max_sessions and len(self.open) >= self.max_sessions:
            return TOO_MANY_SESSIONS
        if self.per_client and self.by_client[client] >= self.per_client:
            return TOO_MANY_FROM_CLIENT
        self.open.add(session)
        self.by_client[client] += 1
        session.mailgate_client = client
        return None

    def rename(self, session: MailgateSMTP, client: str) -> str | None:
        """PROXY told us who the client really is: count it under that address."""
        old = session.mailgate_client
        if old is not None:
            self.by_client[old] -= 1
            if self.by_client[old] <= 0:
                del self.by_client[old]
        if self.per_client and self.by_client[client] >= self.per_client:
            session.mailgate_client = None
            return TOO_MANY_FROM_CLIENT
        self.by_client[client] += 1
        session.mailgate_client = client
        return None

    def leave(self, session: MailgateSMTP) -> None:
        if session in self.open:
            self.open.discard(session)
            client = session.mailgate_client
            if client is not None:
                self.by_client[client] -= 1
                if self.by_client[client] <= 0:
                    del self.by_client[client]

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
    """aiosmtpd's protocol, with enhanced status codes, our DATA reader and session limits."""

    mailgate_handler: MailgateHandler
    mailgate_sessions: Sessions | None = None
    mailgate_client: str | None = None  # the address the session is counted under
    line_length_limit = 64 * 1024  # the read buffer; longer lines are read in parts
    data_limits = DataLimits(max_size=50 * 1024 * 1024)
    hard_error_limit = 20  # 5xx replies before the session is closed (Postfix's default)
    unknown_recipient_limit = 10  # RCPTs to mailboxes we do not have (address harvesting)
    _mailgate_counted = False  # this session is in the sessions gauge (STARTTLS calls
    # connection_made again, and connection_lost can run twice)
    _refused = False  # turned away at connect: aiosmtpd never started on this connection
    _hard_errors = 0
    _unknown_recipients = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._mailgate_counted:  # STARTTLS: the same session on a new transport
            super().connection_made(transport)
            return
        sessions = self.mailgate_sessions
        if sessions is not None:
            peer = transport.get_extra_info("peername")
            client = str(peer[0]) if isinstance(peer, tuple) else str(peer)
            verdict = sessions.admit(self, client)
            if verdict is not None:
                self._refused = True
                log.warning("refusing a session from %s: %s", client, verdict)
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(verdict.encode() + b"\r\n")
                transport.close()
                return
        self._mailgate_counted = True
        metrics.SMTP_SESSIONS.inc()
        metrics.SMTP_SESSIONS_TOTAL.inc()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._mailgate_counted:
            self._mailgate_counted = False
            metrics.SMTP_SESSIONS.dec()
            if self.mailgate_sessions is not None:
                self.mailgate_sessions.leave(self)
        super().connection_lost(error)

    async def admit_proxied(self, client: str) -> bool:
        """PROXY named the real client: count the session under it (or refuse it)."""
        if self.mailgate_sessions is None:
            return True
        verdict = self.mailgate_sessions.rename(self, client)
        if verdict is None:
            return True
        log.warning("refusing a proxied session from %s: %s", client, verdict)
        await super().push(verdict)
        return False

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()

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
        declared = _SIZE_PARAM.search(arg or "")
        if (declared and self.envelope is not None and self.session is not None
                and self.envelope.mail_from is None
                and int(declared.group(1)) > self.data_limits.max_size):
            path = _PATH.search(arg or "")
            await self.mailgate_handler.record_refusal(
                self.session, self.envelope, int(declared.group(1)),
                f"declared SIZE={declared.group(1)} exceeds max_message_size"
                f" ({self.data_limits.max_size})", mail_from=path.group(1) if path else "")
            await self.push(MESSAGE_TOO_BIG)
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

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        """DATA read by `mailgate.smtp.data` into a body the spool provides, then handed to
        the handler, whose reply (250 only once durable) ends the transaction."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push(NEED_RCPT)
            return
        if arg:
            await self.push(DATA_SYNTAX)
            return
        body = self.mailgate_handler.new_body(self.session)
        await self.push(START_DATA)
        # read_data keeps its own idle timeout and deadline (and answers 421 4.4.2); aiosmtpd's
        # idle timer, which would close the connection without a word, is kept further out.
        def later() -> None:
            self._reset_timeout(self.data_limits.timeout + 60)

        later()
        try:
            result = await read_data(self._reader, body, self.data_limits, on_progress=later)
        except BaseException:  # the client went away mid-DATA: nothing was acknowledged
            body.discard()
            raise
        try:
            status = await self.mailgate_handler.handle_message(
                self.session, self.envelope, body, result)
        finally:
            self._set_post_data_state()
        await self.push(status)
        if result.state == TOO_SLOW and self.transport is not None:
            self.transport.close()

    async def push(self, status: AnyStr) -> None:
        text = status.decode() if isinstance(status, bytes) else status
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


def data_limits(config: Config) -> DataLimits:
    return DataLimits(max_size=config.max_message_size, bare_newline=config.bare_newline,
                      timeout=config.idle_timeout, min_rate=config.min_data_rate)


def protocol_factory(
    config: Config, handler: MailgateHandler, sessions: Sessions | None = None
) -> Callable[[], asyncio.Protocol]:
    ctx = tls_context(config)
    limits = data_limits(config)
    call_limits = {c: config.junk_command_limit for c in JUNK_COMMANDS}
    call_limits["*"] = OTHER_COMMANDS_LIMIT
    extra: dict[str, Any] = {}
    if config.proxy_protocol:
        extra["proxy_protocol_timeout"] = PROXY_TIMEOUT

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
            timeout=config.idle_timeout,
            command_call_limit=call_limits,
            **extra,
        )
        proto.mailgate_handler = handler
        proto.mailgate_sessions = sessions
        proto.data_limits = limits
        proto.hard_error_limit = config.hard_error_limit
        proto.unknown_recipient_limit = config.unknown_recipient_limit
        return proto

    return factory


async def start_server(
    config: Config, handler: MailgateHandler, sock: socket.socket | None = None,
    sessions: Sessions | None = None,
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    if sessions is None:
        sessions = Sessions()
    sessions.max_sessions = config.max_sessions
    sessions.per_client = config.max_sessions_per_client
    factory = protocol_factory(config, handler, sessions)
    if sock is not None:
        return await loop.create_server(factory, sock=sock)
    return await loop.create_server(
        factory, host=config.listen_host, port=config.listen_port, reuse_address=True
    )
