"""A real DNS server on loopback for the authentication tests: dnslib's UDP server with zone data
written by the test.

Input: records given by the test (trusted): `(name, type, value)` with type one of TXT, A, AAAA,
MX (value `"10 mx.example.com"`), PTR, CNAME; a TXT value longer than 255 characters is split into
several character-strings as a zone file would. Names listed in `silent` are never answered (the
query is dropped), which a client sees as a timeout. Output: a server on `127.0.0.1:<free port>`
answering authoritatively: the records of a name, NOERROR with no answer when the name has other
types, NXDOMAIN otherwise. `queries` counts what was asked, for cache tests.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, TXT, A, DNSError, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

TTL = 300


def _rdata(rtype: str, value: str) -> object:
    if rtype == "TXT":
        return TXT([value[i:i + 255] for i in range(0, len(value), 255)] or [""])
    if rtype == "A":
        return A(value)
    if rtype == "AAAA":
        return AAAA(value)
    if rtype == "MX":
        preference, _, exchange = value.partition(" ")
        return MX(exchange, int(preference))
    if rtype == "PTR":
        return PTR(value)
    if rtype == "CNAME":
        return CNAME(value)
    raise ValueError(f"record type not supported by the test server: {rtype}")


def _key(name: str) -> str:
    return name.lower().rstrip(".")


class ZoneResolver(BaseResolver):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[str, list[tuple[str, str]]] = {}
        self.silent: set[str] = set()
        self.queries: Counter[tuple[str, str]] = Counter()

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        qname = str(request.q.qname)
        qtype = QTYPE[request.q.qtype]
        name = _key(qname)
        with self.lock:
            self.queries[(name, qtype)] += 1
            if name in self.silent:
                raise DNSError(f"told to stay silent for {name}")  # the handler sends nothing
            records = list(self.records.get(name, ()))
        reply = request.reply()
        reply.header.aa = 1
        if not records:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for rtype, value in records:
            if rtype == qtype or (rtype == "CNAME" and qtype != "CNAME"):
                reply.add_answer(RR(qname, getattr(QTYPE, rtype), rdata=_rdata(rtype, value),
                                    ttl=TTL))
        return reply


class DnsTestServer:
    """`with DnsTestServer([("example.com", "TXT", "v=spf1 -all")]) as dns: dns.address`"""

    def __init__(self, records: Iterable[tuple[str, str, str]] = (),
                 silent: Iterable[str] = ()) -> None:
        self.resolver = ZoneResolver()
        self.add(records)
        self.silence(*silent)
        logger = DNSLogger(log="-request,-reply,-truncated,-error")
        self.server = DNSServer(self.resolver, address="127.0.0.1", port=0, logger=logger)
        self.port: int = self.server.server.server_address[1]

    @property
    def address(self) -> str:
        """The `host:port` form that `[auth] nameservers` takes."""
        return f"127.0.0.1:{self.port}"

    def add(self, records: Iterable[tuple[str, str, str]]) -> None:
        with self.resolver.lock:
            for name, rtype, value in records:
                _rdata(rtype.upper(), value)  # fail now, in the test, on a bad value
                self.resolver.records.setdefault(_key(name), []).append((rtype.upper(), value))

    def silence(self, *names: str) -> None:
        with self.resolver.lock:
            self.resolver.silent |= {_key(n) for n in names}

    def queries(self, name: str, rtype: str = "TXT") -> int:
        with self.resolver.lock:
            return self.resolver.queries[(_key(name), rtype.upper())]

    def start(self) -> DnsTestServer:
        self.server.start_thread()
        return self

    def stop(self) -> None:
        self.server.stop()
        self.server.server.server_close()

    def __enter__(self) -> DnsTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
