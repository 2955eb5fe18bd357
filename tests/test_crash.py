"""SIGKILL under concurrent load: after a restart, every message that got a 250 exists once."""

from __future__ import annotations

import signal
import smtplib
import sqlite3
import threading
import time

from conftest import Daemon

SENDERS = 8
PER_SENDER = 60
BODY = (b"x" * 70 + b"\r\n") * 30


def test_sigkill_under_load_loses_and_duplicates_nothing(daemon: Daemon) -> None:
    acked: dict[str, str] = {}  # Message-ID → queue id, for every 250
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[Exception] = []

    def sender(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as s:
                s.ehlo("load.test")
                for i in range(PER_SENDER):
                    if stop.is_set():
                        return
                    mid = f"crash-{n}-{i}@load.test"
                    s.mail(f"load{n}@load.test")
                    s.rcpt("support@example.com")
                    code, msg = s.data(
                        f"From: load{n}@load.test\r\nSubject: load {n} {i}\r\n"
                        f"Message-ID: <{mid}>\r\n\r\n".encode() + BODY
                    )
                    if code == 250:
                        with lock:
                            acked[mid] = msg.decode().rsplit(" ", 1)[-1]
        except (OSError, smtplib.SMTPException) as exc:
            errors.append(exc)  # the server died under us: what was acked before counts

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(SENDERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < SENDERS * PER_SENDER // 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    daemon.stop(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= SENDERS * PER_SENDER // 3, errors[:3]

    daemon.start()
    stats = daemon.wait_idle(timeout=120)
    db = sqlite3.connect(daemon.data_dir / "mailgate.db")
    for mid, qid in acked.items():
        count = db.execute("SELECT COUNT(*) FROM messages WHERE message_id=?", (mid,)).fetchone()
        assert count[0] == 1, (mid, qid, count)
    stored = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    # messages in flight when the process died may have been stored without their 250 reaching
    # us; nothing acknowledged is missing and nothing is stored twice
    assert len(acked) <= stored <= len(acked) + SENDERS
    dupes = db.execute(
        "SELECT message_id FROM messages GROUP BY message_id HAVING COUNT(*) > 1").fetchall()
    assert dupes == []
    assert stats["spool"]["hold"] == 0
