"""Merge and split: a ticket merged into another forwards to it; linked tickets found both ways.

Revision ID: 0004
Revises: 0003

- `tickets.merged_into`: the ticket this one was merged into (NULL: not merged). A merged
  ticket keeps its number and is closed; mail that still reaches it (its reply token, one of
  its Message-IDs decoded by token, its subject tag) lands on the ticket it names.
- `idx_tickets_merged_into`, `idx_tickets_linked_ticket_id`: the tickets merged into one, and
  the tickets linked to one (split off it, or opened after it was closed), read from the
  other side without a scan.

On SQLite a new file gets the same changes from `mailgate.store.db` without Alembic
(tests/test_schema.py proves both the same as `mailgate.store.schema`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("merged_into", Id))
    op.create_index("idx_tickets_merged_into", "tickets", ["merged_into"])
    op.create_index("idx_tickets_linked_ticket_id", "tickets", ["linked_ticket_id"])


def downgrade() -> None:
    op.drop_index("idx_tickets_linked_ticket_id", "tickets")
    op.drop_index("idx_tickets_merged_into", "tickets")
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("merged_into")
