"""DMARC (RFC 7489): the From domain's published policy, identifier alignment, the result.

Input: the RFC5322.From domain (untrusted: whatever the sender wrote), the DMARC records DNS
serves (untrusted text, parsed leniently as the RFC asks), and the evidence of the other checks:
which DKIM domains gave which result, and the SPF result with the domain it was for. Output:
`fetch_policy` → `PolicyLookup` (a record found at `_dmarc.<from domain>` or, failing that, at
the organizational domain's; none; or temperror when DNS timed out); `evaluate` → `DmarcOutcome`
(`pass`, `fail`, `none` when no record is published, `temperror`), with the policy that applies
(`sp` for a subdomain whose record came from the organizational domain), the disposition after
`pct` sampling, and which identifiers aligned. The organizational domain comes from the Public
Suffix List that the `publicsuffixlist` package ships (no download at run time). Never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from publicsuffixlist import PublicSuffixList

from mailgate.auth.dns import DnsTempError, Resolver

POLICIES = ("none", "quarantine", "reject")
_VERSION = re.compile(r"\s*v\s*=\s*DMARC1\s*(;|\Z)")
_psl = PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """`mail.example.co.uk` → `example.co.uk`; a public suffix or odd name stays as it is."""
    domain = domain.lower().rstrip(".")
    try:
        return _psl.privatesuffix(domain) or domain
    except Exception:  # publicsuffixlist on a name it cannot split
        return domain


def aligned(domain: str, from_domain: str, mode: str = "r") -> bool:
    """Identifier alignment: the same name (strict), or the same organizational domain."""
    domain = domain.lower().rstrip(".")
    from_domain = from_domain.lower().rstrip(".")
    if not domain or not from_domain:
        return False
    if domain == from_domain:
        return True
    return mode != "s" and organizational_domain(domain) == organizational_domain(from_domain)


@dataclass(frozen=True)
class DmarcRecord:
    domain: str  # where it was found: the From domain, or its organizational domain
    p: str
    sp: str = ""  # "" when not published (p applies)
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"


def parse_record(text: str, domain: str) -> DmarcRecord | None:
    """A `v=DMARC1` TXT record, or None when it is not one (RFC 7489 §6.6.3)."""
    if not _VERSION.match(text):
        return None
    tags: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags.setdefault(key.strip().lower(), value.strip())
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        if "rua" not in tags:
            return None
        p = "none"  # §6.6.3: a record with rua and a bad p is p=none
    sp = tags.get("sp", "").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    return DmarcRecord(
        domain=domain, p=p, sp=sp if sp in POLICIES else "",
        pct=pct if 0 <= pct <= 100 else 100,
        adkim="s" if tags.get("adkim", "").lower() == "s" else "r",
        aspf="s" if tags.get("aspf", "").lower() == "s" else "r",
    )


@dataclass(frozen=True)
class PolicyLookup:
    status: str  # "found", "none" or "temperror"
    record: DmarcRecord | None = None
    reason: str = ""


def _record_in(records: tuple[Any, ...], domain: str) -> DmarcRecord | None:
    texts = [b"".join(r).decode("utf-8", "replace") for r in records]
    parsed = [r for r in (parse_record(t, domain) for t in texts) if r is not None]
    return parsed[0] if len(parsed) == 1 else None  # more than one: "as if none was found"


def _found(record: DmarcRecord | None, from_domain: str) -> PolicyLookup:
    if record is None:
        return PolicyLookup("none", reason=f"no DMARC record for {from_domain}")
    return PolicyLookup("found", record)


async def fetch_policy(resolver: Resolver, from_domain: str, deadline: float) -> PolicyLookup:
    if not from_domain:
        return PolicyLookup("none", reason="no From domain")
    try:
        records = await resolver.lookup(f"_dmarc.{from_domain}", "TXT", deadline)
        record = _record_in(records, from_domain)
        org = organizational_domain(from_domain)
        if record is None and org != from_domain:
            record = _record_in(await resolver.lookup(f"_dmarc.{org}", "TXT", deadline), org)
    except DnsTempError as exc:
        return PolicyLookup("temperror", reason=str(exc))
    return _found(record, from_domain)


def cached_policy(resolver: Resolver, from_domain: str) -> PolicyLookup | None:
    """`fetch_policy` answered from the cache alone; None when it would have to ask DNS."""
    if not from_domain:
        return PolicyLookup("none", reason="no From domain")
    records = resolver.cached(f"_dmarc.{from_domain}", "TXT")
    if records is None:
        return None
    record = _record_in(records, from_domain)
    org = organizational_domain(from_domain)
    if record is None and org != from_domain:
        records = resolver.cached(f"_dmarc.{org}", "TXT")
        if records is None:
            return None
        record = _record_in(records, org)
    return _found(record, from_domain)


@dataclass(frozen=True)
class Evidence:
    """What the checks found, from the message itself or as a trusted first hop recorded it."""
    dkim: tuple[tuple[str, str], ...]  # (d=, result) per signature
    spf_domain: str = ""  # "" when SPF is not to be counted (forwarded mail)
    spf_result: str = "none"


@dataclass(frozen=True)
class DmarcOutcome:
    result: str  # "pass", "fail", "none" (no record), "temperror"
    domain: str  # the From domain
    policy: str = ""  # the policy that applies (p, or sp for a subdomain); "" without a record
    disposition: str = "none"  # what the policy asks for this message, after pct sampling
    record_domain: str = ""
    p: str = ""
    sp: str = ""
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"
    dkim_aligned: str = ""  # the d= of the aligned passing signature
    spf_aligned: str = ""  # the SPF domain when it passed and aligned
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))  # shallow: every value is immutable


_WEAKER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


def evaluate(from_domain: str, policy: PolicyLookup, evidence: Evidence,
             sample: int = 0) -> DmarcOutcome:
    """DMARC for `from_domain`; `sample` in 0..99 decides pct (the same message, the same way)."""
    record = policy.record
    adkim = record.adkim if record else "r"
    aspf = record.aspf if record else "r"
    dkim_pass = next(
        (d for d, r in evidence.dkim if r == "pass" and aligned(d, from_domain, adkim)), "")
    spf_pass = (evidence.spf_domain if evidence.spf_result == "pass"
                and aligned(evidence.spf_domain, from_domain, aspf) else "")
    base = {"domain": from_domain, "dkim_aligned": dkim_pass, "spf_aligned": spf_pass,
            "adkim": adkim, "aspf": aspf}
    if record is None:
        result = "temperror" if policy.status == "temperror" else "none"
        return DmarcOutcome(result, **base, reason=policy.reason)
    applies = record.sp if record.sp and record.domain != from_domain else record.p
    details = {**base, "policy": applies, "record_domain": record.domain, "p": record.p,
               "sp": record.sp, "pct": record.pct}
    if dkim_pass or spf_pass:
        how = f"aligned DKIM d={dkim_pass}" if dkim_pass else f"aligned SPF {spf_pass}"
        return DmarcOutcome("pass", **details, reason=f"{how} passed")
    pending = [d for d, r in evidence.dkim if r == "temperror" and aligned(d, from_domain, adkim)]
    if evidence.spf_result == "temperror" and aligned(evidence.spf_domain, from_domain, aspf):
        pending.append(evidence.spf_domain)
    if pending:
        return DmarcOutcome("temperror", **details,
                            reason=f"DNS timeout while checking {', '.join(pending)}")
    disposition = applies if sample < record.pct else _WEAKER[applies]
    return DmarcOutcome("fail", **details, disposition=disposition,
                        reason="no aligned DKIM or SPF pass")
