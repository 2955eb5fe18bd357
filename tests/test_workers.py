"""`mailgate serve --workers N`: a supervisor and N worker daemons on one SMTP port, on the
suite's real PostgreSQL — real processes, real SMTP over loopback, a unix datagram socket in the
test standing in for systemd's `$NOTIFY_SOCKET`.

What a sysadmin would check: the sessions are spread over the workers (`mailgate spool list
--json` names the node whose spool took each message: `<node_id>-<i>`), each message becomes
exactly one ticket, a worker killed with -9 is started again and every acknowledged message
exists once afterwards, SIGTERM stops everything with status 0, and the mistakes (SQLite, a
port in use) are one line and a non-zero exit.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, free_port, queue_id_of, write_config
from sdnotify_listener import NotifySocket

NODE = "mx"


class Supervised(Daemon):
    """`mailgate serve --workers N` as systemd would run it (NOTIFY_SOCKET set)."""

    def __init__(self, config: Path, port: int, workers: int, notify: NotifySocket) -> None:
        super().__init__(config, port)
        self.workers = workers
        self.notify = notify

    def start(self, timeout: float = 60.0, max_open_files: int | None = None) -> None:
        log = self.log_path.open("ab")
        env = {**os.environ, "NOTIFY_SOCKET": self.notify.address}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailgate", "--config", str(self.config), "serve",
             "--workers", str(self.workers)],
            stdout=log, stderr=log, cwd=self.config.parent, env=env)
        try:
            self.notify.wait_for("READY=1", timeout)  # every worker listens
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log()}") from None

    def worker_pids(self) -> list[int]:
        """The supervisor's child processes (its workers)."""
        assert self.proc is not None
        pids: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            with open(task / "children") as f:
                pids += [int(p) for p in f.read().split()]
        return sorted(pids)


@pytest.fixture
def supervised(tmp_path: Path, pg_at_head: str, notify: NotifySocket) -> Iterator[Supervised]:
    port = free_port()
    cfg = write_config(tmp_path / "d", port)
    text = cfg.read_text().replace(
        'data_dir = "data"', f'data_dir = "data"\ndatabase = "{pg_at_head}"\nnode_id = "{NODE}"',
        1)
    cfg.write_text(text)
    d = Supervised(cfg, port, 2, notify)
    d.start()
    yield d
    d.stop()


def mail(i: int, tag: str) -> bytes:
    return (f"From: Customer {i} <c{i}.{tag}@client.test>\r\nTo: support@example.com\r\n"
            f"Subject: question {tag} {i}\r\nMessage-ID: <{tag}.{i}@client.test>\r\n\r\n"
            f"Hello, this is message {i}.\r\n").encode()


def send_one(port: int, i: int, tag: str) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.test")
        s.mail(f"c{i}.{tag}@client.test")
        s.rcpt("support@example.com")
        code, reply = s.data(mail(i, tag))
        assert code == 250, (code, reply)
        return queue_id_of(reply)


def wait_processed(d: Daemon, expected: set[str], timeout: float = 60.0) -> list[dict[str, Any]]:
    """Wait until every queue id in `expected` has its audit row; all incoming audit rows."""
    deadline = time.monotonic() + timeout
    while True:
        stats = d.json("stats")
        rows = d.json("audit", "incoming", "--limit", "10000")
        spool = stats["spool"]
        if expected <= {r["queue_id"] for r in rows} and not spool["incoming"] \
                and not spool["active"]:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"not processed in time: {stats}\n{d.log()}")
        time.sleep(0.2)


def test_sessions_are_spread_over_both_workers_each_message_one_ticket_and_sigterm_stops_all(
        supervised: Supervised, notify: NotifySocket) -> None:
    d = supervised
    workers = d.worker_pids()
    assert len(workers) == 2, workers
    with ThreadPoolExecutor(12) as pool:
        queue_ids = list(pool.map(lambda i: send_one(d.port, i, "spread"), range(60)))
    assert len(set(queue_ids)) == 60
    rows = wait_processed(d, set(queue_ids))

    # each message exactly one ticket, one audit row
    per_queue = Counter(r["queue_id"] for r in rows)
    assert all(per_queue[q] == 1 for q in queue_ids), per_queue
    assert {r["action"] for r in rows} == {"created_ticket"}
    assert d.json("stats")["tickets"] == 60
    tickets = d.json("tickets", "list", "--limit", "1000")
    assert len(tickets) == 60
    # the kernel spread the sessions: each worker's spool took some (and processed them)
    done = d.json("spool", "list", "--state", "done", "--limit", "1000")
    by_node = Counter(row["node"] for row in done if row["queue_id"] in set(queue_ids))
    assert set(by_node) == {f"{NODE}-0", f"{NODE}-1"}, by_node
    assert sum(by_node.values()) == 60
    stats = d.json("stats")
    assert set(stats["spool_by_node"]) == {NODE, f"{NODE}-0", f"{NODE}-1"}
    assert stats["spool_by_node"][NODE]["done"] == 0  # data_dir/spool.db is not used

    # SIGHUP reaches every worker; READY=1 again once both have reloaded
    assert d.proc is not None
    seen = len(notify.messages)
    d.proc.send_signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING=1", 10, after=seen)
    notify.wait_for("READY=1", 20, after=reloading)
    assert d.log().count("reloaded configuration from") == 2, d.log()

    # SIGTERM: every worker drains and stops, then the supervisor, with status 0
    seen = len(notify.messages)
    assert d.stop(signal.SIGTERM, timeout=40) == 0, d.log()
    notify.wait_for("STOPPING=1", 5, after=seen)
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with socket.socket() as probe:  # the port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        probe.bind(("127.0.0.1", d.port))
    assert "Traceback" not in d.log()


