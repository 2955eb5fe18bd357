"""DKIM verification of every signature on an inbound message (dkimpy).

Input: the message's header fields and body as `dkim.rfc822_parse` splits them (untrusted: the
signatures, their tags and the keys they point to are the sender's word) and a synchronous
`lookup(name, rdtype)` (`mailgate.auth.dns.SyncLookup`). Runs in a worker thread: dkimpy's DNS
hook is synchronous. Output: one `DkimSignature` per DKIM-Signature header, in header order,
with `d=`, `s=`, the first characters of `b=` and the result in RFC 8601 terms: `pass`, `fail`
(the key was found and the body hash or the signature does not match), `neutral` (no key
published for the selector), `permerror` (a malformed signature or key, a key too short, an
unsupported algorithm), `temperror` (the key lookup timed out), `policy` (not verified: more
than `MAX_SIGNATURES` signatures). Never raises. dkimpy's own checks of a signature are
quadratic in runs of white space inside it (a `b=` value with 16,000 blanks took 2 s): a
signature longer than `MAX_SIGNATURE_BYTES`, or whose `b=` is no base64, is a `permerror`
before dkimpy reads it (`unreadable`, also used for ARC).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dkim

from mailgate.auth import dkim_speedups
from mailgate.auth.dns import DnsTempError

dkim_speedups.install()

Lookup = Callable[[str, str], tuple[Any, ...]]
Headers = list[tuple[bytes, bytes]]

MAX_SIGNATURES = 8  # each costs a DNS lookup and an RSA verification: bound what mail can ask
MAX_SIGNATURE_BYTES = 8192  # a real one is under 2 KB (a 4096-bit b= is 684 characters)
_BASE64_AND_BLANKS = re.compile(rb"[0-9A-Za-z+/\s]+")
MIN_KEY_BITS = 1024


@dataclass(frozen=True)
class DkimSignature:
    d: str
    s: str
    result: str
    reason: str = ""
    b: str = ""  # the first 8 characters of b=, to tell two signatures of one domain apart
    i: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"d": self.d, "s": self.s, "result": self.result, "reason": self.reason,
                "b": self.b, "i": self.i}


class ErrorLog:
    """Stands in for dkimpy's logger: keeps the error lines, which say why a check failed."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, msg: object, *args: object, **_kw: object) -> None:
        self.errors.append(str(msg) % args if args else str(msg))

    def debug(self, *_a: object, **_kw: object) -> None:
        pass

    info = warning = debug

    def isEnabledFor(self, _level: int) -> bool:
        return False


class KeyFetcher:
    """dkimpy's `dnsfunc`: the TXT record of `<s>._domainkey.<d>.`, noting what happened."""

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup
        self.last = ""  # "found", "missing" or "timeout" for the latest name
        self.timeouts: list[str] = []

    def __call__(self, name: bytes, timeout: float = 5.0) -> bytes | None:
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            self.last = "missing"
            return None
        try:
            records = self.lookup(text, "TXT")
        except DnsTempError as exc:
            self.last = "timeout"
            self.timeouts.append(text.rstrip("."))
            raise dkim.DnsTimeoutError(str(exc)) from None
        joined = [b"".join(r) for r in records]
        if not joined:
            self.last = "missing"
            return None
        self.last = "found"
        return next((r for r in joined if b"p=" in r), joined[0])


def split_message(raw: bytes) -> tuple[Headers, bytes]:
    """`dkim.rfc822_parse(raw)`, without splitting and re-joining the body when the message
    has CRLF line ends only (as SMTP delivers it): the same header fields, the same body bytes.
    Raises `dkim.MessageFormatError` for a header section dkimpy cannot read."""
    end = raw.find(b"\r\n\r\n")
    if end < 0 or raw.startswith(b"\r\n") or raw.count(b"\n") != raw.count(b"\r\n"):
        return dkim.rfc822_parse(raw)
    headers, _ = dkim.rfc822_parse(raw[:end + 2])
    return headers, raw[end + 4:]


