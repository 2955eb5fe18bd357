"""The pipeline on PostgreSQL and on SQLite: the same store code and SQL on both engines (on
PostgreSQL through `mailgate.store.pg`). Mail is spooled (the local SQLite spool, as on every
node) and taken through the real pipeline as the daemon builds it into a real PostgreSQL
started by the suite, or a SQLite file: tickets, a reply threaded onto its ticket, the
acknowledgements in the outbox, a duplicate, the audit read back, and a message that fails
inside a batch rolled back alone. Each test runs on both engines and expects the same."""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config

from mailgate.config import load_config
from mailgate.model import Envelope, new_queue_id
from mailgate.ops import app
from mailgate.spool import Spool, SpoolWriter
from mailgate.store import audit, outbound, tickets
from mailgate.store.db import open_db
from mailgate.store.engine import make_engine
from mailgate.store.pg import PgDatabase, translate
from mailgate.store.upgrade import upgrade


def test_translate_keeps_literals_and_turns_placeholders() -> None:
    assert translate("SELECT 1 FROM t WHERE a=? AND b LIKE ? ESCAPE '\\'") == (
        "SELECT 1 FROM t WHERE a=%s AND b LIKE %s ESCAPE '\\'")
    assert translate("SELECT '?', '%' || ?") == "SELECT '?', '%%' || %s"
    assert translate("SELECT 100 % 7") == "SELECT 100 %% 7"
    assert translate("BEGIN IMMEDIATE") == "BEGIN"


def _mail(n: int, extra: str = "", subject: str = "", sender: str = "") -> bytes:
    sender = sender or f"dana{n}@client{n}.test"
    return (f"From: Dana <{sender}>\r\nTo: support@example.com\r\n"
            f"Subject: {subject or f'pg {n}'}\r\nMessage-ID: <pg-{n}@client.test>\r\n{extra}"
            f"\r\nMessage number {n}, \u00e9t\u00e9 \u2603.\r\n").encode()


ATTACHMENT = bytes(range(256)) * 40


