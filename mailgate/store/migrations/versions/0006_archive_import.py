"""Archive import: which tickets came from a mail archive, and when.

Revision ID: 0006
Revises: 0005

- `tickets.imported_at`: when `mailgate import` made the ticket from a mail archive (NULL: it
  began with mail received live). Its history happened before mailgate: service-level clocks
  never run for such a ticket, and idle rules count only the activity after the import.

On SQLite a new file gets the same change from `mailgate.store.db` without Alembic
(tests/test_schema.py proves both the same as `mailgate.store.schema`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("imported_at", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("imported_at")
