"""Agent accounts: credentials, sessions, failed sign-ins, and who changed each ticket.

Revision ID: 0005
Revises: 0004

- `agent_credentials`: per configured agent (by e-mail), the Argon2 hash of the password and
  the SHA-256 of the personal API token (never either in clear), with when each was set.
- `agent_sessions`: one row per signed-in browser, keyed by the SHA-256 of the cookie's
  secret (the secret itself is never stored): who (an agent's e-mail, or `admin-token`), the
  fingerprint of the admin token it was opened with (such a session ends when the token is
  rotated), when it was made, last used and ends at the latest, and from where.
- `login_failures`: each failed sign-in, by key (`account:<email>` and `ip:<address>`), for
  the rate limits every node counts alike.
- `ticket_actions`: who did what to a ticket (reply, assign, status, participants): the agent's
  e-mail, `admin-token` or `cli`, with the details in JSON.

On SQLite a new file gets the same tables from `mailgate.store.db` without Alembic
(tests/test_schema.py proves both the same as `mailgate.store.schema`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "agent_credentials",
        sa.Column("email", sa.Text, primary_key=True),
        sa.Column("password_hash", sa.Text),
        sa.Column("password_set_at", sa.Text),
        sa.Column("token_hash", sa.Text),
        sa.Column("token_set_at", sa.Text),
    )
    op.create_index("idx_agent_credentials_token_hash", "agent_credentials", ["token_hash"],
                    unique=True)
    op.create_table(
        "agent_sessions",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("token_mark", sa.Text),
        sa.Column("created_ts", sa.Float, nullable=False),
        sa.Column("seen_ts", sa.Float, nullable=False),
        sa.Column("expires_ts", sa.Float, nullable=False),
        sa.Column("remote", sa.Text),
    )
    op.create_index("idx_agent_sessions_email", "agent_sessions", ["email"])
    op.create_table(
        "login_failures",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("at_ts", sa.Float, nullable=False),
    )
    op.create_index("idx_login_failures_key_at_ts", "login_failures", ["key", "at_ts"])
    op.create_table(
        "ticket_actions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("ticket_id", Id, nullable=False),
        sa.Column("at", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("details", sa.Text),
    )
    op.create_index("idx_ticket_actions_ticket_id_id", "ticket_actions", ["ticket_id", "id"])
    op.create_index("idx_ticket_actions_actor_at", "ticket_actions", ["actor", "at"])


def downgrade() -> None:
    op.drop_table("ticket_actions")
    op.drop_table("login_failures")
    op.drop_table("agent_sessions")
    op.drop_table("agent_credentials")
