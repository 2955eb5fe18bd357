"""The authenticate stage: DKIM (every signature), ARC, SPF and DMARC → a verdict on the From
address and one Authentication-Results header.

Input: the raw message exactly as received, the SMTP client's address, HELO name and envelope
sender, and the From domain the parse stage read — all untrusted — plus `AuthSettings`
(trusted: the administrator's configuration). Output: an `AuthResult` — `verdict` (`pass`,
`fail`, `none`), one line of `reason`, the Authentication-Results `header` to prepend to the
stored mail, and each method's details as plain dicts for the audit. Never raises for any
message, any DNS behaviour or any library failure: the worst outcome is `none` with the reason.

`authenticate` runs on an event loop and never blocks it: DNS is dnspython's async resolver; the
CPU and the synchronous library code (dkimpy, pyspf) run in the stage's own thread pool and
resolve through the same resolver and cache on the caller's loop. All DNS for one message shares
one budget of `dns_timeout` seconds, so a dead or slow nameserver costs a message at most about
that long, and whatever did not answer is `temperror`. `authenticate_sync` does the same from a
plain thread (the pipeline's worker) on an event loop private to that thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
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
        self._local = threading.local()
        sealers = (*settings.trusted_arc_sealers, *(_domain(f) for f in settings.forwarders))
        self.trusted_sealers = frozenset(organizational_domain(s) for s in sealers if s)
        self.our_domains = tuple(d.lower().rstrip(".") for d in settings.our_domains)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        loop = getattr(self._local, "loop", None)
        if loop is not None and not loop.is_running():
            loop.close()

    # --- the synchronous entry point ------------------------------------------------------

    def authenticate_sync(self, raw: bytes, client_ip: str, helo: str, mail_from: str,
                          from_domain: str) -> AuthResult:
        """For a plain thread (the pipeline's worker); not for a thread running an event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("authenticate_sync called on an event loop: await authenticate()")
        loop = getattr(self._local, "loop", None)
        if loop is None or loop.is_closed():
            loop = asyncio.new_event_loop()
            self._local.loop = loop
        return loop.run_until_complete(
            self.authenticate(raw, client_ip, helo, mail_from, from_domain))

    # --- the stage --------------------------------------------------------------------------

    async def authenticate(self, raw: bytes, client_ip: str, helo: str, mail_from: str,
                           from_domain: str) -> AuthResult:
        try:
            return await self._authenticate(raw, client_ip, helo, mail_from, from_domain)
        except Exception as exc:  # a bug or a library surprise: recorded, never a pass
            reason = f"authentication error: {type(exc).__name__}: {exc}"[:300]
            header = f"Authentication-Results: {self.settings.authserv_id}; none"
            return AuthResult("none", reason, header)

    async def _authenticate(self, raw: bytes, client_ip: str, helo: str, mail_from: str,
                            from_domain: str) -> AuthResult:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.settings.dns_timeout
        lookup = self.resolver.sync(loop, deadline)
        from_domain = _domain(from_domain) if from_domain else ""
        mail_from = mail_from.strip().strip("<>").strip()
        helo = helo.strip().rstrip(".").lower()
        try:
            headers, body = dkim_check.split_message(raw)
        except Exception:  # dkim.MessageFormatError: a header line that is no header
            headers, body = [], b""
        (signatures, chain), spf, policy = await asyncio.gather(
            self._signatures(loop, headers, body, lookup, deadline),
            loop.run_in_executor(self._pool, _spf, client_ip, mail_from, helo, lookup),
            fetch_policy(self.resolver, from_domain, deadline),
        )
        return self._conclude(raw, headers, from_domain, mail_from, signatures, chain, spf,
                              policy)

    async def _signatures(self, loop: asyncio.AbstractEventLoop, headers: list[Any],
                          body: bytes, lookup: SyncLookup,
                          deadline: float) -> tuple[tuple[DkimSignature, ...], ArcChain]:
        """Fetch every key at once on the loop, then verify in a thread from the cache."""
        if not headers:
            return (), ArcChain("none", reason="the header section cannot be read")
        names = dkim_check.key_names(headers) | arc_check.key_names(headers)
        await asyncio.gather(*(self.resolver.lookup(n, "TXT", deadline) for n in names),
                             return_exceptions=True)
        return await loop.run_in_executor(self._pool, _verify_all, headers, body, lookup)

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
        first_hop = None
        if chain.results:
            first_hop = recorded if len(chain.sealers) == 1 else read_recorded(chain.results[-1])
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
    """Both SPF identities, one after the other in one worker thread (the HELO's usually costs
    one cached lookup); a null sender's check is the HELO's."""
    result, reason = spf_check.check(client_ip, mail_from, helo, lookup)
    spf_helo = helo if mail_from and spf_check.is_domain(helo) else ""
    helo_result, helo_reason = (spf_check.check(client_ip, "", spf_helo, lookup) if spf_helo
                                else ("none", ""))
    return SpfOutcome(
        result=result, domain=_domain(mail_from) if mail_from else helo,
        mailfrom=mail_from or f"postmaster@{helo}", reason=reason, helo=spf_helo,
        helo_result=helo_result, helo_reason=helo_reason,
    )


def _verify_all(headers: list[Any], body: bytes,
                lookup: SyncLookup) -> tuple[tuple[DkimSignature, ...], ArcChain]:
    return (dkim_check.verify_signatures(headers, body, lookup),
            arc_check.verify_chain(headers, body, lookup))

