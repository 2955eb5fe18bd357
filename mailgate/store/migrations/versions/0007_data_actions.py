"""The data-protection log: what retention removed, and each customer export and erasure.

Revision ID: 0007
Revises: 0006

- `data_actions`: one row per retention run that removed anything, per `customers export`
  and per `customers erase`: when, what (`retention`, `export`, `erase`), who (`scheduler`,
  `cli`, an agent's e-mail), the person it was about as a keyed hash (`erased:<16 hex>`,
  never the address) and the details in JSON (counts, ticket ids, the reason).

On SQLite a new file gets the same table from `mailgate.store.db` without Alembic
(tests/test_schema.py proves both the same as `mailgate.store.schema`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "data_actions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("subject", sa.Text),
        sa.Column("details", sa.Text),
    )
    op.create_index("idx_data_actions_action_at", "data_actions", ["action", "at"])


def downgrade() -> None:
    op.drop_table("data_actions")
