"""Opening the database, and the schema gate at start-up.

Input: a path under `data_dir` (the file is trusted to be the operator's, not to be at the
schema this mailgate needs). Output: a sqlite-utils `Database` in WAL mode whose schema is the
one this mailgate needs (the head revision of mailgate/store/migrations), or SchemaMismatch
(one line) when it is not:
- a new, empty file gets the schema at head: the frozen legacy steps below build v11, which is
  the Alembic baseline revision 0001, then FRESH_STEPS add each later revision in plain SQL
  and stamp the file (tests/test_schema.py proves all three the same: these steps, Alembic's
  revisions, and mailgate/store/schema.py);
- a file at head is used as it is (an unstamped legacy v11 file is at revision 0001);
- an older schema (legacy `PRAGMA user_version` 1 … 10, or an older revision) is refused:
  `mailgate db upgrade` moves it on, after the operator has backed it up;
- a schema newer than this mailgate knows, or tables that no mailgate made, are refused.
The decision reads `PRAGMA user_version` and the `alembic_version` row, and compares them with
REVISIONS: neither SQLAlchemy nor Alembic is imported on this path.

The legacy migrations are numbered functions tracked with `PRAGMA user_version`, frozen at v11;
later schema changes are Alembic revisions (see mailgate/store/upgrade.py).
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils

from mailgate.errors import DatabaseGone, SchemaMismatch
from mailgate.model import canonical_mailbox


class FileConnection(sqlite3.Connection):
    """A connection that remembers the database file it opened (path, device, inode), so a
    transaction can tell when that file was deleted or replaced under it."""

    opened: tuple[Path, int, int] | None = None


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def check_same_file(conn: sqlite3.Connection) -> None:
    """Raise DatabaseGone when the file `conn` opened is no longer at its path."""
    opened = getattr(conn, "opened", None)
    if opened is None:
        return
    path, dev, ino = opened
    now = file_identity(path)
    if now != (dev, ino):
        what = "was deleted" if now is None else "was replaced by another file"
        raise DatabaseGone(f"the database {path} {what} while mailgate had it open; nothing"
                           " more is committed to it (restore it, then restart mailgate)")


def now_iso(ts: float | None = None) -> str:
    dt = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z")


def _v1(db: sqlite_utils.Database) -> None:
    db["customers"].create(
        {"id": int, "email": str, "name": str, "created_at": str}, pk="id", not_null={"email"}
    )
    db["customers"].create_index(["email"], unique=True)
    db["tickets"].create(
        {
            "id": int, "subject": str, "requester_id": int, "status": str, "assignee": str,
            "created_at": str, "updated_at": str,
        },
        pk="id",
        foreign_keys=[("requester_id", "customers", "id")],
    )
    db["tickets"].create_index(["status", "updated_at"])
    db["tickets"].create_index(["assignee"])
    db["messages"].create(
        {
            "id": int, "ticket_id": int, "direction": str, "queue_id": str, "message_id": str,
            "in_reply_to": str, "references_": str, "from_addr": str, "from_name": str,
            "to_addrs": str, "cc_addrs": str, "subject": str, "date": str, "text": str,
            "html": str, "raw_path": str, "defects": str, "matched_by": str, "internal": int,
            "internal_reason": str, "created_at": str,
        },
        pk="id",
        foreign_keys=[("ticket_id", "tickets", "id")],
        defaults={"internal": 0},
    )
    db["messages"].create_index(["ticket_id", "id"])
    db["message_ids"].create(
        {"message_id": str, "ticket_id": int, "message_row": int}, pk="message_id"
    )
    db["attachments"].create(
        {
            "id": int, "message_row": int, "sha256": str, "filename": str, "content_type": str,
            "size": int, "content_id": str, "inline": int,
        },
        pk="id",
        foreign_keys=[("message_row", "messages", "id")],
    )
    db["attachments"].create_index(["message_row"])
    db["audit_incoming"].create(
        {
            "id": int, "received_at": str, "queue_id": str, "client_ip": str, "helo": str,
            "mail_from": str, "rcpt_to": str, "message_id": str, "from_addr": str,
            "subject": str, "size": int, "action": str, "ticket_id": int, "message_row": int,
            "matched_by": str, "reason": str, "defects": int,
        },
        pk="id",
    )
    db["audit_incoming"].create_index(["queue_id"], unique=True)
    db["audit_incoming"].create_index(["received_at"])
    db["audit_incoming"].create_index(["action", "received_at"])


def _v2(db: sqlite_utils.Database) -> None:
    """The outbox: every mail we send or decided not to send, with its delivery state."""
    db["outbound"].create(
        {
            "id": int, "ticket_id": int, "kind": str, "automatic": int, "to_addr": str,
            "subject": str, "message_id": str, "raw": bytes, "status": str, "attempts": int,
            "last_error": str, "created_at": str, "created_ts": float, "next_attempt": float,
            "sent_at": str, "updated_at": str, "dsn_status": str, "queue_id": str,
        },
        pk="id",
        defaults={"attempts": 0, "automatic": 0, "next_attempt": 0},
    )
    db["outbound"].create_index(["status", "next_attempt"])
    db["outbound"].create_index(["ticket_id"])
    db["outbound"].create_index(["to_addr", "automatic", "created_ts"])
    db["messages"].add_column("outbound_id", int)


def _v3(db: sqlite_utils.Database) -> None:
    """Threading and the workflow: classification, reply text, participants, reopening."""
    db["audit_incoming"].add_column("classification", str)
    db["audit_incoming"].add_column("details", str)  # JSON: DSN, forwarding code and link, ...
    db["messages"].add_column("reply_text", str)
    db["messages"].add_column("classification", str)
    db["tickets"].add_column("closed_at", str)
    db["tickets"].add_column("linked_ticket_id", int)
    db["participants"].create(
        {"ticket_id": int, "email": str, "role": str, "added_at": str},
        pk=("ticket_id", "email"),
    )
    db["participants"].create_index(["email"])


def _v4(db: sqlite_utils.Database) -> None:
    """Organizations by domain, ticket priority and tags, and the automation records."""
    db["organizations"].create(
        {"id": int, "name": str, "notes": str, "created_at": str, "auto_created": int,
         "on_new_ticket": str, "rr_position": int},
        pk="id", not_null={"name"}, defaults={"auto_created": 0, "rr_position": 0},
    )
    db["organizations"].create_index(["name"], unique=True)
    db["org_domains"].create({"domain": str, "organization_id": int}, pk="domain")
    db["org_domains"].create_index(["organization_id"])
    db["customers"].add_column("organization_id", int)
    db["customers"].create_index(["organization_id"])
    db["tickets"].add_column("organization_id", int)
    db["tickets"].add_column("priority", str, not_null_default="normal")
    db["tickets"].add_column("tags", str, not_null_default="[]")
    db["tickets"].add_column("first_response_at", str)
    db["tickets"].add_column("resolved_at", str)
    db["tickets"].add_column("last_activity_at", str)
    db["tickets"].create_index(["organization_id"])
    db["tickets"].create_index(["last_activity_at"])
    db["rule_evaluations"].create(
        {"id": int, "ticket_id": int, "event": str, "rule": str, "hit": int, "why": str,
         "depth": int, "at": str},
        pk="id",
    )
    db["rule_evaluations"].create_index(["ticket_id", "id"])
    db["rule_firings"].create(
        {"ticket_id": int, "rule": str, "key": str, "fired_at": str},
        pk=("ticket_id", "rule", "key"),
    )
    db["round_robin"].create({"key": str, "position": int}, pk="key")


def _v5(db: sqlite_utils.Database) -> None:
    """Who really sent it: the authentication result of each incoming message."""
    db["messages"].add_column("auth", str)  # JSON: dkim, arc, spf, dmarc, verdict, reason
    db["audit_incoming"].add_column("auth", str)


def _v6(db: sqlite_utils.Database) -> None:
    """Delivery attempts whose outcome is unknown: when the DATA phase of the attempt in flight
    began (committed before DATA is sent), and how many attempts ended without a reply after
    DATA had begun (each may have delivered the mail)."""
    db["outbound"].add_column("data_started_at", str)
    db["outbound"].add_column("maybe_sent", int, not_null_default=0)


def _v7(db: sqlite_utils.Database) -> None:
    """Duplicates by content, a Message-ID on several tickets, rate limits by mailbox.

    - messages.digest: the content digest (sha256 without the trace headers a re-delivery
      adds); a duplicate is the same Message-ID, the same digest and the same From. Rows from
      before have none and are compared by Message-ID and From alone.
    - message_ids: keyed by (Message-ID, ticket), so a stranger who used a Message-ID first
      does not own it: the table is rebuilt with the rows it had.
    - outbound.to_mailbox / to_domain (the recipient as rate limits count it) and sender (the
      agent whose words an agent_reply carries).
    """
    db["messages"].add_column("digest", str)
    db.execute("CREATE INDEX idx_messages_message_id ON messages (message_id)")
    db.execute("CREATE TABLE message_ids_v7 (message_id TEXT, ticket_id INTEGER,"
               " message_row INTEGER, PRIMARY KEY (message_id, ticket_id))")
    db.execute("INSERT OR IGNORE INTO message_ids_v7 (message_id, ticket_id, message_row)"
               " SELECT message_id, ticket_id, message_row FROM message_ids")
    db.execute("DROP TABLE message_ids")
    db.execute("ALTER TABLE message_ids_v7 RENAME TO message_ids")
    for column in ("to_mailbox", "to_domain", "sender"):
        db["outbound"].add_column(column, str)
    rows = db.execute("SELECT id, to_addr FROM outbound").fetchall()
    db.conn.executemany(
        "UPDATE outbound SET to_mailbox=?, to_domain=? WHERE id=?",
        [(*recipient_keys(addr or ""), oid) for oid, addr in rows])
    db.execute("CREATE INDEX idx_outbound_mailbox ON outbound (to_mailbox, automatic,"
               " created_ts)")
    db.execute("CREATE INDEX idx_outbound_domain ON outbound (to_domain, automatic, created_ts)")
    db.execute("CREATE INDEX idx_outbound_automatic ON outbound (automatic, created_ts)")
    db.execute("CREATE INDEX idx_outbound_sender ON outbound (sender, kind, created_ts)")
    db.execute("CREATE INDEX idx_outbound_message_id ON outbound (message_id)")


def recipient_keys(address: str) -> tuple[str, str]:
    """(mailbox, domain) of a recipient as the automatic-mail limits count it."""
    mailbox = canonical_mailbox(address)
    return mailbox, mailbox.rpartition("@")[2]


def _v8(db: sqlite_utils.Database) -> None:
    """Spam: the scanner's verdict on each incoming message (by queue id), and the quarantine
    (the quarantined messages, each with its stored raw file, and who let it out, when)."""
    db["spam"].create(
        {"queue_id": str, "received_at": str, "action": str, "score": float, "symbols": str,
         "rspamd_action": str, "reason": str, "note": str, "state": str, "raw_path": str,
         "envelope": str, "released_at": str, "released_by": str, "released_as": str},
        pk="queue_id",
    )
    db["spam"].create_index(["state", "received_at"])


def _v9(db: sqlite_utils.Database) -> None:
    """What is known about an attachment beyond its name and type (JSON): a winmail.dat that
    was unpacked, the file a TNEF held it in, the subject and From of an attached message."""
    db["attachments"].add_column("details", str)


def _v10(db: sqlite_utils.Database) -> None:
    """Which mailbox a ticket's first mail came to (its `[[mailboxes]]` address): everything
    sent about the ticket speaks as that mailbox. NULL (older tickets): the default mailbox."""
    db.execute("ALTER TABLE tickets ADD COLUMN mailbox TEXT")
    db.execute("CREATE INDEX IF NOT EXISTS idx_tickets_mailbox ON tickets (mailbox, updated_at)")


def _v11(db: sqlite_utils.Database) -> None:
    """Teams and Outlook threading: the team a ticket belongs to (its name; indexed with the
    assignee for a team's unassigned tickets), the ticket's latest Thread-Index (base64; the
    next mail about it appends a child block), and the Thread-Index an incoming message
    carried."""
    db["tickets"].add_column("team", str)
    db["tickets"].add_column("thread_index", str)
    db["messages"].add_column("thread_index", str)
    db.execute("CREATE INDEX idx_tickets_team ON tickets (team, assignee, updated_at)")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8, _v9, _v10, _v11]


# The Alembic revisions in mailgate/store/migrations/versions, oldest first: kept here so that
# opening the database needs no Alembic import (tests/test_db_cli.py checks them against the
# directory). A new revision is added here too.
REVISIONS: tuple[str, ...] = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008")
BASELINE = REVISIONS[0]  # the schema of legacy v11
LEGACY_HEAD = 11  # len(MIGRATIONS): the legacy migrations are frozen here
UPGRADE_HINT = "run 'mailgate db upgrade' (back the file up first)"


@dataclass(frozen=True)
class FoundSchema:
    """What a SQLite file holds: the Alembic revision stamped in it (None: none), its
    `PRAGMA user_version`, and whether it has no table at all."""

    revision: str | None
    legacy: int
    empty: bool

    @property
    def effective(self) -> str | None:
        """The revision whose schema the file has: the stamped one, or the baseline for an
        unstamped legacy v11 file; None when it has none this mailgate can name."""
        if self.revision is not None:
            return self.revision
        return BASELINE if self.legacy == LEGACY_HEAD else None

    def __str__(self) -> str:
        if self.revision is not None:
            return f"revision {self.revision}"
        if self.empty:
            return "empty"
        if self.legacy == LEGACY_HEAD:
            return f"legacy v{self.legacy} (revision {BASELINE})"
        if self.legacy:
            return f"legacy v{self.legacy}"
        return "no mailgate schema version"


def read_schema(conn: sqlite3.Connection) -> FoundSchema:
    """What `conn`'s file holds (reads two pragmas-worth of rows; changes nothing)."""
    tables = {name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%'"
        " ESCAPE '\\'")}
    revision = None
    if "alembic_version" in tables:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = row[0] if row else None
    legacy = conn.execute("PRAGMA user_version").fetchone()[0]
    return FoundSchema(revision, legacy, not tables)


