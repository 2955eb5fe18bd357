"""The schema gate at start-up (`open_db`), `mailgate db upgrade` and `mailgate db check`.

Real parts: `mailgate serve` subprocesses on loopback, SQLite files under tmp_path built by the
legacy migrations as an old mailgate left them, a PostgreSQL started by the suite (skipped
under one line without it), a SQLite file damaged in the middle of a page, and a throw-away
Alembic revision in a copy of the packaged migrations.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlite_utils
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from conftest import Daemon, free_port, write_config

from mailgate.cli import cli
from mailgate.config import load_config
from mailgate.errors import SchemaMismatch
from mailgate.ops.doctor import check_schema
from mailgate.store import upgrade as upgrade_module
from mailgate.store.db import (
    BASELINE,
    LEGACY_HEAD,
    MIGRATIONS,
    REVISIONS,
    open_db,
    transaction,
)
from mailgate.store.upgrade import MIGRATIONS_DIR, head

HINT = "run 'mailgate db upgrade' (back the file up first)"


def legacy_file(path: Path, version: int) -> None:
    """A SQLite file as a mailgate of legacy schema `version` left it, with a customer, a ticket
    and a message on it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(sqlite3.connect(path, isolation_level=None))
    for number, step in enumerate(MIGRATIONS[:version], start=1):
        with transaction(db):
            step(db)
            db.execute(f"PRAGMA user_version={number}")
    with transaction(db) as conn:
        conn.execute("INSERT INTO customers (id, email, created_at)"
                     " VALUES (7, 'jane@customer.test', '2024-01-01T00:00:00Z')")
        conn.execute("INSERT INTO tickets (id, subject, requester_id, status, created_at,"
                     " updated_at) VALUES (3, 'Printer on fire', 7, 'open',"
                     " '2024-01-01T00:00:00Z', '2024-01-01T00:00:00Z')")
        conn.execute("INSERT INTO messages (id, ticket_id, direction, message_id, subject,"
                     " created_at) VALUES (11, 3, 'in', '<m1@customer.test>', 'Printer on fire',"
                     " '2024-01-01T00:00:00Z')")
    db.conn.close()


def run(*args: str, expect: int | None = 0) -> tuple[str, str, int]:
    """`mailgate ARGS` in-process: (stdout, stderr, exit status)."""
    result = CliRunner().invoke(cli, list(args))
    if expect is not None:
        assert result.exit_code == expect, (result.stdout, result.stderr, result.exception)
    return result.stdout, result.stderr, result.exit_code


