"""A real SMTP server standing in for the smarthost in tests.

Input: SMTP sessions from the code under test over loopback (trusted: our own client). Output:
every accepted message as a `Received` (envelope, bytes, parsed message) in `messages`, in
arrival order. Behaviour per recipient: in `reject` → `550 5.1.1 no such user` at RCPT; in
`tempfail_once` → `451 4.3.0 try later` the first time, accepted afterwards. An aiosmtpd
`Controller` runs it in its own thread; `stop()` then `start()` serves again on the same port.
All state is guarded by one lock; `wait_for` blocks the calling thread (use `asyncio.to_thread`
from a coroutine).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesParser
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    message: Message = field(repr=False)


class _Handler:
    def __init__(self, stub: RelayStub) -> None:
        self.stub = stub

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        return self.stub._rcpt(envelope, address)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return self.stub._data(envelope)


class RelayStub:
    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port()
        self.messages: list[Received] = []
        self.tempfail_once: set[str] = set()
        self.reject: set[str] = set()
        self.tempfailed: list[str] = []  # recipients answered 451, in order
        self.rejected: list[str] = []  # recipients answered 550, in order
        self._lock = threading.Condition()
        self._controller: Controller | None = None
        self._counter = 0

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> RelayStub:
        if self._controller is not None:
            return self
        controller = Controller(
            _Handler(self), hostname=self.host, port=self.port, ready_timeout=10.0,
            server_hostname="relay.stub.test", enable_SMTPUTF8=True,
        )
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> RelayStub:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- the SMTP side (called on the controller's thread) -----------------------------------

    def _rcpt(self, envelope: Envelope, address: str) -> str:
        with self._lock:
            if address in self.reject:
                self.rejected.append(address)
                return "550 5.1.1 no such user"
            if address in self.tempfail_once and address not in self.tempfailed:
                self.tempfailed.append(address)
                return "451 4.3.0 try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def _data(self, envelope: Envelope) -> str:
        content = envelope.content
        data = content if isinstance(content, bytes) else str(content).encode()
        received = Received(
            mail_from=str(envelope.mail_from),
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=data,
            message=BytesParser(policy=policy.default).parsebytes(data),
        )
        with self._lock:
            self._counter += 1
            self.messages.append(received)
            number = self._counter
            self._lock.notify_all()
        return f"250 2.0.0 Ok: queued as stub{number}"

    # --- for the test -----------------------------------------------------------------------

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """At least `count` messages (a copy of the list), or AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"relay stub got {len(self.messages)} message(s), expected {count}")
                self._lock.wait(remaining)
            return list(self.messages)
