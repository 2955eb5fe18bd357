"""What the server benchmarks (bench/ingest.py, bench/outbound.py) share: their error, the
unwinding on a termination signal, free loopback ports, mailgate's config, log tails and waiting
for a server's SMTP greeting. Input: none. Output: the functions and classes below. Trust: a
developer tool; it connects to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import loopback_dns  # bench/loopback_dns.py: authentication asks only 127.0.0.1

HOST = "127.0.0.1"
MAILGATE_HOSTNAME = "bench.localhost"
LOG_TAIL_LINES = 40

EXIT_OK = 0
EXIT_FAIL = 1


class BenchError(Exception):
    """A failure that ends the benchmark with exit status 1."""


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived; unwinding stops the servers."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, frame: object) -> None:
    """Turn a termination signal into Interrupted; a second one acts normally."""
    del frame
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    raise Interrupted(signum)


def raise_on_signals() -> None:
    """From now on, SIGINT, SIGTERM and SIGHUP raise Interrupted (once)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def run_in_workdir(prefix: str, bench: Callable[[Path], None],
                   failures: tuple[type[Exception], ...] = (BenchError,)) -> int:
    """Run bench(workdir) in a fresh temporary directory and return the exit status.

    The directory is removed on success and kept (and printed) on one of `failures` (status 1)
    or on SIGINT, SIGTERM or SIGHUP (status 128 + the signal).
    """
    raise_on_signals()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        bench(workdir)
    except failures as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"work dir kept for inspection: {workdir}", file=sys.stderr)
        return EXIT_FAIL
    except Interrupted as exc:
        print(f"interrupted by {exc}; work dir kept: {workdir}", file=sys.stderr)
        return 128 + exc.signum
    shutil.rmtree(workdir, ignore_errors=True)
    return EXIT_OK


def free_port() -> int:
    """Return a TCP port on HOST that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last lines of a server's combined stdout/stderr."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {log_path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class SmtpServer(Protocol):
    """A server subprocess started by a benchmark."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path


def wait_for_smtp(server: SmtpServer, timeout: float, interval: float) -> None:
    """Return once the server sends a 220 greeting; BenchError if it dies or times out."""
    deadline = time.monotonic() + timeout
    last_error = "no attempt made"
    while time.monotonic() < deadline:
        code = server.proc.poll()
        if code is not None:
            raise BenchError(f"{server.name} exited with status {code} during start-up; "
                             f"log {server.log_path}:\n{log_tail(server.log_path)}")
        try:
            with socket.create_connection((HOST, server.port), timeout=2.0) as sock:
                banner = sock.recv(512)
                if banner.startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
                last_error = f"unexpected greeting {banner[:80]!r}"
        except OSError as exc:
            last_error = str(exc)
        time.sleep(interval)
    raise BenchError(f"{server.name} did not answer SMTP on {HOST}:{server.port} within "
                     f"{timeout:.0f} s (last error: {last_error}); log {server.log_path}:\n"
                     f"{log_tail(server.log_path)}")


def write_mailgate_config(workdir: Path, port: int, domain: str, mailbox: str, *,
                          server_extra: str = "", extra: str = "") -> Path:
    """Write mailgate's TOML config (data in workdir/data, DNS on loopback); return its path.

    `server_extra`: more `[server]` lines; `extra`: more tables, after `[mail]`.
    """
    data_dir = workdir / "data"
    data_dir.mkdir()
    # json.dumps yields valid TOML basic strings for these plain values.
    text = (
        "[server]\n"
        f"listen = {json.dumps(f'{HOST}:{port}')}\n"
        f"hostname = {json.dumps(MAILGATE_HOSTNAME)}\n"
        + server_extra
        + "\n[storage]\n"
        f"data_dir = {json.dumps(str(data_dir))}\n"
        "\n[mail]\n"
        f"domains = [{json.dumps(domain)}]\n"
        f"mailboxes = [{json.dumps(mailbox)}]\n"
        + extra
        + loopback_dns.auth_section()
    )
    config = workdir / "mailgate.toml"
    config.write_text(text)
    return config
