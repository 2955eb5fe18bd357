"""What systemd listens on for sd_notify datagrams, for tests of the daemon and of
`serve --workers` (the `notify` fixture in conftest.py)."""

from __future__ import annotations

import socket
import time
import uuid


class NotifySocket:
    """What systemd listens on: a unix datagram socket, here in the abstract namespace."""

    def __init__(self) -> None:
        self.address = f"@mailgate-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout: float = 20.0, after: int = 0) -> int:
        """Index of the first datagram from `after` on that has `line` among its lines."""
        deadline = time.monotonic() + timeout
        index = after
        while True:
            while index < len(self.messages):
                if line in self.messages[index].split("\n"):
                    return index
                index += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {line!r} from the daemon; got {self.messages}")
            self.sock.settimeout(remaining)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def close(self) -> None:
        self.sock.close()
