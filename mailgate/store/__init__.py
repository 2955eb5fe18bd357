"""The store: SQLite through sqlite-utils (WAL, migrations in code) and files under data_dir.
`schema.py`, `engine.py`, `upgrade.py` and `migrations/` describe the same schema for SQLite
and PostgreSQL (SQLAlchemy Core, Alembic); the daemon does not use them yet.

Input: decisions made by the stages. Output: durable rows and files; read helpers for the CLI.
"""
