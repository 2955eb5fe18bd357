"""Builds the SMTP listener: aiosmtpd's protocol with our replies, limits and TLS.

Input: the validated config and a handler. Output: an asyncio server bound to `[server] listen`
(optionally on an inherited socket). Every reply goes out with an enhanced status code; an
unexpected exception anywhere in a session answers `451 4.3.0` and is logged with the queue id,
never a 500 that names a Python class.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import AnyStr

from aiosmtpd.smtp import SMTP

from mailgate.config import Config
from mailgate.smtp.handler import TEMPORARY, MailgateHandler
from mailgate.smtp.replies import DATA_REFUSALS, with_enhanced_code

log = logging.getLogger("mailgate.smtp")


class MailgateSMTP(SMTP):
    """aiosmtpd's protocol, with enhanced status codes and refusals at DATA recorded."""

    mailgate_handler: MailgateHandler

    async def push(self, status: AnyStr) -> None:
        text = status.decode() if isinstance(status, bytes) else status
        reason = DATA_REFUSALS.get(text)
        if reason is not None and self.envelope is not None and self.session is not None:
            await self.mailgate_handler.record_refusal(self.session, self.envelope, 0, reason)
        await super().push(with_enhanced_code(text))

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


def protocol_factory(config: Config, handler: MailgateHandler) -> Callable[[], MailgateSMTP]:
    ctx = tls_context(config)

    def factory() -> MailgateSMTP:
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
        return proto

    return factory


async def start_server(
    config: Config, handler: MailgateHandler, sock: socket.socket | None = None
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    factory = protocol_factory(config, handler)
    if sock is not None:
        return await loop.create_server(factory, sock=sock)
    return await loop.create_server(
        factory, host=config.listen_host, port=config.listen_port, reuse_address=True
    )
