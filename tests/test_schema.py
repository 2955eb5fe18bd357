"""One schema for both engines: mailgate/store/schema.py against what the legacy SQLite
migrations build, the Alembic baseline on an empty SQLite file and on a real PostgreSQL
(tests/pgserver.py), and `upgrade()` on SQLite files from before Alembic.

Real parts: SQLite files under tmp_path, a PostgreSQL cluster started by the suite (skipped,
under one line, when Debian's postgresql is not installed), SQLAlchemy's inspector and
Alembic's own autogenerate comparison.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlite_utils
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import ROOT
from pgserver import BIN_ENV, NOT_INSTALLED
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Engine

from mailgate.errors import UserError
from mailgate.store.db import MIGRATIONS, REVISIONS, open_db, transaction
from mailgate.store.engine import make_engine
from mailgate.store.schema import metadata
from mailgate.store.search import FTS_TABLE_PREFIXES
from mailgate.store.upgrade import (
    LEGACY_HEAD,
    MIGRATIONS_DIR,
    head,
    schema_state,
    upgrade,
)

SQLITE = sqlite_dialect.dialect()


def _affinity(declared: str) -> str:
    """SQLite's type affinity of a declared column type (its rules, in their order)."""
    t = declared.upper()
    if "INT" in t:
        return "INTEGER"
    if any(k in t for k in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in t or not t:
        return "BLOB"
    if any(k in t for k in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def _default(value: Any) -> str | None:
    return None if value is None else str(value).strip()


def describe_database(engine: Engine) -> dict[str, dict[str, Any]]:
    """Every table of a SQLite database as the inspector sees it. A primary-key column's NOT
    NULL is left out (SQLite lets a legacy INTEGER/TEXT PRIMARY KEY column say either)."""
    inspector = sa.inspect(engine)
    tables = {}
    for name in inspector.get_table_names():
        if name == "alembic_version" or _search_index_table(name):
            continue
        pk = tuple(inspector.get_pk_constraint(name)["constrained_columns"])
        tables[name] = {
            "columns": {
                c["name"]: (None if c["name"] in pk else not c["nullable"],
                            _affinity(str(c["type"])), _default(c["default"]))
                for c in inspector.get_columns(name)},
            "pk": pk,
            "indexes": {i["name"]: (tuple(i["column_names"]), bool(i["unique"]))
                        for i in inspector.get_indexes(name)},
            "unique": {tuple(u["column_names"]) for u in inspector.get_unique_constraints(name)},
            "fks": {(tuple(f["constrained_columns"]), f["referred_table"],
                     tuple(f["referred_columns"])) for f in inspector.get_foreign_keys(name)},
        }
    return tables


def describe_metadata() -> dict[str, dict[str, Any]]:
    """schema.py's metadata in the same terms, its types as SQLite declares them."""
    tables = {}
    for name, table in metadata.tables.items():
        pk = tuple(c.name for c in table.primary_key.columns)
        tables[name] = {
            "columns": {
                c.name: (None if c.name in pk else not c.nullable,
                         _affinity(c.type.compile(dialect=SQLITE)),
                         _default(c.server_default.arg.text if c.server_default else None))
                for c in table.columns},
            "pk": pk,
            "indexes": {i.name: (tuple(c.name for c in i.columns), bool(i.unique))
                        for i in table.indexes},
            "unique": {tuple(c.name for c in u.columns) for u in table.constraints
                       if isinstance(u, sa.UniqueConstraint)},
            "fks": {(tuple(f.column_keys), f.referred_table.name,
                     tuple(e.column.name for e in f.elements))
                    for f in table.foreign_key_constraints},
        }
    return tables


def assert_same_schema(found: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]
                       ) -> None:
    assert sorted(found) == sorted(expected), "tables differ"
    for table, want in expected.items():
        for part, value in want.items():
            assert found[table][part] == value, f"{table}: {part} differ"


def _search_index_table(name: str) -> bool:
    """A table of the SQLite full-text indexes (store/search.py: derived, not schema)."""
    return name.startswith(FTS_TABLE_PREFIXES)


def _autogenerate_diff(engine: Engine) -> list[Any]:
    """What Alembic's autogenerate would change to make the database match schema.py (the
    full-text indexes of store/search.py aside)."""
    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
                ) -> bool:
        return not (type_ == "table" and name and _search_index_table(name))

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "compare_type": True, "compare_server_default": True, "include_object": include})
        return compare_metadata(context, metadata)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def schema_sql(path: Path) -> dict[str, str]:
    """The schema's SQL by name (the derived full-text indexes of store/search.py aside)."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")
        return {name: sql for name, sql in rows if not _search_index_table(name)}


def test_metadata_matches_the_schema_the_sqlite_migrations_build(tmp_path: Path) -> None:
    path = tmp_path / "legacy.db"
    open_db(path).conn.close()
    assert user_version(path) == LEGACY_HEAD
    engine = make_engine(sqlite_url(path))
    try:
        found = describe_database(engine)
    finally:
        engine.dispose()
    assert "message_ids" in found and found["message_ids"]["pk"] == ("message_id", "ticket_id")
    assert found["outbound"]["indexes"]["idx_outbound_mailbox"] == (
        ("to_mailbox", "automatic", "created_ts"), False)
    assert_same_schema(found, describe_metadata())


def test_baseline_on_an_empty_sqlite_file_builds_the_same_schema(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    engine = make_engine(sqlite_url(path))
    try:
        before = schema_state(engine)
        assert before.empty and before.revision is None and str(before).startswith("empty")
        after = upgrade(engine)
        assert after.current and after.revision == head() and str(after).endswith("(head)")
        assert_same_schema(describe_database(engine), describe_metadata())
        assert _autogenerate_diff(engine) == []
        with engine.begin() as conn:  # ids number themselves; defaults apply
            for email in ("a@x.test", "b@x.test"):
                conn.execute(metadata.tables["customers"].insert().values(email=email))
            conn.execute(metadata.tables["tickets"].insert().values(subject="s"))
            ids = conn.execute(sa.text("SELECT id FROM customers ORDER BY id")).scalars().all()
            ticket = conn.execute(sa.text("SELECT priority, tags FROM tickets")).one()
        assert ids == [1, 2] and tuple(ticket) == ("normal", "[]")
    finally:
        engine.dispose()
    # Code that still opens the file the legacy way finds it current and changes nothing.
    assert user_version(path) == LEGACY_HEAD
    sql = schema_sql(path)
    db = open_db(path)
    assert db["tickets"].count == 1
    db.conn.close()
    assert schema_sql(path) == sql


def _legacy_file_at(path: Path, version: int) -> sqlite_utils.Database:
    """A SQLite file as an old mailgate left it: only the first `version` migrations run."""
    db = sqlite_utils.Database(sqlite3.connect(path, isolation_level=None))
    for number, step in enumerate(MIGRATIONS[:version], start=1):
        with transaction(db):
            step(db)
            db.execute(f"PRAGMA user_version={number}")
    return db


def test_upgrade_brings_a_v6_sqlite_file_to_head_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v6.db"
    db = _legacy_file_at(path, 6)
    with transaction(db) as conn:
        conn.execute("INSERT INTO customers (id, email) VALUES (7, 'jane@customer.test')")
        conn.execute("INSERT INTO tickets (id, subject, requester_id, status)"
                     " VALUES (3, 'Printer on fire', 7, 'open')")
        conn.execute("INSERT INTO messages (id, ticket_id, message_id, subject)"
                     " VALUES (11, 3, '<m1@customer.test>', 'Printer on fire')")
        conn.execute("INSERT INTO message_ids (message_id, ticket_id, message_row)"
                     " VALUES ('<m1@customer.test>', 3, 11)")
        conn.execute("INSERT INTO outbound (id, ticket_id, to_addr, raw, status)"
                     " VALUES (5, 3, 'Jane+tag@Customer.TEST', X'0D0A00FF', 'queued')")
    db.conn.close()
    assert user_version(path) == 6

    engine = make_engine(sqlite_url(path))
    try:
        state = schema_state(engine)
        assert state.legacy == 6 and not state.empty
        assert str(state) == f"legacy sqlite v6 (head is {head()})"
        after = upgrade(engine)
        assert after.current and after.revision == head()
        assert_same_schema(describe_database(engine), describe_metadata())
        with engine.connect() as conn:
            ticket = conn.execute(sa.text("SELECT id, subject, requester_id FROM tickets")).one()
            mids = conn.execute(sa.text("SELECT * FROM message_ids")).all()
            out = conn.execute(sa.text("SELECT raw, to_mailbox, to_domain, maybe_sent"
                                       " FROM outbound")).one()
    finally:
        engine.dispose()
    assert tuple(ticket) == (3, "Printer on fire", 7)
    assert [tuple(r) for r in mids] == [("<m1@customer.test>", 3, 11)]  # v7 rebuilt the table
    # v7 filled the new recipient keys of the existing row; v6's NOT NULL default applied.
    assert tuple(out) == (b"\r\n\x00\xff", "jane@customer.test", "customer.test", 0)
    assert user_version(path) == LEGACY_HEAD


def test_upgrade_stamps_a_v11_sqlite_file_and_adds_only_the_later_revisions(
        tmp_path: Path) -> None:
    path = tmp_path / "v11.db"
    db = _legacy_file_at(path, LEGACY_HEAD)
    with transaction(db) as conn:
        conn.execute("INSERT INTO customers (email) VALUES ('jane@customer.test')")
        conn.execute("INSERT INTO tickets (subject, requester_id) VALUES ('Hello', 1)")
        for status in ("sent", "queued", "suppressed"):  # the last hour's automatic mail
            conn.execute("INSERT INTO outbound (automatic, to_mailbox, to_domain, created_ts,"
                         " status) VALUES (1, 'jane@customer.test', 'customer.test', ?, ?)",
                         (time.time() - 60, status))
    db.conn.close()
    before = schema_sql(path)
    engine = make_engine(sqlite_url(path))
    try:
        assert str(schema_state(engine)) == f"legacy sqlite v{LEGACY_HEAD} (head is {head()})"
        assert upgrade(engine).revision == head() == REVISIONS[-1]
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, subject, priority FROM tickets")).all()
        assert upgrade(engine).revision == head()  # again: nothing to do
        assert_same_schema(describe_database(engine), describe_metadata())
        with engine.connect() as conn:  # the rate limits' counters, filled from the outbox
            counted = dict(conn.execute(sa.text(
                "SELECT key, SUM(n) FROM auto_mail_counts GROUP BY key")).all())
        assert counted == {"m:jane@customer.test": 2, "d:customer.test": 2, "*": 2}
    finally:
        engine.dispose()
    after = schema_sql(path)
    assert after.pop("alembic_version").startswith("CREATE TABLE alembic_version")
    added = {name for name in after if name not in before}
    assert added == {"stored_files", "shared_secrets", "nodes", "auto_mail_counts",  # 0002
                     "uq_messages_incoming",
                     "idx_tickets_requester_id",  # 0003
                     "idx_tickets_merged_into", "idx_tickets_linked_ticket_id",  # 0004
                     "agent_credentials", "idx_agent_credentials_token_hash", "agent_sessions",
                     "idx_agent_sessions_email", "login_failures", "idx_login_failures_key_at_ts",
                     "ticket_actions", "idx_ticket_actions_ticket_id_id",
                     "idx_ticket_actions_actor_at",  # 0005
                     "data_actions", "idx_data_actions_action_at",  # 0007
                     "webhook_deliveries", "idx_webhook_deliveries_state_next_attempt",
                     "idx_webhook_deliveries_ticket_id", "webhook_attempts",
                     "idx_webhook_attempts_delivery_id_id", "idx_webhook_attempts_at"}  # 0008
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {"outbound", "tickets"}  # columns added in place; nothing else rebuilt
    assert [tuple(r) for r in rows] == [(1, "Hello", "normal")]
    assert user_version(path) == LEGACY_HEAD


def test_a_new_file_opened_without_alembic_is_the_file_alembic_builds(tmp_path: Path) -> None:
    fresh, built = tmp_path / "fresh.db", tmp_path / "built.db"
    open_db(fresh).conn.close()
    engine = make_engine(sqlite_url(built))
    try:
        upgrade(engine)
    finally:
        engine.dispose()

    def shape(path: Path) -> dict[str, str]:
        with sqlite3.connect(path) as conn:
            return {name: re.sub(r"\s+", " ", sql.replace('"', "")).replace("( ", "(")
                    .replace(" )", ")").strip() for name, sql in conn.execute(
                        "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
                        " AND sql IS NOT NULL")}

    assert shape(fresh)["uq_messages_incoming"].endswith(
        "WHERE queue_id IS NOT NULL AND digest IS NOT NULL AND message_id IS NOT NULL"
        " AND message_id <> ''")
    assert shape(fresh) == shape(built)
    for path in (fresh, built):
        engine = make_engine(sqlite_url(path))
        try:
            assert_same_schema(describe_database(engine), describe_metadata())
            assert schema_state(engine).revision == head()
        finally:
            engine.dispose()


def test_the_incoming_copy_of_a_message_is_stored_once(tmp_path: Path) -> None:
    db = open_db(tmp_path / "m.db")
    insert = ("INSERT INTO messages (queue_id, message_id, from_addr, digest)"
              " VALUES (?, ?, ?, ?)")
    with transaction(db) as conn:
        conn.execute(insert, ("Q1", "a@x", "jane@x.test", "d1"))
        conn.execute(insert, ("Q2", "a@x", "jane@x.test", "d2"))  # other content
        conn.execute(insert, ("Q3", "a@x", "eve@x.test", "d1"))  # another sender
        conn.execute(insert, ("Q4", "", "jane@x.test", "d1"))  # no Message-ID: not compared
        conn.execute(insert, ("Q5", "", "jane@x.test", "d1"))
        conn.execute(insert, (None, "a@x", "jane@x.test", "d1"))  # sent by us, not received
    with pytest.raises(sqlite3.IntegrityError), transaction(db) as conn:
        conn.execute(insert, ("Q6", "a@x", "jane@x.test", "d1"))
    db.conn.close()


def test_upgrade_refuses_a_sqlite_file_mailgate_did_not_make(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE tickets (id INTEGER PRIMARY KEY, title TEXT)")
    engine = make_engine(sqlite_url(path))
    try:
        with pytest.raises(UserError) as caught:
            upgrade(engine)
    finally:
        engine.dispose()
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    assert "without a mailgate schema revision" in message, message
    assert schema_sql(path) == {"tickets": "CREATE TABLE tickets (id INTEGER PRIMARY KEY,"
                                           " title TEXT)"}


def test_make_engine_takes_the_two_engines_and_names_a_wrong_url(tmp_path: Path) -> None:
    for url in ("postgresql://u:pw@db.invalid/mg", "postgres://u@db.invalid/mg",
                "postgresql+psycopg://u@db.invalid:5433/mg"):
        engine = make_engine(url)
        assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg"), url
    engine = make_engine(sqlite_url(tmp_path / "sub" / "x.db"))
    assert engine.dialect.name == "sqlite" and (tmp_path / "sub").is_dir()
    for url, why in (("mysql://u:secret@db.invalid/mg", "unsupported database"),
                     ("postgresql+psycopg2://u:secret@db.invalid/mg", "unsupported database"),
                     ("postgresql://u:secret@db.invalid", "names no database"),
                     ("sqlite://", "names no file"),
                     ("not a url", "is not a URL")):
        with pytest.raises(UserError) as caught:
            make_engine(url)
        message = str(caught.value)
        assert why in message and "\n" not in message and "secret" not in message, message
        assert "sqlite:///" in message and "postgresql://" in message, message


_LATER_REVISION = '''"""A later revision, as a developer would write one: {what}."""

import sqlalchemy as sa
from alembic import op

revision = "9000"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}
'''
# An ALTER that SQLite cannot do in place: batch mode rebuilds `tickets` (copy, drop, rename)
# on SQLite while PostgreSQL alters it; `messages` and its rows refer to `tickets`.
_REBUILD = """\
    with op.batch_alter_table("tickets") as batch:
        batch.alter_column("subject", existing_type=sa.Text, nullable=False,
                           server_default=sa.text("''"))
        batch.add_column(sa.Column("sla_due", sa.Text))
