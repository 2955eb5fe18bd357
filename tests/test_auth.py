"""The authenticate stage against a real DNS server on loopback and mail signed with real keys.

Every test publishes its own zone data on one dnslib server (tests/dns_server.py), signs mail
with RSA keys made here (dkimpy `sign` and `arc_sign`), and runs the stage as the pipeline will.
Each test uses its own Authenticator, so no answer is cached across tests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import random
import threading
import time
from collections.abc import Iterator

import authres
import dkim
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailgate.auth import (
    Authenticator,
    AuthResult,
    AuthSettings,
    dkim_speedups,
    strip_forged_results,
)
from mailgate.auth.dmarc import organizational_domain, parse_record
from mailgate.auth.headers import header_fields
from tests.dns_server import DnsTestServer

AUTHSERV_ID = "mx.help.example"
SIGNED = [b"from", b"to", b"subject", b"date", b"message-id"]


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsTestServer]:
    with DnsTestServer() as server:
        yield server


class Key:
    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption())
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        self.txt = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


@pytest.fixture(scope="module")
def keys() -> tuple[Key, Key, Key]:
    return Key(), Key(), Key()


def authenticator(dns: DnsTestServer, **settings: object) -> Authenticator:
    values: dict[str, object] = {"authserv_id": AUTHSERV_ID, "nameservers": (dns.address,),
                                 "dns_timeout": 2.0}
    values.update(settings)
    return Authenticator(AuthSettings(**values))  # type: ignore[arg-type]


def message(sender: str = "Jane <jane@example.org>", subject: str = "My printer is on fire",
            body: str = "Please help.\r\n", extra: str = "") -> bytes:
    return (
        f"{extra}From: {sender}\r\nTo: support@help.example\r\nSubject: {subject}\r\n"
        "Date: Mon, 06 Jan 2025 10:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    ).encode()


def sign(raw: bytes, key: Key, domain: str, selector: str = "s1") -> bytes:
    return dkim.sign(raw, selector.encode(), domain.encode(), key.pem,
                     canonicalize=(b"relaxed", b"relaxed"), include_headers=SIGNED) + raw


def publish_key(dns: DnsTestServer, key: Key, domain: str, selector: str = "s1") -> None:
    dns.add([(f"{selector}._domainkey.{domain}", "TXT", key.txt)])


def run(auth: Authenticator, raw: bytes, client_ip: str = "192.0.2.10", helo: str = "",
        mail_from: str = "", from_domain: str = "") -> AuthResult:
    result = asyncio.run(auth.authenticate(raw, client_ip, helo, mail_from, from_domain))
    auth.close()
    parsed = authres.parse(result.header)  # what we write, an RFC 8601 parser reads back
    assert parsed.authserv_id == AUTHSERV_ID
    assert "\r" not in result.header and "\n" not in result.header
    return result


def methods(result: AuthResult) -> dict[str, str]:
    parsed = authres.parse(result.header)
    found: dict[str, str] = {}
    for r in parsed.results:
        found.setdefault(r.method, r.result)
    return found


# --- DKIM ------------------------------------------------------------------------------------


def test_dkim_pass(dns: DnsTestServer, keys: tuple[Key, Key, Key]) -> None:
    publish_key(dns, keys[0], "dkimpass.example")
    raw = sign(message("Jane <jane@dkimpass.example>"), keys[0], "dkimpass.example")
    result = run(authenticator(dns), raw, mail_from="jane@dkimpass.example",
                 from_domain="dkimpass.example")
    assert result.dkim == ({"d": "dkimpass.example", "s": "s1", "result": "pass", "reason": "",
                            "b": result.dkim[0]["b"], "i": "@dkimpass.example"},)
    assert result.verdict == "pass", result.reason
    assert "aligned DKIM pass (d=dkimpass.example)" in result.reason
    assert methods(result)["dkim"] == "pass"
    props = {f"{p.type}.{p.name}": p.value for p in authres.parse(result.header).results[0]
             .properties}
    assert props["header.d"] == "dkimpass.example" and props["header.s"] == "s1"


def test_body_changed_after_signing_fails(dns: DnsTestServer,
                                          keys: tuple[Key, Key, Key]) -> None:
    publish_key(dns, keys[0], "changed.example")
    raw = sign(message("Jane <jane@changed.example>"), keys[0], "changed.example")
    raw = raw.replace(b"Please help.", b"Please send the invoice to IBAN XX00.")
    result = run(authenticator(dns), raw, from_domain="changed.example")
    assert result.dkim[0]["result"] == "fail"
    assert result.dkim[0]["reason"] == "body hash did not verify"
    assert result.verdict == "fail"
    assert "aligned DKIM signature d=changed.example failed" in result.reason


def test_two_signatures_one_broken_passes(dns: DnsTestServer,
                                          keys: tuple[Key, Key, Key]) -> None:
    publish_key(dns, keys[0], "twosig.example", "good")
    publish_key(dns, keys[1], "twosig.example", "rotated")  # DNS has a key the signer lacks
    raw = sign(message("Jane <jane@twosig.example>"), keys[0], "twosig.example", "good")
    raw = sign(raw, keys[2], "twosig.example", "rotated")  # topmost, and broken
    result = run(authenticator(dns), raw, from_domain="twosig.example")
    assert [(s["s"], s["result"]) for s in result.dkim] == [("rotated", "fail"), ("good", "pass")]
    assert result.verdict == "pass", result.reason
    parsed = authres.parse(result.header)
    assert [r.result for r in parsed.results if r.method == "dkim"] == ["fail", "pass"]


def test_missing_key_is_neutral_not_fail(dns: DnsTestServer, keys: tuple[Key, Key, Key]) -> None:
    raw = sign(message("Jane <jane@nokey.example>"), keys[0], "nokey.example")
    result = run(authenticator(dns), raw, from_domain="nokey.example")
    assert result.dkim[0]["result"] == "neutral"
    assert result.verdict == "none"


# --- SPF -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spf_zone(dns: DnsTestServer) -> None:
    dns.add([
        ("spf-strict.example", "TXT", "v=spf1 ip4:192.0.2.10 -all"),
        ("_dmarc.spf-strict.example", "TXT", "v=DMARC1; p=none"),
        ("spf-soft.example", "TXT", "v=spf1 ip4:192.0.2.10 ~all"),
        ("mail.spf-strict.example", "TXT", "v=spf1 a -all"),
        ("mail.spf-strict.example", "A", "192.0.2.10"),
    ])


@pytest.mark.usefixtures("spf_zone")
def test_spf_pass(dns: DnsTestServer) -> None:
    result = run(authenticator(dns), message("Jane <jane@spf-strict.example>"), "192.0.2.10",
                 "mail.spf-strict.example", "jane@spf-strict.example", "spf-strict.example")
    assert result.spf["result"] == "pass"
    assert result.spf["domain"] == "spf-strict.example"
    assert result.spf["helo_result"] == "pass"
    assert result.dmarc["result"] == "pass" and result.dmarc["spf_aligned"] == "spf-strict.example"
    assert result.verdict == "pass", result.reason
    assert "smtp.mailfrom=jane@spf-strict.example" in result.header


@pytest.mark.usefixtures("spf_zone")
def test_spf_fail(dns: DnsTestServer) -> None:
    result = run(authenticator(dns), message("Jane <jane@spf-strict.example>"),
                 "198.51.100.7", "mail.spf-strict.example", "jane@spf-strict.example",
                 "spf-strict.example")
    assert result.spf["result"] == "fail"
    assert result.spf["helo_result"] == "fail"
    assert result.dmarc["result"] == "fail" and result.dmarc["policy"] == "none"
    assert result.verdict == "fail"
    assert methods(result)["spf"] == "fail"


@pytest.mark.usefixtures("spf_zone")
def test_spf_softfail(dns: DnsTestServer) -> None:
    result = run(authenticator(dns), message("Jane <jane@spf-soft.example>"), "198.51.100.7",
                 "", "jane@spf-soft.example", "spf-soft.example")
    assert result.spf["result"] == "softfail"
    assert result.verdict == "none"  # no DKIM, no DMARC record: nothing can be said
    assert methods(result)["spf"] == "softfail"


def test_null_sender_checks_the_helo(dns: DnsTestServer) -> None:
    dns.add([("mta.nullsender.example", "TXT", "v=spf1 ip4:192.0.2.10 -all")])
    result = run(authenticator(dns), message("MAILER-DAEMON <postmaster@nullsender.example>"),
                 "192.0.2.10", "mta.nullsender.example", "", "nullsender.example")
    assert result.spf["result"] == "pass"
    assert result.spf["mailfrom"] == "postmaster@mta.nullsender.example"


def test_dns_timeout_is_temperror_within_the_budget(dns: DnsTestServer,
                                                    keys: tuple[Key, Key, Key]) -> None:
    dns.silence("slow.example", "_dmarc.slow.example", "s1._domainkey.slow.example")
    raw = sign(message("Jane <jane@slow.example>"), keys[0], "slow.example")
    auth = authenticator(dns, dns_timeout=1.0)
    started = time.monotonic()
    result = run(auth, raw, "192.0.2.10", "", "jane@slow.example", "slow.example")
    elapsed = time.monotonic() - started
    assert elapsed < 1.0 + 1.0, elapsed
    assert result.spf["result"] == "temperror"
    assert result.dkim[0]["result"] == "temperror"
    assert result.dmarc["result"] == "temperror"
    assert result.verdict == "none" and result.reason.startswith("temperror")
    assert result.temperror
    assert methods(result)["spf"] == "temperror"


def test_dns_unreachable_is_temperror(keys: tuple[Key, Key, Key]) -> None:
    with DnsTestServer() as server:
        address = server.address
    raw = sign(message("Jane <jane@gone.example>"), keys[0], "gone.example")
    auth = Authenticator(AuthSettings(AUTHSERV_ID, nameservers=(address,), dns_timeout=1.0))
    result = run(auth, raw, "192.0.2.10", "", "jane@gone.example", "gone.example")
    assert result.verdict == "none" and result.temperror


# --- DMARC -----------------------------------------------------------------------------------


def test_dmarc_reject_with_forged_from(dns: DnsTestServer, keys: tuple[Key, Key, Key]) -> None:
    dns.add([
        ("_dmarc.bank.example", "TXT", "v=DMARC1; p=reject; rua=mailto:d@bank.example"),
        ("bank.example", "TXT", "v=spf1 ip4:192.0.2.99 -all"),
        ("attacker.example", "TXT", "v=spf1 ip4:198.51.100.0/24 -all"),
    ])
    publish_key(dns, keys[1], "attacker.example")
    raw = sign(message("CEO <ceo@bank.example>"), keys[1], "attacker.example")
    result = run(authenticator(dns), raw, "198.51.100.7", "mx.attacker.example",
                 "bounce@attacker.example", "bank.example")
    assert result.dkim[0]["result"] == "pass"  # a good signature, of the wrong domain
    assert result.spf["result"] == "pass"  # of the wrong domain too
    assert result.dmarc["result"] == "fail"
    assert result.dmarc["policy"] == "reject" and result.dmarc["disposition"] == "reject"
    assert result.verdict == "fail"
    assert result.reason == ("DMARC fail for bank.example (p=reject): no aligned DKIM or SPF"
                             " pass")
    assert methods(result)["dmarc"] == "fail"


def test_relaxed_alignment_on_a_subdomain(dns: DnsTestServer, keys: tuple[Key, Key, Key]) -> None:
    dns.add([("_dmarc.relaxed.example", "TXT", "v=DMARC1; p=reject")])
    publish_key(dns, keys[0], "mail.relaxed.example")
    raw = sign(message("Jane <jane@relaxed.example>"), keys[0], "mail.relaxed.example")
    result = run(authenticator(dns), raw, from_domain="relaxed.example")
    assert result.dmarc["result"] == "pass"
    assert result.dmarc["dkim_aligned"] == "mail.relaxed.example"
    assert result.verdict == "pass", result.reason


def test_strict_alignment_refuses_a_subdomain(dns: DnsTestServer,
                                              keys: tuple[Key, Key, Key]) -> None:
    dns.add([("_dmarc.strict.example", "TXT", "v=DMARC1; p=quarantine; adkim=s")])
    publish_key(dns, keys[0], "mail.strict.example")
    raw = sign(message("Jane <jane@strict.example>"), keys[0], "mail.strict.example")
    result = run(authenticator(dns), raw, from_domain="strict.example")
    assert result.dmarc["result"] == "fail" and result.dmarc["adkim"] == "s"
    assert result.verdict == "fail"


def test_subdomain_policy_and_pct_from_the_organizational_domain(dns: DnsTestServer) -> None:
    dns.add([("_dmarc.orgpolicy.example", "TXT",
              "v=DMARC1; p=reject; sp=quarantine; pct=0")])
    result = run(authenticator(dns), message("Jane <jane@eu.orgpolicy.example>"),
                 from_domain="eu.orgpolicy.example")
    assert result.dmarc["record_domain"] == "orgpolicy.example"
    assert result.dmarc["policy"] == "quarantine"
    assert result.dmarc["disposition"] == "none"  # pct=0: sampled out, the next weaker policy
    assert result.verdict == "fail"


def test_dmarc_record_parsing() -> None:
    assert parse_record("v=DMARC1; p=reject; sp=none; pct=20; adkim=s; aspf=s", "x.example") \
        .__dict__ == {"domain": "x.example", "p": "reject", "sp": "none", "pct": 20,
                      "adkim": "s", "aspf": "s"}
    assert parse_record("v=spf1 -all", "x.example") is None
    assert parse_record("v=DMARC1; p=bogus", "x.example") is None
    bad_p = parse_record("v=DMARC1; p=bogus; rua=mailto:a@x.example", "x.example")
    assert bad_p is not None and bad_p.p == "none"
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organizational_domain("mail.example.net") == "example.net"


# --- forwarding: ARC and configured forwarders ------------------------------------------------


FIRST_HOP = (
    "Authentication-Results: mx.google.com;\r\n"
    "       dkim=pass header.i=@customer.example header.s=s1 header.b=abcdefgh;\r\n"
    "       spf=pass (google.com: domain of jane@customer.example designates 192.0.2.44 as"
    " permitted sender) smtp.mailfrom=jane@customer.example;\r\n"
    "       dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=customer.example\r\n"
)


def forwarded_through(sealer: str, key: Key, original_key: Key) -> bytes:
    """jane@customer.example → the company's mailbox at `sealer`, which records what it saw,
    adds a footer (the original DKIM signature breaks) and seals the result with ARC."""
    original = sign(message("Jane <jane@customer.example>"), original_key, "customer.example")
    changed = original.replace(b"Please help.\r\n", b"Please help.\r\n-- \r\nforwarded\r\n")
    srv_id = b"mx.google.com"
    with_results = FIRST_HOP.encode() + changed
    seal = dkim.arc_sign(with_results, b"arc", sealer.encode(), key.pem, srv_id,
                         include_headers=SIGNED)
    return b"".join(seal) + with_results


@pytest.fixture(scope="module")
def arc_zone(dns: DnsTestServer, keys: tuple[Key, Key, Key]) -> None:
    publish_key(dns, keys[0], "customer.example")
    publish_key(dns, keys[1], "google.com", "arc")
    publish_key(dns, keys[1], "forwarder.example", "arc")
    dns.add([
        ("_dmarc.customer.example", "TXT", "v=DMARC1; p=reject"),
        ("customer.example", "TXT", "v=spf1 ip4:192.0.2.44 -all"),
        ("company.example", "TXT", "v=spf1 ip4:203.0.113.0/24 -all"),
    ])


@pytest.mark.usefixtures("arc_zone")
def test_forward_with_arc_from_a_trusted_sealer(dns: DnsTestServer,
                                                keys: tuple[Key, Key, Key]) -> None:
    raw = forwarded_through("google.com", keys[1], keys[0])
    result = run(authenticator(dns), raw, "203.0.113.5", "mail-sor-f41.google.com",
                 "support+caf_=help=help.example@company.example", "customer.example")
    assert result.dkim[0]["result"] == "fail"  # the footer broke it
    assert result.dmarc["result"] == "fail"  # the message alone would fail DMARC p=reject
    assert result.arc["cv"] == "pass"
    assert result.arc["sealers"] == ["google.com"]
    assert result.arc["trusted_sealer"] == "google.com"
    assert result.arc["first_hop"]["dmarc_result"] == "pass"
    assert ("customer.example", "pass") in [tuple(x) for x in result.arc["first_hop"]["dkim"]]
    assert result.verdict == "pass", result.reason
    assert result.reason.endswith("via trusted ARC sealer google.com")
    assert methods(result)["arc"] == "pass"


@pytest.mark.usefixtures("arc_zone")
def test_the_same_chain_from_an_untrusted_sealer(dns: DnsTestServer,
                                                 keys: tuple[Key, Key, Key]) -> None:
    raw = forwarded_through("forwarder.example", keys[1], keys[0])
    result = run(authenticator(dns), raw, "203.0.113.5", "mx.forwarder.example",
                 "support@forwarder.example", "customer.example")
    assert result.arc["cv"] == "pass" and result.arc["sealers"] == ["forwarder.example"]
    assert result.arc["trusted_sealer"] == "" and result.arc["trusted_hop"] == {}
    assert result.arc["first_hop"]["dmarc_result"] == "pass"  # recorded, and not believed
    assert result.verdict == "fail"  # judged on the message itself: DMARC p=reject fails
    assert "via trusted ARC sealer" not in result.reason


@pytest.mark.usefixtures("arc_zone")
def test_a_broken_chain_from_a_trusted_sealer_is_not_trusted(dns: DnsTestServer,
                                                            keys: tuple[Key, Key, Key]) -> None:
    raw = forwarded_through("google.com", keys[1], keys[0]).replace(b"forwarded", b"tampered")
    result = run(authenticator(dns), raw, "203.0.113.5", "", "x@company.example",
                 "customer.example")
    assert result.arc["cv"] == "fail"
    assert result.verdict == "fail"


@pytest.mark.usefixtures("arc_zone")
def test_an_untrusted_first_hop_is_not_believed_through_a_trusted_one(
        dns: DnsTestServer, keys: tuple[Key, Key, Key]) -> None:
    """A list (untrusted) claims DMARC passed and seals i=1; Gmail, which saw the list's
    rewrite fail, seals i=2: what Gmail recorded stands, not what the list claimed."""
    original = sign(message("Jane <jane@customer.example>"), keys[0], "customer.example")
    rewritten = original.replace(b"Please help.", b"Please help. [list footer]")
    lied = (b"Authentication-Results: mx.lists.example; dkim=pass header.d=customer.example;"
            b" dmarc=pass header.from=customer.example\r\n") + rewritten
    hop1 = b"".join(dkim.arc_sign(lied, b"arc", b"forwarder.example", keys[1].pem,
                                  b"mx.lists.example", include_headers=SIGNED)) + lied
    seen = (b"Authentication-Results: mx.google.com; dkim=fail header.d=customer.example;"
            b" arc=pass; dmarc=fail header.from=customer.example\r\n") + hop1
    hop2 = b"".join(dkim.arc_sign(seen, b"arc", b"google.com", keys[1].pem, b"mx.google.com",
                                  include_headers=SIGNED)) + seen
    result = run(authenticator(dns), hop2, "203.0.113.5", "", "x@company.example",
                 "customer.example")
    assert result.arc["cv"] == "pass"
    assert result.arc["sealers"] == ["google.com", "forwarder.example"]
    assert result.arc["first_hop"]["authserv_id"] == "mx.lists.example"
    assert result.arc["trusted_hop"]["authserv_id"] == "mx.google.com"
    assert result.verdict == "fail"
    assert result.reason.endswith("via trusted ARC sealer google.com")


def test_configured_forwarder_is_judged_by_dkim_alone(dns: DnsTestServer) -> None:
    dns.add([("fwd-customer.example", "TXT", "v=spf1 ip4:192.0.2.10 -all"),
             ("_dmarc.fwd-customer.example", "TXT", "v=DMARC1; p=none")])
    raw = message("Jane <jane@fwd-customer.example>",
                  extra="X-Forwarded-For: support@company.example help@help.example\r\n")
    args = ("192.0.2.10", "", "jane@fwd-customer.example", "fwd-customer.example")
    assert run(authenticator(dns), raw, *args).verdict == "pass"  # aligned SPF pass counts
    result = run(authenticator(dns, forwarders=("Support@Company.example",)), raw, *args)
    assert result.dmarc["forwarder"] == "Support@Company.example"
    assert result.verdict == "fail"  # SPF ignored for forwarded mail: no DKIM, DMARC fails
    assert "judged by DKIM alone" in result.reason


# --- our own domains, forged results, robustness ----------------------------------------------


def test_our_own_domain_without_our_signature_is_forged(dns: DnsTestServer,
                                                        keys: tuple[Key, Key, Key]) -> None:
    publish_key(dns, keys[2], "help.example")
    dns.add([("help.example", "TXT", "v=spf1 ip4:192.0.2.10 -all")])
    auth_args = {"our_domains": ("help.example",)}
    forged = run(authenticator(dns, **auth_args), message("Alice <alice@help.example>"),
                 "192.0.2.10", "", "alice@help.example", "help.example")
    assert forged.verdict == "fail"
    assert forged.reason == "forged: our own domain without our DKIM signature"
    signed = sign(message("Alice <alice@help.example>"), keys[2], "help.example")
    genuine = run(authenticator(dns, **auth_args), signed, from_domain="help.example")
    assert genuine.verdict == "pass", genuine.reason


def test_strip_forged_results_keeps_every_other_byte() -> None:
    ours = (b"Authentication-Results: MX.Help.Example.;\r\n\tdkim=pass header.d=bank.example;"
            b"\r\n\tdmarc=pass header.from=bank.example\r\n")
    commented = b"authentication-results: (looks legit) mx.help.example; spf=pass\r\n"
    theirs = b"Authentication-Results: mx.google.com; dkim=pass header.i=@example.org\r\n"
    rest = b"From: a@example.org\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.help.example\r\n"
    raw = ours + theirs + commented + rest
    assert strip_forged_results(raw, "mx.help.example") == theirs + rest
    untouched = theirs + rest
    assert strip_forged_results(untouched, "mx.help.example") is untouched
    lf = raw.replace(b"\r\n", b"\n")
    assert strip_forged_results(lf, AUTHSERV_ID) == (theirs + rest).replace(b"\r\n", b"\n")


def test_header_fields_spans() -> None:
    raw = b"A: 1\r\nB: two\r\n  folded\r\nC:3\r\n\r\nbody: no"
    fields = header_fields(raw)
    assert [(f.name, f.value) for f in fields] == [("A", "1"), ("B", "two  folded"), ("C", "3")]
    assert b"".join(raw[f.start:f.end] for f in fields) == raw[:raw.index(b"\r\n\r\n") + 2]


def test_result_is_prependable(dns: DnsTestServer, keys: tuple[Key, Key, Key]) -> None:
    publish_key(dns, keys[0], "prepend.example")
    raw = sign(message("Jane <jane@prepend.example>"), keys[0], "prepend.example")
    result = run(authenticator(dns), raw, from_domain="prepend.example")
    stored = result.header_bytes() + strip_forged_results(raw, AUTHSERV_ID)
    assert stored.startswith(b"Authentication-Results: mx.help.example;\r\n\tdkim=pass")
    assert all(len(line) < 998 for line in stored.split(b"\r\n"))
    assert dkim.verify(stored, dnsfunc=lambda name, timeout=5: keys[0].txt.encode())
    as_dict = result.as_dict()
    assert as_dict["verdict"] == "pass" and as_dict["dkim"][0]["d"] == "prepend.example"


@pytest.mark.parametrize("raw", [
    b"", b"\x00\xff garbage without headers", b"From: \xff\xfe@\r\n\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=; s=; b=; bh=; h=from\r\nFrom: a@b.example\r\n\r\nx",
    b"ARC-Seal: i=99; cv=none; d=google.com; s=x; b=\r\nFrom: a@b.example\r\n\r\nx",
])
def test_hostile_input_never_raises(dns: DnsTestServer, raw: bytes) -> None:
    result = run(authenticator(dns), raw, "not an address", "[1.2.3.4]", "<>", "b.example")
    assert result.verdict in ("none", "fail")


def test_answers_are_cached(dns: DnsTestServer, keys: tuple[Key, Key, Key]) -> None:
    publish_key(dns, keys[0], "cached.example")
    dns.add([("_dmarc.cached.example", "TXT", "v=DMARC1; p=reject")])
    raw = sign(message("Jane <jane@cached.example>"), keys[0], "cached.example")
    auth = authenticator(dns)
    for _ in range(3):
        result = auth.authenticate_sync(raw, "192.0.2.10", "", "jane@cached.example",
                                        "cached.example")
        assert result.verdict == "pass"
    auth.close()
    assert dns.queries("s1._domainkey.cached.example") == 1
    assert dns.queries("_dmarc.cached.example") == 1


def test_authenticate_does_not_block_the_event_loop(dns: DnsTestServer,
                                                    keys: tuple[Key, Key, Key]) -> None:
    dns.silence("stall.example", "_dmarc.stall.example", "s1._domainkey.stall.example")
    raw = sign(message("Jane <jane@stall.example>"), keys[0], "stall.example")
    auth = authenticator(dns, dns_timeout=1.0)

    async def scenario() -> tuple[AuthResult, int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                await asyncio.sleep(0.02)
                ticks += 1

        task = asyncio.create_task(ticker())
        result = await auth.authenticate(raw, "192.0.2.10", "", "jane@stall.example",
                                         "stall.example")
        done.set()
        await task
        return result, ticks

    result, ticks = asyncio.run(scenario())
    auth.close()
    assert result.verdict == "none" and result.temperror
    assert ticks >= 20, ticks  # ~1 s of waiting at 20 ms a tick: the loop kept running


def test_authenticate_sync_from_worker_threads(dns: DnsTestServer,
                                               keys: tuple[Key, Key, Key]) -> None:
    publish_key(dns, keys[0], "threads.example")
    raw = sign(message("Jane <jane@threads.example>"), keys[0], "threads.example")
    auth = authenticator(dns)
    verdicts: list[str] = []

    def worker() -> None:
        for _ in range(3):
            verdicts.append(auth.authenticate_sync(raw, "192.0.2.10", "", "",
                                                   "threads.example").verdict)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    auth.close()
    assert verdicts == ["pass"] * 9


# --- dkimpy speed-ups: the same answers as dkimpy's own functions ------------------------------


def test_fast_canonicalization_matches_dkimpy() -> None:
    rng = random.Random(8601)
    fast, original = dkim_speedups.FAST, dkim_speedups.ORIGINALS

    def text() -> bytes:
        return bytes(rng.choice(b" \t\r\nab") for _ in range(rng.randrange(0, 40)))

    for _ in range(20000):
        value = text()
        for name in ("strip_trailing_whitespace", "compress_whitespace", "unfold_header_value",
                     "relaxed_body"):
            assert fast[name](value) == original[name](value), (name, value)
        headers = [[b"X-" + text().replace(b":", b""), text()] for _ in range(rng.randrange(4))]
        assert fast["relaxed_headers"](headers) == original["relaxed_headers"](headers)
        if headers:  # the memory of the last answer never outlives a change
            headers[-1] = [headers[-1][0], headers[-1][1] + b"  x"]
            assert fast["relaxed_headers"](headers) == original["relaxed_headers"](headers)
    if dkim_speedups.installed_dkimpy() in dkim_speedups.PROVEN_DKIMPY:
        assert dkim.canonicalization.compress_whitespace is dkim_speedups.compress_whitespace
        assert dkim.canonicalization.Relaxed.canonicalize_body is dkim_speedups.relaxed_body


def test_speedups_only_on_a_proven_dkimpy_release(caplog: pytest.LogCaptureFixture,
                                                   keys: tuple[Key, Key, Key]) -> None:
    """Another dkimpy release keeps its own functions (and says so once); a proven one gets
    the replacements; signatures verify either way."""
    signed = sign(message(body="a  b \t\r\n\r\n"), keys[0], "example.org")

    def _verifies(raw: bytes) -> bool:
        return bool(dkim.verify(raw, dnsfunc=lambda name, timeout=5: keys[0].txt.encode()))

    assert _verifies(signed)
    try:
        with caplog.at_level(logging.WARNING, logger="mailgate.auth"):
            assert dkim_speedups.install("0.0.1-test") is False
            assert dkim_speedups.install("0.0.1-test") is False
        assert dkim.canonicalization.compress_whitespace is \
            dkim_speedups.ORIGINALS["compress_whitespace"]
        assert dkim.RSASSA_PKCS1_v1_5_verify is \
            dkim_speedups.ORIGINALS["RSASSA_PKCS1_v1_5_verify"]
        warnings = [r.getMessage() for r in caplog.records if "dkimpy 0.0.1-test" in
                    r.getMessage()]
        assert len(warnings) == 1 and "using dkimpy's own functions" in warnings[0]
        assert _verifies(signed)
        assert dkim_speedups.install(dkim_speedups.PROVEN_DKIMPY[-1]) is True
        assert dkim.canonicalization.compress_whitespace is dkim_speedups.compress_whitespace
        assert dkim.RSASSA_PKCS1_v1_5_verify is dkim_speedups.rsassa_pkcs1_v1_5_verify
        assert _verifies(signed)
    finally:
        dkim_speedups.install()


def test_fast_rsa_verify_matches_dkimpy() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    numbers = key.public_key().public_numbers()
    public = {"modulus": numbers.n, "publicExponent": numbers.e}
    original = dkim_speedups.ORIGINALS["RSASSA_PKCS1_v1_5_verify"]
    rng = random.Random(6376)
    leading_zero = False
    for i in range(6000):  # a random key: about one signature in 256 starts with a zero byte
        if leading_zero and i > 40:
            break
        data = f"message {i}".encode()
        algorithm = hashes.SHA1() if i % 5 == 0 else hashes.SHA256()
        signature = key.sign(data, padding.PKCS1v15(), algorithm)
        digest = dkim.HashThrough(hashlib.new(algorithm.name, data))
        if signature[0] == 0:  # a signer may drop the leading zero: dkimpy's integers accept it
            leading_zero = True
            signature = signature[1:]
        elif i > 40:
            continue
        forged = bytes(rng.randrange(256) for _ in range(len(signature)))
        for candidate, expected in ((signature, True), (forged, False),
                                    (signature[:-1], False), (signature + b"\0", False)):
            assert original(digest, candidate, public) is expected
            assert dkim_speedups.rsassa_pkcs1_v1_5_verify(digest, candidate, public) is expected
    assert leading_zero
