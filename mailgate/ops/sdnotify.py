"""The systemd side of the process: sd_notify, the watchdog and socket activation, no library.

Input: the environment systemd sets for a service — `$NOTIFY_SOCKET` (a unix datagram socket;
a leading `@` means the abstract namespace), `$WATCHDOG_USEC` / `$WATCHDOG_PID`, and
`$LISTEN_FDS` / `$LISTEN_PID` / `$LISTEN_FDNAMES` with the inherited sockets from fd 3 on.
Trusted: it comes from the service manager (or a test standing in for it), but checked for form.
Output: datagrams such as `READY=1`, `STOPPING=1`, `RELOADING=1`, `WATCHDOG=1`, `STATUS=...`;
the inherited listening socket. Without `$NOTIFY_SOCKET` every call does nothing, so the daemon
runs the same way in a terminal. A failure to notify is logged once at debug level and never
raised: the notifications are a courtesy to the service manager, never a reason to stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping

log = logging.getLogger("mailgate.sdnotify")

SD_LISTEN_FDS_START = 3


class Notifier:
    """Sends state changes to the service manager over `$NOTIFY_SOCKET`."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._warned = False

    @classmethod
    def from_env(cls) -> Notifier:
        return cls(os.environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send `fields` (each `KEY=value`, one per line) in one datagram; True when sent."""
        if self.address is None:
            return False
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]
        payload = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # never wait on the event loop: a manager that is not reading misses a ping
                sock.setblocking(False)
                sock.sendto(payload, target)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.debug("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets a Type=notify-reload manager match the reload it asked for.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of `$WATCHDOG_USEC`), or None when the watchdog
    is off or meant for another process (`$WATCHDOG_PID` set and not ours)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2


async def heartbeat(notifier: Notifier, status: Callable[[], str], watchdog: float | None,
                    every: float = 30.0) -> None:
    """Until cancelled: `WATCHDOG=1` every `watchdog` seconds (when set) and a fresh `STATUS=`
    line with it (at least every `every` seconds). It runs on the event loop, so a loop that
    hangs stops the pings and systemd restarts the service."""
    interval = min(watchdog, every) if watchdog else every
    while True:
        line = f"STATUS={status()}"
        notifier.notify(*(("WATCHDOG=1", line) if watchdog else (line,)))
        await asyncio.sleep(interval)


def listen_sockets(environ: MutableMapping[str, str] | None = None, unset: bool = True
                   ) -> dict[str, socket.socket]:
    """Sockets passed by socket activation, by name (`$LISTEN_FDNAMES`, else `fd3`, `fd4`...).

    Empty unless `$LISTEN_PID` is this process. With `unset`, the variables are removed so that
    child processes do not take the sockets for theirs (as sd_listen_fds(1) does).
    """
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    names = env.get("LISTEN_FDNAMES", "")
    if unset:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(key, None)
    if not (pid.isdigit() and count.isdigit()) or int(pid) != os.getpid():
        return {}
    labels = names.split(":") if names else []
    found: dict[str, socket.socket] = {}
    for i in range(int(count)):
        fd = SD_LISTEN_FDS_START + i
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            log.warning("socket activation: fd %d is not a socket (%s); ignored", fd, exc)
            continue
        os.set_inheritable(fd, False)
        sock.setblocking(False)
        name = labels[i] if i < len(labels) and labels[i] else f"fd{fd}"
        if name in found:
            name = f"{name}.{fd}"
        found[name] = sock
    return found
