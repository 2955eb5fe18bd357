"""Nobody speaks as an agent (issue 17): an agent's mail reaches a customer only when it is
authenticated as that agent — a passing DKIM signature aligned with the agent's domain (our own
domain: our signature), or, where `[[agents]] reply_auth` allows it, the agent's personal reply
token. Everything else is an internal note with the reason, an outgoing-audit row `suppressed`,
no status change. On a running daemon with a loopback DNS zone and a real relay stub.

The zone: agency.test publishes nothing (no DKIM key, no DMARC record: the verdict on a mail
`From: bob@agency.test` is `none`, which used to be trusted); signed.test and example.com (our
own domain) publish a DKIM key; evil.test publishes a key too (a valid signature that is not
the agent's).
"""

from __future__ import annotations

import email
import email.policy
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import pytest
from conftest import Daemon, outbound_config, queue_id_of, send, wait_outgoing
from dns_server import DnsTestServer
from relay_stub import RelayStub

from mailgate.outbound.dkim_sign import dns_txt_value, keygen

JANE = "jane@customer.test"
BOB = "bob@agency.test"  # an agent whose domain publishes no DKIM and no DMARC
CAROL = "carol@signed.test"  # an agent whose domain signs its mail
DAVE = "dave@agency.test"  # an agent allowed to prove himself by his personal reply token
SIGNING = ("signed.test", "example.com", "evil.test")


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[tuple[DnsTestServer, dict[str, Path]]]:
    paths, records = {}, []
    for domain in SIGNING:
        path, _ = keygen(tmp_path / "zone" / domain, "s1", domain)
        paths[domain] = path
        records.append((f"s1._domainkey.{domain}", "TXT", dns_txt_value(path)))
    with DnsTestServer(records) as server:
        yield server, paths


AGENTS = f'''
[[agents]]
name = "Bob Agent"
email = "{BOB}"

[[agents]]
name = "Carol Agent"
email = "{CAROL}"

[[agents]]
name = "Dave Agent"
email = "{DAVE}"
reply_auth = ["dkim", "token"]
'''


@pytest.fixture
def start(make_daemon: Callable[..., Daemon], relay: RelayStub, keys
          ) -> Callable[..., Daemon]:
    server, paths = keys

    def factory(extra: str = "") -> Daemon:
        auth = f'[auth]\nnameservers = ["{server.address}"]\ndns_timeout = 2\n'
        return make_daemon(extra=outbound_config(relay.port, auth + AGENTS + extra,
                                                 paths["example.com"]))

    return factory


@pytest.fixture
def desk(start: Callable[..., Daemon]) -> Daemon:
    return start()


def mail(subject: str, mid: str, sender: str, body: str, to: str = "support@example.com",
         extra: str = "") -> str:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{mid}>\r\n"
            f"{extra}\r\n{body}\r\n")


def signed(data: str, domain: str, keys: dict[str, Path]) -> bytes:
    raw = data.encode()
    sig = dkim.sign(raw, b"s1", domain.encode(), keys[domain].read_bytes(),
                    include_headers=[b"from", b"to", b"subject", b"message-id"])
    return sig + raw


def deliver(d: Daemon, data: str | bytes, mail_from: str, rcpts: tuple[str, ...] = (
        "support@example.com",)) -> dict:
    return d.audit_for(queue_id_of(send(d.port, data, mail_from=mail_from, rcpts=rcpts)[1]))


def open_ticket(d: Daemon, relay: RelayStub, sender: str, mid: str, acks: int) -> dict:
    row = deliver(d, mail("My order", mid, sender, "Where is my order?"), mail_from=sender)
    assert row["action"] == "created_ticket", row
    relay.wait_for(acks)  # its acknowledgement
    return d.json("tickets", "show", str(row["ticket_id"]))


def texts_to(relay: RelayStub, rcpt: str) -> list[str]:
    return [m.data.decode("utf-8", "replace") for m in relay.messages if rcpt in m.rcpt_tos]