def _text(value: bytes | None, limit: int = 253) -> str:
    return (value or b"").decode("ascii", "replace")[:limit]


@functools.lru_cache(maxsize=256)
def signature_tags(value: bytes) -> dict[bytes, bytes]:
    """The tags of a DKIM-Signature (or ARC) header value; {} when it cannot be read. Cached
    (each message asks for the same few twice): the dict returned is shared, never change it."""
    try:
        return dkim.util.parse_tag_value(re.sub(rb"\r?\n", b"", value))
    except Exception:  # dkim.util.InvalidTagValueList and anything odder
        return {}


def unreadable(value: bytes) -> str:
    """Why dkimpy must not be given this DKIM-Signature (or ARC) header value, or "": too long,
    or a `b=` that is not base64 and white space (with `=` padding at the end only) — the cases
    on which dkimpy's own pattern `[\\s0-9A-Za-z+/]+[\\s=]*$` backtracks quadratically. In
    linear time; what passes, dkimpy checks in linear time too."""
    if len(value) > MAX_SIGNATURE_BYTES:
        return f"signature header longer than {MAX_SIGNATURE_BYTES} bytes"
    b = signature_tags(value).get(b"b")
    if b is not None and not _BASE64_AND_BLANKS.fullmatch(b.rstrip(b" \t\r\n=")):
        return "b= value is not valid base64"
    return ""


def key_names(headers: Headers) -> set[str]:
    """The DNS names of the keys the first `MAX_SIGNATURES` signatures need, to fetch early."""
    names = set()
    values = [v for n, v in headers if n.lower() == b"dkim-signature"][:MAX_SIGNATURES]
    for value in values:
        tags = signature_tags(value)
        if tags.get(b"d") and tags.get(b"s"):
            names.add(f"{_text(tags[b's'], 63)}._domainkey.{_text(tags[b'd'])}".lower())
    return names


def _failure(exc: Exception) -> tuple[str, str]:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, dkim.ValidationError) and "body hash mismatch" in message:
        return "fail", "body hash did not verify"
    return "permerror", message[:200]


def verify_signatures(headers: Headers, body: bytes, lookup: Lookup) -> tuple[DkimSignature, ...]:
    log = ErrorLog()
    fetch = KeyFetcher(lookup)
    verifier = dkim.DKIM(None, logger=log, minkey=MIN_KEY_BITS)
    verifier.headers, verifier.body = list(headers), body
    values = [v for n, v in headers if n.lower() == b"dkim-signature"]
    results = []
    for idx, value in enumerate(values):
        tags = signature_tags(value)
        sig = {
            "d": _text(tags.get(b"d")).lower(), "s": _text(tags.get(b"s"), 63),
            "i": _text(tags.get(b"i")),
            "b": re.sub(r"\s+", "", _text(tags.get(b"b"), 4096))[:8],
        }
        if idx >= MAX_SIGNATURES:
            results.append(DkimSignature(**sig, result="policy",
                                         reason=f"not verified: more than {MAX_SIGNATURES}"
                                                " signatures"))
            continue
        why = unreadable(value)
        if why:
            results.append(DkimSignature(**sig, result="permerror", reason=why))
            continue
        fetch.last = ""
        log.errors.clear()
        try:
            ok = verifier.verify(idx=idx, dnsfunc=fetch)
        except dkim.DKIMException as exc:
            result, reason = _failure(exc)
        except Exception as exc:  # dkimpy on mail it never expected: a result, not a crash
            result, reason = "permerror", f"cannot verify: {type(exc).__name__}: {exc}"[:200]
        else:
            if ok:
                result, reason = "pass", ""
            elif fetch.last == "timeout":
                result, reason = "temperror", "key lookup timed out"
            elif fetch.last == "missing":
                result, reason = "neutral", "no key for signature"
            elif log.errors:
                result, reason = "permerror", log.errors[-1][:200]
            else:
                result, reason = "fail", "signature did not verify"
        results.append(DkimSignature(**sig, result=result, reason=reason))
    return tuple(results)
