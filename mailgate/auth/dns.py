"""DNS for the authentication stage: dnspython's async resolver behind a small TTL-bounded cache,
with a time budget per message and a synchronous bridge for dkimpy and pyspf.

Input: names built from untrusted mail (DKIM `d=`/`s=`, envelope and From domains, SPF macros);
the nameservers (`"host:port"`, trusted: the administrator's `[auth] nameservers`) and the
timeout. Output: records as plain tuples — TXT: one tuple of byte strings per record; A, AAAA,
PTR: text; MX: `(preference, exchange)`. A name that does not exist, or has no record of the
type, is `()` (cached, like answers, for at most its TTL). A lookup that cannot complete within
the budget — timeout, SERVFAIL from every server, no resolver configured — raises
`DnsTempError`, never anything else: callers record it as `temperror`. A name whose servers did
not answer in time is remembered as failing for `FAILING_TTL` seconds, so the next messages from
a domain whose DNS is dead get their `temperror` at once instead of each waiting the timeout.

The resolver runs its queries on an event loop of its own, in a daemon thread it starts on first
use (`submit`), so synchronous code in any thread can use it: `SyncLookup` serves dkimpy and
pyspf, answering a cache hit in the calling thread without any hand-off, and waiting for a miss
to be resolved on the resolver's loop — every query goes through the same resolver, cache and
deadline. `lookup` can also be awaited on any other event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

Records = tuple[Any, ...]
T = TypeVar("T")

RDTYPES = ("TXT", "A", "AAAA", "MX", "PTR")
CACHE_SIZE = 4096
MAX_TTL = 3600.0  # never keep an answer longer, whatever its TTL says
NEGATIVE_TTL = 60.0  # for "no such name / no such record" without an SOA minimum
FAILING_TTL = 30.0  # a name whose servers timed out is not asked again for this long


class DnsTempError(Exception):
    """The lookup did not complete: a timeout, SERVFAIL, or no usable nameserver."""


def parse_nameserver(text: str) -> tuple[str, int]:
    """`"127.0.0.1:5300"` → `("127.0.0.1", 5300)`; `"[::1]:53"`, `"::1"` and `"10.0.0.1"` too."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:  # a bare IPv4 or IPv6 address
        host, port = text, ""
    if not host:
        raise ValueError(f"not a nameserver address: {text!r}")
    number = int(port) if port else 53
    if not 0 < number < 65536:
        raise ValueError(f"not a port number in {text!r}")
    return host, number


def _ascii_name(name: str) -> str | None:
    name = name.strip().rstrip(".").lower()
    if not name:
        return None
    try:
        name.encode("ascii")
    except UnicodeEncodeError:
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return name


def _records(rdtype: str, answer: dns.resolver.Answer) -> Records:
    if answer.rrset is None:
        return ()
    if rdtype == "TXT":
        return tuple(tuple(r.strings) for r in answer.rrset)
    if rdtype in ("A", "AAAA"):
        return tuple(r.address for r in answer.rrset)
    if rdtype == "MX":
        return tuple((r.preference, r.exchange.to_text(omit_final_dot=True))
                     for r in answer.rrset)
    if rdtype == "PTR":
        return tuple(r.target.to_text(omit_final_dot=True) for r in answer.rrset)
    raise ValueError(f"unsupported record type {rdtype}")