def schema_problem(found: FoundSchema, where: object,
                   revisions: Sequence[str] = REVISIONS) -> str | None:
    """Why a file holding `found` may not be used by a mailgate whose revisions are
    `revisions` (one line naming `where`), None when it is at their head or empty."""
    head = revisions[-1]
    effective = found.effective
    if found.empty or effective == head:
        return None
    if effective in revisions:
        return (f"the database {where} has schema {found}, this mailgate needs revision"
                f" {head}: {UPGRADE_HINT}")
    if found.legacy and 0 < found.legacy < LEGACY_HEAD and found.revision is None:
        return (f"the database {where} has schema {found}, this mailgate needs revision"
                f" {head}: {UPGRADE_HINT}")
    if found.revision is not None or found.legacy > LEGACY_HEAD:
        return (f"the database {where} has schema {found}, newer than this mailgate knows (its"
                f" newest is revision {head}): run the mailgate that upgraded it, or restore"
                " the backup taken before the upgrade")
    return (f"the database {where} has tables but {found}: it is not a mailgate database"
            " (check [storage] data_dir), or it was damaged ('mailgate db check')")


def open_db(path: Path, migrations: Path | None = None) -> sqlite_utils.Database:
    """The database at `path`, its schema at head (see the module docstring); SchemaMismatch
    when it is not and may not be changed here. `migrations`: another Alembic script
    directory than the packaged one (tests of a revision not shipped yet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False,
                           factory=FileConnection)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        identity = file_identity(path)
        if identity is not None:
            conn.opened = (path, *identity)
        db = sqlite_utils.Database(conn)
        _gate(db, path, migrations)
        _search_index(db)
    except BaseException:
        conn.close()
        raise
    return db


# A new, empty SQLite file gets each revision after the baseline from these plain statements
# (no Alembic import: a new data_dir opens in milliseconds); tests/test_schema.py proves the
# file they build the same as the one Alembic builds and as mailgate/store/schema.py.
_INCOMING = ("queue_id IS NOT NULL AND digest IS NOT NULL AND message_id IS NOT NULL"
             " AND message_id <> ''")
FRESH_STEPS: dict[str, tuple[str, ...]] = {
    "0002": (
        "CREATE TABLE stored_files (path TEXT NOT NULL, data BLOB NOT NULL, size BIGINT,"
        " created_at TEXT, PRIMARY KEY (path))",
        "CREATE TABLE shared_secrets (name TEXT NOT NULL, value BLOB NOT NULL,"
        " created_at TEXT, PRIMARY KEY (name))",
        "CREATE TABLE nodes (node_id TEXT NOT NULL, hostname TEXT, version TEXT,"
        " started_at TEXT, seen_at TEXT, PRIMARY KEY (node_id))",
        "CREATE TABLE auto_mail_counts (key TEXT NOT NULL, minute BIGINT NOT NULL,"
        " shard INTEGER NOT NULL, n BIGINT DEFAULT 0 NOT NULL, PRIMARY KEY (key, minute, shard))",
        "ALTER TABLE outbound ADD COLUMN claimed_by TEXT",
        "ALTER TABLE outbound ADD COLUMN lease_until FLOAT",
        "CREATE UNIQUE INDEX uq_messages_incoming ON messages (message_id, from_addr, digest)"
        f" WHERE {_INCOMING}",
    ),
    "0003": (
        "CREATE INDEX idx_tickets_requester_id ON tickets (requester_id, updated_at)",
    ),
    "0004": (
        "ALTER TABLE tickets ADD COLUMN merged_into INTEGER",
        "CREATE INDEX idx_tickets_merged_into ON tickets (merged_into)",
        "CREATE INDEX idx_tickets_linked_ticket_id ON tickets (linked_ticket_id)",
    ),
    "0005": (
        "CREATE TABLE agent_credentials (email TEXT NOT NULL, password_hash TEXT,"
        " password_set_at TEXT, token_hash TEXT, token_set_at TEXT, PRIMARY KEY (email))",
        "CREATE UNIQUE INDEX idx_agent_credentials_token_hash ON agent_credentials"
        " (token_hash)",
        "CREATE TABLE agent_sessions (id TEXT NOT NULL, email TEXT NOT NULL, token_mark TEXT,"
        " created_ts FLOAT NOT NULL, seen_ts FLOAT NOT NULL, expires_ts FLOAT NOT NULL,"
        " remote TEXT, PRIMARY KEY (id))",
        "CREATE INDEX idx_agent_sessions_email ON agent_sessions (email)",
        "CREATE TABLE login_failures (id INTEGER NOT NULL, key TEXT NOT NULL,"
        " at_ts FLOAT NOT NULL, PRIMARY KEY (id))",
        "CREATE INDEX idx_login_failures_key_at_ts ON login_failures (key, at_ts)",
        "CREATE TABLE ticket_actions (id INTEGER NOT NULL, ticket_id INTEGER NOT NULL,"
        " at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, details TEXT,"
        " PRIMARY KEY (id))",
        "CREATE INDEX idx_ticket_actions_ticket_id_id ON ticket_actions (ticket_id, id)",
        "CREATE INDEX idx_ticket_actions_actor_at ON ticket_actions (actor, at)",
    ),
    "0006": (
        "ALTER TABLE tickets ADD COLUMN imported_at TEXT",
    ),
    "0007": (
        "CREATE TABLE data_actions (id INTEGER NOT NULL, at TEXT NOT NULL, action TEXT NOT NULL,"
        " actor TEXT NOT NULL, subject TEXT, details TEXT, PRIMARY KEY (id))",
        "CREATE INDEX idx_data_actions_action_at ON data_actions (action, at)",
    ),
    "0008": (
        "CREATE TABLE webhook_deliveries (id INTEGER NOT NULL, event TEXT NOT NULL,"
        " webhook TEXT NOT NULL, url TEXT, ticket_id INTEGER, payload TEXT NOT NULL,"
        " state TEXT NOT NULL, attempts INTEGER DEFAULT 0 NOT NULL, created_at TEXT NOT NULL,"
        " created_ts FLOAT NOT NULL, next_attempt FLOAT DEFAULT 0 NOT NULL, last_error TEXT,"
        " delivered_at TEXT, claimed_by TEXT, lease_until FLOAT, PRIMARY KEY (id))",
        "CREATE INDEX idx_webhook_deliveries_state_next_attempt ON webhook_deliveries"
        " (state, next_attempt)",
        "CREATE INDEX idx_webhook_deliveries_ticket_id ON webhook_deliveries (ticket_id)",
        "CREATE TABLE webhook_attempts (id INTEGER NOT NULL, delivery_id INTEGER NOT NULL,"
        " attempt INTEGER NOT NULL, at TEXT NOT NULL, node TEXT, address TEXT,"
        " status_code INTEGER, outcome TEXT NOT NULL, error TEXT, seconds FLOAT,"
        " PRIMARY KEY (id))",
        "CREATE INDEX idx_webhook_attempts_delivery_id_id ON webhook_attempts"
        " (delivery_id, id)",
        "CREATE INDEX idx_webhook_attempts_at ON webhook_attempts (at)",
    ),
}


def _fresh(db: sqlite_utils.Database) -> None:
    """An empty file brought to head: the legacy steps (v11 = the baseline), then each later
    revision's statements, and the Alembic stamp — all in one transaction after v11."""
    migrate(db)
    with transaction(db) as conn:
        if read_schema(conn).revision is not None:  # another process got here first
            return
        for revision in REVISIONS[1:]:
            for statement in FRESH_STEPS[revision]:
                conn.execute(statement)
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL,"
                     " CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))")
        conn.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (REVISIONS[-1],))


