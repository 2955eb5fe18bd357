"""Several nodes on one PostgreSQL: real `mailgate serve` daemons, each with its own data_dir
and spool and `[storage] node_id`, sharing the suite's real PostgreSQL, under concurrent SMTP
load over loopback.

- the same message delivered to two nodes (two MX hosts, one message) is stored once;
- fifty replies to one conversation sent at once through three nodes land on its one ticket;
- a node killed with SIGKILL mid-load: after its restart every acknowledged message exists
  exactly once;
- a reply address signed on one node threads a reply on another, and the raw mail node A
  received is opened from node B.
"""

from __future__ import annotations

import email
import email.utils
import random
import signal
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import Daemon, free_port, queue_id_of, send, write_config

from mailgate.store.pg import PgDatabase

NodeFactory = Callable[[str], Daemon]


@pytest.fixture
def nodes(tmp_path: Path, pg_at_head: str) -> Iterator[NodeFactory]:
    started: list[Daemon] = []

    def start(name: str, extra: str = "") -> Daemon:
        port = free_port()
        cfg = write_config(tmp_path / name, port, extra)
        cfg.write_text(cfg.read_text().replace(
            'data_dir = "data"',
            f'data_dir = "data"\ndatabase = "{pg_at_head}"\nnode_id = "{name}"', 1))
        node = Daemon(cfg, port)
        node.start()
        started.append(node)
        return node

    yield start  # type: ignore[misc]
    for node in started:
        node.stop()


@pytest.fixture
def db(pg_at_head: str) -> Iterator[PgDatabase]:
    database = PgDatabase(pg_at_head)
    yield database
    database.close()


def _mail(mid: str, sender: str, subject: str, extra: str = "", body: str = "") -> bytes:
    return (f"From: Customer <{sender}>\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{mid}>\r\nDate: Thu, 03 Dec 2026 12:00:00 +0000\r\n{extra}\r\n"
            f"{body or 'Hello, the printer is on fire again.'}\r\n").encode()


def _idle(*daemons: Daemon) -> None:
    for node in daemons:
        node.wait_idle(timeout=120)


def test_the_same_message_to_two_nodes_is_stored_once(nodes: NodeFactory, db: PgDatabase
                                                      ) -> None:
    a, b = nodes("mx1"), nodes("mx2")
    count = 12
    mails = [_mail(f"twice-{n}@client.test", f"c{n}@client{n % 3}.test", f"Twice {n}")
             for n in range(count)]

    def deliver(job: tuple[Daemon, bytes]) -> int:
        node, raw = job
        return send(node.port, raw, mail_from="c@client.test")[0]

    with ThreadPoolExecutor(8) as pool:  # each message to both nodes at the same moment
        codes = list(pool.map(deliver, [(node, raw) for raw in mails for node in (a, b)]))
    assert codes == [250] * (2 * count)
    _idle(a, b)
    rows = db.execute("SELECT message_id, COUNT(*) FROM messages WHERE queue_id IS NOT NULL"
                      " GROUP BY message_id").fetchall()
    assert sorted(rows) == sorted((f"twice-{n}@client.test", 1) for n in range(count))
    assert db.execute("SELECT COUNT(*) FROM tickets").fetchone()[0] == count
    actions = dict(db.execute("SELECT action, COUNT(*) FROM audit_incoming GROUP BY action")
                   .fetchall())
    assert actions == {"created_ticket": count, "duplicate": count}, actions


