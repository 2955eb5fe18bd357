"""The spool's states: retries, hold with the error, release, and recovery after a crash."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import Daemon, queue_id_of, send

from mailgate.model import Envelope, new_queue_id
from mailgate.pipeline.process import Pipeline
from mailgate.spool import Spool, SpoolWriter
from mailgate.store.db import open_db

MAIL = (b"From: h@client.test\r\nTo: support@example.com\r\nSubject: hold me\r\n"
        b"Message-ID: <hold-1@client.test>\r\n\r\nbody\r\n")


def _env() -> Envelope:
    return Envelope(new_queue_id(), time.time(), "127.0.0.1", "t", "h@client.test",
                    ("support@example.com",), len(MAIL))


def test_failing_message_is_held_after_three_attempts_then_released(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path / "spool.db")
    spool = Spool(tmp_path / "spool.db")
    pipe = Pipeline(open_db(tmp_path / "mailgate.db"), spool, tmp_path, max_attempts=3)
    (tmp_path / "raw").write_text("a file where the raw/ directory should be")  # disk fault
    env = _env()
    writer.submit(env, MAIL).result()
    for attempt in (1, 2, 3):
        spool._conn.execute("UPDATE spool SET next_attempt=0")  # skip the retry delay
        (outcome,) = pipe.run_once()
        assert outcome.action == ("held" if attempt == 3 else "deferred")
    entry = spool.get(env.queue_id)
    assert entry.state == "hold" and entry.attempts == 3
    assert "raw" in entry.reason and entry.content == MAIL  # nothing lost
    row = pipe.db.execute("SELECT action, reason FROM audit_incoming WHERE queue_id=?",
                          [env.queue_id]).fetchone()
    assert row[0] == "held" and "raw" in row[1]
    # the administrator fixes the disk and releases the message
    (tmp_path / "raw").unlink()
    spool.retry(env.queue_id)
    (outcome,) = pipe.run_once()
    assert outcome.action == "created_ticket"
    assert spool.get(env.queue_id).state == "done"
    rows = pipe.db.execute("SELECT action FROM audit_incoming WHERE queue_id=?",
                           [env.queue_id]).fetchall()
    assert rows == [("created_ticket",)]
    writer.close()


def test_recovery_requeues_active_work_and_holds_repeated_crashes(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path / "spool.db")
    spool = Spool(tmp_path / "spool.db")
    once, thrice = _env(), _env()
    writer.submit(once, MAIL).result()
    writer.submit(thrice, MAIL).result()
    spool.claim()  # both active, attempts=1: then the process "dies"
    spool._conn.execute("UPDATE spool SET attempts=3 WHERE queue_id=?", (thrice.queue_id,))
    assert spool.recover(max_attempts=3) == (1, 1)
    assert spool.get(once.queue_id).state == "incoming"
    held = spool.get(thrice.queue_id)
    assert held.state == "hold" and "interrupted 3 times" in held.reason
    writer.close()


def test_cli_retry_releases_a_held_message_on_the_running_daemon(daemon: Daemon) -> None:
    raw_dir = daemon.data_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    raw_dir.rmdir()
    raw_dir.write_text("not a directory")
    qid = queue_id_of(send(daemon.port, MAIL)[1])
    deadline = time.monotonic() + 30
    while daemon.json("spool", "list", "--state", "hold") == [] and time.monotonic() < deadline:
        time.sleep(0.2)
    (held,) = daemon.json("spool", "list", "--state", "hold")
    assert held["queue_id"] == qid and held["attempts"] == 3
    assert daemon.audit_for(qid)["action"] == "held"
    raw_dir.unlink()
    assert "back to incoming" in daemon.cli("spool", "retry", qid)
    deadline = time.monotonic() + 30
    while daemon.audit_for(qid)["action"] != "created_ticket":
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.1)
    assert len(daemon.json("tickets", "list")) == 1
