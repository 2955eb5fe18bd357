"""Scale-out benchmark: the same load, end to end, on SQLite (one node), PostgreSQL (one node)
and PostgreSQL with `serve --workers 2`.

Usage: python bench/scaleout.py [--messages N] [--rounds R] [--sessions S] [--size BYTES]
                                [--workers W] [--process inline|separate]
                                [--drain-timeout SECS] [--pg-fast]

Input:  command-line options only. Needs Postfix's smtp-source (the load generator of
        bench/ingest.py), Debian's PostgreSQL binaries (found as tests/pgserver.py finds them)
        and the mailgate package in this repository.
Output: per run, the SMTP time, the drain time and the end-to-end rate (first connection →
        last ticket committed, tickets/s); then the median of each setup and the ratios
        PG1/SQLite (goal >= 0.8) and PG-workers/PG1 (goal >= 1.5 with 2 workers on 2 cores).
        Diagnostics on stderr. Exit status 0 when every run succeeded and every acknowledged
        message became a ticket (the ratios are reported, never enforced); 1 on a failure;
        2 when smtp-source or PostgreSQL is missing.
Trust:  developer tool for a trusted local machine. It starts everything itself on free
        127.0.0.1 ports (its own PostgreSQL cluster in a temporary directory, run as the
        `postgres` user when run as root) and keeps configs, data and logs in a fresh temporary
        directory (removed on success, kept and printed on failure).

Method: one PostgreSQL with the settings a real installation has (fsync, synchronous_commit
and full_page_writes on — PostgreSQL's defaults — and Debian's shared_buffers; `--pg-fast`
turns the three off as the test suite does); one database per setup. The three mailgates run
one after another (never side by side: they share two cores), each with the same config but
for `[storage] database` and `--workers`, authentication on a loopback resolver and every
acknowledgement relayed to a bare aiosmtpd server, as in bench/ingest.py. Each round sends the
same smtp-source load to each setup in turn and waits until all its tickets are committed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (
    HOST,
    BenchError,
    free_port,
    run_in_workdir,
    wait_for_smtp,
    write_mailgate_config,
)
from ingest import (
    BARE_SERVER,
    MAIL_DOMAIN,
    RECIPIENT,
    REPO_ROOT,
    STARTUP_TIMEOUT,
    Server,
    find_smtp_source,
    read_stats_retrying,
    run_smtp_source,
    start_server,
    stop_server,
    wait_for_tickets,
)

GOAL_PG = 0.8  # PostgreSQL, one node / SQLite, one node
GOAL_WORKERS = 1.5  # PostgreSQL, 2 workers / PostgreSQL, one node
EXIT_MISSING = 2


@dataclass
class Setup:
    name: str
    database: str | None  # None: SQLite under data_dir
    workers: int
    rates: list[float] = field(default_factory=list)  # end to end, tickets/s per round


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000, help="per run (default 1000)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per setup (default 2)")
    parser.add_argument("--sessions", type=int, default=20, help="concurrent SMTP sessions")
    parser.add_argument("--size", type=int, default=4096, help="body bytes (default 4096)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the third setup")
    parser.add_argument("--process", choices=("inline", "separate"), default=None,
                        help="[pipeline] process for every setup (default: mailgate's)")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--pg-fast", action="store_true",
                        help="PostgreSQL with fsync, synchronous_commit, full_page_writes off")
    args = parser.parse_args(argv)
    for name in ("messages", "rounds", "sessions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.workers < 2:
        parser.error("--workers must be at least 2")
    return args


def start_pg(workdir: Path, fast: bool) -> object:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from pgserver import PgServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL not installed (Debian package postgresql)")
    del workdir
    return PgServer(bindir, durable=not fast).start()


def wait_for_log(server: Server, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(f"{server.name} exited during start-up:\n{server.log_tail()}")
        if needle in server.log_path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise BenchError(f"{server.name} did not log {needle!r} in {timeout:.0f}s:\n"
                     f"{server.log_tail()}")


def run_setup(setup: Setup, args: argparse.Namespace, smtp_source: str, workdir: Path,
              relay_port: int) -> tuple[float, float]:
    """One round of one setup: start it, send the load, wait for the tickets, stop it.
    Returns (SMTP seconds, drain seconds)."""
    port = free_port()
    extra = (f'\n[relay]\nhost = "{HOST}"\nport = {relay_port}\n'
             "\n[limits]\nauto_replies_per_address_per_hour = 1000000\n"
             "auto_replies_per_domain_per_hour = 1000000\nauto_replies_per_hour = 1000000\n"
             + (f'\n[pipeline]\nprocess = "{args.process}"\n' if args.process else ""))
    here = workdir / f"{setup.name}-{len(setup.rates)}"
    here.mkdir()
    config = write_mailgate_config(here, port, MAIL_DOMAIN, RECIPIENT, extra=extra)
    if setup.database is not None:
        text = config.read_text().replace("\n[storage]\n", "\n[storage]\n"
                                          f'database = "{setup.database}"\n', 1)
        config.write_text(text)
    cmd = [sys.executable, "-m", "mailgate", "--config", str(config), "serve"]
    if setup.workers > 1:
        cmd += ["--workers", str(setup.workers)]
    server = start_server(setup.name, cmd, port, here / "mailgate.log")
    try:
        if setup.workers > 1:  # every worker listening, not only the first
            wait_for_log(server, f"{setup.workers} workers accepting mail", STARTUP_TIMEOUT * 2)
        wait_for_smtp(server, STARTUP_TIMEOUT, interval=0.1)
        base = read_stats_retrying(config, STARTUP_TIMEOUT)["tickets"]
        result = run_smtp_source(smtp_source, server, args)
        ended = time.perf_counter()
        drain, _ = wait_for_tickets(config, base + result.messages, ended, args.drain_timeout)
    finally:
        stop_server(server)
    setup.rates.append(result.messages / (result.seconds + drain))
    return result.seconds, drain


def run_bench(args: argparse.Namespace, smtp_source: str, workdir: Path) -> None:
    pg = start_pg(workdir, args.pg_fast)
    relay = None
    try:
        setups = [Setup("sqlite-1", None, 1)]
        setups.append(Setup("pg-1", pg.create_database(), 1))  # type: ignore[attr-defined]
        setups.append(Setup(f"pg-{args.workers}w", pg.create_database(),  # type: ignore[attr-defined]
                            args.workers))
        relay_port = free_port()
        relay = start_server("relay", [sys.executable, str(BARE_SERVER), str(relay_port)],
                             relay_port, workdir / "relay.log")
        wait_for_smtp(relay, STARTUP_TIMEOUT, interval=0.1)
        print(f"scaleout bench: {args.rounds} round(s) x {args.messages} msgs, {args.sessions}"
              f" sessions, {args.size}-byte bodies, {os.cpu_count()} CPUs; PostgreSQL"
              f" {'fsync off' if args.pg_fast else 'durable (fsync, synchronous_commit on)'}",
              flush=True)
        for round_no in range(1, args.rounds + 1):
            for setup in setups:
                smtp, drain = run_setup(setup, args, smtp_source, workdir, relay_port)
                print(f"round {round_no}/{args.rounds} {setup.name:<9} SMTP {smtp:7.2f} s,"
                      f" drained {drain:6.2f} s later: end to end {setup.rates[-1]:7.1f}"
                      " tickets/s", flush=True)
        med = {s.name: statistics.median(s.rates) for s in setups}
        for setup in setups:
            print(f"{setup.name} median: {med[setup.name]:7.1f} tickets/s", flush=True)
        sqlite, pg1, pgw = (med[s.name] for s in setups)
        print(f"ratio PG1/SQLite = {pg1 / sqlite:.2f} (goal >= {GOAL_PG})", flush=True)
        print(f"ratio PG{args.workers}w/PG1 = {pgw / pg1:.2f} (goal >= {GOAL_WORKERS} with 2"
              " workers)", flush=True)
    finally:
        if relay is not None:
            stop_server(relay)
        pg.stop()  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    smtp_source = find_smtp_source()
    if smtp_source is None:
        print("smtp-source not found; install it with `apt-get install postfix`",
              file=sys.stderr)
        return EXIT_MISSING
    try:
        return run_in_workdir("mailgate-scaleout-",
                              lambda workdir: run_bench(args, smtp_source, workdir))
    except FileNotFoundError as exc:
        print(f"{exc}", file=sys.stderr)
        return EXIT_MISSING


if __name__ == "__main__":
    sys.exit(main())