class Resolver:
    """One per process (or per `Authenticator`): the cache is shared by every event loop and
    thread that uses it."""

    def __init__(self, nameservers: Sequence[str] = (), timeout: float = 5.0,
                 cache_size: int = CACHE_SIZE, max_ttl: float = MAX_TTL) -> None:
        self.timeout = float(timeout)
        self.cache_size = cache_size
        self.max_ttl = max_ttl
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], tuple[float, Records]] = OrderedDict()
        self._failing: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()
        self.setup_error = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._loop_lock = threading.Lock()
        self._resolver: dns.asyncresolver.Resolver | None
        try:
            resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        except dns.exception.DNSException as exc:  # no /etc/resolv.conf, say
            self._resolver = None
            self.setup_error = f"no system resolver: {exc}"
            return
        if nameservers:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_nameserver(ns)) for ns in nameservers
            ]
        resolver.cache = None  # ours, below, bounded by max_ttl and shared with the sync path
        resolver.timeout = self.timeout  # one attempt at one server
        resolver.lifetime = self.timeout
        self._resolver = resolver

    # --- cache ---------------------------------------------------------------------------

    def cached(self, name: str, rdtype: str) -> Records | None:
        key = (name.lower().rstrip("."), rdtype)
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                return None
            if hit[0] <= time.monotonic():
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return hit[1]

    def _store(self, key: tuple[str, str], records: Records, ttl: float) -> None:
        ttl = min(self.max_ttl, ttl if ttl > 0 else NEGATIVE_TTL)
        with self._lock:
            self._cache[key] = (time.monotonic() + ttl, records)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._failing.clear()

    def _still_failing(self, key: tuple[str, str]) -> str | None:
        with self._lock:
            hit = self._failing.get(key)
            if hit is None:
                return None
            if hit[0] <= time.monotonic():
                del self._failing[key]
                return None
            return hit[1]

    def _remember_failing(self, key: tuple[str, str], reason: str) -> DnsTempError:
        with self._lock:
            self._failing[key] = (time.monotonic() + FAILING_TTL, reason)
            while len(self._failing) > self.cache_size:
                self._failing.popitem(last=False)
        return DnsTempError(reason)

    # --- lookups -------------------------------------------------------------------------

    async def lookup(self, name: str, rdtype: str, deadline: float | None = None) -> Records:
        """The records of `name`; `deadline` (time.monotonic()) bounds the wait."""
        if rdtype not in RDTYPES:
            return ()
        qname = _ascii_name(name)
        if qname is None:
            return ()
        hit = self.cached(qname, rdtype)
        if hit is not None:
            return hit
        if self._resolver is None:
            raise DnsTempError(self.setup_error)
        failing = self._still_failing((qname, rdtype))
        if failing is not None:
            raise DnsTempError(f"{failing} (less than {FAILING_TTL:.0f} s ago: not asked again)")
        lifetime = self.timeout
        if deadline is not None:
            lifetime = min(lifetime, deadline - time.monotonic())
        if lifetime <= 0.0:
            raise DnsTempError(f"DNS time budget spent before looking up {qname} {rdtype}")
        try:
            target = dns.name.from_text(qname)
        except dns.exception.DNSException:
            return ()  # not a valid name (a label too long, say): nothing can exist there
        try:
            answer = await self._resolver.resolve(
                target, rdtype, raise_on_no_answer=False, lifetime=lifetime, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.YXDOMAIN):
            self._store((qname, rdtype), (), NEGATIVE_TTL)
            return ()
        except dns.exception.Timeout:
            if lifetime < self.timeout / 2:  # the message's budget ran short, not the servers
                raise DnsTempError(f"DNS timeout looking up {qname} {rdtype}") from None
            raise self._remember_failing(
                (qname, rdtype), f"DNS timeout looking up {qname} {rdtype}") from None
        except dns.resolver.NoNameservers:
            raise self._remember_failing(
                (qname, rdtype), f"no nameserver answered for {qname} {rdtype}") from None
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"DNS error for {qname} {rdtype}: {exc}") from None
        except OSError as exc:  # the network itself (unreachable, no route)
            raise DnsTempError(f"DNS error for {qname} {rdtype}: {exc}") from None
        records = _records(rdtype, answer)
        self._store((qname, rdtype), records, answer.expiration - time.time())
        return records

    # --- the resolver's own event loop ------------------------------------------------------

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coro` on the resolver's loop (started on first use); never on that loop."""
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()
                thread = threading.Thread(target=_serve, args=(loop, started),
                                          name="mailgate-auth-dns", daemon=True)
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self) -> None:
        """Stop the resolver's loop (lookups still waiting end as `DnsTempError`)."""
        with self._loop_lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5.0)

    def sync(self, deadline: float) -> SyncLookup:
        return SyncLookup(self, deadline)


def _serve(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    try:
        loop.run_forever()
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    finally:
        loop.close()


class SyncLookup:
    """`lookup(name, rdtype)` for synchronous code in any thread but the resolver's own, within
    `deadline` (time.monotonic())."""

    def __init__(self, resolver: Resolver, deadline: float) -> None:
        self.resolver = resolver
        self.deadline = deadline

    def __call__(self, name: str, rdtype: str) -> Records:
        qname = _ascii_name(name)
        if qname is None or rdtype not in RDTYPES:
            return ()
        hit = self.resolver.cached(qname, rdtype)
        if hit is not None:
            return hit
        remaining = self.deadline - time.monotonic()
        if remaining <= 0.0:
            raise DnsTempError(f"DNS time budget spent before looking up {qname} {rdtype}")
        try:
            future = self.resolver.submit(self.resolver.lookup(qname, rdtype, self.deadline))
        except RuntimeError as exc:  # the loop is closed
            raise DnsTempError(f"DNS unavailable: {exc}") from None
        try:
            return future.result(timeout=remaining + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DnsTempError(f"DNS timeout looking up {qname} {rdtype}") from None
        except concurrent.futures.CancelledError:
            raise DnsTempError(f"DNS lookup of {qname} {rdtype} cancelled") from None
