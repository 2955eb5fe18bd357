"""Copying an installation's database to PostgreSQL (mailgate/store/copy.py), verified.

Real parts: the source is built the real way — a `mailgate serve` daemon with a real relay
stub receives a new ticket with non-ASCII text and an attachment, an agent reply, the
customer's answer, a bounce to the VERP address — then stopped and upgraded (what
`mailgate db upgrade` does); the target is a fresh database of the PostgreSQL the suite starts
(skipped under one line without Debian's postgresql). Bad rows are made with sqlite3 directly,
as old SQLite files hold them.
"""

from __future__ import annotations

import email
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import (
    Daemon,
    free_port,
    outbound_config,
    queue_id_of,
    send,
    wait_outgoing,
    write_config,
)
from relay_stub import RelayStub

from mailgate.errors import UserError
from mailgate.store.copy import copy_database
from mailgate.store.engine import make_engine
from mailgate.store.schema import metadata
from mailgate.store.upgrade import upgrade

CUSTOMER = "jane@acme.test"
SUBJECT = "Drucker brennt — bitte helfen"
BODY = "Grüße aus Köln: der Drucker 🔥 brennt schon wieder."
ORGS = """
[[organizations]]
name = "Acme"
domains = ["acme.test"]
[organizations.on_new_ticket]
round_robin = ["alice@example.com"]
priority = "urgent"
add_tags = ["premium"]
"""


def _first_mail() -> bytes:
    return (
        f"From: Jane Doe <{CUSTOMER}>\r\nTo: support@example.com\r\n"
        f"Subject: =?utf-8?q?Drucker_brennt_=E2=80=94_bitte_helfen?=\r\n"
        "Message-ID: <first@acme.test>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        f"\r\n{BODY}\r\n"
        "--B\r\nContent-Type: application/pdf\r\n"
        'Content-Disposition: attachment; filename="rechnung.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcOkw7zDtsOfCg==\r\n--B--\r\n"
    ).encode()


def _dsn(verp: str) -> str:
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.acme.test>\r\n"
        f"To: {verp}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-1@mx.acme.test>\r\nAuto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.acme.test\r\n\r\n"
        f"Final-Recipient: rfc822; {CUSTOMER}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{CUSTOMER}>: Recipient address rejected\r\n"
        "--B--\r\n"
    )


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A stopped installation's SQLite file at the head revision, with rows in most tables."""
    base = tmp_path_factory.mktemp("installation")
    relay = RelayStub(port=free_port())
    relay.start()
    port = free_port()
    d = Daemon(write_config(base, port, outbound_config(relay.port, ORGS)), port)
    d.start()
    try:
        row = d.audit_for(queue_id_of(send(d.port, _first_mail(), mail_from=CUSTOMER)[1]))
        tid = str(row["ticket_id"])
        d.cli("tickets", "reply", tid, "--agent", "alice@example.com",
              "--body", "Hallo Jane, wir schicken einen Techniker. Grüße, Alice")
        # the assignee's notification, the acknowledgement, the agent's reply
        ack, agent_mail = [m for m in relay.wait_for(3) if list(m.rcpt_tos) == [CUSTOMER]]
        agent_id = email.message_from_bytes(agent_mail.data)["Message-ID"]
        answer = (f"From: Jane Doe <{CUSTOMER}>\r\nTo: support@example.com\r\n"
                  f"Subject: Re: Drucker\r\nMessage-ID: <answer@acme.test>\r\n"
                  f"In-Reply-To: {agent_id}\r\n\r\nDanke!\r\n")
        assert d.audit_for(queue_id_of(send(d.port, answer, mail_from=CUSTOMER)[1])
                           )["action"] == "appended"
        wait_outgoing(d, lambda rows: len(rows) == 4
                      and all(r["status"] == "sent" for r in rows))
        bounce = d.audit_for(queue_id_of(send(d.port, _dsn(ack.mail_from), mail_from="",
                                              rcpts=(ack.mail_from,))[1]))
        assert bounce["action"] == "bounce"
        d.wait_idle()
    finally:
        d.stop()
        relay.stop()
    path = d.data_dir / "mailgate.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        upgrade(engine)  # what `mailgate db upgrade` does
    finally:
        engine.dispose()
    yield path


def _source(installation: Path, tmp_path: Path) -> Path:
    """A copy of the installation's file for one test (which may spoil it)."""
    path = tmp_path / "source.db"
    with sqlite3.connect(installation) as src, sqlite3.connect(path) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    return path


