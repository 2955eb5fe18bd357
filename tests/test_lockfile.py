"""One daemon per data directory: a second `mailgate serve` on the same data_dir refuses to
start, in one line naming the directory and the running daemon's PID, and leaves the first one's
in-flight mail alone. Two real daemons (subprocesses), a real spool file; the reading commands
keep working while a daemon holds the lock; a killed daemon leaves no stale lock behind."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import Daemon, free_port, queue_id_of, send, write_config

MAIL = (b"From: Jane <jane@customer.test>\r\nTo: support@example.com\r\n"
        b"Subject: printer on fire\r\nMessage-ID: <lock-1@customer.test>\r\n\r\nHelp.\r\n")


def second_config(first: Daemon, tmp_path: Path) -> tuple[Path, int]:
    """Another config, in another directory and on another port, with the first's data_dir."""
    port = free_port()
    config = write_config(tmp_path / "second", port)
    config.write_text(config.read_text().replace(
        'data_dir = "data"', f'data_dir = "{first.data_dir}"'))
    return config, port


def spool_state(data_dir: Path, queue_id: str) -> str:
    with sqlite3.connect(data_dir / "spool.db") as conn:
        (state,) = conn.execute("SELECT state FROM spool WHERE queue_id=?",
                                (queue_id,)).fetchone()
    return str(state)


def test_second_daemon_on_the_same_data_dir_refuses_and_leaves_the_spool_alone(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    first = make_daemon()
    assert first.proc is not None
    queue_id = queue_id_of(send(first.port, MAIL)[1])
    assert first.audit_for(queue_id)["action"] == "created_ticket"
    # Mail the first daemon is working on right now: `active` in its spool.
    with sqlite3.connect(first.data_dir / "spool.db") as conn:
        conn.execute("UPDATE spool SET state='active' WHERE queue_id=?", (queue_id,))

    config, _port = second_config(first, tmp_path)
    second = subprocess.Popen(
        [sys.executable, "-m", "mailgate", "--config", str(config), "serve"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = second.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        second.send_signal(signal.SIGTERM)
        out, err = second.communicate(timeout=20)
        raise AssertionError(f"the second daemon ran on the same data_dir:\n{err}") from None
    assert second.returncode == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(first.data_dir) in lines[0] and f"PID {first.proc.pid}" in lines[0], lines[0]
    assert lines[0].startswith("mailgate: ") and "Traceback" not in err
    assert spool_state(first.data_dir, queue_id) == "active"  # not requeued by the second

    # The first one runs on; the commands that only read work while it holds the lock.
    assert first.proc.poll() is None
    assert first.json("stats")["tickets"] == 1
    assert [t["subject"] for t in first.json("tickets", "list")] == ["printer on fire"]
    assert first.json("audit", "incoming")[0]["queue_id"] == queue_id
    assert [e["queue_id"] for e in first.json("spool", "list")] == [queue_id]
    assert first.json("audit", "outgoing") is not None
    assert "ok (" in first.cli("check-config")


def test_data_dir_is_free_again_once_the_daemon_stops_or_is_killed(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    first = make_daemon()
    config, port = second_config(first, tmp_path)
    second = Daemon(config, port)
    assert first.stop() == 0  # SIGTERM: the lock is released
    second.start()
    queue_id = queue_id_of(send(port, MAIL)[1])
    assert second.audit_for(queue_id)["action"] == "created_ticket"
    assert second.stop(signal.SIGKILL) == -signal.SIGKILL  # no release: the kernel drops it
    first.start()
    assert first.json("stats")["tickets"] == 1
