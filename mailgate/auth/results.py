"""Authentication-Results (RFC 8601): the header we write, the ones we read, the forged ones we
remove.

Input: `build_header` takes our authserv-id (trusted: `[server] hostname`) and the outcomes of
the checks, whose values come from the message (untrusted: every value written into the header
is reduced to characters that cannot end a property or the field). `read_recorded` takes an
ARC-Authentication-Results value a sealer recorded (untrusted text; only meaningful once the
chain validated and the sealer is trusted). `strip_forged_results` takes the raw message.
Output: one unfolded `Authentication-Results: ...` line (authres renders it, authres parses it
back) and `fold` for prepending it; the `Recorded` results of an ARC hop, read by a small tolerant
reader (authres's parser refuses much of what real sealers write, and costs ~0.5 ms a header);
the raw message without any Authentication-Results field claiming our authserv-id (RFC 8601 §5),
every other byte unchanged. Never raises.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import authres
import authres.arc
import authres.dmarc
from authres.core import AuthenticationResultProperty

from mailgate.auth.arc_check import ArcChain
from mailgate.auth.dkim_check import DkimSignature
from mailgate.auth.dmarc import DmarcOutcome
from mailgate.auth.headers import header_fields
from mailgate.auth.spf_check import SpfOutcome

FIELD = "Authentication-Results"
_FEATURES = authres.all_features()
_UNSAFE_PVALUE = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]")
_UNSAFE_COMMENT = re.compile(r"[^\x20-\x27\x2a-\x5b\x5d-\x7e]")  # printable, no ( ) \
_INSTANCE = re.compile(r"\s*i\s*=\s*(\d+)\s*;")
_AUTHSERV_ID = re.compile(r'\s*(?:\([^()]*\)\s*)*"?([^\s;"()]+)')


def _pvalue(value: str) -> str:
    return _UNSAFE_PVALUE.sub("?", value)[:253] or "?"


def _comment(text: str) -> str | None:
    return _UNSAFE_COMMENT.sub("?", text)[:120] or None


def _reason(text: str) -> str | None:
    return text[:120] or None


def _prop(ptype: str, name: str, value: str) -> AuthenticationResultProperty:
    return AuthenticationResultProperty(ptype, name, _pvalue(value))


def build_header(authserv_id: str, dkim: Sequence[DkimSignature], arc: ArcChain,
                 arc_trusted: str, spf: SpfOutcome, dmarc: DmarcOutcome) -> str:
    results: list[Any] = []
    for sig in dkim:
        props = [_prop("header", "d", sig.d or "?"), _prop("header", "s", sig.s or "?")]
        if sig.b:
            props.append(_prop("header", "b", sig.b))
        results.append(_FEATURES.result("dkim", result=sig.result,
                                        reason=_reason(sig.reason), properties=props))
    if not dkim:
        results.append(_FEATURES.result("dkim", result="none"))
    arc_props = [_prop("header", "as-d", arc.sealers[0])] if arc.sealers and arc.sealers[0] else []
    arc_comment = f"trusted sealer {arc_trusted}" if arc_trusted else None
    if arc.cv in ("pass", "fail", "none"):
        results.append(_FEATURES.result("arc", result=arc.cv, result_comment=_comment(
            arc_comment or ""), reason=_reason(arc.reason), properties=arc_props))
    else:  # RFC 8617 registers pass/fail/none only: a timeout is a fail with its reason
        results.append(_FEATURES.result("arc", result="fail", reason=_reason(
            f"{arc.cv}: {arc.reason}"), properties=arc_props))
    mailfrom = spf.mailfrom if not _UNSAFE_PVALUE.search(spf.mailfrom) else spf.domain
    results.append(_FEATURES.result(
        "spf", result=spf.result, reason=_reason(spf.reason if spf.result != "pass" else ""),
        properties=[_prop("smtp", "mailfrom", mailfrom or "?")]))
    if spf.helo and spf.mailfrom != f"postmaster@{spf.helo}":
        results.append(_FEATURES.result("spf", result=spf.helo_result,
                                        properties=[_prop("smtp", "helo", spf.helo)]))
    dmarc_comment = None
    if dmarc.policy:
        dmarc_comment = (f"p={dmarc.p} sp={dmarc.sp or dmarc.p} pct={dmarc.pct}"
                         f" dis={dmarc.disposition}")
    results.append(_FEATURES.result(
        "dmarc", result=dmarc.result, result_comment=_comment(dmarc_comment or ""),
        reason=_reason(dmarc.reason if dmarc.result not in ("pass", "none") else ""),
        properties=[_prop("header", "from", dmarc.domain or "?")]))
    header = _FEATURES.header(authserv_id=authserv_id, results=results)
    return f"{FIELD}: {header.header_value()}"


def fold(header: str, linesep: bytes = b"\r\n") -> bytes:
    """The header as bytes, one result per line (`;` then CRLF and a tab), ending in `linesep`."""
    parts = header.split("; ")
    return (b";" + linesep + b"\t").join(p.encode("utf-8", "replace")
                                                  for p in parts) + linesep


# --- reading what a sealer recorded ------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """The results one ARC hop recorded: what it saw when the message reached it."""
    instance: int = 0
    authserv_id: str = ""
    dkim: tuple[tuple[str, str], ...] = ()  # (domain, result)
    spf_domain: str = ""
    spf_result: str = "none"
    dmarc_result: str = ""
    dmarc_from: str = ""
    methods: dict[str, str] = field(default_factory=dict)  # method → first result, for display

    def as_dict(self) -> dict[str, Any]:
        values = dict(vars(self))
        values["dkim"] = [list(pair) for pair in self.dkim]
        values["methods"] = dict(self.methods)
        return values


def _domain_of(value: str) -> str:
    return value.rpartition("@")[2].strip().lower().rstrip(".")


def _entries(text: str) -> tuple[str, list[tuple[str, str, dict[str, str]]]]:
    """A tolerant reader of an Authentication-Results value: authserv-id, then (method, result,
    properties) per result. Quoted strings (reasons) and comments are dropped first, so neither
    a `;` nor a `=` inside them is read as structure."""
    text = _without_comments(_empty_quotes(text))
    parts = [p.strip() for p in text.split(";")]
    entries = []
    for part in parts[1:]:
        tokens = part.split()
        if not tokens or "=" not in tokens[0]:
            continue
        method, _, result = tokens[0].partition("=")
        props = {}
        for token in tokens[1:]:
            key, sep, value = token.partition("=")
            if sep and "." in key:
                props[key.lower()] = value.strip('"')
        entries.append((method.lower().split("/")[0], result.lower(), props))
    return parts[0].split()[0] if parts[0] else "", entries


def _empty_quotes(text: str) -> str:
    """Each quoted string (with backslash escapes) → `""`, in one pass. An unterminated quote
    stays as it is, and so does a quote cut by a backslash before a line break."""
    out: list[str] = []
    pos = 0
    n = len(text)
    while True:
        start = text.find('"', pos)
        if start < 0:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:start])
        i = start + 1
        while i < n and text[i] != '"':
            if text[i] == "\\":
                if i + 1 >= n or text[i + 1] == "\n":
                    break
                i += 2
            else:
                i += 1
        if i < n and text[i] == '"':
            out.append('""')
            pos = i + 1
            continue
        # not closed: every later quote up to here is escaped in this same reading, so none of
        # them starts a quoted string either
        stop = n if i >= n else i + 1
        out.append(text[start:stop])
        pos = stop


def _without_comments(text: str) -> str:
    """Each balanced (nested) comment → one space, in one pass; unbalanced parentheses stay."""
    out: list[str] = []
    opens: list[int] = []  # where in `out` each open "(" is
    for ch in text:
        if ch == "(":
            opens.append(len(out))
            out.append(ch)
        elif ch == ")" and opens:
            del out[opens.pop():]
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def read_recorded(value: str) -> Recorded:
    """An ARC-Authentication-Results value (`i=1; mx.google.com; dkim=pass ...`) → `Recorded`."""
    match = _INSTANCE.match(value)
    instance = int(match.group(1)) if match else 0
    text = value[match.end():] if match else value
    authserv_id, entries = _entries(text)
    dkim = []
    spf_domain, spf_result, helo_domain, helo_result = "", "", "", ""
    dmarc_result, dmarc_from = "", ""
    methods: dict[str, str] = {}
    for method, result, props in entries:
        methods.setdefault(method, result)
        if method == "dkim":
            domain = props.get("header.d") or _domain_of(props.get("header.i", ""))
            dkim.append((domain.lower(), result))
        elif method == "spf" and props.get("smtp.mailfrom") and not spf_result:
            spf_domain, spf_result = _domain_of(props["smtp.mailfrom"]), result
        elif method == "spf" and props.get("smtp.helo") and not helo_result:
            helo_domain, helo_result = _domain_of(props["smtp.helo"]), result
        elif method == "dmarc" and not dmarc_result:
            dmarc_result, dmarc_from = result, _domain_of(props.get("header.from", ""))
    if not spf_result and helo_result:
        spf_domain, spf_result = helo_domain, helo_result
    return Recorded(instance, authserv_id.lower(), tuple(dkim), spf_domain, spf_result or "none",
                    dmarc_result, dmarc_from, methods)


# --- RFC 8601 §5: remove what claims to be ours --------------------------------------------------


def strip_forged_results(raw: bytes, authserv_id: str) -> bytes:
    """`raw` without the Authentication-Results fields whose authserv-id is `authserv_id`."""
    ours = authserv_id.strip().lower().rstrip(".")
    drop = []
    for f in header_fields(raw):
        if f.name.lower() != FIELD.lower():
            continue
        match = _AUTHSERV_ID.match(f.value)
        if match and match.group(1).lower().rstrip(".") == ours:
            drop.append((f.start, f.end))
    if not drop:
        return raw
    kept, pos = [], 0
    for start, end in drop:
        kept.append(raw[pos:start])
        pos = end
    kept.append(raw[pos:])
    return b"".join(kept)