def settle(relay: RelayStub, count: int) -> None:
    """Give the relay worker time to send anything queued, then check nothing more came."""
    time.sleep(1.0)
    assert len(relay.messages) == count, [m.rcpt_tos for m in relay.messages]


def refused(d: Daemon, ticket_id: int) -> tuple[dict, dict]:
    """The last message on the ticket and the newest outgoing-audit row for it."""
    last = d.json("tickets", "show", str(ticket_id))["messages"][-1]
    rows = d.json("audit", "outgoing", "--ticket", str(ticket_id))
    return last, rows[0]


# --- the attacks of the issue ------------------------------------------------------------------


def test_forged_agent_reply_by_subject_tag_is_not_relayed(desk: Daemon, relay: RelayStub
                                                          ) -> None:
    t = open_ticket(desk, relay, JANE, "o1@customer.test", 1)
    forged = mail(f"Re: [#{t['id']}] My order", "forged1@attacker.test", f"Bob Agent <{BOB}>",
                  "Your order is cancelled. Pay again at http://evil.test/pay")
    row = deliver(desk, forged, mail_from="mallory@attacker.test")
    assert row["auth"]["verdict"] == "none"  # what used to be trusted
    assert row["action"] == "appended" and row["ticket_id"] == t["id"]
    assert "not authenticated" in row["reason"]
    settle(relay, 1)  # only the acknowledgement: nothing reached Jane
    assert not any("evil.test/pay" in text for text in texts_to(relay, JANE))
    shown = desk.json("tickets", "show", str(t["id"]))
    assert shown["status"] == "open"
    last, out = refused(desk, t["id"])
    assert last["internal"] is True and last["direction"] == "in"
    assert f"not authenticated as {BOB}" in last["internal_reason"]
    assert "agency.test" in last["internal_reason"]
    assert (out["kind"], out["status"], out["to"]) == ("agent_reply", "suppressed", JANE)
    assert f"not authenticated as {BOB}" in out["last_error"]
    # nor through the ticket's own reply address, which every customer mail shows
    row = deliver(desk, forged.replace("forged1@", "forged2@"), mail_from="mallory@attacker.test",
                  rcpts=(t["reply_address"],))
    assert row["matched_by"] == "token" and row["ticket_id"] == t["id"]
    settle(relay, 1)
    assert desk.json("tickets", "show", str(t["id"]))["status"] == "open"


def test_no_open_relay_to_a_third_party_through_a_forged_agent(desk: Daemon, relay: RelayStub
                                                               ) -> None:
    victim = "victim@third.test"
    t = open_ticket(desk, relay, victim, "v1@third.test", 1)  # opened in the victim's name
    spam = mail(f"Re: [#{t['id']}] My order", "spam1@attacker.test", BOB,
                "CHEAP PILLS at http://pills.evil.test")
    row = deliver(desk, spam, mail_from="spammer@attacker.test")
    assert row["ticket_id"] == t["id"]
    settle(relay, 1)
    assert not any("pills.evil.test" in text for text in texts_to(relay, victim))
    assert desk.json("tickets", "show", str(t["id"]))["status"] == "open"


def test_a_valid_signature_of_another_domain_is_not_the_agent(desk: Daemon, relay: RelayStub,
                                                              keys) -> None:
    _, paths = keys
    t = open_ticket(desk, relay, JANE, "o2@customer.test", 1)
    forged = mail(f"Re: [#{t['id']}] My order", "forged3@evil.test", BOB, "Pay me.")
    row = deliver(desk, signed(forged, "evil.test", paths), mail_from="m@evil.test")
    assert row["auth"]["dkim"][0]["result"] == "pass"  # a good signature, of evil.test
    settle(relay, 1)
    last, out = refused(desk, t["id"])
    assert last["internal"] is True and out["status"] == "suppressed"


