"""Import benchmark: how fast does `mailgate import` take a big mbox, in how much memory?

Usage: python bench/import.py [--sizes 10000,100000] [--batch 200] [--jobs N]

Input:  command-line options only. For each size it writes a synthetic mbox in a temporary
        directory — conversations of three messages (a customer's mail, an agent's reply, the
        customer's answer; about 2 KB each, every tenth first mail with a 20 KB attachment),
        dated over the last years, written newest conversation first so the import has to sort
        them — and runs `mailgate import --json --quiet` on it in a new process, into a fresh
        data directory on the embedded SQLite (`--jobs N`: its examining processes; default:
        mailgate's, one per CPU).
Output: on stdout, per size: messages, seconds, messages/s, the import process's peak RSS (its
        own rusage; the examining processes hold one batch each and are not counted), and the
        tickets made; then, measured in the same run as baselines, the
        rate at which the same messages are merely read and parsed by mailgate's parser in one
        process (the part of the import's work that is not the database), the import's rate as
        a ratio of it, and the peak RSS of the biggest size as a ratio of the smallest's
        (bounded memory: far below the ratio of the sizes). Exit status 0 when every import
        stored every message as one ticket per conversation; 1 otherwise.
Trust:  developer tool; it reads and writes only its temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

from benchlib import BenchError, free_port, run_in_workdir, write_mailgate_config

from mailgate.parsing.mailboxes import open_archive
from mailgate.parsing.parse import parse

TEXT = ("Hello, the printer on the third floor jams whenever someone prints double-sided and"
        " the tray shows error E-42. We tried the usual steps without luck.\n") * 12
ATTACHMENT = ("QmVuY2htYXJrIGF0dGFjaG1lbnQgZGF0YSBsaW5lIGZvciB0aGUgaW1wb3J0IGJlbmNo" * 4
              + "\n") * 70


def _message(n: int, kind: int, when: datetime) -> str:
    conv = f"c{n}"
    ids = [f"<{conv}.{k}@bench.test>" for k in range(3)]
    customer = f"customer{n}@client{n % 500}.test"
    sender, to = ((customer, "support@example.com") if kind != 1
                  else ("agent@example.com", customer))
    head = (f"From: {sender}\nTo: {to}\nSubject: {'Re: ' if kind else ''}Printer jams #{n}\n"
            f"Date: {format_datetime(when + timedelta(hours=kind))}\nMessage-ID: {ids[kind]}\n")
    if kind:
        head += f"In-Reply-To: {ids[kind - 1]}\nReferences: {' '.join(ids[:kind])}\n"
    body = f"Message {kind} of conversation {n}.\n{TEXT}"
    if kind == 0 and n % 10 == 0:
        return (head + 'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n'
                f"--b\nContent-Type: text/plain\n\n{body}\n--b\nContent-Type: application/pdf\n"
                f'Content-Disposition: attachment; filename="scan{n}.pdf"\n'
                f"Content-Transfer-Encoding: base64\n\n{ATTACHMENT}--b--\n")
    return head + "\n" + body


def write_mbox(path: Path, messages: int) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
    with open(path, "w") as out:
        for n in reversed(range(messages // 3)):  # newest first: the import sorts by date
            when = now - timedelta(hours=6 * n)
            for kind in range(3):
                out.write("From bench@import.test Thu Jan  4 10:00:00 2024\n")
                out.write(_message(n, kind, when))
                out.write("\n")


def run_import(workdir: Path, mbox: Path, batch: int, jobs: int | None) -> dict:
    work = workdir / mbox.stem
    work.mkdir()
    config = write_mailgate_config(work, free_port(), "example.com", "support@example.com",
                                   extra='\n[[agents]]\nname = "Agent"\n'
                                         'email = "agent@example.com"\n')
    started = time.perf_counter()
    with open(work / "out.json", "wb") as out, open(work / "err.txt", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailgate", "--config", str(config), "import", str(mbox),
             "--json", "--quiet", "--batch", str(batch),
             *(["--jobs", str(jobs)] if jobs else [])], stdout=out, stderr=err, cwd=work)
        _pid, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: its peak RSS
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code != 0:
        raise BenchError(f"import failed ({code}): {(work / 'err.txt').read_text()[-2000:]}")
    result = json.loads((work / "out.json").read_text())
    result["wall_seconds"] = seconds
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def parse_rate(mbox: Path, limit: int) -> float:
    archive = open_archive([str(mbox)])
    entries = archive.entries[:limit]
    started = time.perf_counter()
    for entry in entries:
        parse(archive.read(entry))
    archive.close()
    return len(entries) / (time.perf_counter() - started)


def bench(workdir: Path, sizes: list[int], batch: int, jobs: int | None) -> None:
    results = []
    for size in sizes:
        mbox = workdir / f"m{size}.mbox"
        write_mbox(mbox, size)
        messages = size // 3 * 3
        got = run_import(workdir, mbox, batch, jobs)
        if got["imported"] != messages or got["tickets_created"] != messages // 3:
            raise BenchError(f"{size}: imported {got['imported']} of {messages} into"
                             f" {got['tickets_created']} tickets")
        rate = messages / got["seconds"]
        results.append((size, got, rate, mbox))
        print(f"{messages:>7} messages: {got['seconds']:8.1f} s  {rate:7.1f} msg/s  peak RSS"
              f" {got['peak_rss_mb']:6.1f} MB  {got['tickets_created']} tickets", flush=True)
    smallest = results[0]
    baseline = parse_rate(smallest[3], 3000)
    print(f"baseline: read and parse only, one process: {baseline:.1f} msg/s")
    for size, _got, rate, _ in results:
        print(f"{size:>7}: import rate / parse rate = {rate / baseline:.2f}")
    if len(results) > 1:
        big = results[-1]
        print(f"peak RSS {big[0]} / {smallest[0]} messages = "
              f"{big[1]['peak_rss_mb'] / smallest[1]['peak_rss_mb']:.2f}"
              f" (the sizes' ratio is {big[0] / smallest[0]:.0f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=None)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    return run_in_workdir("mailgate-bench-import-",
                          lambda w: bench(w, sizes, args.batch, args.jobs))


if __name__ == "__main__":
    sys.exit(main())
