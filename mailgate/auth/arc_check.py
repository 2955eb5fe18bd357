"""ARC chain validation (RFC 8617) with dkimpy's ARC verifier.

Input: the message's header fields and body as `dkim.rfc822_parse` splits them (untrusted: any
sender can add ARC headers; only a chain that validates, sealed by a sealer the administrator
trusts, means anything) and a synchronous `lookup(name, rdtype)`. Runs in a worker thread.
Output: an `ArcChain`: `cv` (`pass`, `fail`, `none`, or `temperror` when a key lookup timed out
and the chain did not validate), the sealers' `d=` outermost first, and the
ARC-Authentication-Results value each instance recorded (outermost first, `i=` tag included).
Never raises.
"""

from __future__ import annotations

from dataclasses import dataclass

import dkim

from mailgate.auth.dkim_check import (
    ErrorLog,
    Headers,
    KeyFetcher,
    Lookup,
    signature_tags,
    unreadable,
)

MAX_INSTANCES = 10  # each set costs two RSA verifications and lookups; real chains have 1-3
ARC_FIELDS = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")


@dataclass(frozen=True)
class ArcChain:
    cv: str
    sealers: tuple[str, ...] = ()  # d= of each ARC-Seal, outermost (highest i=) first
    results: tuple[str, ...] = ()  # each instance's ARC-Authentication-Results, outermost first
    reason: str = ""


def _instances(headers: Headers) -> dict[int, dict[bytes, bytes]]:
    """i= → {lower-case header name: relaxed value} for the ARC header fields present."""
    arc_only = [(n, v) for n, v in headers if n.lower() in ARC_FIELDS]
    if not arc_only:
        return {}
    verifier = dkim.ARC(None, logger=ErrorLog())
    verifier.headers = arc_only
    _max, found = verifier.sorted_arc_headers()
    sets: dict[int, dict[bytes, bytes]] = {}
    for instance, (name, value) in found:
        sets.setdefault(instance, {}).setdefault(name.lower(), value.strip())
    return sets


def key_names(headers: Headers) -> set[str]:
    """The key names the ARC-Seal and ARC-Message-Signature headers need, to fetch early."""
    names = set()
    try:
        sets = _instances(headers)
    except Exception:
        return names
    if len(sets) > MAX_INSTANCES:
        return names
    for fields in sets.values():
        for header in (b"arc-seal", b"arc-message-signature"):
            tags = signature_tags(fields.get(header, b""))
            if tags.get(b"d") and tags.get(b"s"):
                d = tags[b"d"].decode("ascii", "replace")
                s = tags[b"s"].decode("ascii", "replace")
                names.add(f"{s}._domainkey.{d}".lower())
    return names


def verify_chain(headers: Headers, body: bytes, lookup: Lookup) -> ArcChain:
    try:
        sets = _instances(headers)
    except Exception as exc:
        return ArcChain("fail", reason=f"ARC headers cannot be read: {exc}"[:200])
    if not sets:
        return ArcChain("none", reason="no ARC headers")
    ordered = sorted(sets, reverse=True)
    sealers = tuple(
        signature_tags(sets[i].get(b"arc-seal", b"")).get(b"d", b"").decode("ascii", "replace")
        .lower() for i in ordered
    )
    results = tuple(sets[i].get(b"arc-authentication-results", b"").decode("utf-8", "replace")
                    for i in ordered)
    if len(sets) > MAX_INSTANCES or ordered[0] > MAX_INSTANCES:
        return ArcChain("fail", sealers, results, f"more than {MAX_INSTANCES} ARC sets")
    if ordered != list(range(ordered[0], 0, -1)):
        return ArcChain("fail", sealers, results, "ARC instances are not 1..n")
    for i in ordered:  # what dkimpy would read slowly (see dkim_check.unreadable)
        for name in (b"arc-seal", b"arc-message-signature"):
            why = unreadable(sets[i].get(name, b""))
            if why:
                return ArcChain("fail", sealers, results, f"i={i} {name.decode()}: {why}")
    fetch = KeyFetcher(lookup)
    verifier = dkim.ARC(None, logger=ErrorLog(), minkey=1024)
    verifier.headers, verifier.body = list(headers), body
    try:
        cv, _data, reason = verifier.verify(dnsfunc=fetch)
    except Exception as exc:  # dkimpy on mail it never expected: a result, not a crash
        cv, reason = dkim.CV_Fail, f"cannot verify: {type(exc).__name__}: {exc}"
    text = {dkim.CV_Pass: "pass", dkim.CV_None: "none"}.get(cv, "fail")
    if text != "pass" and fetch.timeouts:
        text, reason = "temperror", f"key lookup timed out: {fetch.timeouts[0]}"
    if isinstance(reason, bytes):
        reason = reason.decode("ascii", "replace")
    return ArcChain(text, sealers, results, "" if text == "pass" else str(reason)[:200])
