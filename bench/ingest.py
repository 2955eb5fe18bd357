"""Ingest benchmark: mailgate vs. a bare aiosmtpd server, driven by smtp-source.

Usage: python bench/ingest.py [--messages N] [--rounds R] [--sessions S]
                              [--size BYTES] [--drain-timeout SECS]
                              [--no-settle] [--baseline-only] [--rspamd]
                              [--process inline|separate]

Input:  command-line options only. Needs Postfix's smtp-source (on PATH or in
        /usr/sbin) and, unless --baseline-only, the mailgate package in this
        repository (run as `python -m mailgate` from the repository root).
Output: per-round rates, the median rate of each server and the ratio
        mailgate/baseline on stdout (SMTP acceptance, goal >= 0.7; and, when
        rounds settle, end to end — first connection to last ticket committed —
        goal >= 0.5) (with --rspamd also those of a second mailgate
        that scans every message with rspamd, and the ratio with/without rspamd);
        diagnostics on stderr. Exit status 0 when
        every run succeeded and every message mailgate acknowledged became a
        ticket (the ratio is reported, never enforced); 1 on a failed run,
        server start-up or ticket-count mismatch; 2 on bad usage or when
        smtp-source is missing.
Trust:  developer tool for a trusted local machine. It starts both servers
        itself, on free 127.0.0.1 ports, sends traffic only to 127.0.0.1, and
        keeps mailgate's config, data and log in a fresh temporary directory
        (removed on success, kept and printed on failure).

Method: a baseline server (bench/bare_server.py, its own process so it does
not share a GIL with anything) and mailgate run side by side. Each round runs
smtp-source once against the baseline and once against mailgate, alternating,
and times each run with time.perf_counter. By default the script waits after
each mailgate run until mailgate has turned every acknowledged message into a
ticket (polling `mailgate stats --json`), so that mailgate's background work
never overlaps a baseline run; --no-settle skips these waits and checks only
once at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import loopback_dns  # bench/loopback_dns.py: rspamd's DNS on loopback too
from benchlib import (  # bench/benchlib.py: what the server benchmarks share
    HOST,
    LOG_TAIL_LINES,
    BenchError,
    free_port,
    log_tail,
    run_in_workdir,
    wait_for_smtp,
    write_mailgate_config,
)

SENDER = "sender@customer.test"
RECIPIENT = "support@example.com"
MAIL_DOMAIN = "example.com"
GOAL_RATIO = 0.7  # SMTP acceptance: mailgate's rate / the bare server's (issue 13)
GOAL_END_TO_END = 0.5  # first connection to last ticket committed / the bare server's rate

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BARE_SERVER = BENCH_DIR / "bare_server.py"
SMTP_SOURCE_FALLBACK = Path("/usr/sbin/smtp-source")

STARTUP_TIMEOUT = 30.0  # seconds for a server to start answering SMTP
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
RUN_TIMEOUT = 600.0  # seconds one smtp-source run may take before we give up
STATS_TIMEOUT = 30.0  # seconds one `mailgate stats` call may take
POLL_INTERVAL = 0.2  # seconds between `mailgate stats` calls

EXIT_USAGE = 2


@dataclass(frozen=True)
class RunResult:
    """One timed smtp-source run."""

    messages: int
    seconds: float

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.messages / self.seconds


@dataclass
class Server:
    """A server subprocess that this script started and must stop."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    results: list[RunResult] = field(default_factory=list)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Return the last lines of the server's combined stdout/stderr."""
        return log_tail(self.log_path, lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and validate command-line options."""
    parser = argparse.ArgumentParser(
        description="Benchmark mailgate SMTP ingest against a bare aiosmtpd server."
    )
    parser.add_argument(
        "--messages", type=int, default=2000, help="messages per run (default 2000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs per server (default 3)")
    parser.add_argument(
        "--sessions",
        type=int,
        default=20,
        help="concurrent SMTP sessions (default 20)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=4096,
        help="message body bytes, headers not included (default 4096)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for mailgate's tickets to appear (default 120)",
    )
    parser.add_argument(
        "--no-settle",
        dest="settle",
        action="store_false",
        help="do not wait for mailgate to drain between rounds; check once at the end",
    )
    parser.add_argument(
        "--baseline-only",
        action="store_true",
        help="run only the bare aiosmtpd baseline (no mailgate)",
    )
    parser.add_argument(
        "--process",
        choices=("inline", "separate"),
        default=None,
        help="mailgate's [pipeline] process (default: mailgate's own default)",
    )
    parser.add_argument(
        "--rspamd",
        action="store_true",
        help="also run a second mailgate that asks rspamd (Debian's, started on loopback"
        " with the tests' configuration) before each 250, and report both ratios",
    )
    args = parser.parse_args(argv)
    for name in ("messages", "rounds", "sessions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.size < 0:
        parser.error("--size must not be negative")
    if args.drain_timeout <= 0:
        parser.error("--drain-timeout must be positive")
    return args


def find_smtp_source() -> str | None:
    """Return the path of Postfix's smtp-source, or None if it is not installed."""
    found = shutil.which("smtp-source")
    if found:
        return found
    if os.access(SMTP_SOURCE_FALLBACK, os.X_OK):
        return str(SMTP_SOURCE_FALLBACK)
    return None


def start_server(name: str, cmd: list[str], port: int, log_path: Path) -> Server:
    """Start a server subprocess in its own session, output going to log_path."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name=name, port=port, proc=proc, log_path=log_path)


def stop_server(server: Server) -> None:
    """Stop a server: SIGTERM, then SIGKILL its process group after a grace period."""
    # The server was started in its own session, so its pid is also the id of
    # a process group holding only it and any workers it forked. A group id
    # cannot be reused while the group has members, so killpg() below reaches
    # only processes this script started.
    proc = server.proc
    was_running = proc.poll() is None  # if not, its exit was already reported
    if was_running:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(
                f"warning: {server.name} (pid {proc.pid}) ignored SIGTERM for "
                f"{STOP_TIMEOUT:.0f} s; killing it",
                file=sys.stderr,
            )
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        pass  # no leftover workers
    else:
        print(
            f"warning: {server.name} left processes in group {proc.pid}; killing them",
            file=sys.stderr,
        )
        os.killpg(proc.pid, signal.SIGKILL)
    if was_running and proc.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
        print(
            f"warning: {server.name} exited with status {proc.returncode}; "
            f"log {server.log_path}:\n{server.log_tail()}",
            file=sys.stderr,
        )


def run_smtp_source(smtp_source: str, server: Server, args: argparse.Namespace) -> RunResult:
    """Send args.messages messages to the server with smtp-source and time it."""
    cmd = [
        smtp_source,
        "-s", str(args.sessions),
        "-l", str(args.size),
        "-m", str(args.messages),
        "-f", SENDER,
        "-t", RECIPIENT,
        f"{HOST}:{server.port}",
    ]  # fmt: skip
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=RUN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        msg = f"smtp-source against {server.name} did not finish in {RUN_TIMEOUT:.0f} s"
        raise BenchError(msg) from exc
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip() or "(no stderr)"
        msg = (
            f"smtp-source against {server.name} failed with status "
            f"{proc.returncode}:\n{stderr}\n{server.name} log {server.log_path}:\n"
            f"{server.log_tail()}"
        )
        raise BenchError(msg)
    return RunResult(messages=args.messages, seconds=seconds)


def parse_stats_output(stdout: str) -> dict[str, Any]:
    """Parse `mailgate stats --json` output, tolerating log lines around the JSON."""
    candidates = [stdout] + [
        line for line in reversed(stdout.splitlines()) if line.lstrip().startswith("{")
    ]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    msg = f"no JSON object in output: {stdout.strip()[:300]!r}"
    raise ValueError(msg)


def read_stats(config: Path) -> dict[str, Any]:
    """Run `mailgate stats --json` once; raise BenchError if it cannot be read."""
    cmd = [sys.executable, "-m", "mailgate", "--config", str(config), "stats", "--json"]
    try:
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, capture_output=True, timeout=STATS_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        msg = f"`mailgate stats --json` took longer than {STATS_TIMEOUT:.0f} s"
        raise BenchError(msg) from exc
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()
        msg = f"`mailgate stats --json` exited with status {proc.returncode}: {stderr[-500:]}"
        raise BenchError(msg)
    try:
        stats = parse_stats_output(proc.stdout.decode(errors="replace"))
    except ValueError as exc:
        msg = f"`mailgate stats --json`: {exc}"
        raise BenchError(msg) from exc
    if not isinstance(stats.get("tickets"), int):
        msg = f"`mailgate stats --json` has no integer 'tickets': {stats}"
        raise BenchError(msg)
    return stats


def read_stats_retrying(config: Path, timeout: float) -> dict[str, Any]:
    """Run `mailgate stats --json` until it succeeds or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read_stats(config)
        except BenchError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(POLL_INTERVAL)


def wait_for_tickets(
    config: Path, expected: int, since: float, timeout: float
) -> tuple[float, dict[str, Any]]:
    """Poll mailgate until it reports `expected` tickets.

    Returns the seconds from `since` (a perf_counter value) until the count was
    seen, and the last stats. Raises BenchError on timeout or overshoot.
    Failing stats calls are retried until the deadline, since the daemon may
    briefly hold locks while busy.
    """
    deadline = time.perf_counter() + timeout
    stats: dict[str, Any] = {}
    last_error = ""
    while True:
        try:
            stats = read_stats(config)
            last_error = ""
        except BenchError as exc:
            last_error = str(exc)
        now = time.perf_counter()
        if stats:
            tickets = stats["tickets"]
            if tickets == expected:
                return now - since, stats
            if tickets > expected:
                msg = (
                    f"mailgate reports {tickets} tickets but only {expected} "
                    f"messages were sent; stats: {json.dumps(stats)}"
                )
                raise BenchError(msg)
        if now >= deadline:
            got = stats.get("tickets", "unknown")
            msg = (
                f"mailgate has {got} tickets, expected {expected}, after waiting "
                f"{timeout:.0f} s; last stats: {json.dumps(stats) if stats else 'none'}"
            )
            if last_error:
                msg += f"\nlast stats error: {last_error}"
            raise BenchError(msg)
        time.sleep(POLL_INTERVAL)


def report(label: str, round_no: int, rounds: int, result: RunResult) -> None:
    """Print one result line."""
    print(
        f"round {round_no}/{rounds} {label:<8}  {result.messages} msgs in "
        f"{result.seconds:7.3f} s = {result.rate:8.1f} msg/s",
        flush=True,
    )


def median_rate(server: Server) -> float:
    """Median messages/second over the server's runs."""
    return statistics.median(r.rate for r in server.results)


@dataclass
class Target:
    """A mailgate under test: its server, config and the tickets it should end with."""

    server: Server
    config: Path
    base_tickets: int = 0
    sent: int = 0
    last_end: float = 0.0
    drain: float = 0.0
    end_to_end: list[float] = field(default_factory=list)  # msg/s per settled round


def start_mailgate(name: str, workdir: Path, extra: str = "") -> Target:
    """A mailgate daemon with its own config and data under `workdir`. `extra` must name the
    relay (`relay_section`): every new ticket's acknowledgement goes out through it."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_mailgate_config(workdir, port, MAIL_DOMAIN, RECIPIENT, extra=extra)
    server = start_server(
        name,
        [sys.executable, "-m", "mailgate", "--config", str(config), "serve"],
        port,
        workdir / "mailgate.log",
    )
    return Target(server, config)


def start_rspamd(workdir: Path) -> Any:
    """Debian's rspamd on loopback with the tests' configuration (tests/rspamd_server.py)."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from rspamd_server import RspamdServer, available

    if not available():
        raise BenchError("--rspamd: rspamd is not installed (apt-get install rspamd)")
    try:
        return RspamdServer(workdir, loopback_dns.start()).start()
    except RuntimeError as exc:
        raise BenchError(f"--rspamd: {exc}") from exc


def run_bench(args: argparse.Namespace, smtp_source: str, workdir: Path) -> None:
    """Start the servers, run all rounds, verify tickets; raise BenchError on failure."""
    servers: list[Server] = []
    targets: list[Target] = []
    rspamd = None
    try:
        baseline_port = free_port()
        baseline = start_server(
            "baseline",
            [sys.executable, str(BARE_SERVER), str(baseline_port)],
            baseline_port,
            workdir / "baseline.log",
        )
        servers.append(baseline)
        # The relay the acknowledgements go to: a second bare aiosmtpd server (discards).
        relay_port = free_port()
        relay = start_server(
            "relay",
            [sys.executable, str(BARE_SERVER), str(relay_port)],
            relay_port,
            workdir / "relay.log",
        )
        wait_for_smtp(relay, STARTUP_TIMEOUT, interval=0.1)
        servers.append(relay)
        # Limits high enough that every ticket's acknowledgement is really sent (smtp-source
        # writes from one address; the defaults would suppress all but the first ten).
        extra = (f'\n[relay]\nhost = "{HOST}"\nport = {relay_port}\n'
                 "\n[limits]\nauto_replies_per_address_per_hour = 1000000\n"
                 "auto_replies_per_domain_per_hour = 1000000\nauto_replies_per_hour = 1000000\n"
                 + (f'\n[pipeline]\nprocess = "{args.process}"\n' if args.process else ""))
        if not args.baseline_only:
            targets.append(start_mailgate("mailgate", workdir, extra))
        if args.rspamd:
            rspamd = start_rspamd(workdir / "rspamd")
            spam = f'\n[spam]\nrspamd = "{rspamd.url}"\n'
            targets.append(start_mailgate("+rspamd", workdir / "with-rspamd", extra + spam))
        servers += [t.server for t in targets]
        for server in servers:
            wait_for_smtp(server, STARTUP_TIMEOUT, interval=0.1)
        for target in targets:
            target.base_tickets = read_stats_retrying(target.config, STARTUP_TIMEOUT)["tickets"]

        print(
            f"ingest bench: {args.rounds} round(s) x {args.messages} msgs, "
            f"{args.sessions} sessions, {args.size}-byte bodies, "
            f"{os.cpu_count()} CPUs; baseline :{baseline.port}"
            + "".join(f", {t.server.name} :{t.server.port}" for t in targets)
            + (f", rspamd {rspamd.url}" if rspamd is not None else ""),
            flush=True,
        )
        for round_no in range(1, args.rounds + 1):
            result = run_smtp_source(smtp_source, baseline, args)
            baseline.results.append(result)
            report("baseline", round_no, args.rounds, result)
            for target in targets:
                result = run_smtp_source(smtp_source, target.server, args)
                target.last_end = time.perf_counter()
                target.server.results.append(result)
                target.sent += result.messages
                report(target.server.name, round_no, args.rounds, result)
                if args.settle:
                    target.drain, _ = wait_for_tickets(
                        target.config, target.base_tickets + target.sent, target.last_end,
                        args.drain_timeout,
                    )
                    target.end_to_end.append(
                        result.messages / (result.seconds + target.drain))
                    print(
                        f"round {round_no}/{args.rounds} {target.server.name:<8}  all tickets"
                        f" stored {target.drain:.2f} s after the run ended: end to end"
                        f" {target.end_to_end[-1]:8.1f} msg/s",
                        flush=True,
                    )

        print(f"baseline median: {median_rate(baseline):8.1f} msg/s", flush=True)
        for target in targets:
            print(f"{target.server.name} median: {median_rate(target.server):8.1f} msg/s",
                  flush=True)
            # Final check; after --no-settle it is the only one, otherwise it confirms
            # the count still holds and the drain time is the last round's.
            final_drain, stats = wait_for_tickets(
                target.config, target.base_tickets + target.sent, target.last_end,
                args.drain_timeout,
            )
            if not args.settle:
                target.drain = final_drain
            print(
                f"{target.server.name} pipeline drained: {target.sent}/{target.sent}"
                f" acknowledged messages are tickets, {target.drain:.2f} s after the last run"
                f" ended (poll interval {POLL_INTERVAL} s); spool"
                f" {json.dumps(stats.get('spool'))}",
                flush=True,
            )
        for target in targets:
            ratio = median_rate(target.server) / median_rate(baseline)
            print(f"ratio {target.server.name}/baseline = {ratio:.2f} (SMTP acceptance; goal >="
                  f" {GOAL_RATIO})", flush=True)
            if target.end_to_end:
                e2e = statistics.median(target.end_to_end) / median_rate(baseline)
                print(f"ratio {target.server.name} end to end/baseline = {e2e:.2f} (first"
                      f" connection to last ticket committed; goal >= {GOAL_END_TO_END})",
                      flush=True)
        if len(targets) == 2:
            ratio = median_rate(targets[1].server) / median_rate(targets[0].server)
            print(f"ratio with rspamd / without = {ratio:.2f}", flush=True)
    finally:
        for server in reversed(servers):
            stop_server(server)
        if rspamd is not None:
            rspamd.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = parse_args(argv)
    smtp_source = find_smtp_source()
    if smtp_source is None:
        print(
            "smtp-source not found; install it with `apt-get install postfix`",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return run_in_workdir("mailgate-bench-",
                          lambda workdir: run_bench(args, smtp_source, workdir))


if __name__ == "__main__":
    sys.exit(main())
