"""Alembic revisions of the store, one module each (see mailgate/store/migrations)."""
