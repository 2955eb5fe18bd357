"""SPF (RFC 7208) for the envelope sender and for the HELO name, with pyspf.

Input: the SMTP client's address, the envelope sender ("" for the null reverse-path) and the HELO
name — untrusted, as the client said them (the address is what the socket saw) — and a
synchronous `lookup(name, rdtype)` (`mailgate.auth.dns.SyncLookup`). Runs in a worker thread.
Output: `check` → `(result, explanation)` with result one of `pass`, `fail`, `softfail`,
`neutral`, `none`, `permerror`, `temperror`; never raises. `SpfOutcome` holds the envelope
sender's and the HELO's results together for the rest of the stage.

pyspf resolves through one module-level function, `spf.DNSLookup`. This module replaces it, once,
by a dispatcher that serves the lookups of a check running in this thread from the `lookup`
given to `check` (and leaves any other caller of pyspf on pyspf's own resolver), so every SPF
query goes to the configured nameservers with the message's time budget; a lookup that times
out is pyspf's `TempError`, which pyspf reports as `temperror`.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import spf

from mailgate.auth.dns import DnsTempError

Lookup = Callable[[str, str], tuple[Any, ...]]

_DOMAIN = re.compile(r"(?=.{1,253}\Z)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{1,63}\Z",
                     re.IGNORECASE)
_state = threading.local()


@dataclass(frozen=True)
class SpfOutcome:
    result: str  # for the envelope sender (for the HELO identity when the sender is null)
    domain: str  # the domain that result is for
    mailfrom: str  # the identity checked: the envelope sender, or postmaster@<helo>
    reason: str = ""
    helo: str = ""
    helo_result: str = "none"
    helo_reason: str = ""

    def as_dict(self) -> dict[str, str]:
        return dict(vars(self))  # shallow: every value is immutable


def _dispatch(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list[Any]:
    lookup: Lookup | None = getattr(_state, "lookup", None)
    if lookup is None:
        return _library_lookup(name, qtype, strict, timeout)
    if qtype == "SPF":  # the obsolete type 99: RFC 7208 §3.1 says TXT only
        return []
    try:
        records = lookup(name, qtype)
    except DnsTempError as exc:
        raise spf.TempError(f"DNS {exc}") from None
    if qtype == "TXT":
        return [((name, qtype), list(r)) for r in records]
    return [((name, qtype), r) for r in records]


_library_lookup = getattr(spf.DNSLookup, "library_lookup", spf.DNSLookup)
_dispatch.library_lookup = _library_lookup  # type: ignore[attr-defined]
spf.DNSLookup = _dispatch


def is_domain(name: str) -> bool:
    """A name SPF can check: a dotted domain, not an address literal."""
    return bool(name) and not name.startswith("[") and _DOMAIN.match(name.rstrip(".")) is not None


def check(client_ip: str, sender: str, helo: str, lookup: Lookup) -> tuple[str, str]:
    """SPF for `sender` (an address, or "" to check the HELO identity `postmaster@<helo>`)."""
    try:
        ipaddress.ip_address(client_ip)
    except ValueError:
        return "none", "no client IP address to check"
    domain = sender.rpartition("@")[2] if sender else helo
    if not is_domain(domain):
        return "none", f"not a domain SPF can check: {domain[:100]!r}"
    _state.lookup = lookup
    try:
        query = spf.query(i=client_ip, s=sender, h=helo if is_domain(helo) else domain,
                          querytime=0)
        result, _code, explanation = query.check()
    except spf.TempError as exc:
        return "temperror", str(exc)[:200]
    except Exception as exc:  # pyspf on input it never expected: a result, not a crash
        return "permerror", f"{type(exc).__name__}: {exc}"[:200]
    finally:
        _state.lookup = None
    return str(result), str(explanation)[:200]
