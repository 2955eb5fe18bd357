"""Outbound mail end to end: a running daemon, a real aiosmtpd server as the relay.

Acknowledgements with threading headers, both parts, branding and a DKIM signature that dkimpy
verifies; agent replies; no mail to robots; the rate limit; retry after 451; failure on 550;
a DSN to the VERP address; a reply queued while the relay is down, delivered once after a
restart; a template that cannot render.
"""

from __future__ import annotations

import email
import email.policy
import re
import time
from pathlib import Path

import dkim
import pytest
from conftest import Daemon, queue_id_of, send, wait_outgoing
from relay_stub import RelayStub

CUSTOMER = "jane@customer.test"


def mail(subject: str, mid: str, sender: str = CUSTOMER, extra: str = "") -> str:
    return (f"From: Jane Doe <{sender}>\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{mid}>\r\n{extra}\r\nHello, I need help with {subject}.\r\n")


def parts(msg: email.message.Message) -> tuple[str, str]:
    text = html = ""
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            text = part.get_content()
        elif part.get_content_type() == "text/html":
            html = part.get_content()
    return text, html


def test_ack_is_threaded_branded_in_both_parts_and_dkim_signed(out_daemon, relay: RelayStub,
                                                                tmp_path: Path) -> None:
    d = out_daemon(with_dkim=True)
    qid = queue_id_of(send(d.port, mail("Printer on fire", "fire-1@customer.test"))[1])
    row = d.audit_for(qid)
    (got,) = relay.wait_for(1)
    msg = email.message_from_bytes(got.data, policy=email.policy.default)
    ticket = d.json("tickets", "show", str(row["ticket_id"]))

    assert list(got.rcpt_tos) == [CUSTOMER]
    assert re.fullmatch(r"bounces\+o\d+-[a-z2-7]{16}@example\.com", got.mail_from)
    assert msg["In-Reply-To"] == "<fire-1@customer.test>"
    assert "<fire-1@customer.test>" in msg["References"]
    assert msg["Subject"] == f"[#{ticket['id']}] Re: Printer on fire"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Reply-To"].addresses[0].addr_spec == ticket["reply_address"]
    assert re.fullmatch(r"support\+\d+-[a-z2-7]{16}@example\.com", ticket["reply_address"])
    token = ticket["reply_address"].split("+")[1].split("@")[0]
    assert msg["Message-ID"].startswith(f"<{token}.")
    assert msg.get_content_type() == "multipart/alternative"
    text, html = parts(msg)
    for part in (text, html):
        assert "The Acme support team" in part and "Acme Inc, 1 Road, Town" in part
    assert "#ff6600" in html.lower() and "Acme helps you" in html

    key_dir = tmp_path / "keys" / "dkim"
    from mailgate.outbound.dkim_sign import dns_txt_value

    txt = dns_txt_value(key_dir / "s1.private").encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.example.com."
        return txt

    assert got.data.startswith(b"DKIM-Signature:")
    assert dkim.verify(got.data, dnsfunc=dnsfunc)
    (out,) = wait_outgoing(d, lambda rows: rows and rows[0]["status"] == "sent")
    assert out["kind"] == "new_ticket_ack" and out["to"] == CUSTOMER
    assert out["message_id"] == msg["Message-ID"].strip("<>")


def test_agent_reply_is_threaded_under_the_customer_mail(out_daemon, relay: RelayStub) -> None:
    d = out_daemon()
    row = d.audit_for(queue_id_of(send(d.port, mail("Refund", "refund-1@customer.test"))[1]))
    tid = str(row["ticket_id"])
    relay.wait_for(1)  # the acknowledgement
    out = d.cli("tickets", "reply", tid, "--agent", "alice@example.com",
                "--body", "Hello Jane,\nyour refund is on its way.\n<b>not bold</b>")
    assert "queued as outbound" in out
    got = relay.wait_for(2)[1]
    msg = email.message_from_bytes(got.data, policy=email.policy.default)
    assert list(got.rcpt_tos) == [CUSTOMER]
    assert msg["In-Reply-To"] == "<refund-1@customer.test>"
    assert msg["Auto-Submitted"] is None  # a person wrote this one
    text, html = parts(msg)
    assert "your refund is on its way" in text and "your refund is on its way" in html
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html
    ticket = d.json("tickets", "show", tid)
    assert ticket["status"] == "pending_customer"
    out_msg = ticket["messages"][-1]
    assert out_msg["direction"] == "out" and out_msg["from"] == "alice@example.com"
    assert "<" + out_msg["message_id"] + ">" == msg["Message-ID"]
    # the customer's answer to the agent's mail threads by In-Reply-To
    reply = mail("Re: Refund", "refund-2@customer.test",
                 extra=f"In-Reply-To: {msg['Message-ID']}\r\n")
    r = d.audit_for(queue_id_of(send(d.port, reply)[1]))
    assert r["action"] == "appended" and str(r["ticket_id"]) == tid
    # only configured agents can reply
    err = d.cli("tickets", "reply", tid, "--agent", "mallory@evil.test", "--body", "x",
                expect=1)
    assert "mallory@evil.test is not a configured agent" in err