def test_fifty_replies_through_three_nodes_land_on_one_ticket(nodes: NodeFactory,
                                                              db: PgDatabase) -> None:
    a, b, c = nodes("mx1"), nodes("mx2"), nodes("mx3")
    code, reply = send(a.port, _mail("root@client.test", "jane@client.test", "Printer"))
    assert code == 250 and a.audit_for(queue_id_of(reply))["action"] == "created_ticket"
    replies = [
        (node, _mail(f"reply-{n}@client.test", "jane@client.test", "Re: Printer",
                     "In-Reply-To: <root@client.test>\r\nReferences: <root@client.test>\r\n",
                     f"Reply number {n}."))
        for n, node in zip(range(50), [a, b, c] * 17, strict=False)]

    def deliver(job: tuple[Daemon, bytes]) -> int:
        return send(job[0].port, job[1], mail_from="jane@client.test")[0]

    with ThreadPoolExecutor(12) as pool:
        assert list(pool.map(deliver, replies)) == [250] * 50
    _idle(a, b, c)
    assert db.execute("SELECT COUNT(*) FROM tickets").fetchone()[0] == 1
    per_ticket = db.execute("SELECT ticket_id, COUNT(*) FROM messages GROUP BY ticket_id"
                            ).fetchall()
    assert per_ticket == [(1, 51)]
    assert db.execute("SELECT COUNT(DISTINCT message_id) FROM messages").fetchone()[0] == 51
    assert db.execute("SELECT COUNT(*) FROM customers").fetchone()[0] == 1


def test_a_node_killed_mid_load_loses_and_duplicates_nothing(nodes: NodeFactory,
                                                             db: PgDatabase) -> None:
    a, b = nodes("mx1"), nodes("mx2")
    acked: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def sender(n: int) -> None:
        rng = random.Random(n)
        for i in range(400):
            if stop.is_set():
                return
            mid = f"load-{n}-{i}@load.test"
            raw = _mail(mid, f"load{n}@load{n % 4}.test", f"Load {n} {i}")
            # most to one node, every third to both (as two MX hosts get it)
            targets = [a, b] if i % 3 == 0 else [rng.choice([a, b])]
            for node in targets:
                try:
                    with smtplib.SMTP("127.0.0.1", node.port, timeout=10) as s:
                        s.sendmail(f"load{n}@load.test", ["support@example.com"], raw)
                    with lock:
                        acked.add(mid)
                except (OSError, smtplib.SMTPException):
                    pass  # node A is being killed: what was acknowledged counts

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    a.stop(signal.SIGKILL)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(60)
    assert len(acked) > 30, "too little load before the kill"
    a.start()
    _idle(a, b)
    stored = dict(db.execute("SELECT message_id, COUNT(*) FROM messages"
                             " GROUP BY message_id").fetchall())
    missing = acked - set(stored)
    assert not missing, sorted(missing)[:5]
    assert {mid: n for mid, n in stored.items() if n != 1} == {}
    assert db.execute("SELECT COUNT(*) FROM tickets").fetchone()[0] == len(stored)


def test_a_reply_address_from_one_node_threads_on_another_and_its_raw_mail_opens_there(
        nodes: NodeFactory, db: PgDatabase, tmp_path: Path) -> None:
    a, b = nodes("mx1"), nodes("mx2")
    first = _mail("first@client.test", "jane@client.test", "Invoice question")
    code, reply = send(a.port, first, mail_from="jane@client.test")
    assert a.audit_for(queue_id_of(reply))["action"] == "created_ticket"
    # An agent answers on node A (its CLI, its config): the mail carries a signed reply
    # address and a signed Message-ID.
    a.cli("tickets", "reply", "1", "--agent", "alice@example.com", "--body", "Which invoice?")
    row = db.execute("SELECT raw FROM outbound WHERE kind = 'agent_reply'").fetchone()
    sent = email.message_from_bytes(bytes(row[0]))
    reply_to = email.utils.parseaddr(sent["Reply-To"] or sent["From"])[1]
    assert reply_to.startswith("support+"), reply_to
    # A reply to that address, through node B, with no In-Reply-To or References at all.
    answer = (f"From: Jane <jane@client.test>\r\nTo: {reply_to}\r\nSubject: other words\r\n"
              "Message-ID: <second@client.test>\r\n\r\nHere is the invoice number.\r\n")
    code, reply = send(b.port, answer, mail_from="jane@client.test", rcpts=(reply_to,))
    assert code == 250
    row = b.audit_for(queue_id_of(reply))
    assert (row["action"], row["ticket_id"], row["matched_by"]) == ("appended", 1, "token")
    # The admin on node B opens the mail node A received: the bytes come from the database.
    out = tmp_path / "first.eml"
    b.cli("tickets", "raw", "1", "--out", str(out))
    assert out.read_bytes().endswith(first)
    assert not list((b.data_dir).rglob("*.eml")), "node B kept no file of its own"