def _gate(db: sqlite_utils.Database, path: Path, migrations: Path | None) -> None:
    revisions = REVISIONS if migrations is None else _revisions_in(migrations)
    found = read_schema(db.conn)
    if found.empty and migrations is None:
        _fresh(db)
        found = read_schema(db.conn)
    elif found.empty:
        migrate(db)  # v1 … v11: the baseline revision's schema
        if revisions[-1] != BASELINE:  # and the other directory's later revisions, by Alembic
            from mailgate.store import upgrade
            from mailgate.store.engine import make_engine, sqlite_url

            engine = make_engine(sqlite_url(path))
            try:
                upgrade.upgrade(engine, migrations or upgrade.MIGRATIONS_DIR)
            finally:
                engine.dispose()
        found = read_schema(db.conn)
    problem = schema_problem(found, path, revisions)
    if problem is not None:
        raise SchemaMismatch(problem)


def _search_index(db: sqlite_utils.Database) -> None:
    """The full-text indexes of `store.search` (derived from the rows, not schema): made, and
    filled from the rows already there, the first time a file is opened without them."""
    from mailgate.store import search  # search reads this module's helpers

    if not search.index_complete(db.conn):
        with transaction(db) as conn:
            search.ensure_index(conn)


def _revisions_in(migrations: Path) -> tuple[str, ...]:
    """The revisions of another script directory, oldest first (imports Alembic)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(migrations).replace("%", "%%"))
    found = [s.revision for s in ScriptDirectory.from_config(config).walk_revisions()]
    return tuple(reversed(found))


def migrate(db: sqlite_utils.Database) -> None:
    for number, step in enumerate(MIGRATIONS, start=1):
        with transaction(db):  # read the version inside the write lock: one process migrates
            if db.execute("PRAGMA user_version").fetchone()[0] >= number:
                continue
            step(db)
            db.execute(f"PRAGMA user_version={number}")


def on_postgres(db: Any) -> bool:
    """Whether `db` (a database object, or a connection from `transaction()`) is PostgreSQL's:
    `store.pg` marks its classes with `dialect = "postgresql"`; sqlite3 and sqlite-utils have
    no such attribute."""
    return getattr(db, "dialect", "sqlite") == "postgresql"


def like_escape(text: str) -> str:
    """`text` for a LIKE pattern with ESCAPE '\\': its own %, _ and \\ taken literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def like_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere."""
    return f"%{like_escape(text)}%"


def day_range(day: str) -> tuple[str, str]:
    """'YYYY-MM-DD' → the [start, end) pair of ISO timestamps (UTC) bounding that day.
    ValueError for anything that is not a calendar date."""
    start = date.fromisoformat(day)
    if len(day) != 10:
        raise ValueError(day)
    return start.isoformat(), (start + timedelta(days=1)).isoformat()


def time_window(column: str, day: str | None = None, since: str | None = None,
                until: str | None = None) -> tuple[list[str], list[str]]:
    """WHERE terms keeping `column` (ISO text, UTC) within a day and/or [since, until): each
    bound a day `YYYY-MM-DD` (an `until` day included) or an ISO timestamp. ValueError names
    a bound that is neither."""
    where: list[str] = []
    params: list[str] = []
    if day:
        start, end = day_range(day)
        where += [f"{column} >= ?", f"{column} < ?"]
        params += [start, end]
    for bound, op, name in ((since, ">=", "since"), (until, "<", "until")):
        if not bound:
            continue
        text = bound.strip()
        if len(text) == 10:
            start, end = day_range(text)
            text = start if name == "since" else end
        elif not _ISO_TIME.fullmatch(text):
            raise ValueError(f"{name}: expected a date YYYY-MM-DD or an ISO timestamp,"
                             f" got {bound!r}")
        where.append(f"{column} {op} ?")
        params.append(text)
    return where, params


_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?Z?")


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT on the raw connection (sqlite-utils' own writes commit on their
    own, so writes inside a transaction use the connection directly). Raises DatabaseGone when
    the database file was deleted or replaced since it was opened — checked before and after,
    so a commit that went into a file nobody will read again is never reported as done."""
    conn = db.conn
    check_same_file(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (a full disk does that): keep the original
        # error, and never leave the connection inside a transaction.
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    check_same_file(conn)
