"""Ticket page benchmark: how long does the admin panel take to render a long conversation?

Usage: python bench/ticket_page.py [--messages 200] [--requests 60]

Input:  command-line options only. It writes a mailgate config in a temporary directory, fills
        a real database through the store's own functions with two tickets (one of 1 message,
        one of --messages messages alternating customer and agent, each about 1.5 KB of text
        with a quoted history, every tenth with an attachment row), starts `mailgate serve` with
        the admin endpoint on loopback, and fetches both ticket pages with the admin token.
Output: on stdout, the median and p95 time of `GET /tickets/<id>` (the whole HTTP request to a
        running daemon: database reads, reply-text folding, sanitised HTML, the template) for
        the long ticket and, as the baseline in the same run, for the one-message ticket, their
        ratio, and the page size. Exit status 0 when every page came back 200 and the long one
        shows every message; 1 otherwise.
Trust:  developer tool; it talks to 127.0.0.1 only and removes its directory at the end.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchlib import (
    BenchError,
    free_port,
    log_tail,
    run_in_workdir,
    write_mailgate_config,
)

from mailgate.model import Address, ParsedMail
from mailgate.store import tickets
from mailgate.store.db import open_db, transaction

BODY = ("Thanks for getting back to me. The printer on the third floor still jams whenever"
        " someone prints double-sided, and the tray shows an error code E-42. ") * 8


def _parsed(i: int, sender: str) -> ParsedMail:
    quoted = "\n".join(f"> {line}" for line in BODY.split(". ")[:6])
    return ParsedMail(
        message_id=f"m{i}@bench.test", in_reply_to=(), references=(),
        from_=Address(sender, "Customer" if "customer" in sender else "Agent"), to=(), cc=(),
        reply_to=(), subject=f"Re: Printer jams ({i})", date="", html="", attachments=(),
        text=f"Message {i}. {BODY}\n\nOn Monday someone wrote:\n{quoted}\n-- \nSignature {i}",
        headers={})


def fill(db_path: Path, messages: int) -> tuple[int, int]:
    db = open_db(db_path)
    now = "2026-01-01T00:00:00Z"
    with transaction(db) as conn:
        cid = tickets.get_or_create_customer(conn, Address("customer@bench.test"), now)
        short = tickets.create_ticket(conn, "One message", cid, now)
        tickets.add_incoming_message(conn, short, "Q0", _parsed(0, "customer@bench.test"), "",
                                     "new", now)
        long = tickets.create_ticket(conn, "Printer jams", cid, now)
        for i in range(messages):
            sender = "customer@bench.test" if i % 2 == 0 else "agent@bench.test"
            row = tickets.add_incoming_message(
                conn, long, f"Q{i + 1}", _parsed(i + 1, sender), "", "new", now,
                direction="in" if i % 2 == 0 else "out")
            if i % 10 == 0:
                conn.execute("INSERT INTO attachments (message_row, filename, content_type,"
                             " size, sha256, inline) VALUES (?, ?, ?, ?, ?, 0)",
                             (row, f"photo{i}.jpg", "image/jpeg", 123456, "0" * 64))
    db.conn.close()
    return short, long


def fetch(url: str, token: str) -> tuple[float, int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as resp:
        body = resp.read()
        status = resp.status
    return time.perf_counter() - start, status, body


def bench(workdir: Path, args: argparse.Namespace) -> None:
    port, admin_port = free_port(), free_port()
    cfg = write_mailgate_config(workdir, port, "bench.test", "support@bench.test",
                                extra=f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n')
    short, long = fill(workdir / "data" / "mailgate.db", args.messages)
    log = (workdir / "daemon.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "mailgate", "--config", str(cfg), "serve"],
                            stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{admin_port}"
        deadline = time.monotonic() + 30
        token_file = workdir / "data" / "admin.token"
        while True:
            try:
                urllib.request.urlopen(base + "/api/health", timeout=2).read()
                if token_file.exists():
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise BenchError("the daemon did not start:\n"
                                 + log_tail(workdir / "daemon.log"))
            time.sleep(0.1)
        token = token_file.read_text().strip()
        times: dict[int, list[float]] = {short: [], long: []}
        sizes: dict[int, int] = {}
        for _ in range(3):  # warm-up: templates compiled, pages cached by the OS
            for ticket in times:
                fetch(f"{base}/tickets/{ticket}", token)
        for _ in range(args.requests):  # take turns: noise falls on both alike
            for ticket in times:
                took, status, body = fetch(f"{base}/tickets/{ticket}", token)
                if status != 200:
                    raise BenchError(f"GET /tickets/{ticket}: {status}")
                times[ticket].append(took)
                sizes[ticket] = len(body)
        _, _, page = fetch(f"{base}/tickets/{long}", token)
        shown = page.count(b"Message ")
        if shown < args.messages:
            raise BenchError(f"the long ticket shows {shown} of {args.messages} messages")
        med = {t: statistics.median(v) for t, v in times.items()}
        p95 = {t: statistics.quantiles(v, n=20)[-1] for t, v in times.items()}
        print(f"GET /tickets/<id> on a running daemon, {args.requests} requests each, in turns")
        print(f"  1 message:   median {med[short] * 1000:7.1f} ms  p95 {p95[short] * 1000:7.1f}"
              f" ms  {sizes[short] / 1024:7.0f} KB")
        print(f"  {args.messages} messages: median {med[long] * 1000:7.1f} ms  p95"
              f" {p95[long] * 1000:7.1f} ms  {sizes[long] / 1024:7.0f} KB")
        print(f"  ratio (long / one message): {med[long] / med[short]:.1f}x")
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--requests", type=int, default=60)
    args = ap.parse_args()
    return run_in_workdir("ticket-page-", lambda workdir: bench(workdir, args))


if __name__ == "__main__":
    sys.exit(main())