def _sqlite_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in metadata.tables}
    conn.close()
    return counts


def _counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)
                                         ).scalar_one() for t in metadata.sorted_tables}
    finally:
        engine.dispose()


def _rows(url: str, sql: str) -> list[tuple]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def test_an_installation_copied_to_postgres_reads_back_equal(installation: Path,
                                                            tmp_path: Path,
                                                            pg_database: str) -> None:
    source = _source(installation, tmp_path)
    surl = f"sqlite:///{source}"
    before = _sqlite_counts(source)
    filled = {t for t, n in before.items() if n}
    assert {"customers", "tickets", "messages", "message_ids", "attachments", "audit_incoming",
            "outbound", "participants", "organizations", "org_domains", "rule_evaluations",
            "round_robin"} <= filled, before
    seen: list[tuple[str, int, int]] = []

    report = copy_database(surl, pg_database, batch_rows=2,
                           progress=lambda *step: seen.append(step))

    assert {t.name: t.rows for t in report.tables} == before == _counts(pg_database)
    assert [t.name for t in report.tables] == [t.name for t in metadata.sorted_tables]
    assert all(len(t.checksum) == 64 for t in report.tables)
    assert report.rows == sum(before.values())
    # streamed in batches of two: the messages table was reported after every second row
    steps = [(done, total) for name, done, total in seen if name == "messages"]
    assert steps == [(min(n, before["messages"]), before["messages"])
                     for n in range(2, before["messages"] + 2, 2)]
    # the raw mail files stay on disk: the report counts what the rows refer to
    assert report.attachment_files == 1
    assert report.raw_files == len(_rows(surl, "SELECT DISTINCT raw_path FROM messages"
                                               " WHERE raw_path IS NOT NULL"))
    assert any("stay on disk" in line for line in report.lines())
    # a sample read back through the other engine equals the source
    for sql in ("SELECT id, subject, priority, tags, assignee FROM tickets ORDER BY id",
                "SELECT id, text, from_addr, raw_path FROM messages ORDER BY id",
                "SELECT id, raw, created_ts, next_attempt FROM outbound ORDER BY id",
                "SELECT filename, sha256, size FROM attachments ORDER BY id"):
        assert _rows(surl, sql) == _rows(pg_database, sql), sql
    (subject,) = _rows(pg_database, "SELECT subject FROM tickets")[0]
    assert subject == SUBJECT
    texts = [r[0] for r in _rows(pg_database, "SELECT text FROM messages ORDER BY id")]
    assert any(BODY in (t or "") for t in texts)
    raws = [r[0] for r in _rows(pg_database, "SELECT raw FROM outbound ORDER BY id")]
    assert len(raws) == 4 and all(isinstance(r, bytes) and b"\r\n" in r for r in raws)
    # the next insert after the copy gets an id past the copied ones, in every id table
    engine = make_engine(pg_database)
    try:
        with engine.begin() as conn:
            for table in metadata.sorted_tables:
                if table.autoincrement_column is None:
                    continue
                largest = conn.execute(sa.select(sa.func.max(table.c.id))).scalar_one() or 0
                values = {c.name: 0 if isinstance(c.type, sa.Integer | sa.Float) else "x"
                          for c in table.columns
                          if not c.nullable and not c.primary_key and c.server_default is None}
                new_id = conn.execute(table.insert().values(**values).returning(table.c.id)
                                      ).scalar_one()
                assert new_id > largest, table.name
    finally:
        engine.dispose()


def test_a_second_copy_into_the_same_target_is_refused(installation: Path, tmp_path: Path,
                                                       pg_database: str) -> None:
    surl = f"sqlite:///{_source(installation, tmp_path)}"
    copy_database(surl, pg_database)
    before = _counts(pg_database)
    with pytest.raises(UserError) as refused:
        copy_database(surl, pg_database)
    message = str(refused.value)
    assert message == (f"target database {pg_database} is not empty (table audit_incoming"
                       " has rows): copy only into an empty database, never over another"
                       " installation")
    assert _counts(pg_database) == before


