"""Several nodes on one PostgreSQL (the suite's own, tests/pgserver.py): outgoing mail claimed by
exactly one node, what a dead node leaves behind, and the scheduler led by one node at a time.

Real parts: RelayWorkers with different node ids deliver to one real aiosmtpd relay
(tests/relay_stub.py) from one real PostgreSQL database; Schedulers with different node ids run
real idle rules over real tickets there. The relay counts what reached it by Message-ID."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config
from relay_stub import RelayStub

from mailgate.config import Relay, load_config
from mailgate.model import Address
from mailgate.ops import app
from mailgate.outbound.relay import RelayWorker
from mailgate.pipeline.scheduler import Scheduler
from mailgate.store import outbound
from mailgate.store.connect import open_store
from mailgate.store.db import transaction
from mailgate.store.outbound import OutboundMail, enqueue
from mailgate.store.tickets import create_ticket, get_or_create_customer

FAST = {"timeout": 5.0, "retry_base_seconds": 0.2, "retry_max_seconds": 1.0}


@pytest.fixture
def pg(pg_database: str) -> Any:
    """The schema on a fresh PostgreSQL database: (its URL, a store connection of the test)."""
    db = open_store(pg_database)
    yield pg_database, db
    db.close()


@pytest.fixture
def stub() -> Any:
    s = RelayStub().start()
    yield s
    s.stop()


def verp(mail: OutboundMail) -> str:
    return f"bounces+{mail.id}@example.com"


def raw_message(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Support <support@example.com>"
    msg["To"] = f"customer{n}@customer.test"
    msg["Subject"] = f"Re: [#{n}] Printer"
    msg["Date"] = formatdate()
    msg["Message-ID"] = f"<multinode{n}@example.com>"
    msg.set_content(f"Reply number {n}.\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def queue(db: Any, numbers: range | list[int]) -> list[int]:
    with transaction(db) as conn:
        return [enqueue(conn, ticket_id=None, kind="agent_reply", automatic=False,
                        to_addr=f"customer{n}@customer.test", subject=f"Re: [#{n}] Printer",
                        message_id=f"multinode{n}@example.com", raw=raw_message(n))
                for n in numbers]


def row(db: Any, oid: int) -> dict[str, Any]:
    return next(db.query("SELECT * FROM outbound WHERE id=?", [oid]))


def db_now(db: Any) -> float:
    return float(db.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())").fetchone()[0])


def worker(url: str, port: int, node_id: str, **kw: Any) -> RelayWorker:
    return RelayWorker(url, Relay(host="127.0.0.1", port=port, **FAST), verp, None,
                       "mx.test.example", node_id=node_id, **kw)


@contextlib.asynccontextmanager
async def running(*workers: RelayWorker) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        yield
    finally:
        for w in workers:
            w.stop()
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), 15)
        finally:
            for w in workers:
                w.close()


async def until(pred: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(pred):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.05)


def message_ids(stub: RelayStub) -> Counter[str]:
    return Counter(str(m.message["Message-ID"]) for m in stub.messages)


# --- outgoing mail: claimed by exactly one node -----------------------------------------------


def test_two_nodes_racing_send_every_mail_exactly_once(pg: Any, stub: RelayStub) -> None:
    url, db = pg
    count = 160
    ids = queue(db, range(count))
    a, b = worker(url, stub.port, "node-a"), worker(url, stub.port, "node-b")

    def all_sent() -> bool:
        return db.execute("SELECT COUNT(*) FROM outbound WHERE status='sent'"
                          ).fetchone()[0] == count

    async def scenario() -> None:
        async with running(a, b):
            await until(all_sent, 60, "every mail sent")
            await asyncio.sleep(0.3)  # a second copy would be on its way by now

    asyncio.run(scenario())
    got = message_ids(stub)
    assert set(got) == {f"<multinode{n}@example.com>" for n in range(count)}
    assert [mid for mid, n in got.items() if n > 1] == []  # each reached the relay once
    assert len(stub.messages) == count
    rows = [row(db, oid) for oid in ids]
    assert {r["status"] for r in rows} == {"sent"}
    assert {r["attempts"] for r in rows} == {1} and {r["maybe_sent"] for r in rows} == {0}
    # both nodes took part, and each row names the one that sent it
    by_node = Counter(r["claimed_by"] for r in rows)
    assert set(by_node) == {"node-a", "node-b"}, by_node
    assert (a.sent, b.sent) == (by_node["node-a"], by_node["node-b"])
    assert {r["lease_until"] for r in rows} == {None}


def test_a_dead_nodes_mail_is_retried_and_a_live_nodes_left_alone(
        pg: Any, stub: RelayStub, caplog: pytest.LogCaptureFixture) -> None:
    url, db = pg
    dead_data, dead_before, live, own, legacy, dying = queue(db, range(6))
    now = db_now(db)

    def sending(oid: int, node: str | None, lease: float | None, data: bool = False) -> None:
        db.execute("UPDATE outbound SET status='sending', attempts=1, claimed_by=?,"
                   " lease_until=?, data_started_at=? WHERE id=?",
                   [node, lease, "2024-01-01T00:00:00Z" if data else None, oid])

    sending(dead_data, "node-dead", now - 5, data=True)  # died after DATA began
    sending(dead_before, "node-dead", now - 5)  # died before DATA
    sending(live, "node-live", now + 600, data=True)  # sending right now, on a live node
    sending(own, "node-b", now + 600, data=True)  # node-b's own, from before its restart
    sending(legacy, None, None)  # from a mailgate before claims (revision 0002)
    sending(dying, "node-dying", now + 1.5)  # its lease runs out while node-b runs
    b = worker(url, stub.port, "node-b", settle_every=0.2)
    caplog.set_level("WARNING", logger="mailgate.outbound.relay")

    async def scenario() -> None:
        async with running(b):
            for oid in (dead_data, dead_before, own, legacy, dying):
                await until(lambda oid=oid: row(db, oid)["status"] == "sent", 20,
                            f"outbound {oid} sent")
            await asyncio.sleep(0.5)

    asyncio.run(scenario())
    # the live node's row: untouched, never sent by node-b
    r = row(db, live)
    assert (r["status"], r["claimed_by"], r["attempts"], r["maybe_sent"]) == (
        "sending", "node-live", 1, 0)
    assert r["data_started_at"] == "2024-01-01T00:00:00Z" and r["lease_until"] > now
    got = message_ids(stub)
    assert "<multinode2@example.com>" not in got
    assert sorted(got.values()) == [1] * 5
    # the others were each retried once by node-b; "maybe sent" where DATA had begun
    for oid, maybe in ((dead_data, 1), (dead_before, 0), (own, 1), (legacy, 0), (dying, 0)):
        r = row(db, oid)
        assert (r["claimed_by"], r["attempts"], r["maybe_sent"]) == ("node-b", 2, maybe), r
        assert ("maybe sent twice" in r["last_error"]) == bool(maybe), r["last_error"]
    log = caplog.text
    assert (f"outbound_id={dead_data} maybe sent: attempt 1 was cut short by node 'node-dead'"
            " (its lease ran out) after DATA began") in log
    assert "same Message-ID <multinode0@example.com>" in log
    assert (f"outbound_id={dead_before} attempt 1 was cut short by node 'node-dead' (its lease"
            " ran out) before DATA (nothing was sent); retried") in log
    assert f"outbound_id={own} maybe sent: attempt 1 was cut short by a restart" in log
    assert f"outbound_id={dying} attempt 1 was cut short by node 'node-dying'" in log


def test_a_node_whose_claim_was_taken_over_sends_no_data(pg: Any, stub: RelayStub,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    """Node A is held at RCPT past its lease; node B settles and claims the mail. When the
    relay answers A's RCPT, A must not send DATA, and writes nothing over B's claim."""
    url, db = pg
    [oid] = queue(db, [7])
    a = worker(url, stub.port, "node-a", settle_every=3600)
    stub.hold("rcpt")
    caplog.set_level("WARNING", logger="mailgate.outbound.relay")

    async def scenario() -> None:
        async with running(a):
            await asyncio.to_thread(stub.wait_held, "rcpt")
            assert row(db, oid)["claimed_by"] == "node-a"
            db.execute("UPDATE outbound SET lease_until=? WHERE id=?", [db_now(db) - 1, oid])
            assert [s[0] for s in outbound.settle_expired(db, "node-b")] == [oid]
            [mail] = outbound.claim_due(db, 4, "node-b", 600)
            assert (mail.id, mail.attempts) == (oid, 2)
            stub.release("rcpt")
            await until(lambda: "not sent by node 'node-a'" in caplog.text, 10, "A to give up")

    asyncio.run(scenario())
    assert stub.messages == []
    r = row(db, oid)
    assert (r["status"], r["claimed_by"], r["attempts"], r["data_started_at"]) == (
        "sending", "node-b", 2, None)


def test_outcomes_apply_only_while_the_attempt_holds_its_claim(pg: Any) -> None:
    _url, db = pg
    taken, waiting = queue(db, range(2))
    claimed = outbound.claim_due(db, 4, "node-a", 0.0)  # a lease that has run out at once
    assert [(m.id, m.attempts) for m in claimed] == [(taken, 1), (waiting, 1)]
    time.sleep(0.01)
    assert sorted(s[0] for s in outbound.settle_expired(db, "node-b")) == [taken, waiting]
    # node-b takes one of them again (the other waits, settled, for its retry)
    db.execute("UPDATE outbound SET next_attempt=? WHERE id=?", [time.time() + 3600, waiting])
    [again] = outbound.claim_due(db, 4, "node-b", 600)
    assert (again.id, again.attempts) == (taken, 2)
    # node-a's late outcome for the row node-b holds now: dropped, node-b's claim stands
    assert not outbound.mark_sent(db, taken, "250 late", node_id="node-a", attempt=1)
    assert not outbound.mark_failed(db, taken, "550 late", node_id="node-a", attempt=1)
    assert not outbound.mark_data_started(db, taken, "node-a", 1, 600)
    r = row(db, taken)
    assert (r["status"], r["claimed_by"], r["attempts"]) == ("sending", "node-b", 2)
    assert outbound.mark_sent(db, taken, "250 ok", node_id="node-b", attempt=2)
    assert (row(db, taken)["status"], row(db, taken)["lease_until"]) == ("sent", None)
    # node-a's outcome for the row nobody has taken since: it lands (no needless resend)
    assert outbound.mark_sent(db, waiting, "250 late but true", node_id="node-a", attempt=1)
    r = row(db, waiting)
    assert (r["status"], r["last_error"], r["claimed_by"]) == ("sent", "250 late but true",
                                                               "node-a")


# --- the scheduler: one leader ----------------------------------------------------------------

IDLE_RULE = '''
[[automations]]
name = "reminder"
when = "idle"
after = "1m"
then = { internal_note = "nobody touched this ticket", add_tags = ["stale"] }
'''


def idle_tickets(db: Any, numbers: range) -> list[int]:
    old = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds")
    old = old.replace("+00:00", "Z")
    with transaction(db) as conn:
        return [create_ticket(conn, f"printer {n}", get_or_create_customer(
            conn, Address(f"dana{n}@client.test"), old), old) for n in numbers]


def firings(db: Any) -> Counter[int]:
    rows = db.execute("SELECT ticket_id FROM rule_firings WHERE rule='reminder'").fetchall()
    return Counter(r[0] for r in rows)


def notes(db: Any) -> Counter[int]:
    rows = db.execute("SELECT ticket_id FROM messages WHERE direction='note' AND text=?",
                      ["nobody touched this ticket"]).fetchall()
    return Counter(r[0] for r in rows)


def test_two_schedulers_one_leader_each_rule_fires_once_and_leadership_passes_on(
        pg: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url, db = pg
    cfg = load_config(write_config(tmp_path / "node", 2525, IDLE_RULE))
    first = idle_tickets(db, range(6))
    a = Scheduler(url, lambda: app.automation(cfg, None), 0.1, node_id="node-a")
    b = Scheduler(url, lambda: app.automation(cfg, None), 0.1, node_id="node-b")
    caplog.set_level("INFO", logger="mailgate.scheduler")

    async def scenario() -> None:
        tasks = {a: asyncio.create_task(a.run()), b: asyncio.create_task(b.run())}
        try:
            await until(lambda: set(firings(db)) == set(first), 20, "every idle rule fired")
            await asyncio.sleep(1.0)  # ten more ticks each
            assert firings(db) == dict.fromkeys(first, 1)
            assert notes(db) == dict.fromkeys(first, 1)
            leaders = [s for s in (a, b) if s.leading]
            assert len(leaders) == 1, (a.leading, b.leading)
            [leader] = leaders
            other = b if leader is a else a
            assert (leader.fired, other.fired) == (6, 0)
            assert f"scheduler: node {leader.node_id!r} leads" in caplog.text
            assert f"node {other.node_id!r} leads" not in caplog.text
            assert "lost the leadership" not in caplog.text  # held, tick after tick
            assert caplog.text.count("leads") == 1
            # the leader stops: the other leads from its next tick on, and does the work
            leader.stop()
            await asyncio.wait_for(tasks.pop(leader), 10)
            assert not leader.leading
            await until(lambda: other.leading, 5, "the other node to lead")
            assert f"scheduler: node {other.node_id!r} leads" in caplog.text
            later = await asyncio.to_thread(idle_tickets, db, range(6, 9))
            await until(lambda: set(firings(db)) == set(first + later), 20,
                        "the new leader to fire")
            await asyncio.sleep(0.5)
            assert firings(db) == dict.fromkeys(first + later, 1)
            assert notes(db) == dict.fromkeys(first + later, 1)
            assert other.fired == 3
        finally:
            for s, task in tasks.items():
                s.stop()
                await asyncio.wait_for(task, 10)

    asyncio.run(scenario())


def test_a_leader_whose_connection_dies_hands_over(pg: Any, tmp_path: Path) -> None:
    """The leader's session is killed (as when its host or network dies): the lock goes with
    it, the other node leads at its next tick, and the old leader knows it no longer leads."""
    url, db = pg
    cfg = load_config(write_config(tmp_path / "node", 2525, IDLE_RULE))
    a = Scheduler(url, lambda: app.automation(cfg, None), 0.1, node_id="node-a")

    async def scenario() -> None:
        task_a = asyncio.create_task(a.run())
        await until(lambda: a.leading, 10, "node-a to lead")
        b = Scheduler(url, lambda: app.automation(cfg, None), 0.1, node_id="node-b")
        task_b = asyncio.create_task(b.run())
        try:
            await asyncio.sleep(0.5)
            assert (a.leading, b.leading) == (True, False)
            # end node-a's session, as a dead host's would end
            killed = db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype='advisory'"
                " AND granted AND database=(SELECT oid FROM pg_database"
                " WHERE datname=current_database())").fetchall()
            assert killed == [(True,)]
            await until(lambda: b.leading, 5, "node-b to lead")
            await asyncio.sleep(0.5)
            assert not a.leading  # node-a reconnected, found the lock taken and follows
        finally:
            for s, task in ((a, task_a), (b, task_b)):
                s.stop()
                await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