@pytest.mark.parametrize(
    ("sender", "extra", "mail_from", "rule"),
    [
        (CUSTOMER, "Auto-Submitted: auto-replied\r\n", CUSTOMER, "Auto-Submitted"),
        (CUSTOMER, "Precedence: bulk\r\n", CUSTOMER, "Precedence: bulk"),
        (CUSTOMER, "List-Id: <news.customer.test>\r\n", CUSTOMER, "List-Id"),
        (CUSTOMER, "", "", "null envelope sender"),
        ("MAILER-DAEMON@customer.test", "", "mailer-daemon@customer.test", "robot address"),
        ("postmaster@customer.test", "", "postmaster@customer.test", "robot address"),
        ("sales@example.com", "", "sales@example.com", "our own domain"),
    ],
)
def test_no_automatic_mail_to_robots(out_daemon, relay: RelayStub, sender: str, extra: str,
                                      mail_from: str, rule: str) -> None:
    d = out_daemon()
    qid = queue_id_of(send(d.port, mail("robot", "robot-1@customer.test", sender=sender,
                                        extra=extra), mail_from=mail_from)[1])
    incoming = d.audit_for(qid)
    if incoming["classification"] == "auto_reply":  # classified before threading: no ticket
        assert incoming["action"] == "ignored" and incoming["ticket_id"] is None
        assert d.json("audit", "outgoing") == []
    else:  # a ticket, but its acknowledgement is suppressed with the rule that stopped it
        (row,) = wait_outgoing(d, lambda rows: len(rows) == 1)
        assert row["status"] == "suppressed"
        assert rule.lower() in row["last_error"].lower(), row["last_error"]
    time.sleep(0.5)
    assert relay.messages == []


def test_rate_limit_per_address(out_daemon, relay: RelayStub) -> None:
    d = out_daemon(extra="[limits]\nauto_replies_per_address_per_hour = 2\n")
    for i in range(3):
        d.audit_for(queue_id_of(send(d.port, mail(f"topic {i}", f"rl-{i}@customer.test"))[1]))
    rows = wait_outgoing(d, lambda rows: len(rows) == 3)
    statuses = sorted(r["status"] for r in rows if r["status"] != "queued")
    assert next(r["status"] for r in rows) == "suppressed"  # newest first: the third one
    assert "rate limit" in rows[0]["last_error"]
    assert len(relay.wait_for(2)) == 2
    assert statuses.count("suppressed") == 1


def test_retry_after_451_then_sent_once(out_daemon, relay: RelayStub) -> None:
    relay.tempfail_once = {CUSTOMER}
    d = out_daemon()
    send(d.port, mail("retry", "retry-1@customer.test"))
    (row,) = wait_outgoing(d, lambda rows: rows and rows[0]["status"] == "sent")
    assert row["attempts"] == 2
    time.sleep(0.5)
    assert len(relay.messages) == 1


def test_550_fails_at_once(out_daemon, relay: RelayStub) -> None:
    relay.reject = {CUSTOMER}
    d = out_daemon()
    send(d.port, mail("reject", "reject-1@customer.test"))
    (row,) = wait_outgoing(d, lambda rows: rows and rows[0]["status"] == "failed")
    assert row["attempts"] == 1 and "550" in row["last_error"]
    assert d.json("audit", "outgoing", "--status", "failed")[0]["id"] == row["id"]


def test_dsn_to_verp_address_marks_the_mail_bounced(out_daemon, relay: RelayStub) -> None:
    d = out_daemon()
    send(d.port, mail("bounce me", "bnc-1@customer.test"))
    (got,) = relay.wait_for(1)
    (sent,) = wait_outgoing(d, lambda rows: rows and rows[0]["status"] == "sent")
    dsn = (
        f"From: Mail Delivery System <MAILER-DAEMON@mx.customer.test>\r\n"
        f"To: {got.mail_from}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <dsn-1@mx.customer.test>\r\nAuto-Submitted: auto-replied\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n"
        f"--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        f"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.customer.test\r\n\r\n"
        f"Final-Recipient: rfc822; {CUSTOMER}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{CUSTOMER}>: Recipient address rejected\r\n"
        f"--B--\r\n"
    )
    tickets_before = len(d.json("tickets", "list"))
    qid = queue_id_of(send(d.port, dsn, mail_from="", rcpts=(got.mail_from,))[1])
    row = d.audit_for(qid)
    assert row["action"] == "bounce" and row["ticket_id"] is None
    assert f"#{sent['id']}" in row["reason"] and "5.1.1" in row["reason"]
    (out,) = d.json("audit", "outgoing")
    assert out["status"] == "bounced" and "Recipient address rejected" in out["last_error"]
    assert len(d.json("tickets", "list")) == tickets_before
    # a forged VERP token matches nothing and makes no ticket
    forged = re.sub(r"-[a-z2-7]{16}@", "-aaaaaaaaaaaaaaaa@", got.mail_from)
    qid = queue_id_of(send(d.port, dsn, mail_from="", rcpts=(forged,))[1])
    row = d.audit_for(qid)
    assert row["action"] == "bounce" and "not matched" in row["reason"]
    assert len(d.json("tickets", "list")) == tickets_before


