"""Faults of the machine, against a running daemon: a full disk, the database deleted under it,
file descriptors running out. Nothing acknowledged is lost, nothing acknowledged is stuck until
a restart, a shortage never counts toward holding a message, and the log does not flood."""

from __future__ import annotations

import os
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from conftest import Daemon, free_port, queue_id_of, send, write_config

from mailgate.model import Envelope, new_queue_id
from mailgate.pipeline.process import Pipeline
from mailgate.spool import Spool, SpoolWriter
from mailgate.store.db import open_db

MiB = 1024 * 1024


def _mail(n: int | str, body_bytes: int = 200) -> bytes:
    line = b"All work and no play makes Jack a dull boy, all work and no play ok.\r\n"
    body = line * max(1, body_bytes // len(line))
    return (f"From: Dana <dana{n}@client.test>\r\nTo: support@example.com\r\n"
            f"Subject: fault test {n}\r\nMessage-ID: <fault-{n}@client.test>\r\n\r\n"
            ).encode() + body


@contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A small file system of its own at `path` (needs root, as in CI)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_full_disk_loses_nothing_and_recovers_without_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "d"
    port = free_port()
    config = write_config(root, port)
    with tmpfs(root / "data", 48 * MiB) as data:
        d = Daemon(config, port)
        d.start()
        try:
            filler = data / "filler"
            with filler.open("wb") as f:  # leave about 9 MB for 32 messages of 1 MB
                f.write(b"\0" * (_free(data) - 9 * MiB))
            replies: list[tuple[int, str]] = []
            lock = threading.Lock()

            def sender(worker: int) -> None:
                for i in range(4):
                    try:
                        result = send(port, _mail(f"{worker}-{i}", MiB))
                    except smtplib.SMTPResponseException as exc:
                        result = (exc.smtp_code, exc.smtp_error.decode())
                    except AssertionError as exc:  # refused at MAIL by the space check
                        result = (452, str(exc))
                    with lock:
                        replies.append(result)

            threads = [threading.Thread(target=sender, args=(w,)) for w in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            accepted = [queue_id_of(msg) for code, msg in replies if code == 250]
            refused = [(code, msg) for code, msg in replies if code != 250]
            assert len(replies) == 32
            assert accepted, replies
            assert refused, "the disk never ran short: the test proves nothing"
            assert all(code in (451, 452) for code, _ in refused), refused  # never a 5xx
            # Space comes back; every acknowledged message becomes a ticket by itself.
            filler.unlink()
            for qid in accepted:
                assert d.audit_for(qid, timeout=90)["action"] == "created_ticket", qid
            deadline = time.monotonic() + 60
            while True:  # the entries whose result could not be recorded get there too
                spool = [e for e in d.json("spool", "list") if e["state"] != "deferred"]
                if not spool or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert spool == [], spool
            code, msg = send(port, _mail("after", 2000))
            assert code == 250
            assert d.audit_for(queue_id_of(msg))["action"] == "created_ticket"
        finally:
            d.stop()
        # The spool gave the space of processed mail back: not 32 MB of old messages.
        sizes = {p.name: p.stat().st_size for p in data.glob("spool.db*")}
        assert sum(sizes.values()) < 4 * MiB, sizes


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_database_deleted_or_replaced_under_a_running_daemon(daemon: Daemon, how: str) -> None:
    code, msg = send(daemon.port, _mail("before"))
    assert daemon.audit_for(queue_id_of(msg))["action"] == "created_ticket"
    db = daemon.data_dir / "mailgate.db"
    if how == "replaced":
        copy = db.with_name("copy.db")
        copy.write_bytes(db.read_bytes())
        os.replace(copy, db)
    else:
        for suffix in ("", "-wal", "-shm"):
            with suppress(FileNotFoundError):
                os.unlink(f"{db}{suffix}")
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as s:
        s.ehlo("client.test")
        code, reply = s.mail("dana@client.test")
    assert (code, reply.split()[0]) == (451, b"4.3.0"), reply
    assert f"the database {db} was" in daemon.log()
    # A restart opens the database at its path again and takes mail.
    daemon.stop()
    daemon.start()
    code, msg = send(daemon.port, _mail("after"))
    assert code == 250
    assert daemon.audit_for(queue_id_of(msg))["action"] == "created_ticket"


def test_mail_spooled_before_the_database_vanished_waits_in_the_spool(tmp_path: Path) -> None:
    """The pipeline's side: the commit went into a file that is gone, so the spool entry is
    not marked done; it is deferred (not counted as an attempt) and the pipeline reports it."""
    writer = SpoolWriter(tmp_path / "spool.db")
    spool = Spool(tmp_path / "spool.db")
    pipe = Pipeline(open_db(tmp_path / "mailgate.db"), spool, tmp_path, max_attempts=1)
    mail = _mail("spooled")
    env = Envelope(new_queue_id(), time.time(), "127.0.0.1", "t", "dana@client.test",
                   ("support@example.com",), len(mail))
    writer.submit(env, mail).result()
    os.unlink(tmp_path / "mailgate.db")
    (outcome,) = pipe.run_once()
    assert outcome.action == "deferred"
    entry = spool.get(env.queue_id)
    assert entry.state == "deferred" and entry.attempts == 0 and entry.content == mail
    assert pipe.problem and "mailgate.db was deleted" in pipe.problem
    # Restored (a new file at the path): a new pipeline commits it.
    spool._conn.execute("UPDATE spool SET next_attempt=0")
    fresh = Pipeline(open_db(tmp_path / "mailgate.db"), spool, tmp_path, max_attempts=1)
    (outcome,) = fresh.run_once()
    assert outcome.action == "created_ticket"
    writer.close()


def _banner(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(512).startswith(b"220")
    except OSError:
        return False


def _chat(sock: socket.socket, line: bytes) -> bytes:
    """Send one command line (or a DATA body ending in CRLF.CRLF); return the final reply line."""
    sock.sendall(line)
    reply = b""
    while not (len(reply) >= 4 and reply.splitlines()[-1][3:4] == b" "
               and reply.endswith(b"\r\n")):
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply.splitlines()[-1] if reply else b""


def test_descriptors_running_out_hold_nothing_and_do_not_flood_the_log(tmp_path: Path) -> None:
    port = free_port()
    no_limits = "max_sessions = 0\nmax_sessions_per_client = 0"  # let descriptors run out
    d = Daemon(write_config(tmp_path / "d", port, server_extra=no_limits), port)
    d.start(max_open_files=96)
    try:
        _exhaust_descriptors_then_recover(d, port)
    finally:
        d.stop()


def _exhaust_descriptors_then_recover(d: Daemon, port: int) -> None:
    sessions: list[socket.socket] = []
    extra: list[socket.socket] = []
    try:
        # Take every descriptor the daemon has left with sessions that got their banner.
        while len(sessions) < 400:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if not _banner(sock, 1.0):
                extra.append(sock)
                break
            sessions.append(sock)
        assert 10 < len(sessions) < 400, len(sessions)
        # Mail over a session already open: acknowledged (the spool needs no new file), then
        # the pipeline cannot open the files it writes — a shortage of the machine.
        chat = sessions[0]
        chat.settimeout(10)
        assert _chat(chat, b"EHLO client.test\r\n").startswith(b"250 ")
        assert _chat(chat, b"MAIL FROM:<dana@client.test>\r\n").startswith(b"250")
        assert _chat(chat, b"RCPT TO:<support@example.com>\r\n").startswith(b"250")
        assert _chat(chat, b"DATA\r\n").startswith(b"354")
        reply = _chat(chat, _mail("fd") + b".\r\n")
        assert reply.startswith(b"250 2.0.0"), reply
        qid = queue_id_of(reply)
        # More clients knock while nothing can be accepted, for a while.
        for _ in range(100):
            with suppress(OSError):
                extra.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        time.sleep(5)
        (entry,) = [e for e in d.json("spool", "list") if e["queue_id"] == qid]
        assert entry["state"] == "deferred", entry  # it could not be processed for now ...
        assert entry["attempts"] == 0, entry  # ... and that does not count as an attempt
    finally:
        for sock in sessions + extra:
            sock.close()
    row = d.audit_for(qid, timeout=60)
    assert row["action"] == "created_ticket", row
    assert [e for e in d.json("spool", "list") if e["state"] == "hold"] == []
    lines = d.log().splitlines()
    assert len(lines) < 300, f"{len(lines)} log lines; the last: {lines[-5:]}"
    code, _ = send(port, _mail("after-fd"))
    assert code == 250