def test_a_forged_agent_forward_gets_no_acknowledgement(desk: Daemon, relay: RelayStub,
                                                       keys) -> None:
    _, paths = keys

    def forward(sender: str, mid: str, victim: str) -> str:
        return mail("Fwd: cheap pills", mid, sender, "Can someone take this?\r\n\r\n"
                    "---------- Forwarded message ---------\r\n"
                    f"From: Victim <{victim}>\r\nSubject: CHEAP PILLS http://pills.evil.test"
                    "\r\nTo: someone@agency.test\r\n\r\nBuy now.")

    row = deliver(desk, forward(BOB, "fw1@attacker.test", "victim@third.test"),
                  mail_from="m@attacker.test")
    t = desk.json("tickets", "show", str(row["ticket_id"]))
    assert t["requester"] == "victim@third.test"  # the ticket is made for the customer ...
    assert f"not authenticated as {BOB}" in row["reason"]
    (out,) = wait_outgoing(desk, lambda rows: len(rows) == 1)
    assert out["status"] == "suppressed" and f"not authenticated as {BOB}" in out["last_error"]
    settle(relay, 0)  # ... but nothing is sent to them
    # Carol's signed forward is her word: the customer is acknowledged
    fwd = forward(CAROL, "fw2@signed.test", "carl@shop.test")
    deliver(desk, signed(fwd, "signed.test", paths), mail_from=CAROL)
    assert relay.wait_for(1)[0].rcpt_tos == ("carl@shop.test",)


# --- what an agent can do ------------------------------------------------------------------------


def test_agent_with_an_aligned_dkim_signature_reaches_the_customer(desk: Daemon,
                                                                   relay: RelayStub,
                                                                   keys) -> None:
    _, paths = keys
    t = open_ticket(desk, relay, JANE, "o3@customer.test", 1)
    reply = mail("Re: My order", "c1@signed.test", f"Carol Agent <{CAROL}>",
                 "It ships tomorrow.", to=t["reply_address"])
    row = deliver(desk, signed(reply, "signed.test", paths), mail_from=CAROL,
                  rcpts=(t["reply_address"],))
    assert "DKIM" in row["reason"] and "signed.test" in row["reason"]
    got = relay.wait_for(2)[1]
    assert list(got.rcpt_tos) == [JANE] and b"It ships tomorrow." in got.data
    shown = desk.json("tickets", "show", str(t["id"]))
    assert shown["status"] == "pending_customer"
    assert shown["messages"][-1]["direction"] == "out"


def test_agent_of_our_own_domain_needs_our_signature(desk: Daemon, relay: RelayStub,
                                                     keys) -> None:
    _, paths = keys
    t = open_ticket(desk, relay, JANE, "o4@customer.test", 1)
    reply = mail(f"Re: [#{t['id']}] My order", "a1@example.com", "Alice <alice@example.com>",
                 "Signed by us.")
    deliver(desk, signed(reply, "example.com", paths), mail_from="alice@example.com")
    assert b"Signed by us." in relay.wait_for(2)[1].data
    unsigned = reply.replace("a1@", "a2@").replace("Signed by us.", "Not signed.")
    deliver(desk, unsigned, mail_from="alice@example.com")
    settle(relay, 2)
    last, out = refused(desk, t["id"])
    assert last["internal"] is True and out["status"] == "suppressed"


