"""The relay worker when things go wrong between DATA and the record of its outcome.

A relay that takes longer than `[relay] timeout` to answer the end of data (the mail is sent
once, not again every time the client gives up); a daemon killed with SIGKILL while the relay
holds that reply (the mail is "maybe sent": resent with the same Message-ID, and the audit says
so) or while it holds a RCPT reply (nothing was sent: simply retried); no reply within
`[relay] data_timeout`; and an outcome the database refuses to record for a while (kept and
written once it can be, never sent again).

Real parts: a running daemon or the worker itself, a real aiosmtpd relay (tests/relay_stub.py)
and real SQLite files; the database is locked by a second connection holding a write
transaction.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import send, wait_outgoing
from relay_stub import RelayStub
from test_relay import make_worker, queue, row, running, status_is

CUSTOMER = "jane@customer.test"


def mail(subject: str, mid: str) -> str:
    return (f"From: Jane Doe <{CUSTOMER}>\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{mid}>\r\n\r\nHello, I need help with {subject}.\r\n")


def test_slow_end_of_data_reply_is_waited_for_and_the_mail_is_sent_once(
        out_daemon, relay: RelayStub) -> None:
    # The daemon's [relay] timeout is 5 s (tests/conftest.py: relay_section); the relay takes
    # 7 s to answer the end of data, as a busy smarthost scanning the mail may.
    relay.data_reply_delay = 7.0
    d = out_daemon()
    assert send(d.port, mail("slow relay", "slow-1@customer.test"))[0] == 250
    (row_,) = wait_outgoing(d, lambda rows: rows and rows[0]["status"] == "sent", timeout=40)
    assert row_["attempts"] == 1 and row_["maybe_sent"] == 0
    assert row_["last_error"].startswith("250 2.0.0 Ok: queued as stub1")
    time.sleep(1.0)
    assert len(relay.messages) == 1


def test_sigkill_while_the_relay_holds_the_end_of_data_reply_resends_as_maybe_sent(
        out_daemon, relay: RelayStub) -> None:
    relay.hold("data")
    d = out_daemon()
    assert send(d.port, mail("crash in data", "crash-1@customer.test"))[0] == 250
    relay.wait_held("data", timeout=20)  # the relay has the whole mail; its 250 is held back
    assert len(relay.messages) == 1
    d.stop(signal.SIGKILL)
    relay.release("data")
    d.start()
    (out,) = wait_outgoing(d, lambda rows: rows and rows[0]["status"] == "sent")
    assert out["attempts"] == 2 and out["maybe_sent"] == 1
    assert "maybe sent twice" in out["last_error"], out
    assert f"same Message-ID <{out['message_id']}>" in out["last_error"]
    assert "maybe sent: attempt 1 was cut short by a restart after DATA began" in d.log()
    first, second = relay.wait_for(2)
    assert first.message["Message-ID"] == second.message["Message-ID"] == \
        f"<{out['message_id']}>"
    time.sleep(1.0)
    assert len(relay.messages) == 2


def test_sigkill_before_data_is_simply_retried(out_daemon, relay: RelayStub) -> None:
    relay.hold("rcpt")
    d = out_daemon()
    assert send(d.port, mail("crash in rcpt", "crash-2@customer.test"))[0] == 250
    relay.wait_held("rcpt", timeout=20)
    d.stop(signal.SIGKILL)
    relay.release("rcpt")
    d.start()
    (out,) = wait_outgoing(d, lambda rows: rows and rows[0]["status"] == "sent")
    assert out["attempts"] == 2 and out["maybe_sent"] == 0
    assert "maybe sent" not in out["last_error"]
    assert "attempt 1 was cut short by a restart before DATA (nothing was sent)" in d.log()
    time.sleep(1.0)
    assert len(relay.messages) == 1


# --- the worker itself ------------------------------------------------------------------------


@pytest.fixture
def stub() -> RelayStub:
    s = RelayStub().start()
    yield s
    s.stop()


def test_no_reply_within_data_timeout_is_maybe_sent_and_resent_with_the_same_message_id(
        tmp_path: Path, stub: RelayStub) -> None:
    from mailgate.store.db import open_db

    db_path = tmp_path / "mailgate.db"
    db = open_db(db_path)
    oid = queue(db, CUSTOMER)
    stub.data_reply_delay = 1.5

    async def scenario() -> None:
        async with running(make_worker(db_path, stub.port, data_timeout=0.5,
                                       retry_base_seconds=1.0)):
            r = await status_is(db, oid, "deferred")
            assert r["maybe_sent"] == 1
            assert r["last_error"] == (
                f"maybe sent: no reply from relay 127.0.0.1:{stub.port} within [relay]"
                " data_timeout = 0.5s after DATA began; it is resent with the same Message-ID"
                " <out1@example.com>, so the receiver can drop the copy")
            stub.data_reply_delay = 0.0
            r = await status_is(db, oid, "sent")
            assert r["attempts"] == 2 and r["maybe_sent"] == 1
            assert "maybe sent twice" in r["last_error"]

    asyncio.run(scenario())
    first, second = stub.wait_for(2)
    assert first.data == second.data == row(db, oid)["raw"]


def test_an_outcome_the_database_refuses_is_kept_and_written_once_it_can_be(
        tmp_path: Path, stub: RelayStub, caplog: pytest.LogCaptureFixture) -> None:
    from mailgate.store.db import open_db

    db_path = tmp_path / "mailgate.db"
    db = open_db(db_path)
    oid = queue(db, CUSTOMER)
    stub.hold("data")
    caplog.set_level(logging.WARNING, logger="mailgate.outbound.relay")
    blocker = sqlite3.connect(db_path, isolation_level=None)

    async def scenario() -> None:
        worker = make_worker(db_path, stub.port)
        # Waiting 30 s for a lock (the daemon's busy timeout) stands for any write that fails:
        # here a write that finds the database locked fails after 0.2 s.
        worker.db.execute("PRAGMA busy_timeout=200")
        async with running(worker):
            await asyncio.to_thread(stub.wait_held, "data")
            blocker.execute("BEGIN IMMEDIATE")  # another writer holds the database
            stub.release("data")  # the relay says 250; the worker cannot write it down
            await asyncio.sleep(2.5)
            assert row(db, oid)["status"] == "sending"
            blocker.execute("COMMIT")
            r = await status_is(db, oid, "sent")
            assert r["last_error"] == "250 2.0.0 Ok: queued as stub1" and r["attempts"] == 1
        # A new start finds nothing to settle and sends nothing again.
        async with running(make_worker(db_path, stub.port)):
            await asyncio.sleep(0.5)
            assert row(db, oid)["status"] == "sent"

    try:
        asyncio.run(scenario())
    finally:
        blocker.close()
    retries = [r.getMessage() for r in caplog.records
               if f"outbound_id={oid} cannot record 'sent' yet (database is locked)" in
               r.getMessage()]
    assert len(retries) >= 3, caplog.text
    assert f"outbound_id={oid} 'sent' recorded after" in caplog.text
    assert len(stub.messages) == 1
