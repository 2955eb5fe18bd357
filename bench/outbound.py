"""Outbound benchmark: mailgate's relay queue vs. plain aiosmtplib, both to a discard relay.

Usage: python bench/outbound.py [--messages N] [--rounds R] [--drain-timeout SECS]

Input:  command-line options only; the mailgate package of this repository (imported, and run
        as `python -m mailgate`) and bench/bare_server.py as the discard relay.
Output: per-round figures and their medians on stdout: the baseline rate, mailgate's relay
        rate, their ratio, and the rate of `Desk.reply` calls (mails queued per second);
        diagnostics on stderr. Exit status 0 when every queued reply reached `sent`; 1 when a
        mail did not (failed, deferred, timeout), a server did not start, or a send failed;
        2 on bad usage; 128+signal when interrupted.
Trust:  developer tool for a trusted local machine. Every server is started here on a free
        127.0.0.1 port and all traffic stays on 127.0.0.1. Config, data and logs live in a
        fresh temporary directory, removed on success, kept (and printed) on failure.

Method. One discard relay (bench/bare_server.py, its own process) serves the whole run.
Setup, untimed: a mailgate daemon is started, N customer mails are sent to it over SMTP so
the pipeline creates N tickets (new-ticket acknowledgements are disabled, so each leaves one
`suppressed` outbox row), and the daemon is stopped. Then each round:

1. queueing: with the daemon stopped, `mailgate.ops.app.desk(cfg, db).reply(ticket, agent, body)`
   is called once per ticket — real templates, real compose, one transaction each. The calls
   are timed: mails queued per second.
2. baseline: the very bytes those replies rendered to (read back with
   `mailgate.store.outbound.get_raw`) are sent straight to the relay with `aiosmtplib.send`,
   by 4 concurrent workers, one message per connection, the same envelope mailgate uses.
3. mailgate: `python -m mailgate --config CFG serve` is started. The relay worker is created
   right after the SMTP listener, so the clock starts when the daemon answers SMTP (its
   start-up, measured in the same launch, is thus excluded and reported apart) and stops at the
   first poll where `mailgate stats --json` shows every reply `sent`. The poll runs every
   0.1 s; it invokes the real click command in this process (click's CliRunner), because a
   new Python process ten times a second would eat most of one of the two cores the daemon is
   being measured on. A second rate, from the first poll that saw any new `sent` to the last,
   is printed as a cross-check that does not depend on detecting the start. Then the daemon
   is stopped (SIGTERM) before the next round.

Baseline and mailgate alternate within each round; medians over the rounds are reported. The
ratio is reported, never enforced. DKIM signing is off (no `[dkim]` section), so neither side
signs; the daemon logs at its default INFO level, one line per mail sent, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
from benchlib import (  # bench/benchlib.py: what the server benchmarks share
    EXIT_OK,
    HOST,
    LOG_TAIL_LINES,
    MAILGATE_HOSTNAME,
    BenchError,
    free_port,
    log_tail,
    run_in_workdir,
    wait_for_smtp,
    write_mailgate_config,
)
from click.testing import CliRunner

from mailgate.cli import cli
from mailgate.config import Config, load_config
from mailgate.ops import app
from mailgate.store import outbound as outbox
from mailgate.store.db import open_db
from mailgate.store.tickets import list_tickets

MAIL_DOMAIN = "example.com"
MAILBOX = f"support@{MAIL_DOMAIN}"
AGENT_NAME = "Alice Agent"
AGENT_EMAIL = f"alice@{MAIL_DOMAIN}"
RELAY_CONCURRENCY = 4  # mailgate.outbound.relay.MAX_CONCURRENCY, the worker's default
SETUP_SESSIONS = 20  # concurrent SMTP sessions used to create the tickets (untimed)

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BARE_SERVER = BENCH_DIR / "bare_server.py"

STARTUP_TIMEOUT = 30.0  # seconds for a server to answer SMTP
STOP_TIMEOUT = 20.0  # seconds between SIGTERM and SIGKILL
POLL_INTERVAL = 0.1  # seconds between `mailgate stats --json` polls
SMTP_TIMEOUT = 30.0  # seconds per SMTP conversation of the baseline and the setup
UNFINISHED = ("queued", "sending", "deferred")  # outbox states that are not an end

EXIT_USAGE = 2

# An agent's answer of a realistic length: with the built-in templates, the text and HTML parts
# and the headers, each composed reply is about 4 KB.
REPLY_BODY = (
    "Hello,\n\n"
    "thank you for the details. The error appears after the firmware update, when the "
    "printer tries to reach the print server on its old address; it is easy to fix.\n\n"
    "1. Open the printer's web page (its address is on the network status sheet).\n"
    "2. Under Network > Print server, replace the old address with the new one.\n"
    "3. Save, switch the printer off and on again, and print a test page.\n\n"
    "If the test page does not come out, please reply with a photo of the printer's "
    "display and we will call you back.\n\n"
    "Kind regards,"
)


@dataclass(frozen=True)
class Envelope:
    """One pre-composed mail: what the relay worker would put on the wire for this row."""

    sender: str
    recipient: str
    data: bytes


@dataclass(frozen=True)
class RelayRun:
    """One timed mailgate run."""

    messages: int
    startup: float  # seconds from launch until the daemon answered SMTP
    seconds: float  # from answering SMTP until every reply was seen `sent`
    first_seen: int  # replies already `sent` at the first poll that saw any
    first_to_last: float  # seconds from that poll to the last one

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def rate_first_sent(self) -> float:
        """Mails per second between the first poll that saw new `sent` rows and the last."""
        remaining = self.messages - self.first_seen
        return remaining / self.first_to_last if self.first_to_last > 0 else float("nan")


@dataclass(frozen=True)
class RoundResult:
    queue_rate: float
    queue_seconds: float
    baseline_seconds: float
    relay: RelayRun
    messages: int

    @property
    def baseline_rate(self) -> float:
        return self.messages / self.baseline_seconds


class Process:
    """A server subprocess this script started, in its own session, logging to a file."""

    def __init__(self, name: str, cmd: list[str], port: int, log_path: Path) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def wait_for_smtp(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Return once the server sends a 220 greeting; BenchError if it dies or times out."""
        wait_for_smtp(self, timeout, interval=0.02)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a grace period; the exit status."""
        proc = self.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"warning: {self.name} (pid {proc.pid}) ignored SIGTERM for "
                      f"{STOP_TIMEOUT:.0f} s; killing it", file=sys.stderr)
                proc.kill()  # neither server forks: the process is all there is to stop
                proc.wait()
        return proc.returncode


@contextmanager
def running(name: str, cmd: list[str], port: int, log_path: Path) -> Iterator[Process]:
    """Start a server, wait until it answers SMTP, and always stop it on the way out."""
    process = Process(name, cmd, port, log_path)
    try:
        yield process
    finally:
        code = process.stop()
        if code not in (0, -signal.SIGTERM):
            print(f"warning: {name} exited with status {code}; log {log_path}:\n"
                  f"{process.log_tail()}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark mailgate's outbound relay queue against plain aiosmtplib."
    )
    parser.add_argument("--messages", type=int, default=1000,
                        help="agent replies per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, each baseline then mailgate (default 3)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="seconds mailgate may take to send one round (default 300)")
    args = parser.parse_args(argv)
    for name in ("messages", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.drain_timeout <= 0:
        parser.error("--drain-timeout must be positive")
    return args


def write_config(workdir: Path, smtp_port: int, relay_port: int) -> Path:
    """mailgate's config: our SMTP port, the discard relay, acknowledgements off."""
    return write_mailgate_config(
        workdir, smtp_port, MAIL_DOMAIN, MAILBOX,
        server_extra="min_free_bytes = 0\nshutdown_seconds = 10\n",
        extra=(
            "\n[relay]\n"
            f"host = {json.dumps(HOST)}\n"
            f"port = {relay_port}\n"
            "\n[templates.new_ticket_ack]\n"
            "enabled = false\n"
            "\n[[agents]]\n"
            f"name = {json.dumps(AGENT_NAME)}\n"
            f"email = {json.dumps(AGENT_EMAIL)}\n"
        ),
    )


