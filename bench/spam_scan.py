"""Spam scan benchmark: how long one rspamd scan takes per message, asked as mailgate's SMTP
stage asks it (`mailgate.smtp.spamscan.Scanner`, rspamd's HTTP /checkv2).

Usage: python bench/spam_scan.py [--messages 200] [--ip 198.51.100.7] [--warmup 10]

Input:  command-line options only. Needs Debian's rspamd (`apt-get install rspamd`), started
        here with the tests' configuration (tests/rspamd_server.py: its own directory, the
        normal worker on a free 127.0.0.1 port, DNS answered by a loopback server with no
        records, no hyperscan), and the corpus's customer mail (../shared/corpus, class
        `customer` in labels.tsv), sent as an MTA sends it (CRLF).
Output: the median, 90th percentile, mean and maximum time per scan over `--messages` scans
        (the customer mails in turn), the same for a plain HTTP round trip to rspamd in the same
        run (the baseline: what the protocol alone costs), their ratio, and the verdicts.
        Exit status 0, or 1 when rspamd cannot start or a scan fails.
Trust:  developer tool for a trusted local machine; traffic to 127.0.0.1 only.

`--ip` is the client address rspamd is told: a documentation address by default, so that the
checks that depend on it (reverse DNS, SPF, DMARC, host-name filters) run as for mail from the
internet — against the loopback DNS server, which answers at once. With a real resolver and
RBLs the network's answer time adds to these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import loopback_dns  # bench/loopback_dns.py: a DNS server on loopback with no records

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
sys.path.insert(0, str(ROOT / "tests"))

from rspamd_server import RspamdServer, available  # noqa: E402

from mailgate.config import Spam  # noqa: E402
from mailgate.model import Envelope  # noqa: E402
from mailgate.smtp.spamscan import Scanner  # noqa: E402


def customer_mails() -> list[bytes]:
    mails = []
    for line in (CORPUS / "labels.tsv").read_text().splitlines()[1:]:
        path, _, label = line.partition("\t")
        if label.strip() == "customer":
            raw = (CORPUS / path).read_bytes()
            mails.append(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    return mails


def summary(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return (f"{name:<14} median {statistics.median(times) * 1000:7.2f} ms   p90"
            f" {p90 * 1000:7.2f} ms   mean {statistics.fmean(times) * 1000:7.2f} ms   max"
            f" {max(times) * 1000:7.2f} ms")


async def measure(url: str, mails: list[bytes], count: int, warmup: int, ip: str
                  ) -> tuple[list[float], list[float], Counter[str]]:
    scanner = Scanner(Spam(rspamd=url, timeout=30), "bench.localhost")
    scans: list[float] = []
    pings: list[float] = []
    verdicts: Counter[str] = Counter()
    async with aiohttp.ClientSession() as http:
        try:
            for i in range(warmup + count):
                raw = mails[i % len(mails)]
                env = Envelope(f"BENCH{i:06d}", time.time(), ip, "mail.customer.example",
                               "someone@customer.example", ("support@example.com",), len(raw))
                start = time.perf_counter()
                async with http.get(f"{url}/ping") as resp:
                    await resp.read()
                ping = time.perf_counter() - start
                start = time.perf_counter()
                verdict = await scanner.scan(raw, env)
                took = time.perf_counter() - start
                if verdict.action in ("unscanned", "tempfail"):
                    raise RuntimeError(f"scan {i} failed: {verdict.reason}")
                if i >= warmup:
                    scans.append(took)
                    pings.append(ping)
                    verdicts[verdict.action] += 1
        finally:
            await scanner.close()
    return scans, pings, verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=200, help="scans measured (200)")
    parser.add_argument("--warmup", type=int, default=10, help="scans before measuring (10)")
    parser.add_argument("--ip", default="198.51.100.7", help="client address told to rspamd")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.warmup < 0:
        parser.error("--messages must be at least 1 and --warmup not negative")
    if not available():
        print("rspamd is not installed (apt-get install rspamd)", file=sys.stderr)
        return 1
    mails = customer_mails()
    with tempfile.TemporaryDirectory(prefix="mailgate-spam-bench-") as tmp:
        server = RspamdServer(Path(tmp), loopback_dns.start())
        try:
            server.start()
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            scans, pings, verdicts = asyncio.run(
                measure(server.url, mails, args.messages, args.warmup, args.ip))
        except RuntimeError as exc:
            print(f"error: {exc}\n{server.log()}", file=sys.stderr)
            return 1
        finally:
            server.stop()
    sizes = sorted(len(m) for m in mails)
    print(f"spam scan bench: {args.messages} scans of {len(mails)} corpus customer mails"
          f" (median {statistics.median(sizes) / 1024:.1f} KB), client address {args.ip},"
          f" one at a time")
    print(summary("rspamd scan", scans))
    print(summary("HTTP /ping", pings))
    print(f"ratio scan/ping (median) = {statistics.median(scans) / statistics.median(pings):.1f}")
    print(f"scans per second, one at a time: {len(scans) / sum(scans):.1f}")
    print("verdicts: " + ", ".join(f"{k}={v}" for k, v in sorted(verdicts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
