"""Webhooks: the outbox of events for other systems, and each delivery attempt.

Revision ID: 0008
Revises: 0007

- `webhook_deliveries`: one row per event and configured webhook (written in the transaction
  of the change that caused it): the event, the webhook's name and URL when it was written,
  the ticket, the JSON body to POST, `state` (queued, delivered, failed), attempts so far,
  when the next is due, the last error, and the claim of the node delivering it
  (`claimed_by` until `lease_until`, by the database's clock).
- `webhook_attempts`: each attempt (the audit `mailgate audit webhooks` shows): when, which
  node, the address connected to, the HTTP status, the outcome (delivered, retry, failed) and
  why, and how long it took.

On SQLite a new file gets the same tables from `mailgate.store.db` without Alembic
(tests/test_schema.py proves both the same as `mailgate.store.schema`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("webhook", sa.Text, nullable=False),
        sa.Column("url", sa.Text),
        sa.Column("ticket_id", Id),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("created_ts", sa.Float, nullable=False),
        sa.Column("next_attempt", sa.Float, nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered_at", sa.Text),
        sa.Column("claimed_by", sa.Text),
        sa.Column("lease_until", sa.Float),
    )
    op.create_index("idx_webhook_deliveries_state_next_attempt", "webhook_deliveries",
                    ["state", "next_attempt"])
    op.create_index("idx_webhook_deliveries_ticket_id", "webhook_deliveries", ["ticket_id"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", Id, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", sa.Text, nullable=False),
        sa.Column("node", sa.Text),
        sa.Column("address", sa.Text),
        sa.Column("status_code", sa.Integer),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("seconds", sa.Float),
    )
    op.create_index("idx_webhook_attempts_delivery_id_id", "webhook_attempts",
                    ["delivery_id", "id"])
    op.create_index("idx_webhook_attempts_at", "webhook_attempts", ["at"])


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
