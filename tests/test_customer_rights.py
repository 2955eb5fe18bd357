"""`mailgate customers export` and `mailgate customers erase`: everything stored about a
person in a zip, and erasure that leaves no trace of their address in any table.

Bob writes two tickets (one with an attachment he shares with Carol); Carol writes one with
Bob in Cc, and Bob answers on it. Real daemon over SMTP, real files, the CLI in-process.
"""

from __future__ import annotations

import base64
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, queue_id_of, send

BOB = "bob@client.test"
CAROL = "carol@other.test"
SHARED = b"the same manual " * 64
BOBS = b"bob's own scan " * 64


def mail(subject: str, sender: str, *, cc: str = "", file: tuple[str, bytes] | None = None,
         msgid: str, reply_to: str = "") -> str:
    head = (f"From: {sender}\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{msgid}>\r\nMIME-Version: 1.0\r\n")
    if cc:
        head += f"Cc: {cc}\r\n"
    if reply_to:
        head += f"In-Reply-To: <{reply_to}>\r\nReferences: <{reply_to}>\r\n"
    body = f"--B\r\nContent-Type: text/plain\r\n\r\n{subject}: write to me at {sender}\r\n"
    if file:
        body += (f'--B\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment;'
                 f' filename="{file[0]}"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
                 f"{base64.b64encode(file[1]).decode()}\r\n")
    return head + 'Content-Type: multipart/mixed; boundary="B"\r\n\r\n' + body + "--B--\r\n"


def deliver(d: Daemon, data: str, sender: str) -> dict[str, Any]:
    code, reply = send(d.port, data, mail_from=sender)
    assert code == 250, reply
    return d.audit_for(queue_id_of(reply))


class Scene:
    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.bob1 = deliver(d, mail("Broken printer", BOB, file=("manual.pdf", SHARED),
                                    msgid="b1@client.test"), BOB)["ticket_id"]
        self.bob2 = deliver(d, mail("Invoice question", BOB, file=("scan.pdf", BOBS),
                                    msgid="b2@client.test"), BOB)["ticket_id"]
        self.carol = deliver(d, mail("Team access", CAROL, cc=BOB, file=("manual.pdf", SHARED),
                                     msgid="c1@other.test"), CAROL)["ticket_id"]
        reply = deliver(d, mail("Re: Team access", BOB, msgid="b3@client.test",
                                reply_to="c1@other.test"), BOB)
        assert reply["ticket_id"] == self.carol, reply


def texts_naming(d: Daemon, needle: str) -> list[str]:
    """Every (table.column) of the store whose value holds `needle`, any case."""
    db = d.store()
    found = []
    try:
        pg = type(db).__module__.endswith("pg")
        if pg:
            columns = [tuple(r) for r in db.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = 'public'")]
        else:
            tables = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")]
            columns = [(t, c[1]) for t in tables
                       for c in db.execute(f"PRAGMA table_info('{t}')")]
        for table, column in columns:
            cast = f'CAST("{column}" AS TEXT)'
            if pg:
                cast = f'"{column}"::text'
            row = db.execute(f'SELECT COUNT(*) FROM "{table}" WHERE lower({cast}) LIKE ?',
                             (f"%{needle}%",)).fetchone()
            if row[0]:
                found.append(f"{table}.{column}")
    finally:
        db.close()
    return found


def test_export_holds_the_json_and_each_raw_mail(make_daemon: Callable[..., Daemon],
                                                  tmp_path: Path) -> None:
    d = make_daemon()
    s = Scene(d)
    out = tmp_path / "bob.zip"
    line = d.cli("customers", "export", BOB, "--output", str(out))
    assert "3 ticket(s)" in line, line
    with zipfile.ZipFile(out) as zf:
        doc = json.loads(zf.read("customer.json"))
        names = set(zf.namelist())
        raws = {n: zf.read(n) for n in names if n.startswith("raw/")}
        atts = {n: zf.read(n) for n in names if n.startswith("attachments/")}
    assert doc["customer"]["email"] == BOB
    roles = {t["id"]: t["role"] for t in doc["tickets"]}
    assert roles == {s.bob1: "requester", s.bob2: "requester", s.carol: "participant"}
    incoming = [m for t in doc["tickets"] for m in t["messages"] if m["direction"] == "in"]
    assert len(incoming) == 4
    assert len(doc["audit"]["incoming"]) == 3  # the three mails Bob sent
    for m in incoming:  # each raw mail byte for byte as `tickets raw` gives it
        stored = d.run_cli("tickets", "raw", str(m["id"]), "--out", "-").stdout_bytes
        assert raws[f"raw/{m['id']}.eml"] == stored
    assert sorted(atts.values()) == sorted([SHARED, BOBS, SHARED])
    assert "no customer" in d.cli("customers", "export", "nobody@client.test", expect=1)
    [row] = d.json("audit", "data", "--action", "export")
    assert row["subject"].startswith("erased:") and BOB not in json.dumps(row)


@pytest.mark.both_engines
def test_erase_leaves_no_trace(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    s = Scene(d)
    before = len(d.json("audit", "incoming"))
    assert texts_naming(d, BOB)  # the scan finds him before
    result = d.cli("customers", "erase", BOB, "--yes")
    assert "erased as erased:" in result, result
    assert texts_naming(d, BOB) == []
    assert "no customer" in d.cli("customers", "erase", BOB, "--yes", expect=1)
    for gone in (s.bob1, s.bob2):
        d.cli("tickets", "show", str(gone), expect=1)
    carol = d.json("tickets", "show", str(s.carol))
    assert [m["from"] for m in carol["messages"] if m["direction"] == "in"] == [CAROL]
    assert carol["messages"][0]["attachments"]  # Carol's copy of the shared manual stays
    d.run_cli("tickets", "attachment", str(carol["messages"][0]["attachments"][0]["id"]),
              "--out", "-")
    rows = d.json("audit", "incoming")
    assert len(rows) == before  # counts still add up
    hashed = {r["mail_from"] for r in rows} - {CAROL}
    assert len(hashed) == 1 and hashed.pop().startswith("erased:")
    [erase] = d.json("audit", "data", "--action", "erase")
    assert erase["actor"] == "cli" and erase["details"]["tickets"] == 2
    assert erase["details"]["blobs"] == 1  # Bob's scan; the manual Carol uses stays
    assert d.json("db", "check")["ok"]
    # a mail from the same address afterwards makes a new customer and ticket
    again = deliver(d, mail("Hello again", BOB, msgid="b4@client.test"), BOB)
    assert again["action"] == "created_ticket" and again["ticket_id"] not in (s.bob1, s.bob2)


def test_erase_asks_first(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    deliver(d, mail("Broken printer", BOB, msgid="b1@client.test"), BOB)
    result = d.run_cli("customers", "erase", BOB, expect=1)  # no answer on stdin: aborted
    assert "cannot be undone" in result.output and "erased as" not in result.output
    assert texts_naming(d, BOB)  # nothing changed
