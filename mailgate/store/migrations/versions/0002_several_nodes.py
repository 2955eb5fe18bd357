"""Several nodes on one database: files, secrets and nodes shared, outgoing mail leased.

Revision ID: 0002
Revises: 0001

- `stored_files`: the raw mail and attachments of an installation on PostgreSQL (keyed by the
  relative path they have under `data_dir` on SQLite), so that every node reads what any node
  received. A SQLite installation keeps them as files and leaves this table empty.
- `shared_secrets`: what every node must sign and verify with alike (the reply-token secret,
  the admin token), made once by the first node and read by the others.
- `nodes`: each daemon that runs on this database (its `[node] id`, host, version, when it
  started and when it was last seen) — for `doctor` and the admin endpoint.
- `outbound.claimed_by` / `outbound.lease_until`: the node sending an outgoing mail and until
  when its claim holds; a node that dies mid-send leaves a lease that runs out, and another
  node retries the mail.
- `auto_mail_counts`: automatic mail queued per minute, by recipient mailbox (`m:…`), domain
  (`d:…`) and in all (`*`), each node writing its own `shard` so nodes never wait on one hot
  row: the rate limits read at most an hour of minutes instead of counting the outbox. Filled
  from the last hour of the outbox here.
- `uq_messages_incoming`: one stored copy of a message (the same Message-ID, sender and
  content digest, received by mail) — the backstop under the thread lock, so that two nodes
  taking the same message never both store it. Rows that already repeat an earlier one (none
  should) keep their row and lose their digest, which only the duplicate check reads.

On SQLite a new file gets the same changes from `mailgate.store.db` without Alembic
(tests/test_schema.py proves both the same as `mailgate.store.schema`).
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

INCOMING = ("queue_id IS NOT NULL AND digest IS NOT NULL AND message_id IS NOT NULL"
            " AND message_id <> ''")


def upgrade() -> None:
    op.create_table(
        "stored_files",
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.BigInteger),
        sa.Column("created_at", sa.Text),
    )
    op.create_table(
        "shared_secrets",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Text),
    )
    op.create_table(
        "nodes",
        sa.Column("node_id", sa.Text, primary_key=True),
        sa.Column("hostname", sa.Text),
        sa.Column("version", sa.Text),
        sa.Column("started_at", sa.Text),
        sa.Column("seen_at", sa.Text),
    )
    counts = op.create_table(
        "auto_mail_counts",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("minute", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("shard", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("n", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    )
    _backfill(counts)
    with op.batch_alter_table("outbound") as batch:
        batch.add_column(sa.Column("claimed_by", sa.Text))
        batch.add_column(sa.Column("lease_until", sa.Float))
    op.execute(
        "UPDATE messages SET digest = NULL WHERE " + INCOMING + " AND EXISTS (SELECT 1 FROM"
        " messages m WHERE m.message_id = messages.message_id AND m.from_addr ="
        " messages.from_addr AND m.digest = messages.digest AND m.queue_id IS NOT NULL"
        " AND m.id < messages.id)")
    op.create_index("uq_messages_incoming", "messages", ["message_id", "from_addr", "digest"],
                    unique=True, sqlite_where=sa.text(INCOMING),
                    postgresql_where=sa.text(INCOMING))


def _backfill(counts: sa.Table) -> None:
    """The last hour's automatic mail from the outbox, as the rate limits counted it (mail to
    agents included in the domain and total counts: for this one hour, a little more)."""
    since = time.time() - 3600
    rows = op.get_bind().execute(sa.text(
        "SELECT to_mailbox, to_domain, created_ts FROM outbound WHERE automatic = 1"
        " AND created_ts >= :since AND status NOT IN ('suppressed', 'failed')"),
        {"since": since}).fetchall()
    found: dict[tuple[str, int], int] = {}
    for mailbox, domain, ts in rows:
        minute = int(ts // 60)
        for key in (f"m:{mailbox or ''}", f"d:{domain or ''}", "*"):
            found[(key, minute)] = found.get((key, minute), 0) + 1
    if found:
        op.bulk_insert(counts, [{"key": k, "minute": m, "shard": 0, "n": n}
                                for (k, m), n in found.items()])


def downgrade() -> None:
    op.drop_index("uq_messages_incoming", "messages")
    with op.batch_alter_table("outbound") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("claimed_by")
    op.drop_table("auto_mail_counts")
    op.drop_table("nodes")
    op.drop_table("shared_secrets")
    op.drop_table("stored_files")
