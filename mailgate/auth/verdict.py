"""The verdict: did the From address really send this message — `pass`, `fail` or `none`.

Input: the From domain, the outcomes of the checks on the message itself (DKIM signatures and
their DMARC evaluation), and, when the ARC chain validated and its sealers are trusted, the
evaluation of what the trusted hop recorded; our own domains (trusted configuration). The check
outcomes describe untrusted mail, but each is already the result of a cryptographic or DNS check.
Output: a `Verdict` with one line of reason. A pure function, no I/O.

Rules, first that applies:
1. no From domain: `none`;
2. a From domain of ours without a passing DKIM signature aligned with it: `fail` (forged) —
   our own mail always carries our signature, and ARC does not vouch for it;
3. the message's own evaluation passes (DMARC pass; or, with no DMARC record, an aligned DKIM
   pass): `pass`;
4. a trusted ARC hop's evaluation is `pass` or `fail`: that, "via trusted ARC sealer X";
5. the message's own evaluation: DMARC `fail` with a published record → `fail`; no record and an
   aligned DKIM signature that failed verification with none passing → `fail`; otherwise `none`
   (a DNS timeout is `none` with a `temperror` reason: never a pass, never a fail).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.auth.dmarc import DmarcOutcome, Evidence, aligned


@dataclass(frozen=True)
class Verdict:
    verdict: str  # "pass", "fail" or "none"
    reason: str


def judge(from_domain: str, evidence: Evidence, dmarc: DmarcOutcome) -> Verdict:
    """The verdict that one body of evidence supports, with its DMARC evaluation."""
    if dmarc.result == "pass":
        return Verdict("pass", f"DMARC pass for {from_domain}: {dmarc.reason}")
    if dmarc.result == "fail":
        return Verdict("fail", f"DMARC fail for {from_domain} (p={dmarc.policy}):"
                               f" {dmarc.reason}")
    if dmarc.dkim_aligned:  # no record (or no answer), but the From domain signed it
        record = "no DMARC record" if dmarc.result == "none" else f"DMARC {dmarc.result}"
        return Verdict("pass", f"aligned DKIM pass (d={dmarc.dkim_aligned}) for {from_domain},"
                               f" {record}")
    if dmarc.result == "temperror":
        return Verdict("none", f"temperror: DMARC for {from_domain} could not be evaluated:"
                               f" {dmarc.reason}")
    mine = [(d, r) for d, r in evidence.dkim if aligned(d, from_domain)]
    failed = [d for d, r in mine if r == "fail"]
    if failed:
        return Verdict("fail", f"aligned DKIM signature d={failed[0]} failed verification and"
                               f" none passed; no DMARC record for {from_domain}")
    if any(r == "temperror" for _d, r in mine):
        return Verdict("none", f"temperror: the DKIM key of {from_domain} could not be fetched;"
                               " no DMARC record")
    return Verdict("none", f"no DMARC record for {from_domain} and no aligned DKIM pass")


def decide(from_domain: str, own_evidence: Evidence, own_dmarc: DmarcOutcome,
           arc_sealer: str = "", arc_evidence: Evidence | None = None,
           arc_dmarc: DmarcOutcome | None = None, our_domains: tuple[str, ...] = (),
           forwarder: str = "") -> Verdict:
    if not from_domain:
        return Verdict("none", "no From domain to authenticate")
    ours = any(from_domain == d or from_domain.endswith(f".{d}") for d in our_domains)
    if ours and not any(r == "pass" and aligned(d, from_domain) for d, r in own_evidence.dkim):
        return Verdict("fail", "forged: our own domain without our DKIM signature")
    own = judge(from_domain, own_evidence, own_dmarc)
    via = f" (forwarded by {forwarder}: judged by DKIM alone)" if forwarder else ""
    if own.verdict == "pass":
        return Verdict("pass", own.reason + via)
    if arc_sealer and arc_evidence is not None and arc_dmarc is not None:
        first = judge(from_domain, arc_evidence, arc_dmarc)
        if first.verdict in ("pass", "fail"):
            return Verdict(first.verdict, f"{first.reason}, via trusted ARC sealer {arc_sealer}")
    return Verdict(own.verdict, own.reason + via)