def _with_attachment(raw: bytes, payload: bytes) -> bytes:
    """`raw` (a one-part text mail) as multipart/mixed with `payload` attached."""
    head, body = raw.split(b"\r\n\r\n", 1)
    b64 = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (head + b"\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n"
            b"\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body
            + b"\r\n--XX\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=data.bin\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 + b"--XX--\r\n")


@pytest.fixture(params=["sqlite", "postgresql"])
def pg_pipeline(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The pipeline as the daemon builds it, on each engine (the same test, the same result)."""
    cfg = load_config(write_config(tmp_path / "node", 2525, "", ""))
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_database")
        upgrade(make_engine(url))
        db: Any = PgDatabase(url)
    else:
        db = open_db(tmp_path / "mailgate.db")
    spool = Spool(tmp_path / "spool.db")
    writer = SpoolWriter(tmp_path / "spool.db")
    pipe = app.pipeline(cfg, db, spool, app.mail_context(cfg))
    pipe.auth = None  # no DNS here: authentication has tests of its own

    def submit(raw: bytes, mail_from: str = "dana@client.test") -> str:
        env = Envelope(new_queue_id(), time.time(), "127.0.0.1", "t", mail_from,
                       ("support@example.com",), len(raw))
        writer.submit(env, raw).result()
        return env.queue_id

    yield pipe, db, spool, submit
    writer.close()
    db.close()


def test_the_pipeline_stores_on_postgresql(pg_pipeline) -> None:  # type: ignore[no-untyped-def]
    pipe, db, spool, submit = pg_pipeline
    first = [submit(_mail(n)) for n in range(5)]
    outcomes = pipe.run_once(32)
    assert [o.action for o in outcomes] == ["created_ticket"] * 5
    assert db.execute("SELECT COUNT(*) FROM tickets").fetchone()[0] == 5
    # the acknowledgements are in the outbox, one per ticket
    assert db.execute("SELECT COUNT(*) FROM outbound WHERE kind='new_ticket_ack'"
                      ).fetchone()[0] == 5
    # a reply threads onto its ticket; the same message again is a duplicate
    reply = submit(_mail(10, "In-Reply-To: <pg-0@client.test>\r\n", "Re: pg 0",
                         "dana0@client0.test"))
    again = submit(_mail(0))
    outcomes = pipe.run_once(32)
    assert [(o.queue_id, o.action) for o in outcomes] == [
        (reply, "appended"), (again, "duplicate")]
    ticket_id = outcomes[0].ticket_id
    shown = tickets.get_ticket(db, ticket_id)
    assert [m["text"].strip() for m in shown["messages"]] == [
        "Message number 0, \u00e9t\u00e9 \u2603.", "Message number 10, \u00e9t\u00e9 \u2603."]
    assert shown["status"] == "pending_agent"  # the customer wrote again
    # the audit and the outbox read back through the same code as on SQLite
    rows = audit.list_incoming(db, limit=50)
    assert {r["queue_id"] for r in rows} >= set(first)
    assert outbound.counts_by_status(db).get("queued") == 5
    assert all(spool.get(q).state == "done" for q in first)


def test_a_failing_message_is_rolled_back_alone_on_postgresql(pg_pipeline  # type: ignore[no-untyped-def]
                                                              ) -> None:
    pipe, db, spool, submit = pg_pipeline
    if isinstance(db, PgDatabase):
        db.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                   " IF NEW.subject = 'pg 2' THEN RAISE EXCEPTION 'message 2 refused by the"
                   " test'; END IF; RETURN NEW; END $$")
        db.execute("CREATE TRIGGER poison BEFORE INSERT ON messages FOR EACH ROW"
                   " EXECUTE FUNCTION refuse()")
    else:
        db.execute("CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.subject = 'pg 2'"
                   " BEGIN SELECT RAISE(ABORT, 'message 2 refused by the test'); END")
    ids = [submit(_mail(n)) for n in range(4)]
    outcomes = pipe.run_once(32)
    assert [o.action for o in outcomes] == ["created_ticket", "created_ticket", "deferred",
                                            "created_ticket"]
    assert "refused by the test" in outcomes[2].reason
    assert db.execute("SELECT COUNT(*) FROM tickets").fetchone()[0] == 3
    assert db.execute("SELECT COUNT(*) FROM customers WHERE email='dana2@client2.test'"
                      ).fetchone()[0] == 0
    assert spool.get(ids[2]).state == "deferred"


@pytest.mark.parametrize("process", ["inline", "separate"])
def test_the_daemon_runs_on_postgresql(tmp_path: Path, pg_database: str, process: str) -> None:
    """`[storage] database = "postgresql://…"`: `mailgate serve` creates the schema on the empty
    database, takes mail over SMTP into its local spool, stores tickets in PostgreSQL, and the
    CLI reads them from there (no SQLite store file is made) — with the pipeline in the daemon
    and in a process of its own."""
    from conftest import Daemon, free_port, queue_id_of, send

    port = free_port()
    cfg = write_config(tmp_path / "pgnode", port, f'[pipeline]\nprocess = "{process}"\n', "")
    cfg.write_text(cfg.read_text().replace(
        'data_dir = "data"', f'data_dir = "data"\ndatabase = "{pg_database}"', 1))
    daemon = Daemon(cfg, port)
    daemon.start()
    try:
        code, reply = send(port, _mail(1))
        assert code == 250
        assert daemon.audit_for(queue_id_of(reply))["action"] == "created_ticket"
        code, reply = send(port, _mail(2, "In-Reply-To: <pg-1@client.test>\r\n", "Re: pg 1",
                                       "dana1@client1.test"))
        assert daemon.audit_for(queue_id_of(reply))["action"] == "appended"
        (ticket,) = daemon.json("tickets", "list")
        assert ticket["subject"] == "pg 1" and ticket["requester"] == "dana1@client1.test"
        assert not (daemon.data_dir / "mailgate.db").exists()
        assert (daemon.data_dir / "spool.db").exists()  # the spool stays local to the node
    finally:
        daemon.stop()
    db = PgDatabase(pg_database)
    assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2
    # the raw mail is in the database, where every node reads it, not under data_dir
    paths = [r[0] for r in db.execute("SELECT path FROM stored_files").fetchall()]
    assert len(paths) == 2 and all(p.startswith("raw/") for p in paths), paths
    assert not (daemon.data_dir / "raw").exists()
    db.close()


def test_a_database_url_that_is_not_postgresql_is_a_config_error(tmp_path: Path) -> None:
    from mailgate.errors import ConfigError

    cfg = write_config(tmp_path / "bad", 2525, "", "")
    cfg.write_text(cfg.read_text().replace(
        'data_dir = "data"', 'data_dir = "data"\ndatabase = "mysql://x@y/z"', 1))
    with pytest.raises(ConfigError, match=r"\[storage\] database: must be a postgresql:// URL"):
        load_config(cfg)


def test_db_copy_moves_an_installation_and_the_cli_reads_it_there(
        tmp_path: Path, pg_database: str) -> None:
    """`mailgate db copy --to URL` from the configured SQLite file into an empty PostgreSQL,
    then the same CLI with `[storage] database` set to that URL lists the same tickets; a
    second copy into it is refused in one line."""
    from click.testing import CliRunner

    from mailgate.cli import cli

    cfg_path = write_config(tmp_path / "node", 2525, "", "")
    cfg = load_config(cfg_path)
    db = open_db(cfg.db_path)
    spool = Spool(tmp_path / "spool.db")
    writer = SpoolWriter(tmp_path / "spool.db")
    pipe = app.pipeline(cfg, db, spool, app.mail_context(cfg))
    pipe.auth = None
    for n in range(3):
        raw = _mail(n) if n else _with_attachment(_mail(n), ATTACHMENT)
        env = Envelope(new_queue_id(), time.time(), "127.0.0.1", "t", "d@client.test",
                       ("support@example.com",), len(raw))
        writer.submit(env, raw).result()
    assert [o.action for o in pipe.run_once(32)] == ["created_ticket"] * 3
    writer.close()
    db.close()
    token_before = app.signer(cfg).sign("ticket", 1)

    runner = CliRunner()
    before = runner.invoke(cli, ["--config", str(cfg_path), "tickets", "list", "--json"])
    copied = runner.invoke(cli, ["--config", str(cfg_path), "db", "copy", "--to", pg_database])
    assert copied.exit_code == 0, copied.output
    assert "verified by counts and checksums" in copied.output
    again = runner.invoke(cli, ["--config", str(cfg_path), "db", "copy", "--to", pg_database])
    assert again.exit_code != 0 and "not empty" in again.output.lower() + str(again.exception)
    cfg_path.write_text(cfg_path.read_text().replace(
        'data_dir = "data"', f'data_dir = "data"\ndatabase = "{pg_database}"', 1))
    after = runner.invoke(cli, ["--config", str(cfg_path), "tickets", "list", "--json"])
    assert after.exit_code == 0, after.output
    assert after.output == before.output
    # the raw mail and the attachment moved into the database with the rows: the files under
    # data_dir are gone and the CLI on PostgreSQL still hands out the same bytes
    assert "copied into the database (stored_files)" in copied.output, copied.output
    assert "reply addresses sent before keep working" in copied.output, copied.output
    raw_before = sorted((cfg.data_dir / "raw").rglob("*.eml"))[0].read_bytes()
    shutil.rmtree(cfg.data_dir / "raw")
    shutil.rmtree(cfg.data_dir / "attachments")
    (cfg.data_dir / "secret.key").unlink()
    out = tmp_path / "a.bin"
    got = runner.invoke(cli, ["--config", str(cfg_path), "tickets", "attachment", "1", "--out",
                              str(out)])
    assert got.exit_code == 0, got.output
    assert out.read_bytes() == ATTACHMENT
    got = runner.invoke(cli, ["--config", str(cfg_path), "tickets", "raw", "1", "--out",
                              str(tmp_path / "m.eml")])
    assert got.exit_code == 0, got.output
    assert (tmp_path / "m.eml").read_bytes() == raw_before
    # the reply-token secret is the database's now, the same as the file's was
    pg_cfg = load_config(cfg_path)
    assert app.signer(pg_cfg).sign("ticket", 1) == token_before


def test_a_postgresql_database_at_another_schema_is_refused_as_a_sqlite_file_is(
        pg_database: str) -> None:
    """The same rule and words as for a SQLite file: a newer revision is never to be
    'upgraded' by an older mailgate, and tables of something else are not a mailgate
    database."""
    from mailgate.errors import SchemaMismatch
    from mailgate.store.connect import open_store

    upgrade(make_engine(pg_database))
    db = PgDatabase(pg_database)
    db.execute("UPDATE alembic_version SET version_num='9999'")
    with pytest.raises(SchemaMismatch, match="newer than this mailgate knows"):
        open_store(pg_database)
    db.execute("DROP TABLE alembic_version")
    with pytest.raises(SchemaMismatch, match="it is not a mailgate database"):
        open_store(pg_database)
    db.close()
