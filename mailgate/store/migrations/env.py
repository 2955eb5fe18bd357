"""Alembic's environment for the store: run by Alembic for each command that
`mailgate.store.engine` gives it.

Input: `config.attributes["connection"]`, a SQLAlchemy connection already inside the
transaction the caller opened (on PostgreSQL holding the migration lock, on SQLite the write
lock). Output: the migrations run on that connection, inside that transaction, which the
caller commits. Trusts its input: it comes from our own code, never from a user.
"""

from __future__ import annotations

from alembic import context

from mailgate.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("mailgate's migrations run through mailgate.store.engine.upgrade(),"
                       " which hands them a connection")
# On SQLite, autogenerate writes batch operations (an ALTER that SQLite lacks becomes a copy of
# the table); upgrade() runs them with foreign keys off, as SQLite requires for that.
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():  # inside the caller's transaction: nothing begins here
    context.run_migrations()
