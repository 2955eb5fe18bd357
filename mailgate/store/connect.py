"""Opening the store wherever the config puts it.

Input: `Config.database` — the SQLite file under `data_dir` (the embedded default) or the
`[storage] database` PostgreSQL URL (trusted: the operator's config). Output: a database object
the rest of mailgate uses the same way on both engines (`execute`, `query`, `conn`, `close`):
sqlite-utils' `Database` from `store.db.open_db`, or `store.pg.PgDatabase`. A PostgreSQL
database with no tables gets the schema (Alembic, `store.upgrade`); one at another revision is
refused with the one line a SQLite file gets (`store.db.schema_problem`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailgate.errors import SchemaMismatch, UserError
from mailgate.store.db import FoundSchema, open_db, schema_problem


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
        # the same rule and words as for a SQLite file (store.db.schema_problem)
        problem = schema_problem(FoundSchema(state.revision, state.legacy or 0, state.empty),
                                 shown(url))
        if problem:
            raise SchemaMismatch(problem)
        if state.empty:
            upgrade(engine)
    finally:
        engine.dispose()
    return PgDatabase(url)
