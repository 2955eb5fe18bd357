"""Group commit in the pipeline: a batch of spooled messages is stored with one round of fsyncs
and one transaction, and a message that fails inside the batch is rolled back alone — the
others are stored, the failed one is retried, then held, exactly as when processed alone.

The failure is real: a SQLite trigger on the real database refuses one message's row."""

from __future__ import annotations

import time
from pathlib import Path

from mailgate.model import Envelope, new_queue_id
from mailgate.pipeline.process import Pipeline
from mailgate.spool import Spool, SpoolWriter
from mailgate.store.db import open_db


def _mail(n: int) -> bytes:
    return (f"From: Dana <dana{n}@client{n}.test>\r\nTo: support@example.com\r\n"
            f"Subject: batch {n}\r\nMessage-ID: <batch-{n}@client.test>\r\n\r\n"
            f"Message number {n} of the batch.\r\n").encode()


def _spool(tmp_path: Path, count: int) -> tuple[SpoolWriter, Spool, list[str]]:
    writer = SpoolWriter(tmp_path / "spool.db")
    spool = Spool(tmp_path / "spool.db")
    ids = []
    for n in range(count):
        mail = _mail(n)
        env = Envelope(new_queue_id(), time.time(), "127.0.0.1", "t", f"dana{n}@client{n}.test",
                       ("support@example.com",), len(mail))
        writer.submit(env, mail).result()
        ids.append(env.queue_id)
    return writer, spool, ids


def test_a_batch_is_stored_together(tmp_path: Path) -> None:
    writer, spool, ids = _spool(tmp_path, 12)
    db = open_db(tmp_path / "mailgate.db")
    outcomes = Pipeline(db, spool, tmp_path).run_once(32)
    assert [o.queue_id for o in outcomes] == ids  # one batch, in the order received
    assert {o.action for o in outcomes} == {"created_ticket"}
    assert db.execute("SELECT COUNT(*) FROM tickets").fetchone()[0] == 12
    for qid in ids:
        assert spool.get(qid).state == "done"
        (raw_path,) = db.execute("SELECT raw_path FROM messages m JOIN audit_incoming a"
                                 " ON a.message_row = m.id WHERE a.queue_id=?",
                                 (qid,)).fetchone()
        assert (tmp_path / raw_path).read_bytes().startswith(b"From: Dana")
    assert not list(tmp_path.glob("raw/**/.*.tmp"))  # no temporary file left behind
    writer.close()


def test_a_failing_message_is_rolled_back_alone(tmp_path: Path) -> None:
    writer, spool, ids = _spool(tmp_path, 6)
    db = open_db(tmp_path / "mailgate.db")
    db.execute("CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.subject = 'batch 3'"
               " BEGIN SELECT RAISE(ABORT, 'message 3 refused by the test trigger'); END")
    pipe = Pipeline(db, spool, tmp_path, max_attempts=2)
    outcomes = pipe.run_once(32)
    assert [o.action for o in outcomes] == ["created_ticket"] * 3 + ["deferred"] + [
        "created_ticket"] * 2
    assert "refused by the test trigger" in outcomes[3].reason
    # nothing of message 3 is stored: no ticket, no customer, no audit row
    assert db.execute("SELECT COUNT(*) FROM tickets").fetchone()[0] == 5
    assert db.execute("SELECT COUNT(*) FROM customers WHERE email='dana3@client3.test'"
                      ).fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM audit_incoming WHERE queue_id=?",
                      (ids[3],)).fetchone()[0] == 0
    assert spool.get(ids[3]).state == "deferred" and spool.get(ids[3]).attempts == 1
    assert all(spool.get(q).state == "done" for i, q in enumerate(ids) if i != 3)
    # its second attempt fails too: held with the reason, and an audit row says so
    spool._conn.execute("UPDATE spool SET next_attempt=0")
    (outcome,) = pipe.run_once(32)
    assert outcome.action == "held" and spool.get(ids[3]).state == "hold"
    (action, reason) = db.execute("SELECT action, reason FROM audit_incoming WHERE queue_id=?",
                                  (ids[3],)).fetchone()
    assert action == "held" and "refused by the test trigger" in reason
    # the trigger removed, a retry stores it
    db.execute("DROP TRIGGER poison")
    spool.retry(ids[3])
    (outcome,) = pipe.run_once(32)
    assert outcome.action == "created_ticket"
    writer.close()


def test_a_batch_whose_database_vanished_is_deferred_whole(tmp_path: Path) -> None:
    """The commit went into a file that is gone: nothing of the batch counts as stored, every
    entry waits in the spool (not counted as an attempt)."""
    import os
    writer, spool, ids = _spool(tmp_path, 5)
    pipe = Pipeline(open_db(tmp_path / "mailgate.db"), spool, tmp_path, max_attempts=1)
    os.unlink(tmp_path / "mailgate.db")
    outcomes = pipe.run_once(32)
    assert [o.action for o in outcomes] == ["deferred"] * 5
    for qid in ids:
        entry = spool.get(qid)
        assert entry.state == "deferred" and entry.attempts == 0
    writer.close()
