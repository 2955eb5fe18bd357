"""Authentication benchmark: the authenticate stage with a warm DNS cache vs. the pipeline's
per-message CPU work without it.

Usage: python bench/auth.py [--messages N] [--rounds R] [--arc-every K]
       python bench/auth.py --dead-domain [--messages N] [--dead K] [--rounds R]

Input:  command-line options; the `customer` messages of ../shared/corpus/ (labels.tsv), with
        CRLF line ends as SMTP delivers them. Each is DKIM-signed here (RSA 2048, d= its From
        domain) with a key published on a local dnslib server (tests/dns_server.py) together
        with an SPF record (with one `include:`) and a DMARC record for that domain; every K-th
        message is also forwarded "through Gmail": the forwarder records its results, adds a
        footer (breaking the DKIM signature) and seals the message with ARC (d=google.com).
Output: per-round rates and their medians on stdout: messages per second of (a) the pipeline's
        CPU work without the stage — `mailgate.parsing.parse.parse` + `mailgate.classify.classify` +
        `mailgate.parsing.replytext.reply_text` on the same messages — (b) `authenticate_sync` one
        message after another, as the pipeline's worker thread would call it, and (c)
        `authenticate` with 16 messages in flight on one event loop; then the stage's time per
        message as a share of the pipeline's, and the pipeline's rate with the stage as a share
        of its rate without (the goal: at least 70 %). Exit status 0, or 1 when a verdict is not
        the expected one (every message must pass), 2 on bad usage.
Trust:  developer tool for a trusted local machine; all DNS stays on 127.0.0.1.

--dead-domain: one domain whose DNS never answers, against a running daemon. Each round starts
two daemons in turn (config and data in a temporary directory, `[auth]` on a loopback dnslib
server, `dns_timeout = 5`) and sends N messages from healthy domains over SMTP — the second
daemon gets K messages from `dead.test` (whose names the server never answers) first. It times
from the first connection to the moment the last healthy message is committed (its audit row)
and prints both end-to-end rates of the healthy mail and their ratio (the goal: at least 0.8:
a dead domain delays only its own mail).

Method. Untimed set-up: sign, publish, and one full pass of the stage to warm its DNS cache
(the DNS server's query counter must then stay unchanged through the timed passes, which is
checked and reported). Each round then times (a), (b) and (c) over all messages, in that order;
medians over the rounds are reported. The ratio is printed, never enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import time
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailgate.auth import Authenticator, AuthSettings  # noqa: E402
from mailgate.classify import classify  # noqa: E402
from mailgate.parsing.parse import parse  # noqa: E402
from mailgate.parsing.replytext import reply_text  # noqa: E402
from tests.dns_server import DnsTestServer  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
CLIENT_IP = "198.51.100.20"  # inside the SPF include: two lookups, a pass
GMAIL_IP = "203.0.113.5"
FORWARDER = "support+caf_=help=help.example@company.example"
IN_FLIGHT = 16


def make_key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def corpus_messages() -> list[bytes]:
    found = []
    for line in (CORPUS / "labels.tsv").read_text().splitlines():
        path, _, label = line.partition("\t")
        if label.strip() == "customer" and (CORPUS / path).is_file():
            raw = (CORPUS / path).read_bytes()
            found.append(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    return found


Case = tuple[bytes, str, str, str]  # raw, client ip, envelope sender, From domain


def prepare(limit: int, arc_every: int, dns: DnsTestServer) -> list[Case]:
    pem, txt = make_key()
    arc_pem, arc_txt = make_key()
    dns.add([("arc._domainkey.google.com", "TXT", arc_txt),
             ("_spf.bench-esp.example", "TXT", "v=spf1 ip4:198.51.100.0/24 -all"),
             ("company.example", "TXT", "v=spf1 ip4:203.0.113.0/24 -all")])
    published: set[str] = set()
    cases: list[Case] = []
    for raw in corpus_messages():
        if len(cases) >= limit:
            break
        sender = parse(raw).from_.email
        domain = sender.rpartition("@")[2]
        if not sender or not domain.isascii() or "." not in domain:
            continue
        try:
            signed = dkim.sign(raw, b"bench", domain.encode(), pem,
                               canonicalize=(b"relaxed", b"relaxed")) + raw
        except Exception:  # dkimpy refuses some malformed corpus mail: leave it out
            continue
        if domain not in published:
            published.add(domain)
            dns.add([(f"bench._domainkey.{domain}", "TXT", txt),
                     (domain, "TXT", "v=spf1 ip4:192.0.2.0/24 include:_spf.bench-esp.example"
                                     " ~all"),
                     (f"_dmarc.{domain}", "TXT", "v=DMARC1; p=quarantine")])
        if arc_every and len(cases) % arc_every == arc_every - 1:
            seen = (f"Authentication-Results: mx.google.com; dkim=pass header.i=@{domain};"
                    f" spf=pass smtp.mailfrom={sender}; dmarc=pass header.from={domain}\r\n")
            head, sep, body = signed.partition(b"\r\n\r\n")
            forwarded = seen.encode() + head + sep + body + b"\r\n-- \r\nforwarded\r\n"
            try:
                seal = dkim.arc_sign(forwarded, b"arc", b"google.com", arc_pem,
                                     b"mx.google.com")
            except Exception:
                continue
            cases.append((b"".join(seal) + forwarded, GMAIL_IP, FORWARDER, domain))
        else:
            cases.append((signed, CLIENT_IP, sender, domain))
    return cases


def time_pipeline(cases: list[Case]) -> float:
    start = time.perf_counter()
    for raw, _ip, sender, _domain in cases:
        parsed = parse(raw)
        classify(parsed, raw, sender)
        reply_text(parsed.text, parsed.html)
    return time.perf_counter() - start


def time_sync(auth: Authenticator, cases: list[Case]) -> tuple[float, list[str]]:
    verdicts = []
    start = time.perf_counter()
    for raw, ip, sender, domain in cases:
        verdicts.append(auth.authenticate_sync(raw, ip, "mail.example", sender, domain).verdict)
    return time.perf_counter() - start, verdicts


async def _in_flight(auth: Authenticator, cases: list[Case]) -> list[str]:
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(case: Case) -> str:
        raw, ip, sender, domain = case
        async with gate:
            return (await auth.authenticate(raw, ip, "mail.example", sender, domain)).verdict

    return list(await asyncio.gather(*(one(c) for c in cases)))


def time_async(auth: Authenticator, cases: list[Case]) -> tuple[float, list[str]]:
    start = time.perf_counter()
    verdicts = asyncio.run(_in_flight(auth, cases))
    return time.perf_counter() - start, verdicts


def _healthy_mail(i: int) -> tuple[str, bytes]:
    sender = f"c{i}@client{i % 7}.test"
    return sender, (f"From: <{sender}>\r\nTo: support@help.example\r\nSubject: healthy {i}\r\n"
                    f"Message-ID: <healthy-{i}@bench.test>\r\n\r\nHello {i}.\r\n").encode()


def _dead_mail(i: int) -> tuple[str, bytes]:
    sender = f"x{i}@dead.test"
    return sender, (f"From: <{sender}>\r\nTo: support@help.example\r\nSubject: dead {i}\r\n"
                    f"Message-ID: <dead-{i}@dead.test>\r\n\r\nHello.\r\n").encode()


def _committed(db: Path, queue_ids: set[str]) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT queue_id FROM audit_incoming").fetchall()
    finally:
        conn.close()
    return sum(1 for (q,) in rows if q in queue_ids)


def _stall_round(workdir: Path, dns: DnsTestServer, healthy: int, dead: int) -> float:
    """End-to-end messages/s of the healthy mail, with `dead` messages from dead.test first."""
    import smtplib
    import subprocess

    from benchlib import HOST, free_port, log_tail

    port = free_port()
    data = workdir / "data"
    config = workdir / "mailgate.toml"
    config.write_text(f"""[server]
