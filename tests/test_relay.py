"""The relay worker against a real aiosmtpd smarthost (tests/relay_stub.py) and a real SQLite
outbox: delivery, 4xx retry, 5xx failure, relay down then up, giving up, crash recovery, DKIM."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest
import sqlite_utils
from relay_stub import RelayStub, free_port

from mailgate.config import Dkim, Relay
from mailgate.outbound.dkim_sign import dns_txt_value, keygen, sign
from mailgate.outbound.relay import RelayWorker, backoff
from mailgate.store.db import open_db, transaction
from mailgate.store.outbound import OutboundMail, enqueue

FAST = {"timeout": 5.0, "retry_base_seconds": 0.2, "retry_max_seconds": 1.0}


def verp(mail: OutboundMail) -> str:
    return f"bounces+{mail.id}@example.com"


def raw_message(to: str, subject: str = "Re: [#1] Printer", n: int = 1) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Support <support@example.com>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate()
    msg["Message-ID"] = f"<out{n}.{time.time_ns()}@example.com>"
    msg.set_content("We are on it.\n.\n..leading dots survive\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "mailgate.db"


@pytest.fixture
def db(db_path: Path) -> sqlite_utils.Database:
    return open_db(db_path)


@pytest.fixture
def stub() -> Any:
    s = RelayStub().start()
    yield s
    s.stop()


def queue(db: sqlite_utils.Database, to: str, n: int = 1, raw: bytes | None = None) -> int:
    raw = raw or raw_message(to, n=n)
    with transaction(db) as conn:
        return enqueue(conn, ticket_id=1, kind="agent_reply", automatic=False, to_addr=to,
                       subject="Re: [#1] Printer", message_id=f"out{n}@example.com", raw=raw)


def row(db: sqlite_utils.Database, oid: int) -> dict[str, Any]:
    return next(db.query("SELECT * FROM outbound WHERE id=?", [oid]))


async def until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.01)


async def status_is(db: sqlite_utils.Database, oid: int, status: str, timeout: float = 5.0
                    ) -> dict[str, Any]:
    await until(lambda: row(db, oid)["status"] == status, timeout,
                f"outbound {oid} to be {status}")
    return row(db, oid)


@contextlib.asynccontextmanager
async def running(worker: RelayWorker) -> AsyncIterator[RelayWorker]:
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        try:
            await asyncio.wait_for(task, 10)
        finally:
            worker.close()


def make_worker(db_path: Path, port: int, signer: Callable[[bytes], bytes] | None = None,
                **relay: Any) -> RelayWorker:
    settings = {**FAST, **relay}
    return RelayWorker(db_path, Relay(host="127.0.0.1", port=port, **settings), verp, signer,
                       "mx.test.example")


def test_delivered_and_marked_sent_with_the_relays_reply(
        db_path: Path, db: sqlite_utils.Database, stub: RelayStub) -> None:
    oid = queue(db, "jane@customer.test")

    async def scenario() -> None:
        async with running(make_worker(db_path, stub.port)) as worker:
            r = await status_is(db, oid, "sent")
            assert r["last_error"] == "250 2.0.0 Ok: queued as stub1"
            assert r["attempts"] == 1 and r["sent_at"]
            assert worker.last_ok is True and worker.last_error == ""
            assert worker.last_attempt_at is not None

    asyncio.run(scenario())
    [got] = stub.wait_for(1)
    assert got.mail_from == f"bounces+{oid}@example.com"
    assert got.rcpt_tos == ("jane@customer.test",)
    assert got.message["Subject"] == "Re: [#1] Printer"
    assert got.data == row(db, oid)["raw"]  # byte-exact, dot-stuffing undone
    assert b"\r\n..leading dots survive" in got.data and b"\r\n.\r\n" in got.data


def test_tempfail_is_deferred_then_sent_once(
        db_path: Path, db: sqlite_utils.Database, stub: RelayStub) -> None:
    stub.tempfail_once.add("slow@customer.test")
    oid = queue(db, "slow@customer.test")

    async def scenario() -> None:
        async with running(make_worker(db_path, stub.port, retry_base_seconds=0.4)) as worker:
            r = await status_is(db, oid, "deferred")
            assert r["attempts"] == 1 and r["last_error"] == "451 4.3.0 try later"
            assert r["next_attempt"] > time.time()
            assert worker.last_ok is False and "451" in worker.last_error
            r = await status_is(db, oid, "sent")
            assert r["attempts"] == 2

    asyncio.run(scenario())
    assert stub.tempfailed == ["slow@customer.test"]
    assert len(stub.messages) == 1


def test_5xx_fails_at_once_without_retry(
        db_path: Path, db: sqlite_utils.Database, stub: RelayStub) -> None:
    stub.reject.add("nobody@customer.test")
    bad = queue(db, "nobody@customer.test", n=1)
    good = queue(db, "jane@customer.test", n=2)

    async def scenario() -> None:
        async with running(make_worker(db_path, stub.port)):
            r = await status_is(db, bad, "failed")
            assert "550" in r["last_error"] and "5.1.1" in r["last_error"]
            await status_is(db, good, "sent")
            await asyncio.sleep(0.6)  # more than retry_base_seconds: no second attempt
        assert row(db, bad)["attempts"] == 1

    asyncio.run(scenario())
    assert stub.rejected == ["nobody@customer.test"]
    assert [m.rcpt_tos for m in stub.messages] == [("jane@customer.test",)]


def test_relay_down_is_deferred_then_sent_once_it_is_up(
        db_path: Path, db: sqlite_utils.Database) -> None:
    port = free_port()
    stub = RelayStub(port=port)
    oid = queue(db, "jane@customer.test")

    async def scenario() -> None:
        async with running(make_worker(db_path, port)) as worker:
            r = await status_is(db, oid, "deferred")
            assert r["attempts"] == 1 and f"127.0.0.1:{port}" in r["last_error"]
            assert worker.last_ok is False
            await asyncio.to_thread(stub.start)
            r = await status_is(db, oid, "sent")
            assert r["attempts"] >= 2
            assert worker.last_ok is True

    try:
        asyncio.run(scenario())
        assert len(stub.wait_for(1)) == 1
        # The stub is restartable on the same port.
        stub.stop()
        stub.start()
    finally:
        stub.stop()


def test_gives_up_after_give_up_after_seconds(db_path: Path, db: sqlite_utils.Database) -> None:
    relay = Relay(retry_base_seconds=0.2, retry_max_seconds=1.0, give_up_after_seconds=1.0)
    assert [backoff(relay, n) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.0]
    port = free_port()  # nothing listens
    oid = queue(db, "jane@customer.test")

    async def scenario() -> None:
        async with running(make_worker(db_path, port, give_up_after_seconds=1.0)):
            r = await status_is(db, oid, "deferred")
            assert r["attempts"] == 1
            r = await status_is(db, oid, "failed")
            # attempts at ~0 s (+0.2), ~0.2 s (+0.4) are deferred; at ~0.6 s, +0.8 s passes 1 s.
            assert r["last_error"].startswith(f"gave up after {r['attempts']} attempts: ")
            assert r["attempts"] >= 2
            assert "cannot talk to relay" in r["last_error"]

    asyncio.run(scenario())


def test_row_left_sending_by_a_crash_is_recovered_and_sent_once(
        db_path: Path, db: sqlite_utils.Database, stub: RelayStub) -> None:
    oid = queue(db, "jane@customer.test")
    db.execute("UPDATE outbound SET status='sending', attempts=1 WHERE id=?", [oid])

    async def scenario() -> None:
        async with running(make_worker(db_path, stub.port)):
            r = await status_is(db, oid, "sent")
            assert r["attempts"] == 2
            await asyncio.sleep(0.3)

    asyncio.run(scenario())
    assert len(stub.messages) == 1


def test_unsafe_recipient_address_fails_without_reaching_the_relay(
        db_path: Path, db: sqlite_utils.Database, stub: RelayStub) -> None:
    oid = queue(db, "jane@customer.test\r\nRCPT TO:<victim@elsewhere.test>",
                raw=raw_message("jane@customer.test"))

    async def scenario() -> None:
        async with running(make_worker(db_path, stub.port)):
            r = await status_is(db, oid, "failed")
            assert "not a deliverable address" in r["last_error"]

    asyncio.run(scenario())
    assert stub.messages == [] and stub.rejected == []


def test_stop_before_any_mail_returns_promptly(db_path: Path, db: sqlite_utils.Database,
                                               stub: RelayStub) -> None:
    async def scenario() -> None:
        worker = make_worker(db_path, stub.port)
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0.1)
        started = time.monotonic()
        worker.stop()
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - started < 0.5
        worker.close()

    asyncio.run(scenario())


def test_dkim_signer_is_applied(db_path: Path, db: sqlite_utils.Database, stub: RelayStub,
                                tmp_path: Path) -> None:
    key_path, _record = keygen(tmp_path / "data", "mg", "example.com", bits=1024)
    settings = Dkim("example.com", "mg", key_path)
    txt = dns_txt_value(key_path).encode()
    oid = queue(db, "jane@customer.test")

    async def scenario() -> None:
        worker = make_worker(db_path, stub.port, signer=lambda raw: sign(raw, settings))
        async with running(worker):
            await status_is(db, oid, "sent")

    asyncio.run(scenario())
    [got] = stub.wait_for(1)
    assert got.data.startswith(b"DKIM-Signature: ")
    assert "d=example.com" in str(got.message["DKIM-Signature"])

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return txt if name == b"mg._domainkey.example.com." else None

    assert dkimpy.verify(got.data, dnsfunc=dnsfunc)
    unsigned = got.data[got.data.index(b"\r\nFrom: ") + 2:]
    assert row(db, oid)["raw"] == unsigned  # the outbox keeps the mail unsigned