def serve_refusal(config: Path) -> tuple[int, str]:
    """Start `mailgate serve` and wait for it to end: (exit status, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "mailgate", "--config", str(config), "serve"],
                          cwd=config.parent, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stderr


def test_the_revisions_open_db_knows_are_those_of_the_migrations_directory() -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    walked = [s.revision for s in ScriptDirectory.from_config(config).walk_revisions()]
    assert tuple(reversed(walked)) == REVISIONS  # add a new revision to db.REVISIONS too
    assert REVISIONS[-1] == head() and BASELINE == upgrade_module.BASELINE
    assert LEGACY_HEAD == len(MIGRATIONS) == upgrade_module.LEGACY_HEAD


def test_serve_refuses_a_v6_file_until_db_upgrade_and_then_keeps_its_rows(
        tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "d", port)
    path = config.parent / "data" / "mailgate.db"
    legacy_file(path, 6)

    status, stderr = serve_refusal(config)
    line = (f"mailgate: the database {path} has schema legacy v6, this mailgate needs revision"
            f" {head()}: {HINT}")
    assert status != 0 and stderr.strip() == line, stderr
    # Other commands refuse the same way; nothing was changed by any of them.
    _, err, _ = run("--config", str(config), "tickets", "list", expect=1)
    assert err.strip() == line
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 6

    out, _, _ = run("--config", str(config), "db", "upgrade")
    assert out.strip() == f"sqlite:///{path}: legacy v6 → revision {head()}"

    daemon = Daemon(config, port)
    daemon.start()
    try:
        tickets = daemon.json("tickets", "list")
        assert [(t["id"], t["subject"]) for t in tickets] == [(3, "Printer on fire")]
    finally:
        assert daemon.stop() == 0


def test_db_check_on_a_good_file_and_an_old_one(tmp_path: Path) -> None:
    good = tmp_path / "good.db"
    open_db(good).conn.close()  # a fresh file: made at head
    out, err, _ = run("db", "check", "--database", f"sqlite:///{good}")
    assert out.splitlines()[-1] == "db check: ok" and not err
    report = json.loads(run("db", "check", "--database", f"sqlite:///{good}", "--json")[0])
    assert report["up_to_date"] and report["ok"] and report["head"] == head()
    assert {c["name"] for c in report["checks"]} == {"schema", "integrity", "references",
                                                      "tables", "search"}

    old = tmp_path / "old.db"
    legacy_file(old, 6)
    out, err, _ = run("db", "check", "--database", f"sqlite:///{old}", expect=1)
    assert f"FAIL  schema      legacy sqlite v6 (head is {head()})" in out, out
    assert err.strip() == "mailgate: db check: not usable as it is (schema)"
    report = json.loads(run("db", "check", "--database", f"sqlite:///{old}", "--json",
                            expect=1)[0])
    assert report["legacy"] == 6 and not report["up_to_date"] and not report["ok"]

    missing = tmp_path / "nothing-here.db"
    out, _, _ = run("db", "check", "--database", f"sqlite:///{missing}", expect=1)
    assert f"no database file at {missing}" in out and not missing.exists()


def test_db_check_names_a_page_damaged_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    db = open_db(path)
    with transaction(db) as conn:
        for n in range(400):
            conn.execute("INSERT INTO customers (email, name) VALUES (?, ?)",
                         (f"c{n}@customer.test", "x" * 200))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.conn.close()
    page_size = 4096
    data = bytearray(path.read_bytes())
    assert len(data) // page_size > 10
    page = data.index(b"c200@customer.test") // page_size * page_size  # a page of customers
    data[page + 1000: page + 3000] = b"\xa5" * 2000  # the middle of its cells
    path.write_bytes(bytes(data))

    out, err, _ = run("db", "check", "--database", f"sqlite:///{path}", expect=1)
    assert "FAIL  integrity" in out and "PRAGMA integrity_check:" in out, out
    assert "integrity" in err and "\n" not in err.strip()


def test_db_upgrade_and_check_on_postgres(pg_database: str) -> None:
    out, _, _ = run("db", "check", "--database", pg_database, expect=1)
    assert f"FAIL  schema      empty (head is {head()})" in out, out
    out, _, _ = run("db", "upgrade", "--database", pg_database)
    assert out.strip().endswith(f": empty → revision {head()}"), out
    out, _, _ = run("db", "check", "--database", pg_database)
    lines = out.splitlines()
    assert lines[-1] == "db check: ok", out
    assert any(line.startswith("ok    differences") for line in lines), out
    assert any(line.startswith("ok    tables") for line in lines), out
    out, _, _ = run("db", "upgrade", "--database", pg_database)
    assert out.strip().endswith(f"revision {head()} is the newest; nothing to do"), out


def test_db_commands_name_a_bad_url_and_never_print_a_password(tmp_path: Path) -> None:
    for command in ("check", "upgrade"):
        _, err, status = run("db", command, "--database", "mysql://u:s3cret@db.invalid/mg",
                             expect=None)
        assert status == 2 and err.count("\n") == 1 and "s3cret" not in err, err
        assert "unsupported database" in err
        # A server that is not there: one line, exit 1, the password hidden.
        url = f"postgresql://u:s3cret@127.0.0.1:{free_port()}/mg"
        out, err, status = run("db", command, "--database", url, expect=None)
        assert status == 1 and "s3cret" not in out + err, (out, err)
        assert err.count("\n") == 1, err


_LATER_REVISION = '''"""A throw-away revision: tickets.sla_due."""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("sla_due", sa.Text))
'''


@pytest.fixture
def later_migrations(tmp_path: Path) -> Path:
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    (migrations / "versions" / "0004_later.py").write_text(_LATER_REVISION)
    return migrations


def test_a_new_revision_is_refused_by_open_db_until_db_upgrade_applies_it(
        tmp_path: Path, later_migrations: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mailgate.db"
    legacy_file(path, LEGACY_HEAD)  # what every installation from before has
    with pytest.raises(SchemaMismatch) as caught:  # the packaged head is 0003
        open_db(path)
    assert str(caught.value) == (f"the database {path} has schema legacy v11 (revision 0001),"
                                 f" this mailgate needs revision 0003: {HINT}")
    out, _, _ = run("db", "upgrade", "--database", f"sqlite:///{path}")
    assert out.strip() == f"sqlite:///{path}: legacy v11 → revision 0003"
    open_db(path).conn.close()  # with the packaged revisions: at head (0003)

    with pytest.raises(SchemaMismatch) as caught:
        open_db(path, later_migrations)
    assert str(caught.value) == (f"the database {path} has schema revision 0003,"
                                 f" this mailgate needs revision 0004: {HINT}")

    # `mailgate db upgrade` of a mailgate that ships 0004.
    monkeypatch.setattr(upgrade_module, "MIGRATIONS_DIR", later_migrations)
    out, _, _ = run("db", "upgrade", "--database", f"sqlite:///{path}")
    assert out.strip() == f"sqlite:///{path}: revision 0003 → revision 0004"
    monkeypatch.undo()

    db = open_db(path, later_migrations)
    try:
        assert "sla_due" in db["tickets"].columns_dict
        assert [r["subject"] for r in db["tickets"].rows] == ["Printer on fire"]
    finally:
        db.conn.close()
    # The mailgate that knows only 0003 refuses a database a newer one upgraded.
    with pytest.raises(SchemaMismatch) as caught:
        open_db(path)
    assert "has schema revision 0004, newer than this mailgate knows" in str(caught.value)

    fresh = tmp_path / "fresh.db"  # a new file is made at that head at once
    db = open_db(fresh, later_migrations)
    try:
        assert "sla_due" in db["tickets"].columns_dict
        version = db.execute("SELECT version_num FROM alembic_version").fetchall()
        assert version == [("0004",)]
    finally:
        db.conn.close()


def test_open_db_refuses_a_file_mailgate_did_not_make(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE tickets (id INTEGER PRIMARY KEY, title TEXT)")
    with pytest.raises(SchemaMismatch) as caught:
        open_db(path)
    assert "it is not a mailgate database" in str(caught.value)
    with sqlite3.connect(path) as conn:  # untouched
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["tickets"]


def test_doctor_has_a_schema_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "d", free_port())
    cfg = load_config(config)
    check = check_schema(cfg)
    assert check.status == "ok" and "no database yet" in check.detail
    legacy_file(cfg.db_path, 6)
    check = check_schema(cfg)
    assert check.status == "FAIL" and "has schema legacy v6" in check.detail
    assert "db upgrade" in check.fix
    run("--config", str(config), "db", "upgrade")
    check = check_schema(cfg)
    assert check.status == "ok" and f"revision {head()}" in check.detail, check
