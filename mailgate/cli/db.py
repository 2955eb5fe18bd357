"""`mailgate db upgrade`, `db check`, `db copy` and `db reindex`: the database's schema, health,
moves and search indexes.

Input: `--database URL` (sqlite:///… or postgresql://…; default: the configured database —
`[storage] database`, else data_dir/mailgate.db) and `--to URL`, typed by an administrator
(trusted intent, untrusted form). Output: `upgrade` prints where the schema was and where it is
now; `check` prints one line per check (or JSON with `--json`) and exits 1 when the schema is
not at head or a check fails; `copy` prints each table's rows and checksum and the totals.
A URL that is not one is one line and exit status 2; a database that cannot be reached is one
line and exit status 1. Passwords are never printed. SQLAlchemy and Alembic are imported here
only when a `db` command runs, so every other command starts without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mailgate.cli.base import State, emit, json_option, pass_state
from mailgate.errors import UserError

database_option = click.option(
    "--database", "url", metavar="URL",
    help="sqlite:///path/to/file.db or postgresql://user@host/dbname (default: the"
    " configured database: [storage] database, else data_dir/mailgate.db).")


@click.group("db")
def db_group() -> None:
    """The database: its schema revision, upgrades and integrity."""


def _engine(ctx: click.Context, state: State, url: str | None) -> Any:
    """The engine for `url` (or the configured file); a bad URL ends the command with exit 2."""
    from mailgate.store.engine import make_engine, sqlite_url

    if url is None:
        url = state.config.database_url or sqlite_url(state.config.db_path)
    try:
        return make_engine(url)
    except UserError as exc:
        click.echo(f"mailgate: {exc}", err=True)
        ctx.exit(2)


@db_group.command("upgrade")
@database_option
@click.pass_context
@pass_state
def db_upgrade(state: State, ctx: click.Context, url: str | None) -> None:
    """Bring the database's schema to the newest revision (back it up first)."""
    import sqlalchemy as sa

    from mailgate.store.dbcheck import one_line
    from mailgate.store.engine import shown
    from mailgate.store.upgrade import schema_state, upgrade

    engine = _engine(ctx, state, url)
    where = shown(engine.url.set(drivername=engine.dialect.name))
    try:
        if engine.dialect.name == "sqlite" and not Path(str(engine.url.database)).is_file():
            raise UserError(f"no database file at {engine.url.database}: nothing to upgrade"
                            " (mailgate makes a new one at its first start)")
        before = schema_state(engine)
        if before.current:
            click.echo(f"{where}: {before.label} is the newest; nothing to do")
            return
        after = upgrade(engine)
    except sa.exc.SQLAlchemyError as exc:
        raise UserError(f"database {where}: {one_line(exc, engine)}") from None
    finally:
        engine.dispose()
    click.echo(f"{where}: {before.label} → {after.label}")


@db_group.command("check")
@database_option
@json_option
@click.pass_context
@pass_state
def db_check(state: State, ctx: click.Context, url: str | None, as_json: bool) -> None:
    """Is the database usable: schema at the newest revision, SQLite's integrity and
    references, PostgreSQL's tables against the schema. Exits 1 listing what is wrong."""
    from mailgate.store.dbcheck import check_database

    engine = _engine(ctx, state, url)
    try:
        report = check_database(engine)
    finally:
        engine.dispose()
    if as_json:
        emit(report.as_dict(), True)
    else:
        click.echo(f"database    {report.database}")
        for finding in report.findings:
            click.echo(f"{'ok' if finding.ok else 'FAIL':<4}  {finding.name:<11} "
                       f"{finding.detail}")
    if not report.ok:
        failed = ", ".join(f.name for f in report.findings if not f.ok)
        click.echo(f"mailgate: db check: not usable as it is ({failed})", err=True)
        ctx.exit(1)
    if not as_json:
        click.echo("db check: ok")


@db_group.command("copy")
@database_option
@click.option("--to", "target", metavar="URL", required=True,
              help="The empty PostgreSQL (or SQLite) database to copy into.")
@click.option("--batch-rows", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Rows read and written at a time.")
@click.pass_context
@pass_state
def db_copy(state: State, ctx: click.Context, url: str | None, target: str,
            batch_rows: int) -> None:
    """Copy every row of the database (stop the daemon first) into an empty one, in one
    transaction, verified by row counts and checksums before it commits."""
    from mailgate.store.copy import copy_database
    from mailgate.store.engine import sqlite_url

    source = url or state.config.database_url or sqlite_url(state.config.db_path)
    report = copy_database(source, target, batch_rows=batch_rows,
                           data_dir=state.config.data_dir)
    for line in report.lines():
        click.echo(line)


@db_group.command("reindex")
@pass_state
def db_reindex(state: State) -> None:
    """Make the full-text search indexes again from the rows (SQLite; after 'db check' says
    they do not match, or to compact them). On PostgreSQL there is nothing to make."""
    from mailgate.store import search
    from mailgate.store.db import on_postgres, transaction

    db = state.db()
    if on_postgres(db):
        click.echo("db reindex: PostgreSQL searches the rows themselves; nothing to make")
        return
    with transaction(db) as conn:
        search.ensure_index(conn)
        search.rebuild_index(conn)
    click.echo("db reindex: the full-text indexes were made again from the rows")
