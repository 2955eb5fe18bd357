"""`[retention]`: closed tickets lose their raw mail and attachments (or go whole), old audit
rows go, a blob a kept ticket uses stays, `--dry-run` changes nothing; run by the CLI and by
the daemon's scheduler, on SQLite and PostgreSQL.

"Closed N days ago" is set by writing `closed_at` in the database: the test cannot wait days,
and `closed_at` (with the status) is the only thing retention reads to decide. Blobs are aged
the same way (file mtime / `stored_files.created_at`), since a blob stored or reused within
the last hour is always kept (a message being stored may be about to refer to it).
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import Daemon, queue_id_of, relay_section, send, wait_outgoing
from relay_stub import RelayStub

from mailgate.store.files import blob_relpath

RETENTION = "\n[retention]\nclosed_days = 30\naudit_days = 90\n"


def mail(subject: str, sender: str, files: list[tuple[str, bytes]]) -> str:
    parts = [f"--B\r\nContent-Type: text/plain\r\n\r\nPlease help with {subject}.\r\n"]
    for name, data in files:
        parts.append(f'--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition:'
                     f' attachment; filename="{name}"\r\nContent-Transfer-Encoding: base64\r\n'
                     f"\r\n{base64.b64encode(data).decode()}\r\n")
    return (f"From: {sender}\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@client.test>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="B"\r\n\r\n' + "".join(parts) + "--B--\r\n")


def ticket_of(d: Daemon, subject: str, sender: str, files: list[tuple[str, bytes]]
              ) -> tuple[int, str]:
    code, reply = send(d.port, mail(subject, sender, files), mail_from=sender)
    assert code == 250, reply
    row = d.audit_for(queue_id_of(reply))
    return int(row["ticket_id"]), row["queue_id"]


def ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def close(d: Daemon, ticket_id: int, days_ago: float) -> None:
    d.cli("tickets", "status", str(ticket_id), "closed")
    db = d.store()
    try:
        db.execute("UPDATE tickets SET closed_at = ? WHERE id = ?", (ago(days_ago), ticket_id))
    finally:
        db.close()


def one(db: Any, sql: str, *params: Any) -> Any:
    return db.execute(sql, params).fetchone()


def age_blobs(d: Daemon, shas: list[str]) -> None:
    db = d.store()
    try:
        for sha in shas:
            path = d.data_dir / blob_relpath(sha)
            if path.exists():
                old = time.time() - 2 * 86400
                os.utime(path, (old, old))
            db.execute("UPDATE stored_files SET created_at = ? WHERE path = ?",
                       (ago(2), blob_relpath(sha)))
    finally:
        db.close()


def stored(d: Daemon, relpath: str) -> bool:
    """Whether the raw mail or blob at `relpath` is kept (a file, or a stored_files row)."""
    db = d.store()
    try:
        in_db = one(db, "SELECT 1 FROM stored_files WHERE path = ?", relpath) is not None
    finally:
        db.close()
    return in_db or (d.data_dir / relpath).exists()


class Scene:
    """Ticket old (closed 31 days ago, a shared and an own attachment), recent (closed 29
    days ago, the shared attachment), open (never closed)."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.shared, self.own = b"shared file " * 100, b"only the old ticket's " * 50
        self.old, self.old_q = ticket_of(d, "old case", "olga@client.test",
                                         [("shared.bin", self.shared), ("own.bin", self.own)])
        self.recent, _ = ticket_of(d, "recent case", "rita@client.test",
                                   [("shared.bin", self.shared)])
        self.open, _ = ticket_of(d, "open case", "otto@client.test", [])
        close(d, self.old, 31)
        close(d, self.recent, 29)
        db = d.store()
        try:
            self.shas = sorted({r[0] for r in db.execute("SELECT sha256 FROM attachments")})
            self.raw = {t: one(db, "SELECT raw_path FROM messages WHERE ticket_id = ?", t)[0]
                        for t in (self.old, self.recent, self.open)}
        finally:
            db.close()
        assert len(self.shas) == 2
        age_blobs(d, self.shas)

    def sha(self, data: bytes) -> str:
        import hashlib
        return hashlib.sha256(data).hexdigest()