def read_stats(config: Path) -> dict[str, Any]:
    """`mailgate --config CONFIG stats --json`, run in this process; BenchError on failure."""
    result = CliRunner().invoke(cli, ["--config", str(config), "stats", "--json"])
    if result.exit_code != 0:
        raise BenchError(f"`mailgate stats --json` exited with {result.exit_code}: "
                         f"{result.output.strip()[-300:]} {result.exception!r}")
    try:
        stats: dict[str, Any] = json.loads(result.output)
    except json.JSONDecodeError as exc:
        raise BenchError(f"`mailgate stats --json` printed no JSON: {result.output[:300]!r}"
                         ) from exc
    return stats


def ticket_mail(i: int) -> tuple[str, bytes]:
    """A customer's first mail for ticket number i: (sender, CRLF bytes)."""
    sender = f"customer{i}@client.test"
    data = (
        f"From: Customer {i} <{sender}>\r\n"
        f"To: {MAILBOX}\r\n"
        f"Subject: Printer {i} shows error E-{1000 + i}\r\n"
        f"Message-ID: <bench-{i}-{os.getpid()}@client.test>\r\n"
        "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "Since the firmware update the printer stops with an error after every page.\r\n"
        "Could you help?\r\n"
    ).encode()
    return sender, data


async def send_all(mails: list[Envelope], port: int, local_hostname: str,
                   concurrency: int) -> None:
    """Send every mail with aiosmtplib, `concurrency` at a time, one connection per mail."""
    pending = iter(mails)

    async def worker() -> None:
        for mail in pending:  # a shared iterator: each mail is taken by exactly one worker
            refused, reply = await aiosmtplib.send(
                mail.data, sender=mail.sender, recipients=[mail.recipient], hostname=HOST,
                port=port, local_hostname=local_hostname, timeout=SMTP_TIMEOUT,
                use_tls=False, start_tls=False,
            )
            if refused:
                raise BenchError(f"{HOST}:{port} refused {mail.recipient}: {refused}")
            del reply

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def create_tickets(config: Path, port: int, count: int, log_path: Path,
                   timeout: float) -> list[int]:
    """Untimed setup: `count` tickets made by the pipeline from mail sent over SMTP."""
    mails = [Envelope(sender, MAILBOX, data)
             for sender, data in (ticket_mail(i) for i in range(1, count + 1))]
    cmd = [sys.executable, "-m", "mailgate", "--config", str(config), "serve"]
    started = time.perf_counter()
    with running("mailgate", cmd, port, log_path) as daemon:
        daemon.wait_for_smtp()
        asyncio.run(send_all(mails, port, "client.test", SETUP_SESSIONS))
        deadline = time.monotonic() + timeout
        while True:
            stats = read_stats(config)
            if stats["tickets"] == count and not stats["spool"].get("incoming") \
                    and not stats["spool"].get("active"):
                break
            if stats["spool"].get("hold"):
                raise BenchError(f"the pipeline held {stats['spool']['hold']} of the setup mails"
                                 f"; log {log_path}:\n{daemon.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"the pipeline made {stats['tickets']} of {count} tickets in "
                                 f"{timeout:.0f} s; stats {json.dumps(stats)}")
            time.sleep(POLL_INTERVAL)
    print(f"setup: {count} tickets created over SMTP in {time.perf_counter() - started:.1f} s "
          f"(untimed); outgoing {json.dumps(stats['outgoing_by_status'])}", flush=True)
    cfg = load_config(config)
    db = open_db(cfg.db_path)
    try:
        ids = sorted(int(t["id"]) for t in list_tickets(db, limit=count))
    finally:
        db.close()
    if len(ids) != count:
        raise BenchError(f"expected {count} tickets, the database lists {len(ids)}")
    return ids


