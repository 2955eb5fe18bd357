"""Retention: removing what `[retention]` says is kept no longer.

Input: the store (SQLite or PostgreSQL; its rows trusted), the node's `data_dir`, the
`Retention` settings, the time now, and who runs it (`scheduler` or `cli`). Output: a
`RetentionReport` (counts, the tickets concerned) and, unless it is a dry run, the data gone:

- tickets **closed** (status `closed`, `closed_at` set) more than `closed_days` ago lose their
  raw mail (the `.eml` files of incoming messages, the rendered bytes of outgoing mail that was
  delivered or given up) and their attachments (rows, and each blob no remaining attachment
  refers to); their text, headers and history stay. With `remove = "tickets"` the tickets go
  whole (messages, participants, rule records, actions, finished outgoing mail). A ticket that
  is not closed is never touched; one with outgoing mail still queued or being retried is left
  for a later run; mail still in a spool is not in the store at all and never touched.
- audit rows older than `audit_days` go: the incoming audit, finished outgoing mail, rule
  evaluations, quarantine records (with their raw files), ticket actions, webhook attempts and
  finished webhook deliveries.

Work goes in batches of `batch` tickets (audit rows: ten times that), one short transaction
each, so a large database is never locked for long; on PostgreSQL each batch locks its tickets
(`FOR UPDATE SKIP LOCKED`), so a ticket being changed by the pipeline is left for the next
run. Blobs are removed only when no attachment row refers to them and they were not stored or
reused within `BLOB_GRACE_SECONDS` (a message being stored now may be about to refer to one).
Each run that removes anything writes one `data_actions` row (action `retention`), updated by
every batch, so what went is on record even when a run stops halfway.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mailgate.config import Retention
from mailgate.store import filestore
from mailgate.store.db import now_iso, on_postgres, transaction

BLOB_GRACE_SECONDS = 3600.0
FINISHED = ("sent", "failed", "bounced", "suppressed")  # outgoing mail that is done
PENDING = ("queued", "sending", "deferred")
TICKET_IDS_KEPT = 1000  # ticket ids named in one audit row (the counts cover all)
COUNTS = ("tickets", "raw_files", "outgoing_raw", "attachments", "blobs", "messages",
          "audit_incoming", "outbound", "rule_evaluations", "spam", "ticket_actions",
          "webhook_attempts", "webhook_deliveries")


@dataclass
class RetentionReport:
    dry_run: bool
    remove: str
    closed_before: str | None  # tickets closed before this lose their files (None: never)
    audit_before: str | None  # audit rows older than this go (None: never)
    tickets: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))

    @property
    def removed_anything(self) -> bool:
        return any(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "remove": self.remove,
                "closed_before": self.closed_before, "audit_before": self.audit_before,
                "tickets": self.tickets, "counts": dict(self.counts)}


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z")


def run_retention(db: Any, data_dir: Path, settings: Retention, *, dry_run: bool = False,
                  now: datetime | None = None, actor: str = "cli",
                  grace_seconds: float = BLOB_GRACE_SECONDS) -> RetentionReport:
    """Apply `settings` once (see the module docstring); with `dry_run` change nothing and
    say what would go."""
    now = now or datetime.now(UTC)
    closed_before = (_iso(now - timedelta(days=settings.closed_days))
                     if settings.closed_days > 0 else None)
    audit_before = (_iso(now - timedelta(days=settings.audit_days))
                    if settings.audit_days > 0 else None)
    report = RetentionReport(dry_run, settings.remove, closed_before, audit_before)
    run = _Run(db, data_dir, report, actor, now.timestamp() - grace_seconds, settings)
    if closed_before is not None:
        run.tickets(closed_before)
    if audit_before is not None:
        run.audits(audit_before)
    return report


class _Run:
    def __init__(self, db: Any, data_dir: Path, report: RetentionReport, actor: str,
                 touched_before: float, settings: Retention) -> None:
        self.db = db
        self.data_dir = data_dir
        self.report = report
        self.actor = actor
        self.touched_before = touched_before
        self.settings = settings
        self.batch = settings.batch
        self.audit_row: int | None = None
        self.gone_attachments: set[int] = set()  # a dry run's "removed" attachment rows

    # --- tickets ---------------------------------------------------------------------------

    def _select(self, conn: Any, closed_before: str, after: int) -> list[int]:
        whole = self.report.remove == "tickets"
        pending = ",".join(f"'{s}'" for s in PENDING)
        finished = ",".join(f"'{s}'" for s in FINISHED)
        sql = ("SELECT t.id FROM tickets t WHERE t.status = 'closed'"
               " AND t.closed_at IS NOT NULL AND t.closed_at < ? AND t.id > ?")
        if whole:
            sql += (" AND NOT EXISTS (SELECT 1 FROM outbound o WHERE o.ticket_id = t.id"
                    f" AND o.status IN ({pending}))")
        else:
            sql += (" AND (EXISTS (SELECT 1 FROM messages m WHERE m.ticket_id = t.id AND"
                    " (m.raw_path IS NOT NULL OR EXISTS (SELECT 1 FROM attachments a"
                    " WHERE a.message_row = m.id)))"
                    " OR EXISTS (SELECT 1 FROM outbound o WHERE o.ticket_id = t.id"
                    f" AND o.raw IS NOT NULL AND o.status IN ({finished})))")
        sql += " ORDER BY t.id LIMIT ?"
        if on_postgres(conn) and not self.report.dry_run:
            sql += " FOR UPDATE OF t SKIP LOCKED"
        return [int(r[0]) for r in conn.execute(sql, (closed_before, after, self.batch))]

    def tickets(self, closed_before: str) -> None:
        after = 0
        while True:
            if self.report.dry_run:
                ids = self._select(self.db, closed_before, after)
                if ids:
                    self._ticket_batch(self.db, ids)
            else:
                with transaction(self.db) as conn:
                    ids = self._select(conn, closed_before, after)
                    if ids:
                        unlink = self._ticket_batch(conn, ids)
                        self._record(conn)
                if ids:
                    filestore.remove_files(self.db, self.data_dir, unlink)
            if len(ids) < self.batch:
                return
            after = ids[-1]

    def _ticket_batch(self, conn: Any, ids: list[int]) -> list[str]:
        """Remove the files (or the whole tickets) of `ids` in `conn`'s transaction; return
        the relative paths to unlink after the commit (SQLite)."""
        counts = self.report.counts
        marks = ",".join("?" * len(ids))
        raws = [(int(i), p) for i, p in conn.execute(
            f"SELECT id, raw_path FROM messages WHERE ticket_id IN ({marks})"
            " AND raw_path IS NOT NULL", ids)]
        attachments = [(int(i), s) for i, s in conn.execute(
            "SELECT a.id, a.sha256 FROM attachments a JOIN messages m ON m.id = a.message_row"
            f" WHERE m.ticket_id IN ({marks})", ids)]
        finished = ",".join(f"'{s}'" for s in FINISHED)
        outgoing = int(conn.execute(
            f"SELECT COUNT(*) FROM outbound WHERE ticket_id IN ({marks}) AND raw IS NOT NULL"
            f" AND status IN ({finished})", ids).fetchone()[0])
        self.report.tickets.extend(ids)
        counts["tickets"] += len(ids)
        counts["attachments"] += len(attachments)
        counts["outgoing_raw"] += outgoing
        whole = self.report.remove == "tickets"
        if whole:
            counts["messages"] += int(conn.execute(
                f"SELECT COUNT(*) FROM messages WHERE ticket_id IN ({marks})", ids
            ).fetchone()[0])
        dry = self.report.dry_run
        if not dry:
            if attachments:
                conn.executemany("DELETE FROM attachments WHERE id = ?",
                                 [(i,) for i, _ in attachments])
            if whole:
                self._delete_tickets(conn, ids, marks)
            else:
                conn.execute(f"UPDATE messages SET raw_path = NULL WHERE ticket_id IN ({marks})"
                             " AND raw_path IS NOT NULL", ids)
                conn.execute(f"UPDATE outbound SET raw = NULL WHERE ticket_id IN ({marks})"
                             f" AND raw IS NOT NULL AND status IN ({finished})", ids)
        else:
            self.gone_attachments |= {i for i, _ in attachments}
        paths = [p for _, p in raws if not filestore.raw_kept_by_spam(conn, p)]
        counts["raw_files"] += len(paths)
        for sha in sorted({s for _, s in attachments if s}):
            if self._blob_goes(conn, sha):
                counts["blobs"] += 1
                paths.append(filestore.files.blob_relpath(sha))
        if not dry:
            filestore.remove_rows(conn, paths)
        return paths

    def _blob_goes(self, conn: Any, sha: str) -> bool:
        if not self.report.dry_run:
            return filestore.removable_blob(conn, self.data_dir, sha, self.touched_before)
        others = {int(r[0]) for r in conn.execute(
            "SELECT id FROM attachments WHERE sha256 = ?", (sha,))} - self.gone_attachments
        if others:
            return False
        relpath = filestore.files.blob_relpath(sha)
        if on_postgres(conn):
            row = conn.execute("SELECT created_at FROM stored_files WHERE path = ?",
                               (relpath,)).fetchone()
            return row is not None and (row[0] or "") < now_iso(self.touched_before)
        try:
            return (self.data_dir / relpath).stat().st_mtime < self.touched_before
        except FileNotFoundError:
            return False

    def _delete_tickets(self, conn: Any, ids: list[int], marks: str) -> None:
        finished = ",".join(f"'{s}'" for s in FINISHED)
        conn.execute(f"DELETE FROM message_ids WHERE ticket_id IN ({marks})", ids)
        conn.execute(f"DELETE FROM messages WHERE ticket_id IN ({marks})", ids)
        for table in ("participants", "rule_evaluations", "rule_firings", "ticket_actions"):
            conn.execute(f"DELETE FROM {table} WHERE ticket_id IN ({marks})", ids)
        conn.execute(f"DELETE FROM outbound WHERE ticket_id IN ({marks})"
                     f" AND status IN ({finished})", ids)
        for column in ("linked_ticket_id", "merged_into"):
            conn.execute(f"UPDATE tickets SET {column} = NULL WHERE {column} IN ({marks})", ids)
        conn.execute(f"DELETE FROM tickets WHERE id IN ({marks})", ids)

    # --- audits ----------------------------------------------------------------------------

    def audits(self, before: str) -> None:
        before_ts = datetime.fromisoformat(before.replace("Z", "+00:00")).timestamp()
        finished = ",".join(f"'{s}'" for s in FINISHED)
        for table, key, where, params in (
            ("audit_incoming", "id", "received_at < ?", (before,)),
            ("outbound", "id", f"created_ts < ? AND status IN ({finished})", (before_ts,)),
            ("rule_evaluations", "id", "at < ?", (before,)),
            ("ticket_actions", "id", "at < ?", (before,)),
            ("spam", "queue_id", "received_at < ?", (before,)),
            ("webhook_attempts", "id", "at < ?", (before,)),
            # a finished delivery goes once none of its attempts is left
            ("webhook_deliveries", "id", "created_ts < ? AND state IN ('delivered', 'failed')"
             " AND NOT EXISTS (SELECT 1 FROM webhook_attempts a"
             " WHERE a.delivery_id = webhook_deliveries.id)", (before_ts,)),
        ):
            self._audit_table(table, key, where, params)

    def _audit_table(self, table: str, key: str, where: str, params: tuple[Any, ...]) -> None:
        limit = self.batch * 10
        select = f"SELECT {key} FROM {table} WHERE {where} ORDER BY {key} LIMIT ?"
        if self.report.dry_run:
            self.report.counts[table] += int(self.db.execute(
                f"SELECT COUNT(*) FROM {table} WHERE {where}", params).fetchone()[0])
            return
        while True:
            unlink: list[str] = []
            with transaction(self.db) as conn:
                keys = [r[0] for r in conn.execute(select, (*params, limit))]
                if keys:
                    if table == "spam":
                        unlink = self._spam_files(conn, keys)
                    conn.executemany(f"DELETE FROM {table} WHERE {key} = ?",
                                     [(k,) for k in keys])
                    self.report.counts[table] += len(keys)
                    self._record(conn)
            filestore.remove_files(self.db, self.data_dir, unlink)
            if len(keys) < limit:
                return

    def _spam_files(self, conn: Any, queue_ids: list[str]) -> list[str]:
        """The raw files of quarantine rows about to go that no message refers to (a released
        one is the message's raw file too)."""
        paths = []
        for queue_id in queue_ids:
            row = conn.execute("SELECT raw_path, state FROM spam WHERE queue_id = ?",
                               (queue_id,)).fetchone()
            if not row or not row[0]:
                continue
            if row[1] == "released" and conn.execute(
                    "SELECT 1 FROM messages WHERE raw_path = ? LIMIT 1", (row[0],)).fetchone():
                continue
            paths.append(row[0])
        filestore.remove_rows(conn, paths)
        return paths

    # --- the record of the run -------------------------------------------------------------

    def _record(self, conn: Any) -> None:
        """This run's `data_actions` row, written or brought up to date in `conn`'s
        transaction."""
        r = self.report
        details = json.dumps({
            "reason": _reason(r, self.settings), "remove": r.remove,
            "closed_before": r.closed_before, "audit_before": r.audit_before,
            "counts": r.counts, "tickets": r.tickets[:TICKET_IDS_KEPT],
            "more_tickets": max(0, len(r.tickets) - TICKET_IDS_KEPT)})
        if self.audit_row is None:
            self.audit_row = record_action(conn, "retention", self.actor, None, details)
        else:
            conn.execute("UPDATE data_actions SET details = ? WHERE id = ?",
                         (details, self.audit_row))


def _reason(report: RetentionReport, settings: Retention) -> str:
    parts = []
    if report.closed_before:
        what = "removed whole" if report.remove == "tickets" else "raw mail and attachments"
        parts.append(f"tickets closed more than {settings.closed_days:g} days ago ([retention]"
                     f" closed_days): {what}")
    if report.audit_before:
        parts.append(f"audit rows older than {settings.audit_days:g} days ([retention]"
                     " audit_days)")
    return "; ".join(parts)


def record_action(conn: Any, action: str, actor: str, subject: str | None,
                  details: str) -> int:
    """One `data_actions` row in `conn`'s transaction; its id."""
    row = conn.execute(
        "INSERT INTO data_actions (at, action, actor, subject, details) VALUES (?, ?, ?, ?, ?)"
        " RETURNING id", (now_iso(), action, actor, subject, details)).fetchone()
    return int(row[0])


def list_actions(db: Any, action: str | None = None, limit: int = 50, offset: int = 0
                 ) -> tuple[list[dict[str, Any]], int]:
    """The data-protection log, newest first, with the total matching."""
    where, params = ("WHERE action = ?", [action]) if action else ("", [])
    total = int(db.execute(f"SELECT COUNT(*) FROM data_actions {where}", params).fetchone()[0])
    rows = []
    for r in db.execute(f"SELECT id, at, action, actor, subject, details FROM data_actions"
                        f" {where} ORDER BY id DESC LIMIT ? OFFSET ?", [*params, limit, offset]):
        try:
            details = json.loads(r[5]) if r[5] else {}
        except ValueError:
            details = {"unreadable": r[5]}
        rows.append({"id": r[0], "at": r[1], "action": r[2], "actor": r[3],
                     "subject": r[4], "details": details})
    return rows, total


def due(last_run: float | None, settings: Retention, now: float | None = None) -> bool:
    """Whether the scheduler runs retention now: it is configured, and it never ran in this
    process or ran at least `every_minutes` ago."""
    if not settings.enabled:
        return False
    now = time.time() if now is None else now
    return last_run is None or now - last_run >= settings.every_minutes * 60
