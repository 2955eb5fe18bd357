"""Baseline SMTP server for bench/ingest.py: bare aiosmtpd that discards mail.

Usage: python bench/bare_server.py PORT

Input:  one TCP port number on the command line; SMTP traffic on 127.0.0.1:PORT.
Output: "250 OK" to every DATA; the message is thrown away. Nothing is written
        to disk. Exits cleanly on SIGTERM or SIGINT.
Trust:  benchmark helper only. It listens on loopback only, accepts mail from
        anyone who can reach that port and does nothing with it.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiosmtpd.smtp import SMTP, Envelope, Session

HOST = "127.0.0.1"
# Passing a hostname avoids aiosmtpd's per-connection socket.getfqdn() lookup,
# which would otherwise slow the baseline down for no reason.
HOSTNAME = "baseline.localhost"


class DiscardHandler:
    """aiosmtpd handler that accepts every message and keeps nothing."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Acknowledge the message and drop it."""
        del server, session, envelope
        return "250 OK"


async def serve(port: int) -> None:
    """Serve SMTP on HOST:port until SIGTERM or SIGINT arrives."""
    loop = asyncio.get_running_loop()
    handler = DiscardHandler()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=HOSTNAME), host=HOST, port=port
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    """Parse the port argument and run the server."""
    if len(argv) != 2 or not argv[1].isdigit():
        print(f"usage: {argv[0]} PORT", file=sys.stderr)
        return 2
    asyncio.run(serve(int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
