"""Where a database's schema stands, and bringing it to the head revision (Alembic).

Input: an `Engine` from `mailgate.store.engine.make_engine` (the database is trusted to be
the operator's; what is in it is looked at before anything is changed). Output: a
`SchemaState`, and for `upgrade` a database at the head revision of
`mailgate/store/migrations`, or UserError (one line) for a database mailgate did not make.

- PostgreSQL, or a SQLite file with no tables: `alembic upgrade head`, in one transaction
  (PostgreSQL's DDL is transactional; on SQLite the transaction is BEGIN IMMEDIATE), under a
  transaction-scoped advisory lock on PostgreSQL, so that two nodes upgrading at once take
  turns and the second finds nothing to do.
- A SQLite file from before Alembic (`PRAGMA user_version` 1 … 10): the legacy migrations of
  `mailgate.store.db` bring it to v11 (each in its own transaction, as `open_db` runs them),
  then it is stamped with the baseline revision and upgraded to head; at v11 it is only
  stamped (and upgraded past the baseline when later revisions exist). On SQLite the
  revisions run with foreign keys off (SQLite's rule for rebuilding a table, which Alembic's
  batch mode does) and the references are checked before the commit.
Later schema changes are Alembic revisions that run on both engines (see the migrations
package); the legacy numbered migrations stay frozen at v11.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
import sqlite_utils
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from mailgate.errors import UserError
from mailgate.store import db as legacy
from mailgate.store.engine import IMMEDIATE, shown
from mailgate.store.schema import metadata

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
BASELINE = legacy.BASELINE  # versions/0001_baseline_v11.py: the schema of legacy v11
LEGACY_HEAD = len(legacy.MIGRATIONS)
# pg_advisory_xact_lock key held while migrating: b"mailgate" as a big-endian integer.
PG_MIGRATION_LOCK = int.from_bytes(b"mailgate", "big")
# Alembic's command API keeps its context in module globals: one command at a time per process.
_ALEMBIC = threading.Lock()


@dataclass(frozen=True)
class SchemaState:
    """revision: the Alembic revision stamped in the database (None: none is). head: the
    newest revision this mailgate knows. legacy: SQLite's `PRAGMA user_version` when no
    revision is stamped (None on PostgreSQL or once stamped). empty: no table of the store."""

    revision: str | None
    head: str
    legacy: int | None
    empty: bool

    @property
    def current(self) -> bool:
        return self.revision == self.head

    @property
    def at_head(self) -> bool:
        """The schema is the head revision's: stamped so, or an unstamped legacy v11 file while
        the head is the baseline (whose schema it is) — what `open_db` accepts."""
        return self.current or (self.revision is None and self.legacy == LEGACY_HEAD
                                and self.head == BASELINE)

    @property
    def label(self) -> str:
        """Where it stands, without the head: `revision 0001`, `legacy v6`, `empty`."""
        if self.revision is not None:
            return f"revision {self.revision}"
        if self.empty:
            return "empty"
        return f"legacy v{self.legacy}" if self.legacy else "no mailgate schema revision"

    def __str__(self) -> str:
        if self.revision is not None:
            return (f"revision {self.revision} (head)" if self.current
                    else f"revision {self.revision} (head is {self.head})")
        if self.empty:
            return f"empty (head is {self.head})"
        if self.legacy:
            return f"legacy sqlite v{self.legacy} (head is {self.head})"
        return f"tables without a mailgate schema revision (head is {self.head})"


def alembic_config(connection: Connection | None = None,
                   migrations: Path | None = None) -> Config:
    """Alembic's configuration, built in code (no alembic.ini): the migrations (the packaged
    ones unless told), and the connection env.py runs them on."""
    config = Config()
    migrations = migrations or MIGRATIONS_DIR
    config.set_main_option("script_location", str(migrations).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def head(migrations: Path | None = None) -> str:
    found = ScriptDirectory.from_config(alembic_config(None, migrations)).get_current_head()
    assert found is not None, f"{migrations}/versions has no revision"
    return found


def schema_state(engine: Engine, migrations: Path | None = None) -> SchemaState:
    """Where the database stands. Changes nothing (a SQLite file that is not there is not
    made: it is empty)."""
    if engine.dialect.name == "sqlite" and not Path(str(engine.url.database)).exists():
        return SchemaState(None, head(migrations), 0, True)
    with engine.connect() as conn:
        return _state(conn, migrations)


def _state(conn: Connection, migrations: Path | None) -> SchemaState:
    tables = set(sa.inspect(conn).get_table_names())
    revision = None
    if "alembic_version" in tables:
        revision = MigrationContext.configure(conn).get_current_revision()
    user_version = None
    if conn.dialect.name == "sqlite" and revision is None:
        user_version = conn.exec_driver_sql("PRAGMA user_version").scalar_one()
    empty = not (tables & set(metadata.tables)) and revision is None
    return SchemaState(revision, head(migrations), user_version, empty)


def upgrade(engine: Engine, migrations: Path | None = None) -> SchemaState:
    """Bring the database to the head revision; its state afterwards. `migrations`: another
    script directory than the packaged one (default: MIGRATIONS_DIR, read at the call)."""
    with _ALEMBIC:
        if engine.dialect.name == "sqlite":
            _legacy_to_v11(engine)
            _sqlite_to_head(engine, migrations)
        else:
            with engine.begin() as conn:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(PG_MIGRATION_LOCK)))
                _to_head(conn, engine, migrations)
    return schema_state(engine, migrations)


def _sqlite_to_head(engine: Engine, migrations: Path | None) -> None:
    """The revisions in one BEGIN IMMEDIATE transaction, with foreign keys off, as SQLite
    wants it for a table rebuilt by batch mode (copy, drop, rename: with foreign keys on,
    dropping a referenced table fails or cascades); `PRAGMA foreign_key_check` before the
    commit refuses a migration that left a dangling reference."""
    with engine.connect() as conn:
        raw = conn.connection.driver_connection  # outside any transaction: the pragma works
        assert raw is not None
        raw.execute("PRAGMA foreign_keys=OFF")
        try:
            conn.execution_options(**{IMMEDIATE: True})
            with conn.begin():
                _to_head(conn, engine, migrations)
                dangling = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                if dangling:
                    table, rowid, parent, _ = dangling[0]
                    raise UserError(f"database {shown(engine.url)}: after the migrations,"
                                    f" {table} row {rowid} refers to a missing {parent} row"
                                    f" ({len(dangling)} such rows); nothing was changed")
        finally:
            raw.execute("PRAGMA foreign_keys=ON")


def _to_head(conn: Connection, engine: Engine, migrations: Path | None) -> None:
    state = _state(conn, migrations)
    if state.revision is None and not state.empty:
        if state.legacy != LEGACY_HEAD:
            raise UserError(f"database {shown(engine.url)}: {state}, which mailgate cannot"
                            " upgrade (it did not make it, or a newer mailgate did)")
        command.stamp(alembic_config(conn, migrations), BASELINE)
    command.upgrade(alembic_config(conn, migrations), "head")


def _legacy_to_v11(engine: Engine) -> None:
    """Run the legacy SQLite migrations on a file at user_version 1 … LEGACY_HEAD-1 that has
    no Alembic revision (a file at 0 is empty or not ours; at LEGACY_HEAD there is nothing to
    run). They take the write lock for each step and read the version under it, as open_db's
    do, so two processes upgrading one file at once never run a step twice."""
    path = engine.url.database
    assert path, "make_engine refuses a SQLite URL without a file"
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys=ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        stamped = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                               " AND name = 'alembic_version'").fetchone()
        if 0 < version < LEGACY_HEAD and not stamped:
            legacy.migrate(sqlite_utils.Database(conn))
    finally:
        conn.close()