@pytest.mark.both_engines
def test_closed_tickets_lose_files_but_keep_text(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(RETENTION)
    s = Scene(d)
    old_audit = s.old_q
    db = d.store()
    try:
        db.execute("UPDATE audit_incoming SET received_at = ? WHERE queue_id = ?",
                   (ago(91), old_audit))
        for days, name in ((91, "old"), (1, "new")):  # a webhook event delivered long ago
            when = datetime.now(UTC) - timedelta(days=days)
            db.execute("INSERT INTO webhook_deliveries (event, webhook, payload, state,"
                       " attempts, created_at, created_ts) VALUES ('ticket_created', ?, '{}',"
                       " 'delivered', 1, ?, ?)", (name, ago(days), when.timestamp()))
            db.execute("INSERT INTO webhook_attempts (delivery_id, attempt, at, outcome)"
                       " SELECT id, 1, ?, 'delivered' FROM webhook_deliveries WHERE webhook = ?",
                       (ago(days), name))
    finally:
        db.close()

    plan = d.json("retention", "--dry-run")
    assert plan["dry_run"] and plan["tickets"] == [s.old]
    assert plan["counts"]["raw_files"] == 1 and plan["counts"]["attachments"] == 2
    assert plan["counts"]["blobs"] == 1 and plan["counts"]["audit_incoming"] == 1
    assert stored(d, s.raw[s.old]) and stored(d, blob_relpath(s.sha(s.own)))  # unchanged
    assert d.json("audit", "data") == []

    done = d.json("retention")
    assert done["tickets"] == [s.old] and done["counts"]["blobs"] == 1
    assert not stored(d, s.raw[s.old])
    assert not stored(d, blob_relpath(s.sha(s.own)))
    assert stored(d, blob_relpath(s.sha(s.shared)))  # the recent ticket still uses it
    for kept in (s.recent, s.open):
        assert stored(d, s.raw[kept])
    old = d.json("tickets", "show", str(s.old))
    assert "Please help with old case" in json.dumps(old)  # the text stays
    assert all(not m.get("attachments") for m in old["messages"])
    recent = d.json("tickets", "show", str(s.recent))
    assert recent["messages"][0]["attachments"]
    message = old["messages"][0]["id"]
    assert "no raw .eml kept" in d.cli("tickets", "raw", str(message), "--out", "-", expect=1)
    assert d.json("audit", "incoming", "--queue-id", old_audit) == []
    assert done["counts"]["webhook_attempts"] == done["counts"]["webhook_deliveries"] == 1
    assert [r["webhook"] for r in d.json("audit", "webhooks")] == ["new"]
    [row] = d.json("audit", "data")
    assert row["action"] == "retention" and row["actor"] == "cli"
    assert row["details"]["tickets"] == [s.old] and row["details"]["counts"]["raw_files"] == 1
    assert "closed more than 30 days ago" in row["details"]["reason"]
    assert d.json("retention")["counts"]["tickets"] == 0  # nothing left to do
    check = d.json("db", "check")
    assert check["ok"], check


def test_remove_tickets_by_the_scheduler(make_daemon: Callable[..., Daemon],
                                        relay: RelayStub) -> None:
    """Whole tickets go; a ticket whose acknowledgement is still queued waits until it is
    delivered (outgoing mail not yet delivered is never removed)."""
    d = make_daemon(relay_section(relay.port) + '\n[retention]\nclosed_days = 30\n'
                    'remove = "tickets"\nevery_minutes = 0.01\n[scheduler]\ntick_seconds = 0.3\n')
    s = Scene(d)
    wait_outgoing(d, lambda rows: len(rows) == 3 and all(r["status"] == "sent" for r in rows))
    deadline = time.monotonic() + 20
    while True:
        rows = d.json("audit", "data", "--action", "retention")
        if any(r["details"].get("tickets") == [s.old] for r in rows):
            break
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.2)
    assert rows[0]["actor"] == "scheduler"
    assert "no ticket" in d.cli("tickets", "show", str(s.old), expect=1).lower()
    assert not stored(d, s.raw[s.old]) and not stored(d, blob_relpath(s.sha(s.own)))
    assert stored(d, blob_relpath(s.sha(s.shared)))
    for kept in (s.recent, s.open):
        assert d.json("tickets", "show", str(kept))["messages"][0]["attachments"] is not None
        assert stored(d, s.raw[kept])
    assert "Please help with old case" not in d.cli("tickets", "list", "--json")
    assert d.json("db", "check")["ok"]


def test_retention_config_errors(tmp_path: Any) -> None:
    from mailgate.config import parse_config
    from mailgate.errors import ConfigError

    for body, key in (({"remove": "all"}, "[retention] remove"),
                      ({"closed_days": -1}, "[retention] closed_days"),
                      ({"every_minutes": 0}, "[retention] every_minutes"),
                      ({"keep": 1}, "[retention] keep")):
        with pytest.raises(ConfigError) as err:
            parse_config({"retention": body}, tmp_path / "m.toml")
        assert key in str(err.value) and "m.toml" in str(err.value)
