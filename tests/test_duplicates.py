"""Duplicates are the same mail, not the same Message-ID (issues 11 and 17): a duplicate has the
same Message-ID, the same content digest (without the trace headers a re-delivery adds) and
the same sender. A stranger who sends first with a customer's future Message-ID cannot make the
customer's real reply a duplicate, nor take over the replies to it; the same Message-ID with
another body is a new message; a retransmission is still stored once. On a running daemon."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import Daemon, queue_id_of, send
from relay_stub import RelayStub

from mailgate.errors import SchemaMismatch
from mailgate.parsing.digest import content_digest
from mailgate.store.db import MIGRATIONS, open_db, transaction
from mailgate.store.engine import make_engine, sqlite_url
from mailgate.store.upgrade import upgrade

JANE = "jane@customer.test"
MALLORY = "mallory@evil.test"


def mail(mid: str, sender: str = JANE, subject: str = "Broken printer", body: str = "Help.",
         extra: str = "") -> str:
    return (f"From: {sender}\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
            f"Date: Mon, 2 Nov 2026 10:00:00 +0100\r\nMessage-ID: <{mid}>\r\n{extra}\r\n"
            f"{body}\r\n")


def deliver(d: Daemon, data: str | bytes, sender: str = JANE, **kw) -> dict:
    return d.audit_for(queue_id_of(send(d.port, data, mail_from=sender, **kw)[1]))


@pytest.fixture
def desk(out_daemon) -> Daemon:
    return out_daemon()


def test_a_stranger_cannot_squat_a_customers_message_id(desk: Daemon, relay: RelayStub
                                                        ) -> None:
    first = deliver(desk, mail("c1@customer.test"))
    ours = relay.wait_for(1)[0].message["Message-ID"]  # the acknowledgement
    # Mallory sends first, with the Message-ID Jane's next mail will have
    squat = deliver(desk, mail("c2@customer.test", MALLORY, "Re: Broken printer", "Mine now."),
                    MALLORY)
    assert squat["action"] == "created_ticket" and squat["ticket_id"] != first["ticket_id"]
    # Jane's real reply to our acknowledgement lands on her ticket
    reply = deliver(desk, mail("c2@customer.test", subject="Re: Broken printer",
                               body="Still broken.", extra=f"In-Reply-To: {ours}\r\n"))
    assert (reply["action"], reply["ticket_id"], reply["matched_by"]) == (
        "appended", first["ticket_id"], "in-reply-to"), reply
    jane = desk.json("tickets", "show", str(first["ticket_id"]))
    assert jane["status"] == "pending_agent"
    assert [m["message_id"] for m in jane["messages"]] == ["c1@customer.test",
                                                           "c2@customer.test"]
    # a reply to that Message-ID follows its sender: Jane's to hers, Mallory's to his
    follow = deliver(desk, mail("c3@customer.test", subject="Re: Re: Broken printer",
                                extra="In-Reply-To: <c2@customer.test>\r\n"))
    assert (follow["ticket_id"], follow["matched_by"]) == (first["ticket_id"], "in-reply-to")
    own = deliver(desk, mail("m2@evil.test", MALLORY, "Re: mine",
                             extra="In-Reply-To: <c2@customer.test>\r\n"), MALLORY)
    assert own["ticket_id"] == squat["ticket_id"]
    assert len(desk.json("tickets", "show", str(first["ticket_id"]))["messages"]) == 3


def test_a_redelivery_is_stored_once(desk: Daemon) -> None:
    original = mail("rd1@customer.test", body="Please call me.")
    first = deliver(desk, original)
    # the same mail again, as a forwarder or a second hop hands it over: trace headers on top,
    # a header refolded, other envelope recipients
    trace = ("Return-Path: <srs0=abc=jane@forwarder.test>\r\n"
             "Delivered-To: acme.support@forwarder.test\r\n"
             "X-Original-To: acme.support@forwarder.test\r\n"
             "Received: from mx.forwarder.test by mx.test.example; Mon, 2 Nov 2026 10:01 +0100\r\n"
             "ARC-Seal: i=1; a=rsa-sha256; d=forwarder.test; s=arc; cv=none; b=abc\r\n"
             "ARC-Authentication-Results: i=1; mx.forwarder.test; spf=pass\r\n"
             "Authentication-Results: mx.forwarder.test; spf=pass\r\n"
             "X-Forwarded-To: support@example.com\r\n"
             "X-Forwarded-For: acme.support@forwarder.test support@example.com\r\n"
             "DKIM-Signature: v=1; a=rsa-sha256; d=forwarder.test; s=fw; b=xyz\r\n"
             "Received-SPF: pass\r\n"
             "X-Spam-Status: No, score=0.1\r\n")
    again = trace + original.replace("Subject: Broken printer", "Subject:\r\n Broken  printer")
    second = deliver(desk, again, "srs0=abc=jane@forwarder.test",
                     rcpts=("sales@example.com",))
    assert (second["action"], second["ticket_id"]) == ("duplicate", first["ticket_id"])
    assert "same content" in second["reason"]
    assert len(desk.json("tickets", "show", str(first["ticket_id"]))["messages"]) == 1


def test_same_message_id_with_another_body_is_a_new_message(desk: Daemon,
                                                            relay: RelayStub) -> None:
    first = deliver(desk, mail("same@customer.test", body="First question."))
    ours = relay.wait_for(1)[0].message["Message-ID"]
    second = deliver(desk, mail("same@customer.test", subject="Re: Broken printer",
                                body="A second question.", extra=f"In-Reply-To: {ours}\r\n"))
    assert (second["action"], second["ticket_id"]) == ("appended", first["ticket_id"])
    texts = [m["text"] for m in desk.json("tickets", "show", str(first["ticket_id"]))["messages"]]
    assert [t.strip() for t in texts] == ["First question.", "A second question."]


def test_our_own_mail_coming_back_is_a_duplicate(desk: Daemon, relay: RelayStub) -> None:
    first = deliver(desk, mail("loop1@customer.test"))
    ack = relay.wait_for(1)[0]
    back = deliver(desk, b"Received: from mx.customer.test\r\n" + ack.data, "")
    assert back["action"] == "duplicate" and back["ticket_id"] == first["ticket_id"]
    assert "our own outgoing mail" in back["reason"]


def test_the_digest_ignores_trace_headers_only() -> None:
    base = mail("d1@customer.test").encode()
    assert content_digest(b"Received: from a by b\r\n" + base) == content_digest(base)
    assert content_digest(base.replace(b"\r\n", b"\n")) == content_digest(base)
    assert content_digest(base.replace(b"Help.", b"Help!")) != content_digest(base)
    assert content_digest(base.replace(b"Subject: Broken", b"Subject: Fixed")) != \
        content_digest(base)
    assert content_digest(base.replace(JANE.encode(), MALLORY.encode())) != content_digest(base)


def test_migration_keeps_the_message_index(tmp_path: Path) -> None:
    """A database of the version before (v5): its Message-ID index survives the rebuild and a
    second ticket may then index the same id."""
    path = tmp_path / "mailgate.db"
    conn = sqlite3.connect(path, isolation_level=None)
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    for number, step in enumerate(MIGRATIONS[:5], start=1):
        step(db)
        db.execute(f"PRAGMA user_version={number}")
    db.execute("INSERT INTO message_ids VALUES ('x@old.test', 7, 70)")
    db.execute("INSERT INTO outbound (to_addr, automatic, created_ts, status, kind)"
               " VALUES ('Target+9@Victim.test', 1, 0, 'sent', 'new_ticket_ack')")
    conn.close()
    with pytest.raises(SchemaMismatch):  # an old file is upgraded only when told to
        open_db(path)
    engine = make_engine(sqlite_url(path))
    upgrade(engine)  # what `mailgate db upgrade` does
    engine.dispose()
    db = open_db(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    with transaction(db) as c:
        c.execute("INSERT INTO message_ids VALUES ('x@old.test', 8, 80)")
    rows = db.execute("SELECT ticket_id, message_row FROM message_ids WHERE message_id=?"
                      " ORDER BY ticket_id", ["x@old.test"]).fetchall()
    assert rows == [(7, 70), (8, 80)]
    assert db.execute("SELECT to_mailbox, to_domain FROM outbound").fetchone() == (
        "target@victim.test", "victim.test")
    assert "digest" in db["messages"].columns_dict
