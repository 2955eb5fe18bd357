"""A real SMTP server standing in for the smarthost in tests.

Input: SMTP sessions from the code under test over loopback (trusted: our own client). Output:
every accepted message as a `Received` (envelope, bytes, parsed message) in `messages`, in
arrival order. Behaviour per recipient: in `reject` → `550 5.1.1 no such user` at RCPT; in
`tempfail_once` → `451 4.3.0 try later` the first time, accepted afterwards. A slow relay:
`data_reply_delay` seconds pass between the end of the data (the message is in `messages` from
then on, as a real relay has queued it) and the reply; `hold("rcpt")` / `hold("data")` keep
every RCPT reply / end-of-data reply waiting until `release(...)` (`wait_held` returns once a
session is waiting there). An aiosmtpd `Controller` runs it in its own thread; `stop()` then
`start()` serves again on the same port. All state is guarded by one lock; `wait_for` and
`wait_held` block the calling thread (use `asyncio.to_thread` from a coroutine).
"""

from __future__ import annotations

import asyncio
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
        await self.stub._wait_released("rcpt")
        return self.stub._rcpt(envelope, address)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self.stub._data(envelope)
        if self.stub.data_reply_delay:
            await asyncio.sleep(self.stub.data_reply_delay)
        await self.stub._wait_released("data")
        return reply


class RelayStub:
    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port()
        self.messages: list[Received] = []
        self.tempfail_once: set[str] = set()
        self.reject: set[str] = set()
        self.tempfailed: list[str] = []  # recipients answered 451, in order
        self.rejected: list[str] = []  # recipients answered 550, in order
        self.data_reply_delay = 0.0  # seconds between the end of data and the reply
        self._held: set[str] = set()  # "rcpt", "data": replies kept waiting until release()
        self._waiting: dict[str, int] = {"rcpt": 0, "data": 0}  # sessions waiting there now
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

    async def _wait_released(self, stage: str) -> None:
        with self._lock:
            if stage not in self._held:
                return
            self._waiting[stage] += 1
            self._lock.notify_all()
        try:
            while True:
                with self._lock:
                    if stage not in self._held:
                        return
                await asyncio.sleep(0.02)
        finally:
            with self._lock:
                self._waiting[stage] -= 1

    # --- for the test -----------------------------------------------------------------------

    def hold(self, stage: str) -> None:
        """Keep every reply at `stage` ("rcpt" or "data") waiting until `release(stage)`."""
        assert stage in self._waiting, stage
        with self._lock:
            self._held.add(stage)

    def release(self, stage: str) -> None:
        with self._lock:
            self._held.discard(stage)

    def wait_held(self, stage: str, timeout: float = 10.0) -> None:
        """Return once a session is waiting for its reply at `stage`, else AssertionError."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._waiting[stage] < 1:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no session held at {stage} within {timeout}s")
                self._lock.wait(remaining)

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
