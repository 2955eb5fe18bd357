"""Erasing a customer (`mailgate customers erase EMAIL`): the right to be forgotten.

Input: the store (trusted rows), the node's `data_dir`, an address an administrator typed
(untrusted form: bound parameters only, lower-cased), the erasure key (`key_for`: derived from
the installation's secret, so the same address always gives the same hash) and who asks.
Output, in one transaction (all of it or nothing):
- the tickets the customer requested go whole (their messages, our replies to them, notes,
  participants, rule records, actions, outgoing mail; queued or deferred mail is cancelled);
- their own messages on other tickets go (the rest of those tickets stays);
- attachments of removed messages go, each blob once no remaining attachment refers to it;
  the raw mail of removed messages goes (files on SQLite, `stored_files` rows on PostgreSQL),
  and so do quarantine records of mail from them (with the raw file);
- the customer record goes;
- every other mention of the address in any text column of any table (audit rows, rule
  records, ticket actions' details, the recipients and text of other messages …) is replaced by
  `erased:<first 16 hex of HMAC-SHA256(key, address)>`, so counts still add up and one
  person's rows can still be told apart; outgoing mail to others whose stored bytes name the
  address loses its stored bytes;
- one `data_actions` row (action `erase`): who, when, the hash, the counts — never the address.
The SQLite search index follows by its triggers. Mail from the address afterwards makes a new
customer. UserError when no customer has the address, or while mail to them is being handed
to the relay this moment (try again when it is done).

The replacement scans every text column of every table (an erasure is rare; the scan is the
price of finding every copy). Raw mail of *other* people that names the address in a header
(a Cc) is their mail and is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import LargeBinary, Text

from mailgate.errors import UserError
from mailgate.store import files, filestore, schema, shared
from mailgate.store.db import like_pattern, on_postgres, transaction
from mailgate.store.retention import record_action

ERASED = "erased:"


def key_for(db: Any, data_dir: Path) -> bytes:
    """The erasure key: derived from the installation's secret (the file in data_dir on
    SQLite, the secret every node shares on PostgreSQL), never stored."""
    secret = (shared.reply_secret(db, data_dir) if on_postgres(db)
              else files.load_or_create_secret(data_dir))
    return hmac.new(secret, b"mailgate customer erasure", hashlib.sha256).digest()


def subject_for(key: bytes, address: str) -> str:
    """The stable stand-in of an address in audits: `erased:<16 hex>`."""
    digest = hmac.new(key, address.strip().lower().encode(), hashlib.sha256).hexdigest()
    return ERASED + digest[:16]


@dataclass
class ErasureReport:
    subject: str
    customer_id: int
    counts: dict[str, int] = field(default_factory=dict)


def erase_customer(db: Any, data_dir: Path, email: str, key: bytes, actor: str = "cli"
                   ) -> ErasureReport:
    from mailgate.store.customer_export import customer_ticket_ids, find_customer

    address = email.strip().lower()
    subject = subject_for(key, address)
    unlink: list[str] = []
    with transaction(db) as conn:
        customer = find_customer(conn, address)
        report = ErasureReport(subject, int(customer["id"]))
        counts = report.counts
        requested, _others = customer_ticket_ids(conn, customer["id"], address)
        _refuse_while_sending(conn, requested, address)
        marks = ",".join("?" * len(requested)) or "NULL"
        messages = [int(r[0]) for r in conn.execute(
            f"SELECT id FROM messages WHERE ticket_id IN ({marks}) OR lower(from_addr) = ?",
            [*requested, address])]
        unlink += _remove_messages(conn, messages, counts)
        counts["outgoing"] = conn.execute(
            f"DELETE FROM outbound WHERE ticket_id IN ({marks}) OR lower(to_addr) = ?",
            [*requested, address]).rowcount
        if requested:
            for table in ("participants", "rule_evaluations", "rule_firings", "ticket_actions"):
                conn.execute(f"DELETE FROM {table} WHERE ticket_id IN ({marks})", requested)
            for column in ("linked_ticket_id", "merged_into"):
                conn.execute(f"UPDATE tickets SET {column} = NULL WHERE {column} IN ({marks})",
                             requested)
            conn.execute(f"DELETE FROM tickets WHERE id IN ({marks})", requested)
        counts["tickets"] = len(requested)
        unlink += _remove_quarantine(conn, address, counts)
        conn.execute("DELETE FROM participants WHERE lower(email) = ?", [address])
        conn.execute("DELETE FROM customers WHERE id = ?", [customer["id"]])
        counts["outgoing_raw_cleared"] = _clear_outgoing_raw(conn, address)
        counts["replaced"] = _replace_everywhere(conn, address, subject)
        filestore.remove_rows(conn, unlink)
        record_action(conn, "erase", actor, subject, json.dumps(counts))
    filestore.remove_files(db, data_dir, unlink)
    return report


def _refuse_while_sending(conn: Any, requested: list[int], address: str) -> None:
    marks = ",".join("?" * len(requested)) or "NULL"
    row = conn.execute(
        f"SELECT COUNT(*) FROM outbound WHERE status = 'sending' AND (ticket_id IN ({marks})"
        " OR lower(to_addr) = ?)", [*requested, address]).fetchone()
    if row[0]:
        raise UserError(f"{row[0]} outgoing mail(s) about this customer are being sent right"
                        " now: try again in a minute")


def _remove_messages(conn: Any, ids: list[int], counts: dict[str, int]) -> list[str]:
    """Delete the messages `ids` with their attachments and Message-ID entries; the raw files
    and blobs to remove (blobs no remaining attachment refers to)."""
    counts["messages"] = len(ids)
    paths: list[str] = []
    shas: set[str] = set()
    attachments = 0
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        paths += [r[0] for r in conn.execute(
            f"SELECT raw_path FROM messages WHERE id IN ({marks}) AND raw_path IS NOT NULL",
            chunk) if not filestore.raw_kept_by_spam(conn, r[0])]
        found = conn.execute(f"SELECT sha256 FROM attachments WHERE message_row IN ({marks})",
                             chunk).fetchall()
        attachments += len(found)
        shas |= {r[0] for r in found if r[0]}
        conn.execute(f"DELETE FROM attachments WHERE message_row IN ({marks})", chunk)
        conn.execute(f"DELETE FROM message_ids WHERE message_row IN ({marks})", chunk)
        conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)
    counts["attachments"] = attachments
    counts["raw_files"] = len(paths)
    blobs = [files.blob_relpath(s) for s in sorted(shas)
             if not conn.execute("SELECT 1 FROM attachments WHERE sha256 = ? LIMIT 1",
                                 (s,)).fetchone()]
    counts["blobs"] = len(blobs)
    return paths + blobs


def _remove_quarantine(conn: Any, address: str, counts: dict[str, int]) -> list[str]:
    rows = conn.execute("SELECT queue_id, raw_path FROM spam WHERE lower(envelope) LIKE ?"
                        " ESCAPE '\\'", [like_pattern(address)]).fetchall()
    conn.executemany("DELETE FROM spam WHERE queue_id = ?", [(r[0],) for r in rows])
    counts["quarantine"] = len(rows)
    return [r[1] for r in rows if r[1]]


def _clear_outgoing_raw(conn: Any, address: str) -> int:
    """Outgoing mail to others whose stored bytes name the address (a Cc) keeps its row but
    not its bytes."""
    if on_postgres(conn):
        return conn.execute("UPDATE outbound SET raw = NULL WHERE raw IS NOT NULL"
                            " AND strpos(lower(encode(raw, 'escape')), ?) > 0",
                            [address]).rowcount
    return conn.execute("UPDATE outbound SET raw = NULL WHERE raw IS NOT NULL"
                        " AND instr(lower(CAST(raw AS TEXT)), ?) > 0", [address]).rowcount


def _replace_everywhere(conn: Any, address: str, subject: str) -> int:
    """Replace `address` (any case) by `subject` in every text column of every table; how
    many values changed."""
    pattern = like_pattern(address)
    finder = re.compile(re.escape(address), re.IGNORECASE)
    changed = 0
    for table in schema.metadata.sorted_tables:
        keys = [c.name for c in table.primary_key.columns]
        texts = [c.name for c in table.columns
                 if isinstance(c.type, Text) and not isinstance(c.type, LargeBinary)]
        if not keys or not texts:
            continue
        for column in texts:
            select = (f"SELECT {', '.join(keys)}, {column} FROM {table.name}"
                      f" WHERE lower({column}) LIKE ? ESCAPE '\\'")
            for row in conn.execute(select, [pattern]).fetchall():
                new = finder.sub(subject, row[-1])
                where = " AND ".join(f"{k} = ?" for k in keys)
                conn.execute(f"UPDATE {table.name} SET {column} = ? WHERE {where}",
                             [new, *row[:-1]])
                changed += 1
    return changed