def queue_replies(cfg: Config, ticket_ids: list[int]) -> tuple[float, list[Envelope]]:
    """One agent reply per ticket through `Desk.reply`; (seconds taken, the composed mails)."""
    db = open_db(cfg.db_path)
    try:
        desk = app.desk(cfg, db)
        started = time.perf_counter()
        results = [desk.reply(tid, AGENT_EMAIL, REPLY_BODY, by="cli") for tid in ticket_ids]
        seconds = time.perf_counter() - started
        not_queued = [r for r in results if r.queued.status != "queued"]
        if not_queued:
            q = not_queued[0].queued
            raise BenchError(f"{len(not_queued)} replies were not queued; the first: "
                             f"#{not_queued[0].ticket_id} {q.status} {q.reason}")
        # The relay worker's envelope: MAIL FROM the VERP bounce address, RCPT TO the requester.
        mail = app.mail_context(cfg)
        requesters = {int(t["id"]): str(t["requester"])
                      for t in list_tickets(db, limit=len(results))}
        mails = []
        for r in results:
            raw = outbox.get_raw(db, r.queued.outbound_id)
            if not raw:
                raise BenchError(f"outbox row {r.queued.outbound_id} has no message")
            mails.append(Envelope(mail.bounce_address(r.queued.outbound_id),
                                  requesters[r.ticket_id], raw))
    finally:
        db.close()
    return seconds, mails


def run_mailgate(config: Path, port: int, log_path: Path, expected_sent: int, messages: int,
                 timeout: float) -> RelayRun:
    """Start the daemon on a queued outbox and time it until `expected_sent` rows are sent."""
    cmd = [sys.executable, "-m", "mailgate", "--config", str(config), "serve"]
    before = expected_sent - messages
    launched = time.perf_counter()
    with running("mailgate", cmd, port, log_path) as daemon:
        daemon.wait_for_smtp()
        listening = time.perf_counter()
        deadline = listening + timeout
        first_at: float | None = None
        first_seen = 0
        while True:
            stats = read_stats(config)
            now = time.perf_counter()
            status: dict[str, int] = stats["outgoing_by_status"]
            sent = status.get("sent", 0)
            if first_at is None and sent > before:
                first_at, first_seen = now, sent - before
            if status.get("failed") or status.get("deferred"):
                raise BenchError(f"mail did not go through: {json.dumps(status)}; log "
                                 f"{log_path}:\n{daemon.log_tail()}")
            if sent >= expected_sent and not any(status.get(s) for s in UNFINISHED):
                break
            if now > deadline or daemon.proc.poll() is not None:
                raise BenchError(f"after {now - listening:.0f} s: {json.dumps(status)}, expected "
                                 f"sent={expected_sent}; log {log_path}:\n{daemon.log_tail()}")
            time.sleep(POLL_INTERVAL)
    if sent != expected_sent:
        raise BenchError(f"{sent} mails sent, expected {expected_sent}: {json.dumps(status)}")
    assert first_at is not None
    return RelayRun(messages, listening - launched, now - listening, first_seen, now - first_at)


