"""Tickets by requester: an index for a customer's tickets and for searching by customer.

Revision ID: 0003
Revises: 0002

- `idx_tickets_requester_id`: a customer's tickets (their page, the full-text search's matches
  on a customer's name or address) are found through it instead of a scan of every ticket.

On SQLite a new file gets the same change from `mailgate.store.db` without Alembic
(tests/test_schema.py proves both the same as `mailgate.store.schema`).
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("idx_tickets_requester_id", "tickets", ["requester_id", "updated_at"])


def downgrade() -> None:
    op.drop_index("idx_tickets_requester_id", table_name="tickets")