def test_reply_queued_while_relay_down_is_delivered_once_after_restart(
        out_daemon, relay: RelayStub) -> None:
    d = out_daemon(extra='[templates.new_ticket_ack]\nenabled = false\n')
    row = d.audit_for(queue_id_of(send(d.port, mail("down", "down-1@customer.test"))[1]))
    relay.stop()
    d.cli("tickets", "reply", str(row["ticket_id"]), "--agent", "alice@example.com",
          "--body", "We are on it.")
    wait_outgoing(d, lambda rows: any(r["status"] == "deferred" for r in rows))
    d.stop()
    relay.start()
    d.start()
    rows = wait_outgoing(d, lambda rows: any(r["status"] == "sent" for r in rows))
    (reply,) = [r for r in rows if r["kind"] == "agent_reply"]
    assert reply["attempts"] >= 2
    time.sleep(1.0)
    assert len(relay.messages) == 1
    assert relay.messages[0].message["Message-ID"] == f"<{reply['message_id']}>"
    (ack,) = [r for r in rows if r["kind"] == "new_ticket_ack"]
    assert ack["status"] == "suppressed" and "enabled = false" in ack["last_error"]


def test_template_that_cannot_render_is_audited_failed(out_daemon, relay: RelayStub,
                                                       tmp_path: Path) -> None:
    tdir = tmp_path / "my-templates"
    tdir.mkdir()
    (tdir / "new_ticket_ack.html").write_text("<p>hello</p>\n<p>{{ ticket.no_such_field }}</p>\n")
    (tdir / "new_ticket_ack.txt").write_text("hello\n")
    d = out_daemon(extra=f'[templates]\ndir = "{tdir}"\n')
    send(d.port, mail("broken template", "tpl-1@customer.test"))
    (row,) = wait_outgoing(d, lambda rows: len(rows) == 1)
    assert row["status"] == "failed"
    assert "template error" in row["last_error"]
    assert "new_ticket_ack.html:2" in row["last_error"], row["last_error"]
    time.sleep(0.5)
    assert relay.messages == []
    err = d.cli("templates", "preview", "new_ticket_ack", expect=1)
    assert "new_ticket_ack.html:2" in err


def test_assignment_notifies_the_agent(out_daemon, relay: RelayStub) -> None:
    d = out_daemon(extra='[templates.new_ticket_ack]\nenabled = false\n')
    row = d.audit_for(queue_id_of(send(d.port, mail("assign me", "as-1@customer.test"))[1]))
    out = d.cli("tickets", "assign", str(row["ticket_id"]), "alice@example.com")
    assert "assigned to alice@example.com" in out
    (got,) = relay.wait_for(1)
    msg = email.message_from_bytes(got.data, policy=email.policy.default)
    assert list(got.rcpt_tos) == ["alice@example.com"]
    assert "assign me" in msg["Subject"]
    assert msg["Auto-Submitted"] == "auto-generated"  # a notification, not a reply (RFC 3834)
    assert d.json("tickets", "show", str(row["ticket_id"]))["assignee"] == "alice@example.com"


def test_templates_cli(out_daemon) -> None:
    d = out_daemon(extra='[templates.agent_reply]\nenabled = false\n')
    kinds = {k["kind"]: k for k in d.json("templates", "list")}
    assert {"new_ticket_ack", "agent_reply", "assignee_notification"} <= set(kinds)
    assert kinds["agent_reply"]["enabled"] is False
    assert kinds["new_ticket_ack"]["html_source"].endswith("new_ticket_ack.html")
    html = d.cli("templates", "preview", "new_ticket_ack", "--html")
    assert "<html" in html.lower() and "Acme Inc, 1 Road, Town" in html
    text = d.cli("templates", "preview", "agent_reply", "--text")
    assert "The Acme support team" in text and "<html" not in text.lower()


def test_dkim_keygen_cli(daemon: Daemon) -> None:
    out = daemon.cli("dkim", "keygen", "--selector", "mg2026")
    assert "mg2026._domainkey.example.com." in out and "v=DKIM1; k=rsa; p=" in out
    key = daemon.data_dir / "dkim" / "mg2026.private"
    assert key.stat().st_mode & 0o777 == 0o600
    err = daemon.cli("dkim", "keygen", "--selector", "mg2026", expect=1)
    assert "mg2026" in err and "Traceback" not in err
