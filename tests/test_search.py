"""Finding things: ticket search, filters, totals and pages; the audits' filters, pages and
links, as an agent uses them.

Real parts: daemons on loopback fed over SMTP (on SQLite and on the suite's PostgreSQL), the
CLI, the admin API and panels over HTTP, SQLite files written by the store's own functions.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Daemon, queue_id_of, relay_section, send, wait_outgoing
from relay_stub import RelayStub
from test_admin import Client, admin_daemon

from mailgate.model import Address, ParsedMail
from mailgate.store import search
from mailgate.store import tickets as ticket_store
from mailgate.store.db import now_iso, open_db, transaction


def _mail(sender: str, name: str, subject: str, body: str) -> str:
    mid = f"{time.time_ns()}@{sender.split('@')[1]}"
    return (f"From: {name} <{sender}>\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{mid}>\r\n\r\n{body}\r\n")


MAILS = [
    ("jane@customer.test", "Jane Doe", "Printer jam", "The zeppelin-shaped toner is stuck."),
    ("bob@other.test", "Bob Builder", "Invoice", "Our quarterly numbers look wrong."),
    ("carol@customer.test", "Carol Kühn", "Login trouble", "I cannot sign in since Monday."),
    ("dave@third.test", "Dave", "Feature request", "Please add dark mode to the portal."),
]


@pytest.fixture
def desk(make_daemon: Callable[..., Daemon]) -> tuple[Daemon, Client, dict[str, int]]:
    """A daemon with the admin endpoint, four tickets made by mail: subject → ticket id."""
    d, http = admin_daemon(make_daemon)
    return d, http, {subject: ticket for (_, subject), ticket in mail_all(d).items()}


def mail_all(d: Daemon, mails: list[tuple[str, str, str, str]] = MAILS
             ) -> dict[tuple[str, str], int]:
    """Send each of `mails` (sender, name, subject, body): (sender, subject) → its ticket."""
    tickets = {}
    for sender, name, subject, body in mails:
        code, reply = send(d.port, _mail(sender, name, subject, body), mail_from=sender)
        assert code == 250, reply
        tickets[(sender, subject)] = d.audit_for(queue_id_of(reply))["ticket_id"]
    return tickets


def _ids(rows: list[dict]) -> list[int]:
    return [r["id"] for r in rows]


@pytest.mark.both_engines
def test_search_finds_words_of_bodies_customers_and_prefixes_on_cli_api_and_panel(
        desk: tuple[Daemon, Client, dict[str, int]], backend: str | None) -> None:
    d, http, ids = desk
    # a word only in one message's body; a customer's name; an address; a prefix; two words
    assert _ids(d.json("tickets", "list", "zeppelin")) == [ids["Printer jam"]]
    assert _ids(d.json("tickets", "list", "builder")) == [ids["Invoice"]]
    assert _ids(d.json("tickets", "list", "carol@customer.test")) == [ids["Login trouble"]]
    assert _ids(d.json("tickets", "list", "quarter*")) == [ids["Invoice"]]
    assert _ids(d.json("tickets", "list", "dark", "portal")) == [ids["Feature request"]]
    assert d.json("tickets", "list", "dark", "zeppelin") == []  # every word must match
    assert _ids(d.json("tickets", "list", "kühn")) == [ids["Login trouble"]]
    if backend is None:  # SQLite's index folds accents; PostgreSQL's 'simple' keeps them
        assert _ids(d.json("tickets", "list", "kuhn")) == [ids["Login trouble"]]

    found = http.get("/api/tickets?q=quarterly")
    assert found.status == 200 and _ids(found.json()) == [ids["Invoice"]]
    assert found.headers["X-Total-Count"] == "1" and "Link" not in found.headers

    # what people type into a search box is searched for, never run as query syntax
    for typed in ('"unbalanced', "NEAR(a b)", "a OR b", "*", "-x", "col:umn", "'; DROP",
                  "^", "()", "zeppelin AND"):
        reply = http.get("/api/tickets?" + urllib.parse.urlencode({"q": typed}))
        assert reply.status == 200, (typed, reply.text)
    assert d.json("tickets", "list", "zeppelin\"") == d.json("tickets", "list", "zeppelin")

    panel = http.get("/tickets?q=zeppelin")
    assert panel.status == 200
    assert f'href="/tickets/{ids["Printer jam"]}"' in panel.text
    assert f'href="/tickets/{ids["Invoice"]}"' not in panel.text
    assert "1 ticket" in panel.text


@pytest.mark.both_engines
def test_filters_totals_and_pages_agree_on_cli_and_api(
        desk: tuple[Daemon, Client, dict[str, int]]) -> None:
    d, http, ids = desk
    d.cli("tickets", "status", str(ids["Invoice"]), "pending_customer")
    assert _ids(d.json("tickets", "list", "--status", "pending_customer")) == [ids["Invoice"]]
    assert _ids(http.get("/api/tickets?status=pending_customer").json()) == [ids["Invoice"]]
    today = now_iso()[:10]
    assert len(d.json("tickets", "list", "--since", today)) == 4
    assert d.json("tickets", "list", "--until", "2020-01-01") == []
    assert len(d.json("tickets", "list", "--until", today)) == 4  # a day includes itself
    assert http.get("/api/tickets?since=yesterday").status == 400
    assert d.json("tickets", "list", "--priority", "urgent") == []
    assert d.json("tickets", "list", "--tag", "billing") == []

    # the CLI says how many more there are instead of cutting silently
    everything = _ids(d.json("tickets", "list"))
    first = d.run_cli("tickets", "list", "--limit", "3")
    assert "4 tickets match; 1 more after these: use --limit or --offset 3" in first.stderr
    rest = d.run_cli("tickets", "list", "--limit", "3", "--offset", "3", "--json")
    assert _ids(json.loads(rest.stdout)) == everything[3:]
    assert "more after these" not in rest.stderr

    # the API pages with a cursor until there is no next page, and counts
    seen, path = [], "/api/tickets?limit=1"
    while path:
        page = http.get(path)
        assert page.status == 200 and page.headers["X-Total-Count"] == "4"
        seen += _ids(page.json())
        link = page.headers.get("Link", "")
        path = link[1:link.index(">")] if link else ""
    assert seen == everything
    bad = http.get("/api/tickets?cursor=bm90LWEtY3Vyc29y")
    assert bad.status == 400 and "cursor" in bad.json()["error"]


def _parsed(i: int, body: str) -> ParsedMail:
    return ParsedMail(
        message_id=f"m{i}@x.test", in_reply_to=(), references=(),
        from_=Address(f"c{i}@x.test", f"Customer {i}"), to=(), cc=(), reply_to=(),
        subject=f"Question {i}", date="", text=body, html="", attachments=(), headers={})


def _fill(path: Path, n: int, same_time: bool) -> None:
    db = open_db(path)
    with transaction(db) as conn:
        for i in range(n):
            now = f"2026-01-01T00:{0 if same_time else i // 60:02}:{0 if same_time else i % 60:02}Z"
            cid = ticket_store.get_or_create_customer(conn, Address(f"c{i}@x.test"), now)
            tid = ticket_store.create_ticket(conn, f"Question {i}", cid, now)
            ticket_store.add_incoming_message(conn, tid, f"Q{i}", _parsed(i, f"body {i}"),
                                              "", "new", now)
    db.conn.close()


def test_keyset_pages_reach_every_one_of_250_tickets_once_even_with_equal_times(
        tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    _fill(path, 250, same_time=True)
    db = open_db(path)
    seen: list[int] = []
    cursor = None
    while True:
        page = search.search_tickets(db, search.TicketFilter(), limit=7, cursor=cursor)
        assert page.total == 250
        seen += _ids(page.rows)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == list(range(1, 251)) and seen == sorted(seen, reverse=True)
    # offsets (the CLI's pages) give the same order
    assert _ids(search.search_tickets(db, search.TicketFilter(), limit=7, offset=7).rows) \
        == seen[7:14]
    with pytest.raises(search.BadCursor):
        search.search_tickets(db, search.TicketFilter(), cursor="!!")


def test_an_installation_from_before_search_gets_its_index_built_from_its_rows(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    d.stop()
    path = d.data_dir / "mailgate.db"
    _fill(path, 5, same_time=False)
    with sqlite3.connect(path) as conn:  # as a mailgate from before full-text search left it
        for name in search.TRIGGER_NAMES:
            conn.execute(f"DROP TRIGGER {name}")
        for name in search.FTS_TABLE_PREFIXES:
            conn.execute(f"DROP TABLE {name}")
    db = open_db(path)
    assert _ids(search.search_tickets(db, search.TicketFilter(q="body 3")).rows) == [4]
    assert search.check_index(db.conn) == []
    # a row written behind the index's back is found by `db check`; `db reindex` repairs it
    db.conn.execute("DROP TRIGGER messages_fts_ai")
    db.conn.execute("INSERT INTO messages (ticket_id, direction, subject, text) VALUES"
                    " (1, 'in', 'late', 'a walrus')")
    db.conn.close()
    out = d.cli("db", "check", expect=1)
    assert "FAIL  search" in out and "mailgate db reindex" in out
    assert "db reindex: the full-text indexes were made again" in d.cli("db", "reindex")
    assert "ok    search" in d.cli("db", "check")
    assert _ids(d.json("tickets", "list", "walrus")) == [1]


def test_audits_filter_by_address_message_id_ticket_and_date_page_and_link_both_ways(
        make_daemon: Callable[..., Daemon], relay: RelayStub) -> None:
    d, http = admin_daemon(make_daemon, relay_section(relay.port))
    sent = []
    for sender, name, subject, body in MAILS[:3]:
        raw = _mail(sender, name, subject, body)
        code, reply = send(d.port, raw, mail_from=sender)
        assert code == 250, reply
        row = d.audit_for(queue_id_of(reply))
        sent.append((sender, raw.split("Message-ID: <")[1].split(">")[0], row["ticket_id"]))
    wait_outgoing(d, lambda rows: len([r for r in rows if r["status"] == "sent"]) == 3)
    jane, jane_mid, jane_ticket = sent[0]

    # the CLI: each filter alone, and a page that says how many more there are
    assert [r["mail_from"] for r in d.json("audit", "incoming", "--address", jane)] == [jane]
    assert [r["ticket_id"] for r in d.json("audit", "incoming", "--message-id",
                                          f"<{jane_mid}>")] == [jane_ticket]
    assert len(d.json("audit", "incoming", "--ticket", str(jane_ticket))) == 1
    today = now_iso()[:10]
    assert len(d.json("audit", "incoming", "--since", today, "--until", today)) == 3
    assert d.json("audit", "incoming", "--until", "2020-01-01") == []
    assert "--since" in d.cli("audit", "incoming", "--since", "soon", expect=1)
    page = d.run_cli("audit", "incoming", "--limit", "1")
    assert "3 rows match; 2 more after these: use --limit or --offset 1" in page.stderr
    acks = d.json("audit", "outgoing", "--address", jane)
    assert [(r["to"], r["ticket_id"]) for r in acks] == [(jane, jane_ticket)]
    assert d.json("audit", "outgoing", "--ticket", str(jane_ticket)) == acks

    # the API: the same filters, totals, and pages that follow Link until the end
    rows = http.get("/api/audit/incoming?" + urllib.parse.urlencode({"address": jane})).json()
    assert [r["ticket_id"] for r in rows] == [jane_ticket]
    seen, path = [], "/api/audit/incoming?limit=1"
    while path:
        reply = http.get(path)
        assert reply.status == 200 and reply.headers["X-Total-Count"] == "3"
        seen += [r["queue_id"] for r in reply.json()]
        link = reply.headers.get("Link", "")
        path = link[1:link.index(">")] if link else ""
    assert len(set(seen)) == 3
    ack = http.get(f"/api/audit/outgoing?id={acks[0]['id']}").json()
    assert [r["to"] for r in ack] == [jane]
    assert http.get("/api/audit/outgoing?since=never").status == 400

    # the panels link ticket → its audits → ticket and the mail sent about it
    ticket_page = http.get(f"/tickets/{jane_ticket}").text
    assert f'href="/audit/outgoing?ticket={jane_ticket}"' in ticket_page
    assert f'href="/audit/incoming?ticket={jane_ticket}"' in ticket_page
    assert f'href="/audit/outgoing?id={acks[0]["id"]}"' in ticket_page
    incoming_panel = http.get(f"/audit/incoming?ticket={jane_ticket}").text
    assert f'href="/tickets/{jane_ticket}"' in incoming_panel and "1 row" in incoming_panel
    assert MAILS[1][2] not in incoming_panel
    outgoing_panel = http.get(f"/audit/outgoing?id={acks[0]['id']}").text
    assert f'href="/tickets/{jane_ticket}"' in outgoing_panel and "1 row" in outgoing_panel


def test_the_quarantine_pages_by_queue_id_and_counts_on_cli_and_api(
        make_daemon: Callable[..., Daemon]) -> None:
    """Quarantined mail as the SMTP stage records it (rows of `spam`), more than a page: the
    CLI says how many more there are, the API's pages reach every message once."""
    d, http = admin_daemon(make_daemon)
    db = open_db(d.data_dir / "mailgate.db")
    with transaction(db) as conn:
        for i in range(7):  # two share a second: the queue id breaks the tie
            conn.execute("INSERT INTO spam (queue_id, received_at, action, score, symbols,"
                         " state) VALUES (?, ?, 'quarantine', 9.5, '{}', 'quarantined')",
                         (f"Q{i:02d}", f"2026-01-01T00:00:0{min(i, 5)}Z"))
    db.conn.close()
    listed = d.run_cli("spam", "list", "--limit", "5")
    assert "7 messages match; 2 more after these: use --limit or --offset 5" in listed.stderr
    rest = json.loads(d.run_cli("spam", "list", "--offset", "5", "--json").stdout)
    assert [r["queue_id"] for r in rest] == ["Q01", "Q00"]
    seen, path = [], "/api/spam?limit=3"
    while path:
        reply = http.get(path)
        assert reply.status == 200 and reply.headers["X-Total-Count"] == "7"
        seen += [r["queue_id"] for r in reply.json()]
        link = reply.headers.get("Link", "")
        path = link[1:link.index(">")] if link else ""
    assert seen == ["Q06", "Q05", "Q04", "Q03", "Q02", "Q01", "Q00"]
    panel = http.get("/spam?limit=3").text
    assert "7 messages" in panel and 'rel="next"' in panel
