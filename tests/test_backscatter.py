"""Backscatter (issue 17): whoever forges a sender makes us mail that address, so automatic mail
is limited per mailbox with the plus-part removed (`target+0..39@` is one mailbox), per
recipient domain and in all per hour; and the forger's display name reaches the greeting and
the `To:` of automatic mail only as one short, clean line. On a running daemon with a relay
stub; the loopback DNS has no records, so every sender's verdict is `none` (acknowledged)."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Callable
from email.header import Header

from conftest import Daemon, send, wait_outgoing
from relay_stub import RelayStub

from mailgate.outbound.compose import MAX_NAME


def mail(sender: str, mid: str, name: str = "", subject: str = "Hello") -> bytes:
    encoded = Header(name, "utf-8").encode(linesep="\r\n")  # folded as SMTP wants it
    from_ = f"{encoded} <{sender}>" if name else sender
    return (f"From: {from_}\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{mid}>\r\n\r\nHello.\r\n").encode()


def flood(d: Daemon, senders: list[str]) -> list[dict]:
    """One new ticket from each sender; the outgoing audit once every one was decided."""
    for i, sender in enumerate(senders):
        send(d.port, mail(sender, f"flood{i}@attacker.test",
                          subject="CHEAP PILLS http://pills.evil.test"), mail_from=sender)
    return wait_outgoing(d, lambda rows: len(rows) == len(senders), timeout=60)


def sent_to(relay: RelayStub) -> list[str]:
    return [r for m in relay.messages for r in m.rcpt_tos]


def settle(relay: RelayStub, count: int) -> None:
    relay.wait_for(count, timeout=20)
    time.sleep(1.0)
    assert len(relay.messages) == count, sent_to(relay)


def test_plus_addresses_are_one_mailbox(out_daemon: Callable[..., Daemon],
                                        relay: RelayStub) -> None:
    d = out_daemon()  # the default limits: 10 per mailbox, 50 per domain, 500 in all
    rows = flood(d, [f"target+{i}@victim.test" for i in range(40)])
    settle(relay, 10)
    suppressed = [r for r in rows if r["status"] == "suppressed"]
    assert len(suppressed) == 30
    assert all("mailbox target@victim.test" in r["last_error"]
               and "auto_replies_per_address_per_hour = 10" in r["last_error"]
               for r in suppressed), suppressed[0]


def test_gmail_dots_are_one_mailbox(out_daemon: Callable[..., Daemon], relay: RelayStub
                                    ) -> None:
    d = out_daemon(extra="[limits]\nauto_replies_per_address_per_hour = 2\n")
    flood(d, ["t.arget@gmail.com", "ta.rget@googlemail.com", "TARGET+x@gmail.com",
              "other@gmail.com"])
    settle(relay, 3)
    assert sorted(sent_to(relay)) == ["other@gmail.com", "t.arget@gmail.com",
                                      "ta.rget@googlemail.com"]


def test_per_domain_limit(out_daemon: Callable[..., Daemon], relay: RelayStub) -> None:
    d = out_daemon(extra="[limits]\nauto_replies_per_domain_per_hour = 3\n")
    rows = flood(d, [f"user{i}@victim.test" for i in range(5)] + ["jane@customer.test"])
    settle(relay, 4)
    assert "jane@customer.test" in sent_to(relay)
    suppressed = [r for r in rows if r["status"] == "suppressed"]
    assert len(suppressed) == 2
    assert all("domain victim.test" in r["last_error"]
               and "auto_replies_per_domain_per_hour = 3" in r["last_error"]
               for r in suppressed)


def test_limit_in_all(out_daemon: Callable[..., Daemon], relay: RelayStub) -> None:
    d = out_daemon(extra="[limits]\nauto_replies_per_hour = 2\n")
    rows = flood(d, ["a@one.test", "b@two.test", "c@three.test"])
    settle(relay, 2)
    (suppressed,) = [r for r in rows if r["status"] == "suppressed"]
    assert "auto_replies_per_hour = 2" in suppressed["last_error"]
    # mail to agents is no backscatter: the assignee still hears about the ticket
    d.cli("tickets", "assign", str(rows[0]["ticket_id"]), "alice@example.com")
    assert relay.wait_for(3)[2].rcpt_tos == ("alice@example.com",)


def ack_of(relay: RelayStub, index: int) -> tuple[email.message.EmailMessage, str, str]:
    got = relay.wait_for(index + 1)[index]
    msg = email.message_from_bytes(got.data, policy=email.policy.default)
    return msg, msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()


def header_lines(relay: RelayStub, index: int) -> list[bytes]:
    """The header section of a relayed mail, as it went over the wire."""
    return relay.messages[index].data.split(b"\r\n\r\n")[0].split(b"\r\n")


def greeting(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("Hello"))


def test_display_name_is_one_short_line(out_daemon: Callable[..., Daemon],
                                        relay: RelayStub) -> None:
    d = out_daemon()
    name = ("Jane\u2028\u2028\x85YOU WON A PRIZE\u202e: reply with your bank details "
            + "to claim it " * 40)
    send(d.port, mail("jane@customer.test", "n1@customer.test", name),
         mail_from="jane@customer.test")
    msg, text, html = ack_of(relay, 0)
    line = greeting(text)
    assert len(line) <= len("Hello ,") + MAX_NAME, line
    assert line.startswith("Hello Jane YOU WON A PRIZE: reply")
    for part in (text, html):
        assert "\u2028" not in part and "\x85" not in part and "\u202e" not in part
        assert "claim it " * 10 not in part
    (to,) = msg["To"].addresses
    assert to.addr_spec == "jane@customer.test" and to.display_name == line[6:-1]
    assert all(len(raw) <= 78 for raw in header_lines(relay, 0))


def test_display_name_posing_as_an_address_or_link_is_dropped(out_daemon: Callable[..., Daemon],
                                                               relay: RelayStub) -> None:
    d = out_daemon()
    send(d.port, mail("jane@customer.test", "n2@customer.test", "ceo@yourbank.test"),
         mail_from="jane@customer.test")
    send(d.port, mail("joe@customer.test", "n3@customer.test", "Visit www.pills.evil.test"),
         mail_from="joe@customer.test")
    for i in range(2):
        msg, text, html = ack_of(relay, i)
        assert greeting(text) == "Hello,"
        assert msg["To"].addresses[0].display_name == ""
        assert "yourbank" not in text + html and "pills" not in text + html


def test_display_name_is_escaped_in_html_and_encoded_in_to(out_daemon: Callable[..., Daemon],
                                                           relay: RelayStub) -> None:
    d = out_daemon()
    name = 'Zoë "the boss" <b>O\'Neil</b>, & co'
    send(d.port, mail("zoe@customer.test", "n4@customer.test", name),
         mail_from="zoe@customer.test")
    msg, text, html = ack_of(relay, 0)
    assert "Zoë &#34;the boss&#34; &lt;b&gt;O&#39;Neil&lt;/b&gt;, &amp; co" in html \
        or "Zoë &quot;the boss&quot; &lt;b&gt;O&#39;Neil&lt;/b&gt;, &amp; co" in html, html
    assert "<b>O'Neil</b>" not in html
    assert greeting(text) == f"Hello {name},"
    (to,) = msg["To"].addresses
    assert (to.display_name, to.addr_spec) == (name, "zoe@customer.test")
    head = b"\r\n".join(header_lines(relay, 0))
    assert head.isascii() and b"=?utf-8?" in head.partition(b"\r\nTo:")[2]
