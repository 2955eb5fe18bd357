"""A DNS server on loopback for the benchmarks, so mailgate's authentication stage never asks
the network: the tests' dnslib server with an empty zone (every name NXDOMAIN, answered at
once). Input: none. Output: `start() -> "127.0.0.1:<port>"` for `[auth] nameservers`. Trust: a
developer tool; listens on 127.0.0.1 only.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dns_server import DnsTestServer

_SERVERS: list[DnsTestServer] = []


def start() -> str:
    if not _SERVERS:
        _SERVERS.append(DnsTestServer().start())
    return _SERVERS[0].address


def auth_section() -> str:
    """The `[auth]` table pointing mailgate at the loopback server."""
    return f'\n[auth]\nnameservers = ["{start()}"]\ndns_timeout = 2\n'