def test_personal_reply_token_where_the_agent_allows_it(desk: Daemon, relay: RelayStub) -> None:
    t = open_ticket(desk, relay, JANE, "o5@customer.test", 1)
    desk.cli("tickets", "assign", str(t["id"]), DAVE)
    note = relay.wait_for(2)[1]  # the assignee notification
    assert list(note.rcpt_tos) == [DAVE]
    msg = email.message_from_bytes(note.data, policy=email.policy.default)
    # its Reply-To is the internal-note address; the personal address is written in the text,
    # for an answer to the customer written on purpose
    assert "+n" in msg["Reply-To"].addresses[0].addr_spec
    found = re.search(r"To answer the customer, write to (\S+)",
                      msg.get_body(("plain",)).get_content())
    assert found is not None
    personal = found.group(1)
    assert personal != t["reply_address"]
    assert re.fullmatch(r"support\+a\d+-[a-z2-7]{16}@example\.com", personal), personal
    # Dave's answer to the customer: unsigned, but to his personal address
    row = deliver(desk, mail("Re: Assigned", "d1@agency.test", DAVE, "Refund sent.",
                             to=personal), mail_from=DAVE, rcpts=(personal,))
    assert row["matched_by"] == "token" and "personal reply token" in row["reason"]
    got = relay.wait_for(3)[2]
    assert list(got.rcpt_tos) == [JANE] and b"Refund sent." in got.data
    assert desk.json("tickets", "show", str(t["id"]))["status"] == "pending_customer"
    # Dave's token proves only Dave: Bob (or anyone) using it is refused
    row = deliver(desk, mail("Re: Assigned", "b1@agency.test", BOB, "Send it to me instead.",
                             to=personal), mail_from=BOB, rcpts=(personal,))
    assert "failed verification" in row["reason"]
    settle(relay, 3)
    # and without his token Dave's unsigned mail is refused like anyone's
    deliver(desk, mail(f"Re: [#{t['id']}]", "d2@agency.test", DAVE, "No token."),
            mail_from=DAVE)
    settle(relay, 3)
    last, out = refused(desk, t["id"])
    assert last["internal"] is True and "personal reply token" in last["internal_reason"]
    assert out["status"] == "suppressed"


def test_bob_without_token_auth_cannot_use_his_token(desk: Daemon, relay: RelayStub) -> None:
    t = open_ticket(desk, relay, JANE, "o6@customer.test", 1)
    desk.cli("tickets", "assign", str(t["id"]), BOB)
    note = relay.wait_for(2)[1]
    text = email.message_from_bytes(note.data, policy=email.policy.default).get_body(
        ("plain",)).get_content()
    found = re.search(r"To answer the customer, write to (\S+)", text)
    assert found is not None
    personal = found.group(1)
    row = deliver(desk, mail("Re: Assigned", "b2@agency.test", BOB, "Hello.", to=personal),
                  mail_from=BOB, rcpts=(personal,))
    assert row["matched_by"] == "token"  # threads, but reply_auth = ["dkim"] by default
    settle(relay, 2)
    last, out = refused(desk, t["id"])
    assert last["internal"] is True and out["status"] == "suppressed"


def test_agent_replies_by_email_are_rate_limited(start: Callable[..., Daemon],
                                                 relay: RelayStub, keys) -> None:
    _, paths = keys
    d = start("[limits]\nagent_replies_by_email_per_hour = 2\n")
    t = open_ticket(d, relay, JANE, "o7@customer.test", 1)
    for i in range(3):
        reply = mail(f"Re: [#{t['id']}] My order", f"c{i}@signed.test", CAROL, f"Reply {i}.")
        deliver(d, signed(reply, "signed.test", paths), mail_from=CAROL)
    relay.wait_for(3)
    settle(relay, 3)
    last, out = refused(d, t["id"])
    assert last["internal"] is True and "rate limit" in last["internal_reason"]
    assert out["status"] == "suppressed" and "agent_replies_by_email_per_hour = 2" in \
        out["last_error"]
    assert sum(r["status"] != "suppressed" for r in wait_outgoing(
        d, lambda rows: len(rows) == 4)) == 3  # the ack and two replies


def test_reply_auth_is_validated(tmp_path: Path) -> None:
    from conftest import write_config

    from mailgate.config import load_config
    from mailgate.errors import ConfigError

    path = write_config(tmp_path / "c", 2525, f'[[agents]]\nemail = "{BOB}"\n'
                        'reply_auth = ["dkim", "password"]\n')
    with pytest.raises(ConfigError, match=r"\[\[agents\]\] #2 reply_auth: .*'password'"):
        load_config(path)
    path = write_config(tmp_path / "d", 2525,
                        f'[[agents]]\nemail = "{BOB}"\nreply_auth = "token"\n')
    assert load_config(path).agent(BOB).reply_auth == ("token",)
