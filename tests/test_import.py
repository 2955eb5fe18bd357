"""`mailgate import`: mail history (mbox, Gmail Takeout, Maildir, .eml) made into tickets in
archive mode — the whole corpus, a conversation with its dates and directions, a live reply
threading onto it afterwards, resuming after a kill, dry runs and mistakes.

Archives are written here the way their writers write them: an mbox with From_ lines and
mboxrd quoting (`>From `), a Maildir with `cur/` and `new/`, a Gmail Takeout with its
X-GM-THRID and X-Gmail-Labels fields.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, make_msgid
from pathlib import Path

import pytest
from conftest import Daemon, crlf, free_port, relay_section, send, write_config
from test_admin import admin_daemon

from mailgate.parsing.digest import content_digest
from mailgate.pipeline.archive import queue_id_for

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
FROM_LINE = re.compile(rb"^From (?![ \t]*:)")


def labelled() -> list[tuple[str, str, bytes]]:
    """Every labelled corpus message: (path, class, bytes without a leading From_ line)."""
    rows = []
    for line in (CORPUS / "labels.tsv").read_text().splitlines()[1:]:
        path, kind = line.split("\t")
        data = (CORPUS / path).read_bytes()
        if FROM_LINE.match(data):  # some are stored as an mbox of one
            data = data.split(b"\n", 1)[1]
        rows.append((path, kind, data))
    return rows


def mbox_bytes(messages: list[bytes], sender: str = "archive@import.test") -> bytes:
    """An mboxrd file: a From_ line before each message, `From ` lines in it quoted."""
    out = []
    for data in messages:
        body = data.replace(b"\r\n", b"\n")
        body = re.sub(rb"^(>*From )", rb">\1", body, flags=re.M)
        if not body.endswith(b"\n"):
            body += b"\n"
        out.append(b"From " + sender.encode() + b" Thu Jan  4 10:00:00 2024\n" + body + b"\n")
    return b"".join(out)


def write_maildir(root: Path, messages: list[bytes]) -> list[Path]:
    for part in ("cur", "new", "tmp"):
        (root / part).mkdir(parents=True, exist_ok=True)
    (root / "dovecot-uidlist").write_text("3 V1 N1\n")  # a server's bookkeeping: not mail
    paths = []
    for i, data in enumerate(messages):
        path = root / ("cur" if i % 2 else "new") / f"{1700000000 + i}.M{i}P1.import.test:2,S"
        path.write_bytes(data)
        paths.append(path)
    return paths


def cli_daemon(tmp_path: Path, extra: str = "", name: str = "d") -> Daemon:
    """A configured data directory, driven through the CLI (no daemon running)."""
    return Daemon(write_config(tmp_path / name, free_port(), extra), 0)


def import_json(d: Daemon, *args: str) -> dict:
    return json.loads(d.run_cli("import", *args, "--json").stdout)


def rows(d: Daemon, sql: str, *params: object) -> list[tuple]:
    db = d.store()
    try:
        return [tuple(r) for r in db.execute(sql, params).fetchall()]
    finally:
        db.close()


# --- the corpus ------------------------------------------------------------------------------


def test_the_whole_corpus_imports_from_a_maildir_and_again_from_an_mbox(tmp_path: Path) -> None:
    corpus = labelled()
    d = cli_daemon(tmp_path)
    maildir = tmp_path / "Maildir"
    write_maildir(maildir, [data for _, _, data in corpus])
    first = import_json(d, str(maildir))
    assert first["messages"] == len(corpus) == 680
    assert first["imported"] + first["duplicate"] + first["skipped"] == len(corpus)
    assert first["unreadable"] == []  # dovecot-uidlist is the Maildir's, not reported

    # each message's result, by its queue id (made from its content: a copy has the same)
    result = {qid: (action, reason or "") for qid, action, reason in rows(
        d, "SELECT queue_id, action, reason FROM audit_incoming")}
    assert {Path(json.loads(details)["import"]["source"]).parent.parent for (details,) in rows(
        d, "SELECT details FROM audit_incoming")} == {maildir}
    ours = ("@example.com", "@help.example.org")
    for path, kind, data in corpus:
        action, reason = result[queue_id_for(content_digest(data))]
        if kind == "bounce":
            assert action == "ignored" and "bounce" in reason, (path, action, reason)
        elif kind == "feedback_report":
            assert action == "ignored" and "abuse or feedback" in reason, (path, reason)
        elif kind == "auto_reply":
            assert action in ("ignored", "appended"), (path, action, reason)
        else:  # a customer's mail is a ticket's message — unless it was sent from our domain
            sender = re.search(rb"(?im)^from:.*$", data)
            from_us = sender is not None and any(o.encode() in sender.group(0).lower()
                                                 for o in ours)
            assert action in ("created_ticket", "appended", "duplicate") or (
                from_us and "sent by us" in reason), (path, action, reason)
    assert first["imported"] >= 100
    tickets = d.json("tickets", "list", "--limit", "500")
    assert len(tickets) == first["tickets_created"]
    assert {t["status"] for t in tickets} == {"closed"}  # history, nothing left open

    # the same mail as an mbox (an overlapping export): nothing is added twice
    (tmp_path / "all.mbox").write_bytes(mbox_bytes([data for _, _, data in corpus]))
    again = import_json(d, str(tmp_path / "all.mbox"))
    assert again["messages"] == 680 and again["imported"] == 0
    assert again["duplicate"] == first["imported"] + first["duplicate"]
    assert again["skipped_reasons"] == first["skipped_reasons"]
    assert len(d.json("tickets", "list", "--limit", "500")) == len(tickets)
    assert d.cli("db", "check").strip().endswith("db check: ok")


# --- a conversation ----------------------------------------------------------------------------


def conversation(now: datetime, subject: str = "Printer on fire") -> list[tuple[str, bytes]]:
    """A customer's mail, our agent's reply and the customer's answer, 3, 2 and 1 days ago:
    (Message-ID, bytes), in the order they were written."""
    first, reply, answer = (make_msgid(domain=d) for d in
                            ("client.test", "example.com", "client.test"))
    dates = [format_datetime(now - timedelta(days=n)) for n in (3, 2, 1)]
    return [
        (first, (f"From: Carol Customer <carol@client.test>\nTo: support@example.com\n"
                 f"Subject: {subject}\nDate: {dates[0]}\nMessage-ID: {first}\n\n"
                 "It is on fire.\nFrom now on I print nothing.\n").encode()),
        (reply, (f"From: Alice Agent <alice@example.com>\nTo: carol@client.test\n"
                 f"Subject: Re: {subject}\nDate: {dates[1]}\nMessage-ID: {reply}\n"
                 f"In-Reply-To: {first}\nReferences: {first}\n\n"
                 "Please unplug it.\n").encode()),
        (answer, (f"From: carol@client.test\nTo: support@example.com\n"
                  f"Subject: Re: {subject}\nDate: {dates[2]}\nMessage-ID: {answer}\n"
                  f"In-Reply-To: {reply}\nReferences: {first} {reply}\n\n"
                  "Done, thanks.\n").encode()),
    ]


def iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.mark.both_engines
def test_a_conversation_becomes_one_closed_ticket_and_a_live_reply_reopens_it(
        make_daemon: Callable[..., Daemon], relay, tmp_path: Path) -> None:
    d, admin = admin_daemon(make_daemon, relay_section(relay.port))
    now = datetime.now(UTC).replace(microsecond=0)
    mails = conversation(now)
    # written out of order: the reply first (a Maildir or a Takeout has no order)
    (tmp_path / "history.mbox").write_bytes(mbox_bytes([mails[2][1], mails[0][1], mails[1][1]]))
    counts = import_json(d, str(tmp_path / "history.mbox"), "--mailbox", "support@example.com")
    assert (counts["imported"], counts["tickets_created"], counts["skipped"]) == (3, 1, 0)

    (ticket,) = d.json("tickets", "list")
    shown = d.json("tickets", "show", str(ticket["id"]))
    assert shown["status"] == "closed" and shown["subject"] == "Printer on fire"
    assert shown["requester"] == "carol@client.test"
    assert shown["mailbox"] == "support@example.com"
    messages = shown["messages"]
    assert [m["direction"] for m in messages] == ["in", "out", "in"]
    assert [m["message_id"] for m in messages] == [mid.strip("<>") for mid, _ in mails]
    dates = [iso(m["created_at"]) for m in messages]
    assert dates == [now - timedelta(days=n) for n in (3, 2, 1)]
    assert iso(shown["created_at"]) == dates[0]
    assert iso(shown["first_response_at"]) == dates[1]
    assert iso(shown["closed_at"]) == iso(shown["updated_at"]) == dates[2]
    assert "From now on I print nothing." in messages[0]["text"]  # `>From` unquoted
    page = admin.get(f"/tickets/{ticket['id']}").text
    assert 'id="imported">from a mail archive' in page and "Please unplug it." in page
    # archive mode: nothing was sent, no rule ran
    time.sleep(1.0)
    assert relay.messages == [] and d.json("audit", "outgoing") == []
    assert rows(d, "SELECT COUNT(*) FROM rule_evaluations") == [(0,)]

    # the customer writes again, live, answering our imported reply
    live = (f"From: carol@client.test\r\nTo: support@example.com\r\nSubject: Re: Printer on"
            f" fire\r\nMessage-ID: {make_msgid(domain='client.test')}\r\n"
            f"In-Reply-To: {mails[1][0]}\r\nReferences: {mails[0][0]} {mails[1][0]}\r\n\r\n"
            "It is on fire again.\r\n")
    code, reply = send(d.port, live, mail_from="carol@client.test")
    assert code == 250
    row = d.audit_for(reply.rsplit(" ", 1)[-1])
    assert (row["action"], row["ticket_id"], row["matched_by"]) == (
        "appended", ticket["id"], "in-reply-to")
    after = d.json("tickets", "show", str(ticket["id"]))
    assert after["status"] == "pending_agent" and len(after["messages"]) == 4


def test_recent_conversations_stay_open_and_run_no_sla_clock(tmp_path: Path) -> None:
    d = cli_daemon(tmp_path, extra="""