def test_while_the_database_is_down_smtp_accepts_health_says_so_and_nothing_is_lost(
        tmp_path: Path) -> None:
    """A PostgreSQL of this test's own, stopped mid-run: SMTP still says 250 (into the local
    spool), `/api/health` answers 503 down (the full report names the database), the metrics
    say `mailgate_database_up 0` and `doctor` says the database is down; once it is back,
    every acknowledged message becomes its ticket."""
    from pgserver import PgServer, find_bindir
    from test_admin import Client, admin_section, wait_for, wait_http

    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not installed")
    server = PgServer(bindir).start()
    node = None
    try:
        url = server.create_database()
        port, admin_port = free_port(), free_port()
        cfg = write_config(tmp_path / "mx1", port, admin_section(admin_port))
        cfg.write_text(cfg.read_text().replace(
            'data_dir = "data"', f'data_dir = "data"\ndatabase = "{url}"', 1))
        node = Daemon(cfg, port)
        node.start()
        http = Client(f"http://127.0.0.1:{admin_port}", node.data_dir / "admin.token")
        wait_http(http, node)
        code, reply = send(port, _mail("before@client.test", "jane@client.test", "Before"))
        assert node.audit_for(queue_id_of(reply))["action"] == "created_ticket"

        server.pause()
        for n in range(5):
            code, _ = send(port, _mail(f"down-{n}@client.test", "jane@client.test",
                                       f"While down {n}"))
            assert code == 250
        r = http.get("/api/health", auth=False)
        assert (r.status, r.json()) == (503, {"status": "down"})
        report = http.get("/api/health").json()
        assert "down or unreachable" in report["storage"]["database"], report
        assert "mailgate_database_up 0.0" in http.get("/metrics").text
        doctor = node.cli("doctor", expect=1)
        assert "is down or unreachable" in doctor, doctor
        time.sleep(2.5)  # the relay polls its outbox every second: one warning, no tracebacks
        relay_lines = [x for x in node.log().splitlines() if "cannot read the outbox" in x]
        assert len(relay_lines) == 1 and "Traceback" not in node.log(), relay_lines

        server.resume()
        want = {"Before", *(f"While down {n}" for n in range(5))}
        wait_for(lambda: {t["subject"] for t in node.json("tickets", "list")},
                 lambda subjects: subjects == want, "the tickets of the deferred mail", 60)
        assert http.get("/api/health", auth=False).status == 200
        assert node.json("stats")["spool"]["hold"] == 0
    finally:
        if node is not None:
            node.stop()
        server.stop()


def test_two_nodes_under_one_node_id_are_refused_and_doctor_lists_the_nodes(
        nodes: NodeFactory, tmp_path: Path, pg_at_head: str) -> None:
    a = nodes("mx1")
    b = nodes("mx2")
    port = free_port()
    cfg = write_config(tmp_path / "impostor", port)
    cfg.write_text(cfg.read_text().replace(
        'data_dir = "data"', f'data_dir = "data"\ndatabase = "{pg_at_head}"\nnode_id = "mx1"',
        1))
    impostor = Daemon(cfg, port)
    with pytest.raises(RuntimeError, match="daemon exited early"):
        impostor.start()
    assert ("[storage] node_id 'mx1' is in use by another node" in impostor.log()
            and "give each node its own node_id" in impostor.log()), impostor.log()
    doctor = a.cli("doctor", expect=1)  # (the relay is unreachable here: one FAIL)
    assert "nodes: mx1 (up, seen" in doctor and "mx2 (up, seen" in doctor, doctor
    a.stop()
    a.start()  # the same node coming back under its name is welcome
    b.stop()  # a node that stops cleanly frees its name and leaves the list
    doctor = a.cli("doctor", expect=1)
    assert "nodes: mx1 (up, seen" in doctor and "mx2" not in doctor, doctor
