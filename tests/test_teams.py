"""Teams, Cc participants, notifications to agents and Outlook threading (issue 12, part B), on
a running daemon with a real relay stub.

- A notification to an agent never carries the customer's reply address: its Reply-To is the
  ticket's internal-note address (`support+n<token>@`), and what is sent there is an internal
  note that goes to nobody — even from an agent whose mail is authenticated (the leak on main:
  the agent's answer to "Assigned to you" went to the customer).
- Each notification kind has its own subject and words, greets the agent by name, shows the
  `[statuses]` label and the customer's new message, and is `Auto-Submitted: auto-generated`.
- `[[teams]]`: a team's mailbox, routing and rules give a ticket its team; round robin within a
  team; `tickets list --team`, the API's `?team=` and the panel's team tab.
- Cc: copied people become participants, agent replies copy them (reply-all), their replies
  thread and count as the customer's; a removed participant is copied no more.
- `Thread-Index` / `Thread-Topic` on every mail about a ticket, one conversation per ticket; an
  incoming Thread-Index is stored and continued.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest
from conftest import Daemon, free_port, outbound_config, queue_id_of, send
from dns_server import DnsTestServer
from relay_stub import Received, RelayStub

from mailgate.outbound.dkim_sign import dns_txt_value, keygen

JANE = "jane@customer.test"
BOSS = "boss@customer.test"
BOB = "bob@example.com"  # agents in our own domain: our DKIM signature proves them
CAROL = "carol@example.com"
DAVE = "dave@agency.test"  # proves himself by his personal reply token only

AGENTS = f'''
[[agents]]
name = "Bob Builder"
email = "{BOB}"

[[agents]]
name = "Carol Singer"
email = "{CAROL}"

[[agents]]
name = "Dave Token"
email = "{DAVE}"
reply_auth = ["token"]

[statuses]
open = "Brand new"
pending_agent = "Waiting on us"
'''

TEAMS = f'''
[[teams]]
name = "Billing"
members = ["{BOB}", "{CAROL}"]
mailboxes = ["sales@example.com"]

[[teams]]
name = "tier2"
members = ["{DAVE}"]
'''


@pytest.fixture
def zone(tmp_path: Path) -> Iterator[tuple[DnsTestServer, Path]]:
    """Our domain's DKIM key, published on a loopback DNS server."""
    key, _ = keygen(tmp_path / "keys", "s1", "example.com")
    with DnsTestServer([("s1._domainkey.example.com", "TXT", dns_txt_value(key))]) as server:
        yield server, key


@pytest.fixture
def start(make_daemon: Callable[..., Daemon], relay: RelayStub, zone
          ) -> Callable[..., Daemon]:
    server, key = zone

    def factory(extra: str = "") -> Daemon:
        auth = f'[auth]\nnameservers = ["{server.address}"]\ndns_timeout = 2\n'
        return make_daemon(extra=outbound_config(relay.port, auth + AGENTS + extra, key))

    return factory


def mail(subject: str, mid: str, sender: str, body: str, to: str = "support@example.com",
         extra: str = "") -> str:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{mid}>\r\n"
            f"{extra}\r\n{body}\r\n")


def signed(data: str, key: Path) -> bytes:
    raw = data.encode()
    return dkim.sign(raw, b"s1", b"example.com", key.read_bytes(),
                     include_headers=[b"from", b"to", b"subject", b"message-id"]) + raw


def deliver(d: Daemon, data: str | bytes, mail_from: str = JANE,
            rcpts: tuple[str, ...] = ("support@example.com",)) -> dict:
    code, reply = send(d.port, data, mail_from=mail_from, rcpts=rcpts)
    assert code == 250, reply
    return d.audit_for(queue_id_of(reply))


def parsed(m: Received) -> EmailMessage:
    msg = email.message_from_bytes(m.data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def text_of(m: Received) -> str:
    return str(parsed(m).get_body(("plain",)).get_content())


def to(relay: RelayStub, rcpt: str) -> list[Received]:
    return [m for m in relay.messages if list(m.rcpt_tos) == [rcpt]]


def wait_to(relay: RelayStub, rcpt: str, count: int, timeout: float = 15.0) -> list[Received]:
    deadline = time.monotonic() + timeout
    while True:
        found = to(relay, rcpt)
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, (rcpt, [m.rcpt_tos for m in relay.messages])
        time.sleep(0.05)


def settle(relay: RelayStub, count: int) -> None:
    """Give the relay worker time to send anything queued, then check nothing more came."""
    time.sleep(1.5)
    assert len(relay.messages) == count, [m.rcpt_tos for m in relay.messages]


def open_ticket(d: Daemon, relay: RelayStub, mid: str, extra: str = "",
                rcpt: str = "support@example.com", body: str = "Where is my order?") -> dict:
    row = deliver(d, mail("My order", mid, f"Jane Doe <{JANE}>", body, to=rcpt, extra=extra),
                  rcpts=(rcpt,))
    assert row["action"] == "created_ticket", row
    wait_to(relay, JANE, 1)  # the acknowledgement
    return d.json("tickets", "show", str(row["ticket_id"]))


# --- the notification leak ---------------------------------------------------------------------


def test_answering_a_notification_never_mails_the_customer(start, relay: RelayStub,
                                                           zone) -> None:
    _, key = zone
    d = start()
    t = open_ticket(d, relay, "leak1@customer.test")
    for n, (agent, proof) in enumerate(((DAVE, "token"), (BOB, "dkim")), start=1):
        d.cli("tickets", "assign", str(t["id"]), agent)
        (note,) = wait_to(relay, agent, 1)
        reply_to = parsed(note)["Reply-To"].addresses[0].addr_spec
        assert reply_to != t["reply_address"]
        # the agent hits "reply" on the notification: to its Reply-To, quoting it
        answer = mail(f"Re: {parsed(note)['Subject']}", f"leak{n}@agent.test", agent,
                      "internal, for the team only: she is a difficult customer",
                      to=reply_to, extra=f"In-Reply-To: {parsed(note)['Message-ID']}\r\n")
        row = deliver(d, signed(answer, key) if proof == "dkim" else answer, mail_from=agent,
                      rcpts=(reply_to,))
        assert row["action"] == "appended" and row["ticket_id"] == t["id"], row
        settle(relay, 1 + n)  # the acknowledgement and the notifications: nothing to Jane
        assert len(to(relay, JANE)) == 1
        shown = d.json("tickets", "show", str(t["id"]))
        last = shown["messages"][-1]
        assert last["internal"] is True and "internal-note address" in last["internal_reason"]
        assert "difficult customer" in last["text"]
        assert shown["status"] == "open"  # an internal note changes nothing
        kinds = [r["kind"] for r in d.json("audit", "outgoing", "--ticket", str(t["id"]))]
        assert "agent_reply" not in kinds
