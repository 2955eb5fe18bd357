"""Opening the store wherever the config puts it.

Input: `Config.database` — the SQLite file under `data_dir` (the embedded default) or the
`[storage] database` PostgreSQL URL (trusted: the operator's config). Output: a database object
the rest of mailgate uses the same way on both engines (`execute`, `query`, `conn`, `close`):
sqlite-utils' `Database` from `store.db.open_db`, or `store.pg.PgDatabase`. A PostgreSQL
database with no tables gets the schema (Alembic, `store.upgrade`); one at another revision is
refused with one line saying what to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailgate.errors import UserError
from mailgate.store.db import open_db


def is_postgres(database: Path | str) -> bool:
    return isinstance(database, str) and "://" in database


def open_store(database: Path | str) -> Any:
    if not is_postgres(database):
        return open_db(Path(database))
    # SQLAlchemy, Alembic and psycopg only where PostgreSQL is used: SQLite starts without them
    from sqlalchemy import exc as sa_exc

    from mailgate.store.engine import make_engine, shown
    from mailgate.store.pg import PgDatabase
    from mailgate.store.upgrade import schema_state, upgrade

    url = str(database)
    engine = make_engine(url)
    try:
        try:
            state = schema_state(engine)
        except sa_exc.OperationalError as exc:
            raise UserError(f"cannot connect to the database {shown(url)}:"
                            f" {str(exc.orig).strip()}") from None
        if state.empty:
            upgrade(engine)
        elif state.revision != state.head:
            raise UserError(f"the database {shown(url)} has schema {state.revision or 'none'},"
                            f" this mailgate needs {state.head}: run 'mailgate db upgrade'")
    finally:
        engine.dispose()
    return PgDatabase(url)