def test_a_worker_killed_mid_load_is_restarted_and_every_acknowledged_message_exists_once(
        supervised: Supervised) -> None:
    d = supervised
    victim = d.worker_pids()[1]
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    counter = iter(range(10**6))

    def sender() -> None:
        while not stop.is_set():
            with lock:
                i = next(counter)
            try:
                qid = send_one(d.port, i, "kill")
            except (OSError, smtplib.SMTPException, AssertionError):
                continue  # cut off by the kill: never acknowledged, the client would retry
            with lock:
                acked.append(qid)

    threads = [threading.Thread(target=sender) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while len(acked) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)  # mid-load: sessions and pipeline batches in flight
        before = len(acked)
        deadline = time.monotonic() + 30
        while len(d.worker_pids()) < 2 or victim in d.worker_pids():
            assert time.monotonic() < deadline, d.log()
            time.sleep(0.1)
        # and the restarted worker takes its share again
        time.sleep(3)
        while len(acked) < before + 40 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert "ended unexpectedly (killed by SIGKILL)" in d.log()
    rows = wait_processed(d, set(acked))
    per_queue = Counter(r["queue_id"] for r in rows)
    assert all(per_queue[q] == 1 for q in acked), [q for q in acked if per_queue[q] != 1]
    # one ticket per message stored: nothing twice
    tickets = d.json("tickets", "list", "--limit", "10000")
    assert len(tickets) == len(per_queue) >= len(acked)
    done = d.json("spool", "list", "--state", "done", "--limit", "10000")
    nodes = Counter(row["node"] for row in done if row["queue_id"] in set(acked))
    assert nodes[f"{NODE}-1"] > 0 and nodes[f"{NODE}-0"] > 0, nodes
    assert d.stop(signal.SIGTERM, timeout=40) == 0, d.log()


def test_workers_on_sqlite_are_refused_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "d", port)
    result = subprocess.run(
        [sys.executable, "-m", "mailgate", "--config", str(cfg), "serve", "--workers", "2"],
        capture_output=True, text=True, timeout=60, cwd=cfg.parent)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mailgate: serve --workers 2 needs [storage] database on"
                               " PostgreSQL"), lines
    assert not (cfg.parent / "data" / "workers").exists()
    # the same in the config file: one line naming the file and the key
    cfg.write_text(cfg.read_text().replace("[server]\n", "[server]\nworkers = 2\n", 1))
    result = subprocess.run(
        [sys.executable, "-m", "mailgate", "--config", str(cfg), "check-config"],
        capture_output=True, text=True, timeout=60, cwd=cfg.parent)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"mailgate: {cfg}: [server] workers: more than 1 needs [storage] database on"
        " PostgreSQL (the embedded SQLite store is one process's)")


def test_a_port_in_use_stops_the_supervisor_with_one_line(tmp_path: Path,
                                                           pg_database: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = write_config(tmp_path / "d", port)
        cfg.write_text(cfg.read_text().replace(
            'data_dir = "data"', f'data_dir = "data"\ndatabase = "{pg_database}"', 1))
        result = subprocess.run(
            [sys.executable, "-m", "mailgate", "--config", str(cfg), "serve", "--workers", "2"],
            capture_output=True, text=True, timeout=60, cwd=cfg.parent)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"mailgate: cannot listen on 127.0.0.1:{port} ([server] listen in {cfg}):"
        " Address already in use"], result.stderr


def test_changing_the_number_of_workers_moves_unfinished_mail_into_a_spool_that_runs(
        tmp_path: Path) -> None:
    """A worker index beyond the new N (or the single daemon's spool when workers start, and
    back): its unfinished entries move, bytes, kind and hold intact; done ones stay put."""
    from mailgate.model import KIND_REJECTION, Envelope
    from mailgate.ops.spools import adopt
    from mailgate.spool import SPILL_BYTES, Spool, SpoolWriter

    source, target = tmp_path / "workers" / "2" / "spool.db", tmp_path / "spool.db"
    writer = SpoolWriter(source)

    def env(qid: str) -> Envelope:
        return Envelope(qid, time.time(), "127.0.0.1", "client.test", "a@client.test",
                        ("support@example.com",), 10)

    big = b"x" * (SPILL_BYTES + 10)
    body = writer.new_body("BIG")
    body.write(big)
    for qid, content, kind in (("SMALL", b"hello", "message"), ("BIG", body, "message"),
                               ("HELD", b"broken", "message"), ("DONE", b"old", "message"),
                               ("REJ", None, KIND_REJECTION)):
        writer.submit(env(qid), content, kind, "too big" if kind == KIND_REJECTION else None
                      ).result()
    writer.close()
    old = Spool(source)
    old.hold("HELD", "parse failed 3 times")
    old.mark_done("DONE")
    old.close()

    assert adopt(target, source) == 4
    assert adopt(target, source) == 0  # nothing left to move: no duplicate
    new, old = Spool(target), Spool(source)
    try:
        got = {e.envelope.queue_id: e for e in new.entries(limit=100)}
        assert set(got) == {"SMALL", "BIG", "HELD", "REJ"}
        assert got["HELD"].state == "hold" and got["HELD"].reason == "parse failed 3 times"
        assert got["REJ"].kind == KIND_REJECTION and got["REJ"].reason == "too big"
        assert {got[q].state for q in ("SMALL", "BIG", "REJ")} == {"incoming"}
        assert new.get("SMALL").content == b"hello"  # type: ignore[union-attr]
        assert new.get("BIG").content == big  # type: ignore[union-attr]
        assert old.entries(limit=100) == []  # all done in the source
        assert old.counts()["done"] == 5
    finally:
        new.close()
        old.close()