def test_a_source_at_an_old_schema_is_refused_and_the_target_untouched(
        tmp_path: Path, pg_database: str) -> None:
    import sqlite_utils

    from mailgate.store.db import MIGRATIONS

    old = sqlite_utils.Database(tmp_path / "old.db")  # legacy v6: older than the baseline
    for number, step in enumerate(MIGRATIONS[:6], start=1):
        step(old)
        old.execute(f"PRAGMA user_version={number}")
    old.conn.close()
    with pytest.raises(UserError) as refused:
        copy_database(f"sqlite:///{tmp_path / 'old.db'}", pg_database)
    message = str(refused.value)
    assert "legacy sqlite v6" in message and message.endswith(
        "upgrade it first: mailgate db upgrade")
    assert _rows(pg_database, "SELECT tablename FROM pg_tables WHERE schemaname='public'") == []


BAD_ROWS = [
    pytest.param("UPDATE outbound SET attempts='three' WHERE id=(SELECT MAX(id) FROM outbound)",
                 "outbound", "column attempts holds text 'three' where an integer belongs",
                 id="text-in-integer"),
    pytest.param("INSERT INTO message_ids (message_id, ticket_id, message_row)"
                 " VALUES (NULL, 1, NULL)", "message_ids",
                 "row message_id=NULL, ticket_id=1: column message_id is NULL",
                 id="null-in-text-primary-key"),
    pytest.param("UPDATE messages SET subject='a' || char(0) || 'b'"
                 " WHERE id=(SELECT MAX(id) FROM messages)", "messages",
                 "column subject holds text with a NUL character", id="nul-in-text"),
    pytest.param("UPDATE tickets SET assignee=X'FF00' WHERE id=1", "tickets",
                 "row id=1: column assignee holds bytes b'\\xff\\x00' where text belongs",
                 id="bytes-in-text"),
    pytest.param("UPDATE outbound SET created_ts='yesterday' WHERE id=1", "outbound",
                 "row id=1: column created_ts holds text 'yesterday' where a real number"
                 " belongs", id="text-in-real"),
]


@pytest.mark.parametrize(("spoil", "table", "named"), BAD_ROWS)
def test_a_row_postgres_would_refuse_fails_the_copy_and_leaves_the_target_empty(
        installation: Path, tmp_path: Path, pg_database: str, spoil: str, table: str,
        named: str) -> None:
    source = _source(installation, tmp_path)
    with sqlite3.connect(source) as conn:  # as an old SQLite file holds it: no checks
        conn.execute(spoil)
    conn.close()
    before = [t.name for t in metadata.sorted_tables]
    assert any(_sqlite_counts(source)[t] for t in before[:before.index(table)])  # midway
    with pytest.raises(UserError) as refused:
        copy_database(f"sqlite:///{source}", pg_database, batch_rows=3)
    message = str(refused.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"cannot copy table {table}, row ") and named in message
    assert "the target was left empty" in message
    assert set(_counts(pg_database).values()) == {0}


def test_a_difference_found_by_verification_rolls_the_copy_back(
        installation: Path, tmp_path: Path, pg_database: str) -> None:
    """The target changes what it is given (a trigger, as a faulty extension or encoding
    would): the counts agree, the checksum of tickets does not, nothing is committed."""
    engine = make_engine(pg_database)
    try:
        upgrade(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN NEW.subject := upper(NEW.subject); RETURN NEW; END $$")
            conn.exec_driver_sql("CREATE TRIGGER shout BEFORE INSERT ON tickets"
                                 " FOR EACH ROW EXECUTE FUNCTION shout()")
    finally:
        engine.dispose()
    with pytest.raises(UserError) as refused:
        copy_database(f"sqlite:///{_source(installation, tmp_path)}", pg_database)
    assert str(refused.value) == (
        "verification failed: table tickets reads back differently from the target than"
        " from the source (checksums differ); the target was left empty")
    assert set(_counts(pg_database).values()) == {0}


def test_sqlite_to_sqlite_and_the_one_line_mistakes(installation: Path,
                                                    tmp_path: Path) -> None:
    """The copy is not tied to PostgreSQL (this one runs without it), and names mistakes."""
    surl = f"sqlite:///{_source(installation, tmp_path)}"
    target = tmp_path / "copy.db"
    report = copy_database(surl, f"sqlite:///{target}")
    assert {t.name: t.rows for t in report.tables} == _sqlite_counts(target)
    assert report.table("messages").rows > 0
    for source, to, expected in (
            (f"sqlite:///{tmp_path / 'nothing.db'}", f"sqlite:///{tmp_path / 'x.db'}",
             f"source database sqlite:///{tmp_path / 'nothing.db'}: no such file"),
            (surl, surl, f"source and target are the same database: {surl}")):
        with pytest.raises(UserError) as refused:
            copy_database(source, to)
        assert str(refused.value) == expected
