"""The authenticate stage: DKIM (every signature), ARC, SPF and DMARC → a verdict on the From
address and one Authentication-Results header.

Input: the raw message exactly as received, the SMTP client's address, HELO name and envelope
sender, and the From domain the parse stage read — all untrusted — plus `AuthSettings`
(trusted: the administrator's configuration). Output: an `AuthResult` — `verdict` (`pass`,
`fail`, `none`), one line of `reason`, the Authentication-Results `header` to prepend to the
stored mail, and each method's details as plain dicts for the audit. Never raises for any
message, any DNS behaviour or any library failure: the worst outcome is `none` with the reason.

One message is authenticated by synchronous code in one thread — the caller's for
`authenticate_sync` (the pipeline's worker), one of the stage's pool for `authenticate`, which
thus never blocks the caller's event loop. DNS is dnspython's async resolver on the resolver's
own event loop thread (`mailgate.auth.dns`): the DKIM and ARC keys and the DMARC policy are all
asked at once there while SPF is evaluated, and dkimpy and pyspf then read their answers from the
cache without any hand-off. All DNS for one message shares one budget of `dns_timeout` seconds,
so a dead or slow nameserver costs a message at most about that long, and whatever did not
answer in time is `temperror`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mailgate.auth import arc_check, dkim_check, spf_check
from mailgate.auth.arc_check import ArcChain
from mailgate.auth.dkim_check import DkimSignature
from mailgate.auth.dmarc import (
    DmarcOutcome,
    Evidence,
    PolicyLookup,
    cached_policy,
    evaluate,
    fetch_policy,
    organizational_domain,
)
from mailgate.auth.dns import Resolver, SyncLookup
from mailgate.auth.forwarding import forwarded_by
from mailgate.auth.results import Recorded, build_header, fold, read_recorded
from mailgate.auth.spf_check import SpfOutcome
from mailgate.auth.verdict import Verdict, decide

# The mailbox providers that seal forwarded mail with ARC, by the d= of their ARC-Seal:
# Gmail and Google Workspace (google.com), Outlook.com and Microsoft 365 (microsoft.com), Yahoo
# and AOL (yahoo.com), iCloud (icloud.com), Fastmail (messagingengine.com), Zoho
# (zohomail.com). The forwarders' own domains are added to these.
DEFAULT_TRUSTED_ARC_SEALERS: tuple[str, ...] = (
    "google.com", "microsoft.com", "yahoo.com", "icloud.com", "messagingengine.com",
    "zohomail.com",
)
POOL_THREADS = 8


@dataclass(frozen=True)
class AuthSettings:
    authserv_id: str  # our [server] hostname
    nameservers: tuple[str, ...] = ()  # "127.0.0.1:5300"; empty: the system resolver
    dns_timeout: float = 5.0
    trusted_arc_sealers: tuple[str, ...] = DEFAULT_TRUSTED_ARC_SEALERS
    forwarders: tuple[str, ...] = ()  # [[forwarders]] address
    our_domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthResult:
    verdict: str  # "pass" | "fail" | "none": did the From address really send this
    reason: str
    header: str  # "Authentication-Results: <authserv-id>; dkim=...; arc=...; spf=...; dmarc=..."
    dkim: tuple[dict[str, str], ...] = ()  # each signature: d, s, b, i, result, reason
    arc: dict[str, Any] = field(default_factory=dict)
    spf: dict[str, str] = field(default_factory=dict)
    dmarc: dict[str, Any] = field(default_factory=dict)

    @property
    def temperror(self) -> bool:
        """Some DNS lookup did not complete: the verdict might differ on a later try."""
        return (self.dmarc.get("result") == "temperror" or self.spf.get("result") == "temperror"
                or self.arc.get("cv") == "temperror"
                or any(s.get("result") == "temperror" for s in self.dkim))

    def header_bytes(self, linesep: bytes = b"\r\n") -> bytes:
        """The header folded one result per line, ending in `linesep`: prepend it to the mail."""
        return fold(self.header, linesep)

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reason": self.reason, "header": self.header,
                "dkim": [dict(s) for s in self.dkim], "arc": dict(self.arc),
                "spf": dict(self.spf), "dmarc": dict(self.dmarc)}


def _domain(text: str) -> str:
    name = text.strip().strip("<>").rpartition("@")[2].strip().lower().rstrip(".")
    try:
        return name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        return name


def _sample(raw: bytes) -> int:
    """0..99, the same for the same message: DMARC pct sampling that a retry repeats."""
    return int.from_bytes(hashlib.sha256(raw).digest()[:4], "big") % 100


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.resolver = Resolver(settings.nameservers, settings.dns_timeout)
        self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="mailgate-auth")
        sealers = (*settings.trusted_arc_sealers, *(_domain(f) for f in settings.forwarders))
        self.trusted_sealers = frozenset(organizational_domain(s) for s in sealers if s)
        self.our_domains = tuple(d.lower().rstrip(".") for d in settings.our_domains)

    def close(self) -> None:
        """Stop the worker threads and the resolver's loop (a later call starts them again)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="mailgate-auth")
        self.resolver.close()

    async def authenticate(self, raw: bytes, client_ip: str, helo: str, mail_from: str,
                           from_domain: str) -> AuthResult:
        """The stage, awaited on an event loop: the work runs in one of the stage's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, raw, client_ip, helo,
                                          mail_from, from_domain)

    def authenticate_sync(self, raw: bytes, client_ip: str, helo: str, mail_from: str,
                          from_domain: str) -> AuthResult:
        """The stage in the calling thread (the pipeline's worker): not on an event loop's
        thread, which it would block for up to `dns_timeout`."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._run(raw, client_ip, helo, mail_from, from_domain)
        raise RuntimeError("authenticate_sync called on an event loop: await authenticate()")

    def _run(self, raw: bytes, client_ip: str, helo: str, mail_from: str,
             from_domain: str) -> AuthResult:
        try:
            return self._authenticate(raw, client_ip, helo, mail_from, from_domain)
        except Exception as exc:  # a bug or a library surprise: recorded, never a pass
            reason = f"authentication error: {type(exc).__name__}: {exc}"[:300]
            header = f"Authentication-Results: {self.settings.authserv_id}; none"
            return AuthResult("none", reason, header)

    def _authenticate(self, raw: bytes, client_ip: str, helo: str, mail_from: str,
                      from_domain: str) -> AuthResult:
        deadline = time.monotonic() + self.settings.dns_timeout
        lookup = self.resolver.sync(deadline)
        from_domain = _domain(from_domain) if from_domain else ""
        mail_from = mail_from.strip().strip("<>").strip()
        helo = helo.strip().rstrip(".").lower()
        try:
            headers, body = dkim_check.split_message(raw)
        except Exception:  # dkim.MessageFormatError: a header line that is no header
            headers, body = [], b""
        # DNS first: every key and the DMARC policy at once on the resolver's loop, while SPF
        # (whose lookups depend on each other) runs here; then the signatures, from the cache.
        names = dkim_check.key_names(headers) | arc_check.key_names(headers) if headers else set()
        policy = cached_policy(self.resolver, from_domain)
        if policy is None or any(self.resolver.cached(n, "TXT") is None for n in names):
            early = self.resolver.submit(_prefetch(self.resolver, names, from_domain, deadline))
            spf = _spf(client_ip, mail_from, helo, lookup)
            try:
                policy = early.result(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
            except Exception as exc:  # the resolver's loop overran the budget, or was stopped
                early.cancel()
                policy = PolicyLookup("temperror", reason=f"DNS did not complete: {exc!r}"[:200])
        else:  # a warm cache: no hand-off at all
            spf = _spf(client_ip, mail_from, helo, lookup)
        if headers:
            signatures = dkim_check.verify_signatures(headers, body, lookup)
            chain = arc_check.verify_chain(headers, body, lookup)
        else:
            signatures, chain = (), ArcChain("none", reason="the header section cannot be read")
        return self._conclude(raw, headers, from_domain, mail_from, signatures, chain, spf,
                              policy)

    def _conclude(self, raw: bytes, headers: list[Any], from_domain: str, mail_from: str,
                  signatures: tuple[DkimSignature, ...], chain: ArcChain, spf: SpfOutcome,
                  policy: PolicyLookup) -> AuthResult:
        sample = _sample(raw) if policy.record and policy.record.pct < 100 else 0
        forwarder = forwarded_by(mail_from, headers, self.settings.forwarders)
        own = Evidence(dkim=tuple((s.d, s.result) for s in signatures),
                       spf_domain="" if forwarder else spf.domain, spf_result=spf.result)
        own_dmarc = evaluate(from_domain, policy, own, sample)

        trusted_sealer, recorded, arc_evidence, arc_dmarc = self._trusted_hop(
            chain, from_domain, policy, sample)
        verdict: Verdict = decide(
            from_domain, own, own_dmarc, trusted_sealer, arc_evidence, arc_dmarc,
            self.our_domains, forwarder)
        header = build_header(self.settings.authserv_id, signatures, chain, trusted_sealer,
                              spf, own_dmarc)
        first_hop = recorded if recorded is not None and recorded.instance == 1 else None
        if first_hop is None and chain.results:
            first_hop = read_recorded(chain.results[-1])  # i=1: the chain is ordered 1..n
        arc = {
            "cv": chain.cv, "sealers": list(chain.sealers), "reason": chain.reason,
            "trusted_sealer": trusted_sealer,
            "first_hop": first_hop.as_dict() if first_hop else {},
            "trusted_hop": recorded.as_dict() if recorded else {},
        }
        dmarc = own_dmarc.as_dict()
        dmarc["forwarder"] = forwarder
        if arc_dmarc is not None:
            dmarc["via_arc"] = arc_dmarc.as_dict()
        return AuthResult(
            verdict=verdict.verdict, reason=verdict.reason, header=header,
            dkim=tuple(s.as_dict() for s in signatures), arc=arc, spf=spf.as_dict(),
            dmarc=dmarc,
        )

    def _trusted_hop(self, chain: ArcChain, from_domain: str, policy: PolicyLookup,
                     sample: int) -> tuple[str, Recorded | None, Evidence | None,
                                           DmarcOutcome | None]:
        """The innermost hop of the run of trusted sealers at the outer end of a valid chain:
        what it recorded on arrival stands for the sender (an untrusted hop before it could
        have written anything)."""
        if chain.cv != "pass":
            return "", None, None, None
        run = 0
        for sealer in chain.sealers:
            if organizational_domain(sealer) not in self.trusted_sealers:
                break
            run += 1
        if run == 0:
            return "", None, None, None
        recorded = read_recorded(chain.results[run - 1])
        evidence = Evidence(dkim=recorded.dkim, spf_domain=recorded.spf_domain,
                            spf_result=recorded.spf_result)
        outcome = evaluate(from_domain, policy, evidence, sample)
        claim = recorded.dmarc_result
        if (outcome.result != "pass" and claim in ("pass", "fail")
                and recorded.dmarc_from in ("", from_domain)):
            outcome = dataclasses.replace(
                outcome, result=claim, reason=f"recorded by {recorded.authserv_id or 'the hop'}")
        return chain.sealers[run - 1], recorded, evidence, outcome


def _spf(client_ip: str, mail_from: str, helo: str, lookup: SyncLookup) -> SpfOutcome:
    """Both SPF identities, one after the other (the HELO's usually costs one lookup); a null
    sender's check is the HELO's."""
    result, reason = spf_check.check(client_ip, mail_from, helo, lookup)
    spf_helo = helo if mail_from and spf_check.is_domain(helo) else ""
    helo_result, helo_reason = (spf_check.check(client_ip, "", spf_helo, lookup) if spf_helo
                                else ("none", ""))
    return SpfOutcome(
        result=result, domain=_domain(mail_from) if mail_from else helo,
        mailfrom=mail_from or f"postmaster@{helo}", reason=reason, helo=spf_helo,
        helo_result=helo_result, helo_reason=helo_reason,
    )


async def _prefetch(resolver: Resolver, names: set[str], from_domain: str,
                    deadline: float) -> PolicyLookup:
    policy, *_keys = await asyncio.gather(
        fetch_policy(resolver, from_domain, deadline),
        *(resolver.lookup(n, "TXT", deadline) for n in names), return_exceptions=True)
    if isinstance(policy, BaseException):
        return PolicyLookup("temperror", reason=f"DMARC lookup failed: {policy!r}"[:200])
    return policy