[[sla]]
name = "standard"
first_response = "1h"
resolution = "1d"
""")
    now = datetime.now(UTC).replace(microsecond=0)
    old = conversation(now - timedelta(days=30), "Old question")
    recent = conversation(now, "Recent question")
    (tmp_path / "a.mbox").write_bytes(mbox_bytes([m for _, m in old + recent]))
    counts = import_json(d, str(tmp_path / "a.mbox"), "--open-since", "7")
    assert counts["tickets_created"] == 2
    by_subject = {t["subject"]: t for t in d.json("tickets", "list")}
    assert by_subject["Old question"]["status"] == "closed"
    assert by_subject["Recent question"]["status"] == "pending_agent"  # the customer wrote last
    shown = d.json("tickets", "show", str(by_subject["Recent question"]["id"]))
    assert shown["sla"] is None  # served before mailgate: no clock runs for it
    db = d.store()  # the same ticket had it come in live: its clock would be running, breached
    db.execute("UPDATE tickets SET imported_at = NULL")
    db.close()
    shown = d.json("tickets", "show", str(by_subject["Recent question"]["id"]))
    assert shown["sla"]["policy"] == "standard" and shown["sla"]["breached"]


# --- Gmail Takeout, .eml files, dry runs ----------------------------------------------------------


def test_a_gmail_takeout_and_eml_files(tmp_path: Path) -> None:
    d = cli_daemon(tmp_path)
    now = datetime.now(UTC)
    mails = conversation(now)
    takeout = b""
    for i, (_, data) in enumerate(mails):  # Takeout: its own From_ lines and X-GM fields
        body = data.replace(b"\n\n", b"\r\n\r\n", 1)  # CRLF in the header, LF after: both seen
        head, _, rest = body.partition(b"\r\n\r\n")
        head = head.replace(b"\n", b"\r\n")
        takeout += (f"From 17{i:017d}@xxx Thu Jan 04 10:00:00 +0000 2024\r\n".encode()
                    + f"X-GM-THRID: 178{i}\r\nX-Gmail-Labels: Inbox,Support\r\n".encode()
                    + head + b"\r\n\r\n" + re.sub(rb"(?m)^From ", b">From ", rest) + b"\r\n")
    folder = tmp_path / "Takeout" / "Mail"
    folder.mkdir(parents=True)
    (folder / "All mail Including Spam and Trash.mbox").write_bytes(takeout)
    (folder / "notes.txt").write_text("not mail")
    counts = import_json(d, str(tmp_path / "Takeout"))
    assert (counts["messages"], counts["imported"], counts["tickets_created"]) == (3, 3, 1)
    assert counts["unreadable"] == [{"path": str(folder / "notes.txt"),
                                     "reason": "not an mbox, a Maildir or an .eml file"}]
    (ticket,) = d.json("tickets", "list")
    text = d.json("tickets", "show", str(ticket["id"]))["messages"][0]["text"]
    assert "From now on I print nothing." in text

    # the same mail as .eml files, with a new one: only the new one is added
    emls = tmp_path / "eml"
    emls.mkdir()
    for i, (_, data) in enumerate(mails):
        (emls / f"{i}.eml").write_bytes(crlf(data))
    extra = conversation(now, "Another thing")[0][1]
    (emls / "new.eml").write_bytes(extra)
    counts = import_json(d, str(emls))
    assert (counts["imported"], counts["duplicate"], counts["tickets_created"]) == (1, 3, 1)


def test_a_dry_run_reports_and_stores_nothing(tmp_path: Path) -> None:
    d = cli_daemon(tmp_path)
    mails = conversation(datetime.now(UTC))
    (tmp_path / "a.mbox").write_bytes(mbox_bytes([m for _, m in mails] + [mails[0][1]]))
    out = d.cli("import", str(tmp_path / "a.mbox"), "--dry-run")
    assert "would import 3 of 4 messages into 1 tickets (1 new)" in out
    assert "1 duplicate" in out and "dry run: nothing was stored" in out
    assert d.json("tickets", "list") == []
    assert d.json("audit", "incoming") == []
    assert not (d.data_dir / "raw").exists()
    out = d.cli("import", str(tmp_path / "a.mbox"))
    assert "imported 3 of 4 messages into 1 tickets (1 new)" in out and "1 duplicate" in out


def test_mistakes_get_one_line(tmp_path: Path) -> None:
    d = cli_daemon(tmp_path)
    out = d.run_cli("import", str(tmp_path / "missing.mbox"), expect=1)
    assert out.stderr.strip() == f"mailgate: {tmp_path / 'missing.mbox'}: no such file or directory"
    (tmp_path / "a.mbox").write_bytes(mbox_bytes([conversation(datetime.now(UTC))[0][1]]))
    out = d.run_cli("import", str(tmp_path / "a.mbox"), "--mailbox", "nobody@else.test",
                    expect=1)
    assert out.stderr.startswith("mailgate: --mailbox nobody@else.test: not one of our"
                                 " mailboxes (support@example.com, ")
    assert len(out.stderr.strip().splitlines()) == 1


# --- interrupted --------------------------------------------------------------------------------


def test_an_import_killed_midway_resumes_without_adding_anything_twice(tmp_path: Path) -> None:
    d = cli_daemon(tmp_path)
    now = datetime.now(UTC)
    mails = []
    for i in range(150):  # 150 conversations of 3 messages
        mails += [m for _, m in conversation(now - timedelta(days=i), f"Question {i}")]
    archive = tmp_path / "big.mbox"
    archive.write_bytes(mbox_bytes(mails))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailgate", "--config", str(d.config), "import", str(archive),
         "--batch", "10"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=d.config.parent)
    deadline = time.monotonic() + 60
    stored = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            stored = rows(d, "SELECT COUNT(*) FROM audit_incoming")[0][0]
        except Exception:  # the database not made yet
            continue
        if stored >= 60:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < stored < len(mails), "the import was not caught midway: make the archive bigger"
    done = rows(d, "SELECT COUNT(*) FROM messages")[0][0]

    counts = import_json(d, str(archive))
    assert counts["duplicate"] == done
    assert counts["imported"] == len(mails) - done
    assert rows(d, "SELECT COUNT(*) FROM messages")[0][0] == len(mails)
    assert rows(d, "SELECT COUNT(*) FROM tickets")[0][0] == 150
    assert rows(d, "SELECT COUNT(*) FROM tickets WHERE status != 'closed'") == [(0,)]
    spread = rows(d, "SELECT ticket_id, COUNT(*) FROM messages GROUP BY ticket_id"
                     " HAVING COUNT(*) != 3")
    assert spread == []  # every conversation whole on one ticket
