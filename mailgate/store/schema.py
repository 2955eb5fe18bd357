"""The store's schema as SQLAlchemy Core metadata: one description for SQLite and PostgreSQL.

Input: none (a module of constants). Output: `metadata`, every table of the store as the
SQLite migrations `_v1` … `_v11` of `mailgate/store/db.py` leave it (columns, types, NOT NULLs,
server defaults, primary keys, foreign keys, indexes under the names SQLite gave them), in
types both engines have: `Id` (BIGINT on PostgreSQL, INTEGER on SQLite, where an INTEGER
PRIMARY KEY is the rowid, so both number new rows themselves), Text, Integer, Float, and
LargeBinary for the raw bytes of outgoing mail. Timestamps stay ISO-8601 text, as the queries
compare them as text.

This is the head of the schema. The Alembic baseline revision (migrations/versions/0001_*)
is a frozen copy of it at v11, revision 0002 adds what several nodes share, 0003 an index of
tickets by requester, 0004 what merging and splitting tickets need (`tickets.merged_into`),
0005 the agents' accounts and who changed each ticket, 0006 when a ticket was imported from a
mail archive, 0007 the data-protection log (retention runs, customer exports and erasures),
0008 the webhooks' outbox and attempts; a later change to the schema is a
change here plus a new revision, and tests/test_schema.py checks that the two agree on both
engines.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    text,
)

# Names for constraints a later revision adds (foreign keys, unique and check constraints):
# a named constraint can be dropped again on both engines. Indexes are all named explicitly,
# as sqlite-utils named them (idx_<table>_<columns>) or as the raw SQL of a migration did.
NAMING = {
    "ix": "idx_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# Row ids: 64 bits on PostgreSQL (messages and rule evaluations add up over the years); on
# SQLite an INTEGER PRIMARY KEY, which is the 64-bit rowid and numbers new rows by itself.
Id = BigInteger().with_variant(Integer(), "sqlite")


def _pk() -> Column:
    return Column("id", Id, primary_key=True, autoincrement=True)


ZERO = text("0")
INCOMING = ("queue_id IS NOT NULL AND digest IS NOT NULL AND message_id IS NOT NULL"
            " AND message_id <> ''")

customers = Table(
    "customers", metadata,
    _pk(),
    Column("email", Text, nullable=False),
    Column("name", Text),
    Column("created_at", Text),
    Column("organization_id", Id),
    Index("idx_customers_email", "email", unique=True),
    Index("idx_customers_organization_id", "organization_id"),
)

tickets = Table(
    "tickets", metadata,
    _pk(),
    Column("subject", Text),
    Column("requester_id", Id, ForeignKey("customers.id")),
    Column("status", Text),
    Column("assignee", Text),
    Column("created_at", Text),
    Column("updated_at", Text),
    Column("closed_at", Text),
    Column("linked_ticket_id", Id),
    Column("organization_id", Id),
    Column("priority", Text, nullable=False, server_default=text("'normal'")),
    Column("tags", Text, nullable=False, server_default=text("'[]'")),
    Column("first_response_at", Text),
    Column("resolved_at", Text),
    Column("last_activity_at", Text),
    Column("mailbox", Text),
    Column("team", Text),
    Column("thread_index", Text),
    Column("merged_into", Id),  # revision 0004: the ticket this one was merged into
    Column("imported_at", Text),  # revision 0006: made by `mailgate import` (archive mode)
    Index("idx_tickets_status_updated_at", "status", "updated_at"),
    Index("idx_tickets_assignee", "assignee"),
    Index("idx_tickets_organization_id", "organization_id"),
    Index("idx_tickets_last_activity_at", "last_activity_at"),
    Index("idx_tickets_mailbox", "mailbox", "updated_at"),
    Index("idx_tickets_team", "team", "assignee", "updated_at"),
    Index("idx_tickets_requester_id", "requester_id", "updated_at"),  # revision 0003
    Index("idx_tickets_merged_into", "merged_into"),  # revision 0004: both ways of a link
    Index("idx_tickets_linked_ticket_id", "linked_ticket_id"),
)

messages = Table(
    "messages", metadata,
    _pk(),
    Column("ticket_id", Id, ForeignKey("tickets.id")),
    Column("direction", Text),
    Column("queue_id", Text),
    Column("message_id", Text),
    Column("in_reply_to", Text),
    Column("references_", Text),
    Column("from_addr", Text),
    Column("from_name", Text),
    Column("to_addrs", Text),
    Column("cc_addrs", Text),
    Column("subject", Text),
    Column("date", Text),
    Column("text", Text),
    Column("html", Text),
    Column("raw_path", Text),
    Column("defects", Text),
    Column("matched_by", Text),
    Column("internal", Integer, server_default=ZERO),
    Column("internal_reason", Text),
    Column("created_at", Text),
    Column("outbound_id", Id),
    Column("reply_text", Text),
    Column("classification", Text),
    Column("auth", Text),
    Column("digest", Text),
    Column("thread_index", Text),
    Index("idx_messages_ticket_id_id", "ticket_id", "id"),
    Index("idx_messages_message_id", "message_id"),
    # one stored copy of a message received by mail (revision 0002: the backstop under the
    # thread lock when several nodes take the same message)
    Index("uq_messages_incoming", "message_id", "from_addr", "digest", unique=True,
          sqlite_where=text(INCOMING), postgresql_where=text(INCOMING)),
)

# Keyed by (Message-ID, ticket) since v7: a stranger who used a Message-ID first does not own it.
message_ids = Table(
    "message_ids", metadata,
    Column("message_id", Text, primary_key=True),
    Column("ticket_id", Id, primary_key=True, autoincrement=False),
    Column("message_row", Id),
)

attachments = Table(
    "attachments", metadata,
    _pk(),
    Column("message_row", Id, ForeignKey("messages.id")),
    Column("sha256", Text),
    Column("filename", Text),
    Column("content_type", Text),
    Column("size", Integer),
    Column("content_id", Text),
    Column("inline", Integer),
    Column("details", Text),
    Index("idx_attachments_message_row", "message_row"),
)

audit_incoming = Table(
    "audit_incoming", metadata,
    _pk(),
    Column("received_at", Text),
    Column("queue_id", Text),
    Column("client_ip", Text),
    Column("helo", Text),
    Column("mail_from", Text),
    Column("rcpt_to", Text),
    Column("message_id", Text),
    Column("from_addr", Text),
    Column("subject", Text),
    Column("size", Integer),
    Column("action", Text),
    Column("ticket_id", Id),
    Column("message_row", Id),
    Column("matched_by", Text),
    Column("reason", Text),
    Column("defects", Integer),
    Column("classification", Text),
    Column("details", Text),
    Column("auth", Text),
    Index("idx_audit_incoming_queue_id", "queue_id", unique=True),
    Index("idx_audit_incoming_received_at", "received_at"),
    Index("idx_audit_incoming_action_received_at", "action", "received_at"),
)

outbound = Table(
    "outbound", metadata,
    _pk(),
    Column("ticket_id", Id),
    Column("kind", Text),
    Column("automatic", Integer, server_default=ZERO),
    Column("to_addr", Text),
    Column("subject", Text),
    Column("message_id", Text),
    Column("raw", LargeBinary),
    Column("status", Text),
    Column("attempts", Integer, server_default=ZERO),
    Column("last_error", Text),
    Column("created_at", Text),
    Column("created_ts", Float),
    Column("next_attempt", Float, server_default=ZERO),
    Column("sent_at", Text),
    Column("updated_at", Text),
    Column("dsn_status", Text),
    Column("queue_id", Text),
    Column("data_started_at", Text),
    Column("maybe_sent", Integer, nullable=False, server_default=ZERO),
    Column("to_mailbox", Text),
    Column("to_domain", Text),
    Column("sender", Text),
    Column("claimed_by", Text),  # revision 0002: the node sending it, until lease_until
    Column("lease_until", Float),
    Index("idx_outbound_status_next_attempt", "status", "next_attempt"),
    Index("idx_outbound_ticket_id", "ticket_id"),
    Index("idx_outbound_to_addr_automatic_created_ts", "to_addr", "automatic", "created_ts"),
    Index("idx_outbound_mailbox", "to_mailbox", "automatic", "created_ts"),
    Index("idx_outbound_domain", "to_domain", "automatic", "created_ts"),
    Index("idx_outbound_automatic", "automatic", "created_ts"),
    Index("idx_outbound_sender", "sender", "kind", "created_ts"),
    Index("idx_outbound_message_id", "message_id"),
)

participants = Table(
    "participants", metadata,
    Column("ticket_id", Id, primary_key=True, autoincrement=False),
    Column("email", Text, primary_key=True),
    Column("role", Text),
    Column("added_at", Text),
    Index("idx_participants_email", "email"),
)

organizations = Table(
    "organizations", metadata,
    _pk(),
    Column("name", Text, nullable=False),
    Column("notes", Text),
    Column("created_at", Text),
    Column("auto_created", Integer, server_default=ZERO),
    Column("on_new_ticket", Text),
    Column("rr_position", Integer, server_default=ZERO),
    Index("idx_organizations_name", "name", unique=True),
)

org_domains = Table(
    "org_domains", metadata,
    Column("domain", Text, primary_key=True),
    Column("organization_id", Id),
    Index("idx_org_domains_organization_id", "organization_id"),
)

rule_evaluations = Table(
    "rule_evaluations", metadata,
    _pk(),
    Column("ticket_id", Id),
    Column("event", Text),
    Column("rule", Text),
    Column("hit", Integer),
    Column("why", Text),
    Column("depth", Integer),
    Column("at", Text),
    Index("idx_rule_evaluations_ticket_id_id", "ticket_id", "id"),
)

rule_firings = Table(
    "rule_firings", metadata,
    Column("ticket_id", Id, primary_key=True, autoincrement=False),
    Column("rule", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("fired_at", Text),
)

round_robin = Table(
    "round_robin", metadata,
    Column("key", Text, primary_key=True),
    Column("position", Integer),
)

spam = Table(
    "spam", metadata,
    Column("queue_id", Text, primary_key=True),
    Column("received_at", Text),
    Column("action", Text),
    Column("score", Float),
    Column("symbols", Text),
    Column("rspamd_action", Text),
    Column("reason", Text),
    Column("note", Text),
    Column("state", Text),
    Column("raw_path", Text),
    Column("envelope", Text),
    Column("released_at", Text),
    Column("released_by", Text),
    Column("released_as", Text),
    Index("idx_spam_state_received_at", "state", "received_at"),
)

# --- revision 0002: several nodes on one database ------------------------------------------

stored_files = Table(  # raw mail and attachments on PostgreSQL (by their data_dir path)
    "stored_files", metadata,
    Column("path", Text, primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("size", BigInteger),
    Column("created_at", Text),
)

shared_secrets = Table(  # what every node signs and verifies with alike
    "shared_secrets", metadata,
    Column("name", Text, primary_key=True),
    Column("value", LargeBinary, nullable=False),
    Column("created_at", Text),
)

nodes = Table(  # the daemons that run on this database
    "nodes", metadata,
    Column("node_id", Text, primary_key=True),
    Column("hostname", Text),
    Column("version", Text),
    Column("started_at", Text),
    Column("seen_at", Text),
)

auto_mail_counts = Table(  # automatic mail per minute and key (m:mailbox, d:domain, *)
    "auto_mail_counts", metadata,
    Column("key", Text, primary_key=True),
    Column("minute", BigInteger, primary_key=True, autoincrement=False),
    Column("shard", Integer, primary_key=True, autoincrement=False),  # the writing process's
    Column("n", BigInteger, nullable=False, server_default=ZERO),
)

# --- revision 0003: agent accounts ---------------------------------------------------------

agent_credentials = Table(  # an agent's password (Argon2) and API token (SHA-256), hashed
    "agent_credentials", metadata,
    Column("email", Text, primary_key=True),
    Column("password_hash", Text),
    Column("password_set_at", Text),
    Column("token_hash", Text),
    Column("token_set_at", Text),
    Index("idx_agent_credentials_token_hash", "token_hash", unique=True),
)

agent_sessions = Table(  # signed-in browsers, by the SHA-256 of the cookie's secret
    "agent_sessions", metadata,
    Column("id", Text, primary_key=True),
    Column("email", Text, nullable=False),  # an agent's, or "admin-token"
    Column("token_mark", Text),  # the admin token's fingerprint (admin-token sessions)
    Column("created_ts", Float, nullable=False),
    Column("seen_ts", Float, nullable=False),
    Column("expires_ts", Float, nullable=False),
    Column("remote", Text),
    Index("idx_agent_sessions_email", "email"),
)

login_failures = Table(  # failed sign-ins by key (account:<email>, ip:<address>)
    "login_failures", metadata,
    _pk(),
    Column("key", Text, nullable=False),
    Column("at_ts", Float, nullable=False),
    Index("idx_login_failures_key_at_ts", "key", "at_ts"),
)

ticket_actions = Table(  # who did what to a ticket: an agent's e-mail, admin-token or cli
    "ticket_actions", metadata,
    _pk(),
    Column("ticket_id", Id, nullable=False),
    Column("at", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("details", Text),
    Index("idx_ticket_actions_ticket_id_id", "ticket_id", "id"),
    Index("idx_ticket_actions_actor_at", "actor", "at"),
)

# --- revision 0007: the data-protection log -------------------------------------------------

data_actions = Table(  # retention runs, customer exports and erasures (never an address)
    "data_actions", metadata,
    _pk(),
    Column("at", Text, nullable=False),
    Column("action", Text, nullable=False),  # retention, export, erase
    Column("actor", Text, nullable=False),  # scheduler, cli, an agent's e-mail
    Column("subject", Text),  # erased:<keyed hash of the address>; NULL for retention
    Column("details", Text),  # JSON: counts, ticket ids, why
    Index("idx_data_actions_action_at", "action", "at"),
)

# --- revision 0008: webhooks ---------------------------------------------------------------

webhook_deliveries = Table(  # one event for one webhook: the outbox of POSTs
    "webhook_deliveries", metadata,
    _pk(),
    Column("event", Text, nullable=False),
    Column("webhook", Text, nullable=False),  # the [[webhooks]] name (default: its URL)
    Column("url", Text),  # the webhook's URL when the event was written
    Column("ticket_id", Id),
    Column("payload", Text, nullable=False),  # the JSON body, exactly as POSTed
    Column("state", Text, nullable=False),  # queued, delivered, failed
    Column("attempts", Integer, nullable=False, server_default=ZERO),
    Column("created_at", Text, nullable=False),
    Column("created_ts", Float, nullable=False),
    Column("next_attempt", Float, nullable=False, server_default=ZERO),
    Column("last_error", Text),
    Column("delivered_at", Text),
    Column("claimed_by", Text),  # the node delivering it, until lease_until
    Column("lease_until", Float),
    Index("idx_webhook_deliveries_state_next_attempt", "state", "next_attempt"),
    Index("idx_webhook_deliveries_ticket_id", "ticket_id"),
)

webhook_attempts = Table(  # each POST of a delivery: the audit of webhooks
    "webhook_attempts", metadata,
    _pk(),
    Column("delivery_id", Id, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", Text, nullable=False),
    Column("node", Text),
    Column("address", Text),  # the IP address connected to (after the SSRF check)
    Column("status_code", Integer),
    Column("outcome", Text, nullable=False),  # delivered, retry, failed
    Column("error", Text),
    Column("seconds", Float),
    Index("idx_webhook_attempts_delivery_id_id", "delivery_id", "id"),
    Index("idx_webhook_attempts_at", "at"),
)
