"""Memory under big mail: the daemon's peak resident memory while concurrent sessions each send
a big message, and until every one of them is a ticket.

Usage: python bench/memory.py [--sessions 20] [--size-mb 20] [--rounds 1]

Input:  command-line options. Each message is a multipart mail with one base64 attachment of
        random bytes (so nothing compresses or deduplicates), `--size-mb` MB on the wire.
Output: per round, the daemon's peak RSS (VmHWM of the process and, sampled every 20 ms, the
        sum over it and its children) from its start to the moment the last message is
        committed, its RSS when idle before the load, and the time taken; the goal printed
        beside it: a peak of at most 400 MB for 20 sessions of 20 MB. Exit status 0, or 1 when a
        message was not accepted or did not become a ticket.
Trust:  developer tool for a trusted local machine; SMTP and DNS stay on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import os
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import HOST, free_port, log_tail, write_mailgate_config

GOAL_MB = 400


def message(n: int, size: int) -> bytes:
    payload = base64.encodebytes(os.urandom(size * 3 // 4))
    payload = payload.replace(b"\n", b"\r\n")
    return (f"From: Big Sender {n} <big{n}@client.test>\r\nTo: support@bench.example\r\n"
            f"Subject: big attachment {n}\r\nMessage-ID: <big-{n}@client.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
            "--b\r\nContent-Type: text/plain\r\n\r\nThe file is attached.\r\n"
            "--b\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Disposition: attachment; filename=\"data{n}.bin\"\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode() + payload + b"--b--\r\n"


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(pid: int) -> int:
    """RSS of the process and all its descendants."""
    total = rss_kb(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(tree_rss_kb(int(c)) for c in children)


def committed(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return 0
    try:
        return conn.execute(
            "SELECT COUNT(*) FROM audit_incoming WHERE action='created_ticket'").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def one_round(workdir: Path, sessions: int, size: int) -> tuple[int, int, int, float, bool]:
    port = free_port()
    config = write_mailgate_config(
        workdir, port, "bench.example", "support@bench.example",
        server_extra="min_free_bytes = 0\nmax_message_size = 104857600\n",
        extra=('[relay]\nhost = "127.0.0.1"\nport = 1\n'
               '[templates.new_ticket_ack]\nenabled = false\n'))
    log = workdir / "daemon.log"
    proc = subprocess.Popen([sys.executable, "-m", "mailgate", "--config", str(config), "serve"],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=workdir)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                smtplib.SMTP(HOST, port, timeout=2).quit()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"daemon did not start:\n{log_tail(log)}") from None
                time.sleep(0.1)
        messages = [message(n, size) for n in range(sessions)]
        idle = tree_rss_kb(proc.pid)
        peak = [idle]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss_kb(proc.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        ok = [False] * sessions

        def send(n: int) -> None:
            with smtplib.SMTP(HOST, port, timeout=300) as smtp:
                smtp.ehlo("client.test")
                refused = smtp.sendmail(f"big{n}@client.test", ["support@bench.example"],
                                        messages[n])
                ok[n] = not refused

        start = time.monotonic()
        senders = [threading.Thread(target=send, args=(n,)) for n in range(sessions)]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        while committed(workdir / "data" / "mailgate.db") < sessions:
            if time.monotonic() - start > 600 or proc.poll() is not None:
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - start
        all_tickets = committed(workdir / "data" / "mailgate.db") == sessions
        done.set()
        sampler.join()
        hwm = rss_kb(proc.pid, "VmHWM")
        return idle, peak[0], hwm, elapsed, all(ok) and all_tickets
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if args.sessions < 1 or args.size_mb < 1 or args.rounds < 1:
        parser.error("--sessions, --size-mb and --rounds must be positive")
    failed = False
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="mailgate-bench-memory-") as tmp:
            idle, peak, hwm, elapsed, ok = one_round(Path(tmp), args.sessions,
                                                     args.size_mb * 1024 * 1024)
        failed |= not ok
        print(f"round {r + 1}: {args.sessions} sessions x {args.size_mb} MB:"
              f" idle {idle / 1024:.0f} MB, peak (daemon and children, sampled)"
              f" {peak / 1024:.0f} MB, daemon VmHWM {hwm / 1024:.0f} MB, {elapsed:.1f} s"
              f" to the last ticket{'' if ok else '  FAILED: not every message became a ticket'}")
    print(f"goal: peak <= {GOAL_MB} MB for 20 sessions of 20 MB")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