def run_bench(args: argparse.Namespace, workdir: Path) -> list[RoundResult]:
    relay_port = free_port()
    relay_cmd = [sys.executable, str(BARE_SERVER), str(relay_port)]
    results: list[RoundResult] = []
    with running("discard relay", relay_cmd, relay_port, workdir / "relay.log") as relay:
        relay.wait_for_smtp()
        port = free_port()
        config = write_config(workdir, port, relay_port)
        cfg = load_config(config)
        log_path = workdir / "mailgate.log"
        print(f"outbound bench: {args.rounds} round(s) x {args.messages} replies, "
              f"{RELAY_CONCURRENCY} concurrent connections, {os.cpu_count()} CPUs; "
              f"discard relay :{relay_port}, mailgate :{port}", flush=True)
        ticket_ids = create_tickets(config, port, args.messages, log_path, args.drain_timeout)
        suppressed = args.messages  # one per new ticket: acknowledgements are disabled
        for round_no in range(1, args.rounds + 1):
            queue_seconds, mails = queue_replies(cfg, ticket_ids)
            sizes = [len(m.data) for m in mails]
            label = f"round {round_no}/{args.rounds}"
            print(f"{label} queueing  {len(mails)} Desk.reply calls in {queue_seconds:7.3f} s "
                  f"= {len(mails) / queue_seconds:8.1f} mails/s (message size "
                  f"{min(sizes)}-{max(sizes)} bytes, mean {statistics.mean(sizes):.0f})",
                  flush=True)
            started = time.perf_counter()
            asyncio.run(send_all(mails, relay_port, MAILGATE_HOSTNAME, RELAY_CONCURRENCY))
            baseline_seconds = time.perf_counter() - started
            print(f"{label} baseline  {len(mails)} mails in {baseline_seconds:7.3f} s "
                  f"= {len(mails) / baseline_seconds:8.1f} mails/s", flush=True)
            run = run_mailgate(config, port, log_path, round_no * args.messages, args.messages,
                               args.drain_timeout)
            print(f"{label} mailgate  {run.messages} mails in {run.seconds:7.3f} s "
                  f"= {run.rate:8.1f} mails/s (start-up {run.startup:.2f} s excluded; "
                  f"first sent seen to last: {run.rate_first_sent:.1f} mails/s)", flush=True)
            results.append(RoundResult(len(mails) / queue_seconds, queue_seconds,
                                       baseline_seconds, run, args.messages))
        final = read_stats(config)["outgoing_by_status"]
        want = {"sent": args.rounds * args.messages, "suppressed": suppressed}
        if final != want:
            raise BenchError(f"outgoing mail by status is {json.dumps(final)}, "
                             f"expected {json.dumps(want)}")
        print(f"outgoing mail by status: {json.dumps(final)} (the suppressed rows are the "
              "disabled acknowledgements of the setup tickets)", flush=True)
    return results


def summarise(results: list[RoundResult]) -> None:
    baseline = statistics.median(r.baseline_rate for r in results)
    relay = statistics.median(r.relay.rate for r in results)
    first = statistics.median(r.relay.rate_first_sent for r in results)
    queue = statistics.median(r.queue_rate for r in results)
    startup = statistics.median(r.relay.startup for r in results)
    print(f"baseline (aiosmtplib, 4 connections) median: {baseline:8.1f} mails/s")
    print(f"mailgate relay worker median:                {relay:8.1f} mails/s "
          f"(first-sent-to-last: {first:.1f}; daemon start-up {startup:.2f} s, excluded)")
    print(f"ratio mailgate/baseline = {relay / baseline:.2f}")
    print(f"queueing (Desk.reply) median:                {queue:8.1f} mails/s", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: list[RoundResult] = []

    def bench(workdir: Path) -> None:
        results.extend(run_bench(args, workdir))

    status = run_in_workdir("mailgate-outbound-bench-", bench,
                            (BenchError, aiosmtplib.SMTPException, OSError))
    if status == EXIT_OK:
        summarise(results)
    return status


if __name__ == "__main__":
    sys.exit(main())
