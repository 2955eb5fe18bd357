"""Threading and the workflow, through SMTP on a running daemon with a real relay.

A reply lands on its ticket and never on a stranger's; statuses follow the conversation; robots'
mail makes no tickets and moves no statuses; nothing is answered that should not be.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from conftest import Daemon, queue_id_of, send
from relay_stub import RelayStub

JANE = "jane@customer.test"


def mail(subject: str, mid: str, sender: str = JANE, extra: str = "", body: str = "",
         to: str = "support@example.com") -> str:
    return (f"From: Jane Doe <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{mid}>\r\n{extra}\r\n{body or 'Hello, something is broken.'}\r\n")


@pytest.fixture
def desk(out_daemon: Callable[..., Daemon]) -> Daemon:
    return out_daemon()


def new_ticket(d: Daemon, subject: str, mid: str, sender: str = JANE, extra: str = "") -> dict:
    row = d.audit_for(queue_id_of(send(d.port, mail(subject, mid, sender, extra))[1]))
    assert row["action"] == "created_ticket", row
    return d.json("tickets", "show", str(row["ticket_id"]))


def deliver(d: Daemon, data: str, **kw) -> dict:
    return d.audit_for(queue_id_of(send(d.port, data, **kw)[1]))


def test_reply_by_in_reply_to_moves_to_pending_agent(desk: Daemon) -> None:
    t = new_ticket(desk, "Login broken", "a1@customer.test")
    assert t["status"] == "open"
    row = deliver(desk, mail("Re: Login broken", "a2@customer.test",
                             extra="In-Reply-To: <a1@customer.test>\r\n"))
    assert (row["action"], row["ticket_id"], row["matched_by"]) == ("appended", t["id"],
                                                                     "in-reply-to")
    assert desk.json("tickets", "show", str(t["id"]))["status"] == "pending_agent"


def test_reply_by_references_only(desk: Daemon) -> None:
    t = new_ticket(desk, "Invoice", "r1@customer.test")
    row = deliver(desk, mail("Re: Invoice", "r3@customer.test",
                             extra="References: <zz@elsewhere.test> <r1@customer.test>"
                                   " <unknown@customer.test>\r\n"))
    assert (row["ticket_id"], row["matched_by"]) == (t["id"], "references")


def test_reply_by_token_with_fresh_subject_and_no_headers(desk: Daemon) -> None:
    t = new_ticket(desk, "Shipping", "s1@customer.test")
    row = deliver(desk, mail("totally different", "s2@customer.test", to=t["reply_address"]),
                  rcpts=(t["reply_address"],))
    assert (row["ticket_id"], row["matched_by"]) == (t["id"], "token")


def test_forged_token_matches_nothing(desk: Daemon) -> None:
    t = new_ticket(desk, "Shipping", "f1@customer.test")
    forged = t["reply_address"].replace(t["reply_address"].split("-")[1][:4], "aaaa")
    assert forged != t["reply_address"]
    row = deliver(desk, mail("re", "f2@customer.test", to=forged), rcpts=(forged,))
    assert row["action"] == "created_ticket" and row["ticket_id"] != t["id"]
    assert "failed verification" in row["reason"]
    # a token naming another ticket id with the MAC of this one is forged too
    other = t["reply_address"].replace(f"+{t['id']}-", f"+{t['id'] + 1000}-")
    row = deliver(desk, mail("re", "f3@customer.test", to=other), rcpts=(other,))
    assert row["action"] == "created_ticket" and "failed verification" in row["reason"]


def test_stranger_with_real_in_reply_to_is_internal_and_changes_nothing(
        desk: Daemon, relay: RelayStub) -> None:
    t = new_ticket(desk, "Private matter", "p1@customer.test")
    relay.wait_for(1)  # Jane's acknowledgement
    row = deliver(desk, mail("Re: Private matter", "p2@evil.test", sender="mallory@evil.test",
                             extra="In-Reply-To: <p1@customer.test>\r\n"))
    assert row["action"] == "appended" and row["ticket_id"] == t["id"]
    shown = desk.json("tickets", "show", str(t["id"]))
    assert shown["status"] == "open"
    note = shown["messages"][-1]
    assert note["internal"] is True and "not a participant" in note["internal_reason"]
    time.sleep(0.5)
    assert len(relay.messages) == 1  # nothing more went to anyone


def test_subject_tag_from_participant_and_from_stranger(desk: Daemon) -> None:
    t = new_ticket(desk, "Order 77", "t1@customer.test")
    row = deliver(desk, mail(f"[#{t['id']}] more info", "t2@customer.test"))
    assert (row["ticket_id"], row["matched_by"]) == (t["id"], "subject")
    row = deliver(desk, mail(f"[#{t['id']}] hijack", "t3@evil.test", sender="mallory@evil.test"))
    assert row["action"] == "created_ticket" and row["ticket_id"] != t["id"]
    assert "not a participant" in row["reason"]


def test_cc_of_first_message_is_a_participant(desk: Daemon) -> None:
    t = new_ticket(desk, "Team issue", "cc1@customer.test",
                   extra="Cc: Bob <bob@customer.test>\r\n")
    assert set(t["participants"]) == {JANE, "bob@customer.test"}
    row = deliver(desk, mail(f"[#{t['id']}] from bob", "cc2@customer.test",
                             sender="bob@customer.test"))
    assert row["ticket_id"] == t["id"] and row["matched_by"] == "subject"


def test_out_of_office_is_internal_never_a_ticket_never_answered(
        desk: Daemon, relay: RelayStub) -> None:
    t = new_ticket(desk, "Question", "o1@customer.test")
    relay.wait_for(1)
    desk.cli("tickets", "reply", str(t["id"]), "--agent", "alice@example.com", "--body", "Hi")
    relay.wait_for(2)
    ooo = mail("Automatic reply: Re: Question", "o2@customer.test",
               extra="In-Reply-To: <o1@customer.test>\r\nAuto-Submitted: auto-replied\r\n"
                     "X-Auto-Response-Suppress: All\r\n", body="I am out of the office.")
    row = deliver(desk, ooo)
    assert row["action"] == "appended" and row["classification"] == "auto_reply"
    shown = desk.json("tickets", "show", str(t["id"]))
    assert shown["status"] == "pending_customer"  # unchanged by the robot
    assert shown["messages"][-1]["internal"] is True
    unmatched = mail("Abwesenheitsnotiz: Hallo", "o3@customer.test",
                     body="Ich bin bis Montag nicht im Büro.")
    row = deliver(desk, unmatched)
    assert row["action"] == "ignored" and row["ticket_id"] is None
    time.sleep(0.5)
    assert len(relay.messages) == 2


def test_dsn_makes_no_ticket(desk: Daemon) -> None:
    before = len(desk.json("tickets", "list"))
    dsn = (
        "From: MAILER-DAEMON@mx.other.test\r\nTo: support@example.com\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <d1@mx.other.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;"
        " boundary=\"X\"\r\n\r\n--X\r\nContent-Type: text/plain\r\n\r\nFailed.\r\n"
        "--X\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        "Final-Recipient: rfc822; gone@other.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "--X--\r\n")
    row = deliver(desk, dsn, mail_from="")
    assert row["action"] == "bounce" and row["ticket_id"] is None
    assert row["details"]["recipient"] == "gone@other.test"
    assert row["details"]["status"] == "5.1.1"
    assert len(desk.json("tickets", "list")) == before


GMAIL_CONFIRMATION = (
    "From: Gmail Team <forwarding-noreply@google.com>\r\nTo: support@example.com\r\n"
    "Subject: (#123456789) Gmail Forwarding Confirmation - Receive Mail from"
    " acme.support@gmail.com\r\nMessage-ID: <gfc1@google.com>\r\n"
    "Content-Type: text/plain; charset=UTF-8\r\n\r\n"
    "acme.support@gmail.com has requested to automatically forward mail to your email\r\n"
    "address support@example.com.\r\nConfirmation code: 123456789\r\n\r\n"
    "To allow acme.support@gmail.com to automatically forward mail to your address, please\r\n"
    "click the link below to confirm the request:\r\n\r\n"
    "https://mail-settings.google.com/mail/vf-%5BANGjdJ8%5D-abcdef\r\n\r\n"
    "If you click the link and it appears to be broken, please copy and paste it\r\n"
    "into a new browser window.\r\n\r\nThanks for using Gmail!\r\n\r\nSincerely,\r\n\r\n"
    "The Gmail Team\r\n")


def test_gmail_forwarding_confirmation_is_listed_not_a_ticket(desk: Daemon,
                                                              relay: RelayStub) -> None:
    row = deliver(desk, GMAIL_CONFIRMATION, mail_from="forwarding-noreply@google.com")
    assert row["action"] == "forwarding_confirmation" and row["ticket_id"] is None
    (pending,) = desk.json("forwarding", "pending")
    assert pending["code"] == "123456789"
    assert pending["link"].startswith("https://mail-settings.google.com/mail/vf-")
    assert desk.json("tickets", "list") == []
    time.sleep(0.3)
    assert relay.messages == []


def test_agent_forward_makes_the_original_sender_the_requester(desk: Daemon) -> None:
    fwd = ("From: Alice Agent <alice@example.com>\r\nTo: support@example.com\r\n"
           "Subject: Fwd: My order never arrived\r\nMessage-ID: <fw1@example.com>\r\n\r\n"
           "Can someone take this?\r\n\r\n---------- Forwarded message ---------\r\n"
           "From: Carl Customer <carl@shop.test>\r\nDate: Mon, 2 Nov 2026 10:00:00 +0100\r\n"
           "Subject: My order never arrived\r\nTo: Alice Agent <alice@example.com>\r\n\r\n"
           "Hi, where is my order?\r\n")
    row = deliver(desk, fwd, mail_from="alice@example.com")
    t = desk.json("tickets", "show", str(row["ticket_id"]))
    assert t["requester"] == "carl@shop.test" and t["subject"] == "My order never arrived"


def test_reopen_resolved_and_new_ticket_after_long_closed(desk: Daemon) -> None:
    t = new_ticket(desk, "Reopen me", "ro1@customer.test")
    desk.cli("tickets", "status", str(t["id"]), "resolved")
    row = deliver(desk, mail("Re: Reopen me", "ro2@customer.test",
                             extra="In-Reply-To: <ro1@customer.test>\r\n"))
    assert row["ticket_id"] == t["id"] and "reopened" in row["reason"]
    assert desk.json("tickets", "show", str(t["id"]))["status"] == "pending_agent"
    # closed recently: a reply reopens it
    desk.cli("tickets", "status", str(t["id"]), "closed")
    row = deliver(desk, mail("Re: Reopen me", "ro3@customer.test",
                             extra="In-Reply-To: <ro1@customer.test>\r\n"))
    assert row["ticket_id"] == t["id"]
    # closed ten days ago (older than reopen_closed_days = 7): a new ticket, linked
    desk.cli("tickets", "status", str(t["id"]), "closed")
    db = desk.store()
    db.execute("UPDATE tickets SET closed_at='2026-01-01T00:00:00Z' WHERE id=?", (t["id"],))
    db.close()
    row = deliver(desk, mail("Re: Reopen me", "ro4@customer.test",
                             extra="In-Reply-To: <ro1@customer.test>\r\n"))
    assert row["action"] == "created_ticket" and row["ticket_id"] != t["id"]
    new = desk.json("tickets", "show", str(row["ticket_id"]))
    assert new["linked_ticket_id"] == t["id"]
    assert desk.json("tickets", "show", str(t["id"]))["status"] == "closed"


def test_status_assign_and_list_filters_agree(desk: Daemon) -> None:
    a = new_ticket(desk, "A", "fa@customer.test")
    b = new_ticket(desk, "B", "fb@customer.test")
    desk.cli("tickets", "assign", str(a["id"]), "alice@example.com")
    desk.cli("tickets", "status", str(b["id"]), "pending_customer")
    ids = lambda *args: [t["id"] for t in desk.json("tickets", "list", *args)]  # noqa: E731
    assert ids("--unassigned") == [b["id"]]
    assert ids("--assignee", "alice@example.com") == [a["id"]]
    assert ids("--status", "pending_customer") == [b["id"]]
    assert ids("--status", "open", "--unassigned") == []
    err = desk.cli("tickets", "status", "999", "closed", expect=1)
    assert "no ticket #999" in err


def test_reply_text_strips_quotes(desk: Daemon) -> None:
    t = new_ticket(desk, "Quote", "q1@customer.test")
    body = ("Thanks, that fixed it.\r\n\r\nOn Tue, 3 Nov 2026 at 10:00, Acme Support"
            " <support@example.com> wrote:\r\n> Please restart the router.\r\n> Regards\r\n")
    deliver(desk, mail("Re: Quote", "q2@customer.test",
                       extra="In-Reply-To: <q1@customer.test>\r\n", body=body))
    last = desk.json("tickets", "show", str(t["id"]))["messages"][-1]
    assert last["reply_text"].strip() == "Thanks, that fixed it."
    assert "Please restart the router." in last["text"]


def test_strangers_new_ticket_policy(out_daemon: Callable[..., Daemon]) -> None:
    d = out_daemon(extra='[threading]\nstrangers = "new_ticket"\n')
    t = new_ticket(d, "Mine", "sn1@customer.test")
    row = deliver(d, mail("Re: Mine", "sn2@evil.test", sender="mallory@evil.test",
                          extra="In-Reply-To: <sn1@customer.test>\r\n"))
    assert row["action"] == "created_ticket" and row["ticket_id"] != t["id"]


def test_status_labels_are_configurable(out_daemon: Callable[..., Daemon]) -> None:
    d = out_daemon(extra='[statuses]\npending_agent = "Waiting on us"\n')
    t = new_ticket(d, "Labels", "lb1@customer.test")
    d.cli("tickets", "status", str(t["id"]), "pending_agent")
    assert "Waiting on us" in d.cli("tickets", "list")
    assert d.json("tickets", "list")[0]["status"] == "pending_agent"

