"""The pipeline in its own process (`[pipeline] process = "separate"`).

A running daemon, real SMTP over loopback: killing the pipeline process mid-stream loses and
repeats nothing (the daemon starts another, what the dead one had claimed goes back to the
spool); the pipeline process dies with the daemon, however the daemon dies; `"inline"` (the
default) keeps everything in one process; a bad value is one line naming the file and the key.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner
from conftest import Daemon, queue_id_of, send, write_config

from mailgate.cli import cli


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "spawn_main" in line]


def pipeline_pid(d: Daemon, timeout: float = 30.0, not_: int = 0) -> int:
    """The pid of the daemon's (latest) pipeline process, from its log line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [int(p) for p in re.findall(r"pipeline process started \(pid (\d+)\)", d.log())]
        if found and found[-1] != not_:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no (new) pipeline process:\n{d.log()}")


def message(n: int) -> str:
    return (f"From: Customer {n} <c{n}@client.test>\r\nTo: support@example.com\r\n"
            f"Subject: help {n}\r\nMessage-ID: <pp-{n}@client.test>\r\n\r\nPlease help.\r\n")


SEPARATE = '\n[pipeline]\nprocess = "separate"\n'


def test_a_killed_pipeline_process_loses_and_repeats_nothing(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(extra=SEPARATE)
    first = pipeline_pid(d)
    queue_ids: list[str] = []
    lock = threading.Lock()

    def client(start: int) -> None:
        for n in range(start, start + 15):
            code, reply = send(d.port, message(n), mail_from=f"c{n}@client.test")
            assert code == 250, reply
            with lock:
                queue_ids.append(queue_id_of(reply))

    senders = [threading.Thread(target=client, args=(i * 100,)) for i in range(4)]
    for t in senders:
        t.start()
    time.sleep(0.5)
    os.kill(first, signal.SIGKILL)  # mid-stream
    for t in senders:
        t.join(60)
    assert len(queue_ids) == 60
    second = pipeline_pid(d, timeout=60, not_=first)
    os.kill(second, 0)  # alive
    rows = [d.audit_for(q, timeout=60) for q in queue_ids]
    assert {r["action"] for r in rows} == {"created_ticket"}
    tickets = d.json("tickets", "list", "--limit", "1000")
    assert len(tickets) == 60  # every acknowledged message once, none twice
    assert "ended unexpectedly" in d.log()
    assert d.proc is not None and d.proc.poll() is None  # the daemon itself kept running


def test_the_pipeline_process_dies_with_the_daemon(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(extra=SEPARATE)
    child = pipeline_pid(d)
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the pipeline process outlived the daemon")
    d.proc = None


def test_inline_keeps_one_process(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()  # the default
    code, reply = send(d.port, message(1))
    assert code == 250, reply
    assert d.audit_for(queue_id_of(reply))["action"] == "created_ticket"
    assert "pipeline process started" not in d.log()
    assert d.proc is not None and children(d.proc.pid) == []


def test_a_bad_process_setting_names_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, 2525, extra='\n[pipeline]\nprocess = "threads"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "check-config"])
    assert result.exit_code == 1
    assert f'{config}: [pipeline] process: expected "separate" or "inline", got \'threads\'' \
        in result.output

