"""The store's Alembic migrations, shipped inside the package and run by
`mailgate.store.upgrade.upgrade` (no alembic.ini: the configuration is built in code).

Input: a SQLAlchemy connection, already inside a transaction, handed to env.py by `upgrade`.
Output: the schema brought to the head revision.

`versions/0001_baseline_v11.py` creates, from nothing, the schema that the legacy SQLite
migrations (`mailgate/store/db.py`, `PRAGMA user_version` 1 … 11) build; an existing SQLite file
is brought to v11 by those and then stamped with the baseline. Every change after that is an
ordinary Alembic revision in `versions/` (next id `0002`, `down_revision` the previous one)
that must run on both engines: use `op.batch_alter_table` for anything SQLite's ALTER TABLE
cannot do (on SQLite it rebuilds the table; `upgrade` runs revisions there with foreign keys
off and checks every reference before the commit), name new constraints (schema.NAMING), and
change `mailgate/store/schema.py` in the same commit (tests/test_schema.py compares the two).
script.py.mako is the template of a new revision's module.
"""
