"""Baseline: the store's schema as the legacy SQLite migrations v1 … v11 leave it.

Revision ID: 0001
Revises: (none)

Creates every table and index from nothing, on SQLite and PostgreSQL alike. A frozen copy:
later changes are new revisions, never edits here. A SQLite file that the legacy migrations
(mailgate/store/db.py) brought to v11 is stamped with this revision instead of running it.
On SQLite it also sets `PRAGMA user_version = 11`, so code that still opens the file through
`mailgate.store.db.open_db` finds it current and leaves it alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LEGACY_VERSION = 11  # len(mailgate.store.db.MIGRATIONS) when this baseline was taken

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ZERO = sa.text("0")


def _id() -> sa.Column:
    return sa.Column("id", ID, primary_key=True, autoincrement=True)


def _text(*names: str) -> list[sa.Column]:
    return [sa.Column(name, sa.Text) for name in names]


def _index(table: str, columns: list[str], name: str | None = None,
           unique: bool = False) -> None:
    op.create_index(name or f"idx_{table}_{'_'.join(columns)}", table, columns, unique=unique)


def upgrade() -> None:
    op.create_table(
        "customers",
        _id(),
        sa.Column("email", sa.Text, nullable=False),
        *_text("name", "created_at"),
        sa.Column("organization_id", ID),
    )
    _index("customers", ["email"], unique=True)
    _index("customers", ["organization_id"])

    op.create_table(
        "tickets",
        _id(),
        *_text("subject"),
        sa.Column("requester_id", ID),
        *_text("status", "assignee", "created_at", "updated_at", "closed_at"),
        sa.Column("linked_ticket_id", ID),
        sa.Column("organization_id", ID),
        sa.Column("priority", sa.Text, nullable=False, server_default=sa.text("'normal'")),
        sa.Column("tags", sa.Text, nullable=False, server_default=sa.text("'[]'")),
        *_text("first_response_at", "resolved_at", "last_activity_at", "mailbox", "team",
               "thread_index"),
        sa.ForeignKeyConstraint(["requester_id"], ["customers.id"],
                                name="fk_tickets_requester_id_customers"),
    )
    _index("tickets", ["status", "updated_at"])
    _index("tickets", ["assignee"])
    _index("tickets", ["organization_id"])
    _index("tickets", ["last_activity_at"])
    _index("tickets", ["mailbox", "updated_at"], "idx_tickets_mailbox")
    _index("tickets", ["team", "assignee", "updated_at"], "idx_tickets_team")

    op.create_table(
        "messages",
        _id(),
        sa.Column("ticket_id", ID),
        *_text("direction", "queue_id", "message_id", "in_reply_to", "references_",
               "from_addr", "from_name", "to_addrs", "cc_addrs", "subject", "date", "text",
               "html", "raw_path", "defects", "matched_by"),
        sa.Column("internal", sa.Integer, server_default=ZERO),
        *_text("internal_reason", "created_at"),
        sa.Column("outbound_id", ID),
        *_text("reply_text", "classification", "auth", "digest", "thread_index"),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"],
                                name="fk_messages_ticket_id_tickets"),
    )
    _index("messages", ["ticket_id", "id"])
    _index("messages", ["message_id"])

    op.create_table(
        "message_ids",
        sa.Column("message_id", sa.Text, primary_key=True),
        sa.Column("ticket_id", ID, primary_key=True, autoincrement=False),
        sa.Column("message_row", ID),
    )

    op.create_table(
        "attachments",
        _id(),
        sa.Column("message_row", ID),
        *_text("sha256", "filename", "content_type"),
        sa.Column("size", sa.Integer),
        *_text("content_id"),
        sa.Column("inline", sa.Integer),
        *_text("details"),
        sa.ForeignKeyConstraint(["message_row"], ["messages.id"],
                                name="fk_attachments_message_row_messages"),
    )
    _index("attachments", ["message_row"])

    op.create_table(
        "audit_incoming",
        _id(),
        *_text("received_at", "queue_id", "client_ip", "helo", "mail_from", "rcpt_to",
               "message_id", "from_addr", "subject"),
        sa.Column("size", sa.Integer),
        *_text("action"),
        sa.Column("ticket_id", ID),
        sa.Column("message_row", ID),
        *_text("matched_by", "reason"),
        sa.Column("defects", sa.Integer),
        *_text("classification", "details", "auth"),
    )
    _index("audit_incoming", ["queue_id"], unique=True)
    _index("audit_incoming", ["received_at"])
    _index("audit_incoming", ["action", "received_at"])

    op.create_table(
        "outbound",
        _id(),
        sa.Column("ticket_id", ID),
        *_text("kind"),
        sa.Column("automatic", sa.Integer, server_default=ZERO),
        *_text("to_addr", "subject", "message_id"),
        sa.Column("raw", sa.LargeBinary),
        *_text("status"),
        sa.Column("attempts", sa.Integer, server_default=ZERO),
        *_text("last_error", "created_at"),
        sa.Column("created_ts", sa.Float),
        sa.Column("next_attempt", sa.Float, server_default=ZERO),
        *_text("sent_at", "updated_at", "dsn_status", "queue_id", "data_started_at"),
        sa.Column("maybe_sent", sa.Integer, nullable=False, server_default=ZERO),
        *_text("to_mailbox", "to_domain", "sender"),
    )
    _index("outbound", ["status", "next_attempt"])
    _index("outbound", ["ticket_id"])
    _index("outbound", ["to_addr", "automatic", "created_ts"])
    _index("outbound", ["to_mailbox", "automatic", "created_ts"], "idx_outbound_mailbox")
    _index("outbound", ["to_domain", "automatic", "created_ts"], "idx_outbound_domain")
    _index("outbound", ["automatic", "created_ts"], "idx_outbound_automatic")
    _index("outbound", ["sender", "kind", "created_ts"], "idx_outbound_sender")
    _index("outbound", ["message_id"], "idx_outbound_message_id")

    op.create_table(
        "participants",
        sa.Column("ticket_id", ID, primary_key=True, autoincrement=False),
        sa.Column("email", sa.Text, primary_key=True),
        *_text("role", "added_at"),
    )
    _index("participants", ["email"])

    op.create_table(
        "organizations",
        _id(),
        sa.Column("name", sa.Text, nullable=False),
        *_text("notes", "created_at"),
        sa.Column("auto_created", sa.Integer, server_default=ZERO),
        *_text("on_new_ticket"),
        sa.Column("rr_position", sa.Integer, server_default=ZERO),
    )
    _index("organizations", ["name"], unique=True)

    op.create_table(
        "org_domains",
        sa.Column("domain", sa.Text, primary_key=True),
        sa.Column("organization_id", ID),
    )
    _index("org_domains", ["organization_id"])

    op.create_table(
        "rule_evaluations",
        _id(),
        sa.Column("ticket_id", ID),
        *_text("event", "rule"),
        sa.Column("hit", sa.Integer),
        *_text("why"),
        sa.Column("depth", sa.Integer),
        *_text("at"),
    )
    _index("rule_evaluations", ["ticket_id", "id"])

    op.create_table(
        "rule_firings",
        sa.Column("ticket_id", ID, primary_key=True, autoincrement=False),
        sa.Column("rule", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        *_text("fired_at"),
    )

    op.create_table(
        "round_robin",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("position", sa.Integer),
    )

    op.create_table(
        "spam",
        sa.Column("queue_id", sa.Text, primary_key=True),
        *_text("received_at", "action"),
        sa.Column("score", sa.Float),
        *_text("symbols", "rspamd_action", "reason", "note", "state", "raw_path", "envelope",
               "released_at", "released_by", "released_as"),
    )
    _index("spam", ["state", "received_at"])

    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"PRAGMA user_version = {LEGACY_VERSION}")


def downgrade() -> None:
    for table in ("spam", "round_robin", "rule_firings", "rule_evaluations", "org_domains",
                  "organizations", "participants", "outbound", "audit_incoming", "attachments",
                  "message_ids", "messages", "tickets", "customers"):
        op.drop_table(table)
    if op.get_bind().dialect.name == "sqlite":
        op.execute("PRAGMA user_version = 0")