listen = "{HOST}:{port}"
hostname = "mx.help.example"
min_free_bytes = 0
[storage]
data_dir = "{data}"
[mail]
domains = ["help.example"]
mailboxes = ["support@help.example"]
[relay]
host = "127.0.0.1"
port = 1
[templates.new_ticket_ack]
enabled = false
[auth]
nameservers = ["{dns.address}"]
dns_timeout = 5
""")
    log = (workdir / "daemon.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "mailgate", "--config", str(config), "serve"],
                            stdout=log, stderr=log, cwd=workdir)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                smtplib.SMTP(HOST, port, timeout=2).quit()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(log_tail(workdir / "daemon.log")) from None
                time.sleep(0.1)
        mails = [_dead_mail(i) for i in range(dead)] + [_healthy_mail(i) for i in range(healthy)]
        wanted: set[str] = set()
        start = time.monotonic()
        with smtplib.SMTP(HOST, port, timeout=60) as smtp:
            smtp.ehlo("bench.test")
            for sender, raw in mails:
                smtp.mail(sender)
                smtp.rcpt("support@help.example")
                _, reply = smtp.data(raw)
                if "@client" in sender:
                    wanted.add(reply.decode().rsplit(" ", 1)[-1])
        while _committed(data / "mailgate.db", wanted) < len(wanted):
            if time.monotonic() - start > 300:
                raise RuntimeError("healthy mail not committed within 300 s")
            time.sleep(0.02)
        return healthy / (time.monotonic() - start)
    finally:
        proc.terminate()
        proc.wait(30)


def dead_domain(healthy: int, dead: int, rounds: int) -> int:
    import tempfile

    sys.path.insert(0, str(ROOT / "bench"))
    without, with_dead = [], []
    with DnsTestServer(silent=["dead.test", "_dmarc.dead.test"]) as dns:
        for r in range(rounds):
            with tempfile.TemporaryDirectory(prefix="mailgate-bench-dns-") as a, \
                    tempfile.TemporaryDirectory(prefix="mailgate-bench-dns-") as b:
                without.append(_stall_round(Path(a), dns, healthy, 0))
                with_dead.append(_stall_round(Path(b), dns, healthy, dead))
            print(f"round {r + 1}: healthy mail {without[-1]:7.1f}/s alone,"
                  f" {with_dead[-1]:7.1f}/s behind {dead} messages from a dead domain")
    ratio = statistics.median(with_dead) / statistics.median(without)
    print(f"\nmedian healthy rate alone            {statistics.median(without):8.1f} messages/s")
    print(f"median healthy rate with dead.test   {statistics.median(with_dead):8.1f} messages/s")
    print(f"ratio: {ratio:.2f}  (goal: >= 0.80)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--arc-every", type=int, default=3,
                        help="every K-th message is an ARC-sealed Gmail forward (0: none)")
    parser.add_argument("--dead-domain", action="store_true",
                        help="measure healthy mail behind a domain whose DNS never answers")
    parser.add_argument("--dead", type=int, default=6,
                        help="messages from the dead domain (with --dead-domain)")
    args = parser.parse_args()
    if args.messages < 1 or args.rounds < 1 or args.arc_every < 0 or args.dead < 0:
        parser.error("--messages and --rounds must be positive, --arc-every and --dead not"
                     " negative")
    if args.dead_domain:
        return dead_domain(args.messages, args.dead, args.rounds)

    with DnsTestServer() as dns:
        cases = prepare(args.messages, args.arc_every, dns)
        n = len(cases)
        forwards = sum(1 for c in cases if c[1] == GMAIL_IP)
        print(f"{n} corpus messages, DKIM-signed (RSA 2048); {forwards} of them ARC-sealed"
              " Gmail forwards")
        auth = Authenticator(AuthSettings("mx.help.example", nameservers=(dns.address,)))
        _t, verdicts = time_sync(auth, cases)  # warm the cache
        warm_queries = sum(dns.resolver.queries.values())
        bad = [v for v in verdicts if v != "pass"]
        pipeline, sync, concurrent = [], [], []
        for r in range(args.rounds):
            p = time_pipeline(cases)
            s, v1 = time_sync(auth, cases)
            c, v2 = time_async(auth, cases)
            bad += [v for v in v1 + v2 if v != "pass"]
            pipeline.append(n / p)
            sync.append(n / s)
            concurrent.append(n / c)
            print(f"round {r + 1}: pipeline {n / p:7.1f}/s   auth (sync) {n / s:7.1f}/s"
                  f"   auth ({IN_FLIGHT} in flight) {n / c:7.1f}/s")
        extra_queries = sum(dns.resolver.queries.values()) - warm_queries
        auth.close()

    base = statistics.median(pipeline)
    stage = statistics.median(sync)
    share = base / stage  # the stage's time per message / the pipeline's
    print(f"\nmedian pipeline without the stage   {base:8.1f} messages/s")
    print(f"median authenticate_sync             {stage:8.1f} messages/s")
    print(f"median authenticate, {IN_FLIGHT} in flight   {statistics.median(concurrent):8.1f}"
          " messages/s")
    print(f"DNS queries during the timed passes: {extra_queries} (warm cache: expect 0)")
    print(f"stage time / pipeline time per message: {share:.2f}")
    print(f"pipeline rate with the stage / without: {1 / (1 + share):.2f}"
          "  (goal: >= 0.70, i.e. the stage costs at most 30 % of the rate)")
    if bad:
        print(f"FAIL: {len(bad)} verdicts were not 'pass': {sorted(set(bad))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
