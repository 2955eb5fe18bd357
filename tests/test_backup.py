"""`mailgate backup` while mail is coming in, and `mailgate restore` into an empty data
directory: every message acknowledged before the backup began is found again, the restored
database passes `db check`, damaged backups and non-empty targets are refused.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Daemon, free_port, queue_id_of, send


def message(i: int) -> str:
    return (f"From: customer{i}@client.test\r\nTo: support@example.com\r\n"
            f"Subject: Backup test {i}\r\nMessage-ID: <backup{i}@client.test>\r\n\r\n"
            f"Message number {i}.\r\n" + "Some more text to make it a real mail.\r\n" * 30)


class Sender(threading.Thread):
    """Sends `count` messages one after another, keeping each acknowledged queue id."""

    def __init__(self, port: int, count: int) -> None:
        super().__init__(daemon=True)
        self.port, self.count = port, count
        self.acked: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i in range(self.count):
                code, reply = send(self.port, message(i), mail_from=f"customer{i}@client.test")
                assert code == 250, reply
                self.acked.append(queue_id_of(reply))
        except BaseException as exc:  # reported by the test
            self.error = exc


def restored_daemon(original: Daemon, tmp_path: Path, name: str = "restored") -> Daemon:
    """A config like `original`'s with another port and an empty data_dir of its own."""
    directory = tmp_path / name
    directory.mkdir()
    port = free_port()
    text = original.config.read_text().replace(f"127.0.0.1:{original.port}",
                                               f"127.0.0.1:{port}")
    (directory / "mailgate.toml").write_text(text)
    return Daemon(directory / "mailgate.toml", port)


def test_a_backup_under_load_restores_every_acknowledged_message(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    d = make_daemon()
    sender = Sender(d.port, 90)
    sender.start()
    deadline = time.monotonic() + 60
    while len(sender.acked) < 30 and time.monotonic() < deadline and sender.error is None:
        time.sleep(0.02)
    acknowledged = list(sender.acked)  # before the backup began
    dest = tmp_path / "backup"
    out = json.loads(d.run_cli("backup", str(dest), "--json").stdout)
    during = len(sender.acked)
    sender.join(120)
    assert sender.error is None, sender.error
    assert len(acknowledged) >= 30 and during < 90, "the backup did not run under load"
    assert {Path(db["path"]).name for db in out["databases"]} >= {"mailgate.db", "spool.db"}
    assert out["files"] > 0 and out["postgresql"] is None
    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert manifest["revision"] and manifest["config"] == "config/mailgate.toml"
    assert "secret.key" in {f["path"] for f in manifest["files"]}

    r = restored_daemon(d, tmp_path)
    result = r.run_cli("restore", str(dest))
    assert result.stdout.strip().endswith("db check: ok"), result.stdout
    assert (r.data_dir / "secret.key").read_bytes() == (d.data_dir / "secret.key").read_bytes()
    r.start()
    try:
        r.wait_idle()
        for qid in acknowledged:  # stored in the copy, or taken from its spool now
            row = r.audit_for(qid)
            assert row["action"] == "created_ticket", row
        tickets = {t["subject"] for t in r.json("tickets", "list", "--limit", "200")}
        assert {f"Backup test {i}" for i in range(len(acknowledged))} <= tickets
        first = r.audit_for(acknowledged[0])
        shown = r.json("tickets", "show", str(first["ticket_id"]))
        raw = r.run_cli("tickets", "raw", str(shown["messages"][0]["id"]), "--out", "-")
        assert "Message number 0." in raw.stdout  # the raw mail came back too
        assert r.cli("db", "check").strip().endswith("db check: ok")
    finally:
        r.stop()


def test_restore_refuses_a_used_data_dir_and_a_damaged_backup(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    d = make_daemon()
    _code, reply = send(d.port, message(1))
    d.audit_for(queue_id_of(reply))
    dest = tmp_path / "backup"
    d.run_cli("backup", str(dest))
    again = d.run_cli("backup", str(dest), expect=1)
    assert again.stderr == (f"mailgate: {dest}: exists and is not an empty directory: back up"
                            " into a new or empty directory\n")

    used = d.run_cli("restore", str(dest), expect=1)  # its own data_dir is not empty
    assert "restore only into a new or empty data_dir" in used.stderr
    assert len(used.stderr.splitlines()) == 1

    raw = next((dest / "data" / "raw").rglob("*.eml"))
    raw.write_bytes(raw.read_bytes().replace(b"Message number", b"Massage number"))
    r = restored_daemon(d, tmp_path)
    damaged = r.run_cli("restore", str(dest), expect=1)
    assert damaged.stderr.startswith(f"mailgate: {dest}: the backup is damaged, nothing"
                                     f" restored: {raw}: changed since the backup")
    assert not r.data_dir.exists()
    nothing = r.run_cli("restore", str(tmp_path), expect=1)
    assert nothing.stderr == f"mailgate: {tmp_path}: not a mailgate backup (no MANIFEST.json)\n"


@pytest.mark.both_engines
def test_on_postgresql_the_backup_saves_the_node_and_names_pg_dump(
        make_daemon: Callable[..., Daemon], backend: str | None, tmp_path: Path) -> None:
    d = make_daemon()
    _code, reply = send(d.port, message(2))
    d.audit_for(queue_id_of(reply))
    out = d.cli("backup", str(tmp_path / "b"))
    names = {p.name for p in (tmp_path / "b" / "data").iterdir()}
    assert "spool.db" in names
    if backend is None:
        assert {"mailgate.db", "secret.key"} <= names and "pg_dump" not in out
    else:  # the store, raw mail and the shared secrets are in the database
        assert "mailgate.db" not in names
        assert "back it up with pg_dump --format=custom" in out
