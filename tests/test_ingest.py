"""Mail sent over SMTP to a running daemon becomes tickets, messages and attachments."""

from __future__ import annotations

import hashlib
from email.message import EmailMessage

from conftest import Daemon, queue_id_of, send


def _multipart() -> tuple[EmailMessage, bytes, bytes]:
    m = EmailMessage()
    m["From"] = "Zoë Ünicode <zoe@client.test>"
    m["To"] = "support@example.com"
    m["Subject"] = "Fäktura attached"
    m["Message-ID"] = "<multi-1@client.test>"
    m.set_content("Please see the attached invoice.\n")
    pdf = bytes(range(256)) * 40 + b"%%EOF\r\n\x00\xff"
    txt = "Grüße aus Köln\r\n".encode("latin-1")
    m.add_attachment(pdf, maintype="application", subtype="pdf",
                     filename="Rechnung Nr. 5 – März.pdf")
    m.add_attachment(txt, maintype="text", subtype="plain", filename="../../etc/passwd")
    return m, pdf, txt


def test_multipart_with_non_ascii_filename_is_stored_byte_exact(daemon: Daemon) -> None:
    m, pdf, txt = _multipart()
    code, msg = send(daemon.port, m.as_bytes().replace(b"\n", b"\r\n"))
    assert code == 250, msg
    row = daemon.audit_for(queue_id_of(msg))
    assert row["action"] == "created_ticket"
    ticket = daemon.json("tickets", "show", str(row["ticket_id"]))
    assert ticket["subject"] == "Fäktura attached"
    assert ticket["requester"] == "zoe@client.test"
    assert ticket["requester_name"] == "Zoë Ünicode"
    assert ticket["status"] == "open" and ticket["assignee"] is None
    (message,) = ticket["messages"]
    assert message["direction"] == "in"
    assert message["message_id"] == "multi-1@client.test"
    assert "attached invoice" in message["text"]
    atts = {a["filename"]: a for a in message["attachments"]}
    assert set(atts) == {"Rechnung Nr. 5 – März.pdf", "passwd"}
    for name, payload in (("Rechnung Nr. 5 – März.pdf", pdf), ("passwd", txt)):
        a = atts[name]
        assert a["size"] == len(payload)
        assert a["sha256"] == hashlib.sha256(payload).hexdigest()
        stored = daemon.data_dir / "attachments" / a["sha256"][:2] / a["sha256"][2:4] / a["sha256"]
        assert stored.read_bytes() == payload
    # the raw message is kept exactly as received, under our Authentication-Results header
    raw = (daemon.data_dir / message["raw_path"]).read_bytes()
    assert raw.startswith(b"Authentication-Results: mx.test.example;")
    assert raw.endswith(m.as_bytes().replace(b"\n", b"\r\n"))
    assert message["auth"]["verdict"] == "none"  # no DKIM, no DMARC record: nothing to say


def test_html_only_mail_gets_text_and_sanitised_html(daemon: Daemon) -> None:
    body = (
        "From: html@client.test\r\nTo: support@example.com\r\nSubject: html only\r\n"
        "Message-ID: <html-1@client.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\n\r\n"
        "<html><head><style>p{color:red}</style><script>alert(1)</script></head>"
        "<body><p>Hello <b>world</b></p><p onclick=\"evil()\">Second&nbsp;line"
        "<a href=\"javascript:alert(2)\">x</a></p></body></html>\r\n"
    )
    _, msg = send(daemon.port, body)
    row = daemon.audit_for(queue_id_of(msg))
    (message,) = daemon.json("tickets", "show", str(row["ticket_id"]))["messages"]
    assert "Hello world" in message["text"] and "Second" in message["text"]
    assert "alert" not in message["text"] and "color:red" not in message["text"]
    import sqlite3

    html = sqlite3.connect(daemon.data_dir / "mailgate.db").execute(
        "SELECT html FROM messages WHERE id=?", (message["id"],)).fetchone()[0]
    assert "<b>world</b>" in html
    assert "<script" not in html and "onclick" not in html and "javascript:" not in html


def test_same_message_id_twice_is_stored_once(daemon: Daemon) -> None:
    body = ("From: dup@client.test\r\nTo: support@example.com\r\nSubject: twice\r\n"
            "Message-ID: <dup-1@client.test>\r\n\r\nsame mail\r\n")
    first = queue_id_of(send(daemon.port, body)[1])
    second = queue_id_of(send(daemon.port, body, rcpts=("sales@example.com",))[1])
    a, b = daemon.audit_for(first), daemon.audit_for(second)
    assert a["action"] == "created_ticket"
    assert b["action"] == "duplicate" and b["ticket_id"] == a["ticket_id"]
    assert "dup-1@client.test" in b["reason"]
    assert len(daemon.json("tickets", "show", str(a["ticket_id"]))["messages"]) == 1


def test_one_message_to_two_of_our_addresses_is_one_ticket(daemon: Daemon) -> None:
    body = ("From: both@client.test\r\nTo: support@example.com, sales@example.com\r\n"
            "Subject: to both\r\nMessage-ID: <both-1@client.test>\r\n\r\nhello\r\n")
    qid = queue_id_of(send(daemon.port, body, rcpts=("support@example.com",
                                                     "sales@example.com"))[1])
    row = daemon.audit_for(qid)
    assert row["rcpt_to"] == ["support@example.com", "sales@example.com"]
    assert len(daemon.json("tickets", "list")) == 1


def test_reply_with_in_reply_to_is_appended(daemon: Daemon) -> None:
    first = ("From: r@client.test\r\nTo: support@example.com\r\nSubject: question\r\n"
             "Message-ID: <q-1@client.test>\r\n\r\nfirst\r\n")
    reply = ("From: r@client.test\r\nTo: support@example.com\r\nSubject: Re: question\r\n"
             "Message-ID: <q-2@client.test>\r\nIn-Reply-To: <q-1@client.test>\r\n"
             "References: <q-1@client.test>\r\n\r\nsecond\r\n")
    a = daemon.audit_for(queue_id_of(send(daemon.port, first)[1]))
    b = daemon.audit_for(queue_id_of(send(daemon.port, reply)[1]))
    assert b["action"] == "appended" and b["ticket_id"] == a["ticket_id"]
    assert b["matched_by"] == "in-reply-to"
    ticket = daemon.json("tickets", "show", str(a["ticket_id"]))
    assert [m["text"].strip() for m in ticket["messages"]] == ["first", "second"]


def test_mail_without_from_uses_envelope_sender(daemon: Daemon) -> None:
    qid = queue_id_of(send(daemon.port, "Subject: no from\r\n\r\nbody\r\n",
                           mail_from="Env@Client.test")[1])
    row = daemon.audit_for(qid)
    assert daemon.json("tickets", "show", str(row["ticket_id"]))["requester"] == "env@client.test"