"""


def _migrations_with(tmp_path: Path, what: str, body: str) -> Path:
    """A copy of the packaged migrations with one more revision, 9000."""
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, migrations,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (migrations / "versions" / "9000_later.py").write_text(
        _LATER_REVISION.format(what=what, body=body, head=REVISIONS[-1]))
    return migrations


# A customer, their ticket, and a message on it: rows that refer to each other.
_REFERRING_ROWS = (
    "INSERT INTO customers (id, email) VALUES (7, 'jane@customer.test')",
    "INSERT INTO tickets (id, subject, requester_id, status)"
    " VALUES (3, 'Printer on fire', 7, 'open')",
    "INSERT INTO messages (id, ticket_id, subject) VALUES (11, 3, 'Printer on fire')",
)


def _after_rebuild(engine: Engine) -> None:
    columns = {c["name"]: c for c in sa.inspect(engine).get_columns("tickets")}
    assert "sla_due" in columns and not columns["subject"]["nullable"]
    fks = sa.inspect(engine).get_foreign_keys("messages")
    assert [(f["referred_table"], f["referred_columns"]) for f in fks] == [("tickets", ["id"])]
    assert {i["name"] for i in sa.inspect(engine).get_indexes("tickets")} >= {
        "idx_tickets_team", "idx_tickets_mailbox", "idx_tickets_status_updated_at"}
    with engine.connect() as conn:
        joined = conn.execute(sa.text("SELECT t.subject, m.id FROM tickets t"
                                      " JOIN messages m ON m.ticket_id = t.id")).all()
    assert [tuple(r) for r in joined] == [("Printer on fire", 11)]


def test_a_later_revision_rebuilding_a_referenced_table_runs_on_a_sqlite_file(
        tmp_path: Path) -> None:
    migrations = _migrations_with(tmp_path, "tickets.subject NOT NULL, tickets.sla_due",
                                  _REBUILD)
    path = tmp_path / "v11.db"  # as the legacy migrations left it, with rows that refer
    db = open_db(path)
    with transaction(db) as conn:
        for sql in _REFERRING_ROWS:
            conn.execute(sql)
    db.conn.close()
    engine = make_engine(sqlite_url(path))
    try:
        assert upgrade(engine, migrations).revision == "9000" == head(migrations)
        _after_rebuild(engine)
        with engine.connect() as conn:  # foreign keys are on again for the pool's connection
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
    finally:
        engine.dispose()


def test_a_later_revision_that_leaves_a_dangling_reference_changes_nothing(
        tmp_path: Path) -> None:
    migrations = _migrations_with(tmp_path, "drops a customer that a ticket refers to",
                                  "    op.execute(\"DELETE FROM customers WHERE id = 7\")\n")
    path = tmp_path / "new.db"
    engine = make_engine(sqlite_url(path))
    try:
        upgrade(engine)  # to the packaged head
        with engine.begin() as conn:
            for sql in _REFERRING_ROWS:
                conn.execute(sa.text(sql))
        with pytest.raises(UserError) as caught:
            upgrade(engine, migrations)
        message = str(caught.value)
        assert "\n" not in message and "tickets row 3 refers to a missing customers row" in (
            message), message
        assert schema_state(engine, migrations).revision == REVISIONS[-1]
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM customers").scalar_one() == 1
    finally:
        engine.dispose()


def test_a_later_revision_rebuilding_a_referenced_table_runs_on_postgres(
        tmp_path: Path, pg_database: str) -> None:
    migrations = _migrations_with(tmp_path, "tickets.subject NOT NULL, tickets.sla_due",
                                  _REBUILD)
    engine = make_engine(pg_database)
    try:
        upgrade(engine)
        with engine.begin() as conn:
            for sql in _REFERRING_ROWS:
                conn.execute(sa.text(sql))
        state = upgrade(engine, migrations)
        assert state.current and state.revision == "9000"
        _after_rebuild(engine)
    finally:
        engine.dispose()


def _pg_snapshot(engine: Engine) -> str:
    """Everything the inspector tells of the database, and its revision, as text."""
    inspector = sa.inspect(engine)
    names = sorted(inspector.get_table_names())
    with engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    return repr((names, version,
                 [(inspector.get_columns(n), inspector.get_indexes(n),
                   inspector.get_pk_constraint(n), inspector.get_foreign_keys(n),
                   inspector.get_unique_constraints(n)) for n in names]))


def test_upgrade_on_postgres_creates_the_schema_alembic_finds_nothing_to_change(
        pg_database: str) -> None:
    engine = make_engine(pg_database)
    try:
        assert schema_state(engine).empty
        state = upgrade(engine)
        assert state.current and state.revision == head() and state.legacy is None
        assert set(sa.inspect(engine).get_table_names()) == {*metadata.tables,
                                                             "alembic_version"}
        assert _autogenerate_diff(engine) == []
        snapshot = _pg_snapshot(engine)
        assert upgrade(engine).revision == head()  # twice: nothing changes
        assert _pg_snapshot(engine) == snapshot

        with engine.begin() as conn:  # ids number themselves; bytes and defaults survive
            customers, outbound = metadata.tables["customers"], metadata.tables["outbound"]
            for email in ("a@x.test", "b@x.test"):
                conn.execute(customers.insert().values(email=email))
            conn.execute(outbound.insert().values(raw=b"\r\n\x00\xff", created_ts=1.5))
            ids = conn.execute(sa.select(customers.c.id).order_by(customers.c.id)).scalars()
            assert list(ids) == [1, 2]
            row = conn.execute(sa.select(outbound.c.raw, outbound.c.maybe_sent,
                                         outbound.c.next_attempt)).one()
            assert tuple(row) == (b"\r\n\x00\xff", 0, 0.0)
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(customers.insert().values(email="a@x.test"))  # the unique index
    finally:
        engine.dispose()


_NODE = """
import sys, time
from mailgate.store.engine import make_engine
from mailgate.store.upgrade import upgrade
engine = make_engine(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all nodes start together
print(upgrade(engine).revision)
"""


def test_two_nodes_upgrading_one_postgres_at_once_take_turns(pg_database: str) -> None:
    start_at = str(time.time() + 3)
    nodes = [subprocess.Popen([sys.executable, "-c", _NODE, pg_database, start_at],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outputs = [node.communicate(timeout=120) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0, 0], outputs
    assert [out.strip() for out, _ in outputs] == [head()] * 3, outputs
    engine = make_engine(pg_database)
    try:
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    finally:
        engine.dispose()
    assert [tuple(v) for v in versions] == [(head(),)]


def test_without_postgresql_binaries_its_tests_skip_under_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "no-postgres"
    empty.mkdir()
    env = {**os.environ, BIN_ENV: str(empty)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         "tests/test_schema.py", "-k", "postgres and not skip_under_one_line or make_engine"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    lines = [line for line in out.splitlines() if NOT_INSTALLED in line]
    assert len(lines) == 1, out  # every PostgreSQL test, under one line
    folded = re.fullmatch(r"SKIPPED \[(\d+)\] tests/conftest.py: (.*)", lines[0])
    assert folded and folded[2] == NOT_INSTALLED, out
    skipped = int(folded[1])
    assert skipped >= 3 and f"1 passed, {skipped} skipped" in out, out
