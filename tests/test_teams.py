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
    return str(parsed(m).get_body(("plain",)).get_content()).replace("\r\n", "\n")


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


# --- the notifications' words ------------------------------------------------------------------


def test_each_notification_has_its_own_subject_and_words(start, relay: RelayStub) -> None:
    d = start(TEAMS + '''
[[automations]]
name = "tell billing about new tickets"
when = "ticket_created"
then = { notify_team = "billing" }
''')
    t = open_ticket(d, relay, "words1@customer.test", body="My parcel never came.")
    # notify_team: each member of Billing, by name, marked as generated (not a reply)
    for agent, name in ((BOB, "Bob Builder"), (CAROL, "Carol Singer")):
        (team_note,) = wait_to(relay, agent, 1)
        msg = parsed(team_note)
        assert msg["Subject"] == f"[#{t['id']}] New for team Billing: My order"
        body = text_of(team_note)
        assert body.startswith(f"Acme helps you\n\nHello {name},\n")
        assert f"Ticket #{t['id']} is for your team Billing; nobody is assigned" in body
        assert "Status:  Brand new" in body  # the [statuses] label
        assert "My parcel never came." in body
        assert msg["Auto-Submitted"] == "auto-generated"
        assert re.fullmatch(r"support\+n\d+-[a-z2-7]{16}@example\.com",
                            msg["Reply-To"].addresses[0].addr_spec)
    # assignment
    d.cli("tickets", "assign", str(t["id"]), BOB)
    assigned = wait_to(relay, BOB, 2)[1]
    msg, body = parsed(assigned), text_of(assigned)
    assert msg["Subject"] == f"[#{t['id']}] Assigned to you: My order"
    assert "Hello Bob Builder," in body and f"Ticket #{t['id']} was assigned to you." in body
    assert "Status:  Brand new" in body and "My parcel never came." in body
    assert msg["Auto-Submitted"] == "auto-generated"
    assert "Replying to this mail adds an internal note" in body
    # the customer replies: the assignee hears it in other words, with her new message
    deliver(d, mail("Re: My order", "words2@customer.test", JANE, "Any news? It is urgent.",
                    to=t["reply_address"]), rcpts=(t["reply_address"],))
    replied = wait_to(relay, BOB, 3)[2]
    msg, body = parsed(replied), text_of(replied)
    assert msg["Subject"] == f"[#{t['id']}] Customer replied: My order"
    assert "Hello Bob Builder," in body
    assert f"The customer replied on ticket #{t['id']}, which is assigned to you." in body
    assert "Status:  Waiting on us" in body and "Any news? It is urgent." in body
    assert "was assigned to you" not in body
    assert msg["Auto-Submitted"] == "auto-generated"
    # the customer's own mail stays an answer to her, not a notification
    assert parsed(to(relay, JANE)[0])["Auto-Submitted"] == "auto-replied"
    kinds = sorted(r["kind"] for r in d.json("audit", "outgoing", "--ticket", str(t["id"])))
    assert kinds == ["assignee_notification", "customer_replied_notification",
                     "new_ticket_ack", "team_notification", "team_notification"]


# --- teams ---------------------------------------------------------------------------------------


def test_team_routing_round_robin_and_the_team_view(start, relay: RelayStub) -> None:
    admin_port = free_port()
    d = start(TEAMS + f'''
[[organizations]]
name = "Initech"
domains = ["initech.test"]
[organizations.on_new_ticket]
round_robin_team = "billing"

[[automations]]
name = "escalations go to tier2"
when = "ticket_created"
if = {{ subject_contains = "escalate" }}
then = {{ assign_team = "tier2" }}

[admin]
listen = "127.0.0.1:{admin_port}"
''')
    # a team's mailbox gives the ticket its team, unassigned
    row = deliver(d, mail("Invoice wrong", "tm1@customer.test", JANE, "Twice charged.",
                          to="sales@example.com"), rcpts=("sales@example.com",))
    sales = d.json("tickets", "show", str(row["ticket_id"]))
    assert sales["team"] == "Billing" and sales["assignee"] is None
    # organization routing: round robin within the team, in the order of its members
    got = []
    for n, who in enumerate(("pete", "mike", "joanna")):
        row = deliver(d, mail(f"Help {n}", f"tm-i{n}@initech.test", f"{who}@initech.test",
                              "Hi."), mail_from=f"{who}@initech.test")
        got.append(d.json("tickets", "show", str(row["ticket_id"])))
    assert [t["assignee"] for t in got] == [BOB, CAROL, BOB]
    assert {t["team"] for t in got} == {"Billing"}
    # a rule assigns a team
    row = deliver(d, mail("Please escalate", "tm3@customer.test", JANE, "Now."))
    escalated = row["ticket_id"]
    assert d.json("tickets", "show", str(escalated))["team"] == "tier2"
    # the team views: CLI, API, panel tab
    listed = d.json("tickets", "list", "--team", "billing", "--unassigned")
    assert [t["id"] for t in listed] == [sales["id"]]
    assert {t["id"] for t in d.json("tickets", "list", "--team", "Billing")} == \
        {sales["id"], *(t["id"] for t in got)}
    assert [t["id"] for t in d.json("tickets", "list", "--team", "tier2")] == [escalated]
    out = d.cli("tickets", "list", "--team", "nope", expect=1)
    assert out.strip().startswith("mailgate: no team 'nope' ([[teams]] in ")
    teams = {t["name"]: t for t in d.json("teams", "list")}
    assert teams["Billing"]["open"] == 4 and teams["Billing"]["unassigned"] == 1
    assert teams["Billing"]["members"] == [BOB, CAROL]
    token = (d.data_dir / "admin.token").read_text().strip()

    def get(path: str) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{admin_port}{path}",
                                         headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    status, body = get("/api/tickets?team=billing&unassigned=1")
    assert status == 200 and [t["id"] for t in json.loads(body)] == [sales["id"]]
    status, body = get("/api/tickets?team=nope")
    assert status == 400 and "no team 'nope'" in json.loads(body)["error"]
    # the panel: a tab per team, listing its open unassigned tickets
    status, body = get("/tickets?team=Billing")
    assert status == 200 and 'href="/tickets?team=tier2"' in body
    assert f'href="/tickets/{sales["id"]}"' in body
    assert f'href="/tickets/{got[0]["id"]}"' not in body  # assigned: not in the tab
    # orgs route names a team; an unknown one is one line
    d.cli("orgs", "route", "Initech", "--notify-team", "tier2", "--team", "billing")
    assert d.cli("orgs", "route", "Initech", "--team", "nope", expect=1).startswith(
        "mailgate: no team 'nope'")


@pytest.mark.parametrize(("text", "key"), [
    ('[[teams]]\nname = "x"\nmembers = ["eve@example.com"]\n',
     "[[teams]] 'x' members: eve@example.com is not an agent ([[agents]])"),
    ('[[teams]]\nname = "x"\nmailboxes = ["billing@example.com"]\n',
     "[[teams]] 'x' mailboxes: billing@example.com is not one of our mailboxes"),
    ('[[teams]]\nname = "x"\n[[teams]]\nname = "X"\n', "[[teams]] 'X' name: two teams"),
    ('[[teams]]\nmembers = []\n', "[[teams]] #1 name: a team needs a name"),
    ('[[teams]]\nname = "x"\nlead = "bob@example.com"\n', "[[teams]] #1 lead: unknown key"),
    ('[[organizations]]\nname = "Acme"\ndomains = ["acme.test"]\n'
     '[organizations.on_new_ticket]\nassign_team = "nope"\n',
     "[[organizations]] 'Acme' on_new_ticket.assign_team: 'nope' is not a team ([[teams]])"),
])
def test_team_config_errors_name_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    from mailgate.config import load_config
    from mailgate.errors import ConfigError

    path = tmp_path / "mailgate.toml"
    path.write_text('[mail]\ndomains = ["example.com"]\nmailboxes = ["support@example.com"]\n'
                    f'[[agents]]\nemail = "{BOB}"\n' + text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}"), message
    assert "\n" not in message


def test_unknown_team_in_a_rule_is_one_line(tmp_path: Path) -> None:
    from conftest import write_config

    from mailgate.ops import app

    cfg = write_config(tmp_path, free_port(), AGENTS + TEAMS + '''
[[automations]]
name = "route"
when = "ticket_created"
then = { round_robin_team = "sales" }
''')
    from mailgate.config import load_config
    from mailgate.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        app.ruleset(load_config(cfg))
    assert str(info.value).startswith(f'{cfg.resolve()}: rule "route": then.round_robin_team:'
                                      ' "sales" is not a team ([[teams]])'), str(info.value)


# --- Cc participants -----------------------------------------------------------------------------


def test_cc_participants_are_copied_and_their_replies_thread(start, relay: RelayStub) -> None:
    d = start()
    t = open_ticket(d, relay, "cc1@customer.test", extra=f"Cc: The Boss <{BOSS}>, {BOB}\r\n")
    assert [p["email"] for p in d.json("tickets", "participants", "list", str(t["id"]))] == \
        [JANE, BOSS]  # the agent in Cc is no participant
    d.cli("tickets", "reply", str(t["id"]), "--agent", BOB, "--body", "We are on it.")
    (to_jane,) = to(relay, JANE)[1:] or wait_to(relay, JANE, 2)[1:]
    (to_boss,) = wait_to(relay, BOSS, 1)
    for m in (to_jane, to_boss):  # one message, as a reply-all: To Jane, Cc the boss
        msg = parsed(m)
        assert [a.addr_spec for a in msg["To"].addresses] == [JANE]
        assert [a.addr_spec for a in msg["Cc"].addresses] == [BOSS]
        assert "We are on it." in text_of(m)
    assert parsed(to_jane)["Message-ID"] == parsed(to_boss)["Message-ID"]
    # the boss answers all: threads by the reply address, counts as the customer's
    row = deliver(d, mail("Re: My order", "cc2@customer.test", BOSS, "Please hurry.",
                          to=t["reply_address"], extra=f"Cc: {JANE}\r\n"),
                  mail_from=BOSS, rcpts=(t["reply_address"],))
    assert row["action"] == "appended" and row["ticket_id"] == t["id"]
    shown = d.json("tickets", "show", str(t["id"]))
    assert shown["messages"][-1]["internal"] is False and shown["status"] == "pending_agent"
    # Jane copies her colleague later: he joins
    deliver(d, mail("Re: My order", "cc3@customer.test", JANE, "Adding Tom.",
                    to=t["reply_address"], extra="Cc: tom@customer.test\r\n"),
            rcpts=(t["reply_address"],))
    assert "tom@customer.test" in d.json("tickets", "show", str(t["id"]))["participants"]
    # the boss is removed: no longer copied, and his mail is a stranger's note
    d.cli("tickets", "participants", "remove", str(t["id"]), BOSS)
    roles = {p["email"]: p["role"] for p in
             d.json("tickets", "participants", "list", str(t["id"]))}
    assert roles == {JANE: "requester", BOSS: "removed", "tom@customer.test": "cc"}
    before = len(relay.messages)
    d.cli("tickets", "reply", str(t["id"]), "--agent", BOB, "--body", "Shipped.")
    deadline = time.monotonic() + 15
    while len(relay.messages) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    settle(relay, before + 2)
    last = relay.messages[before:]
    assert sorted(m.rcpt_tos[0] for m in last) == sorted([JANE, "tom@customer.test"])
    assert all(BOSS not in m.data.decode() for m in last)
    # a Cc does not bring him back
    deliver(d, mail("Re: My order", "cc4@customer.test", JANE, "Thanks.",
                    to=t["reply_address"], extra=f"Cc: {BOSS}\r\n"),
            rcpts=(t["reply_address"],))
    row = deliver(d, mail("Re: My order", "cc5@customer.test", BOSS, "Still here.",
                          to=t["reply_address"]), mail_from=BOSS, rcpts=(t["reply_address"],))
    assert d.json("tickets", "show", str(t["id"]))["messages"][-1]["internal"] is True
    # adding him again copies him again; mistakes are one line
    d.cli("tickets", "participants", "add", str(t["id"]), BOSS)
    assert BOSS in d.json("tickets", "show", str(t["id"]))["participants"]
    for args, words in (
            (("remove", str(t["id"]), JANE), "the requester cannot be removed"),
            (("add", str(t["id"]), BOB), "is an agent or one of our addresses"),
            (("add", str(t["id"]), "not an address"), "not a plain email address"),
            (("remove", str(t["id"]), "nobody@x.test"), "is not a participant"),
            (("list", "99999"), "no ticket #99999")):
        out = d.cli("tickets", "participants", *args, expect=1)
        assert out.startswith("mailgate: ") and words in out and out.count("\n") == 1, out


# --- Outlook threading ---------------------------------------------------------------------------


def index_of(m: Received) -> bytes:
    return base64.b64decode(str(parsed(m)["Thread-Index"]))


def test_thread_index_is_one_conversation_per_ticket(start, relay: RelayStub) -> None:
    d = start()
    t = open_ticket(d, relay, "ti1@customer.test")
    ack = to(relay, JANE)[0]
    first = index_of(ack)
    assert len(first) == 22 and first[0] == 1  # the header block
    stamp = int.from_bytes(first[1:6], "big") << 24  # FILETIME, its low 24 bits dropped
    now = int((time.time() + 11_644_473_600) * 10_000_000)
    assert 0 <= now - stamp < 2 * (1 << 24) + 60 * 10_000_000
    assert parsed(ack)["Thread-Topic"] == "My order"
    d.cli("tickets", "reply", str(t["id"]), "--agent", BOB, "--body", "On it.")
    second = index_of(wait_to(relay, JANE, 2)[1])
    assert len(second) == 27 and second[:22] == first  # the same conversation, one level down
    assert second[26] & 0x0F == 1
    # an Outlook customer's reply carries its own index: stored, and our next mail continues it
    theirs = second + bytes.fromhex("0000a1b203")
    encoded = base64.b64encode(theirs).decode()
    deliver(d, mail("RE: My order", "ti2@customer.test", JANE, "Thanks!", to=t["reply_address"],
                    extra=f"Thread-Index: {encoded}\r\nThread-Topic: My order\r\n"),
            rcpts=(t["reply_address"],))
    shown = d.json("tickets", "show", str(t["id"]))
    assert shown["messages"][-1]["thread_index"] == encoded
    d.cli("tickets", "reply", str(t["id"]), "--agent", BOB, "--body", "Done.")
    third = wait_to(relay, JANE, 3)[2]
    assert index_of(third)[:32] == theirs and len(index_of(third)) == 37
    assert parsed(third)["Thread-Topic"] == "My order"
    # a malformed index is neither stored nor followed
    deliver(d, mail("RE: My order", "ti3@customer.test", JANE, "Again.", to=t["reply_address"],
                    extra="Thread-Index: bm90IGFuIGluZGV4\r\n"), rcpts=(t["reply_address"],))
    assert d.json("tickets", "show", str(t["id"]))["messages"][-1]["thread_index"] is None
    # an Outlook customer who opens a ticket: the acknowledgement answers her index
    opening = base64.b64encode(b"\x01" + bytes(range(21))).decode()
    row = deliver(d, mail("New thing", "ti4@customer.test", JANE, "Hello.",
                          extra=f"Thread-Index: {opening}\r\n"))
    ack2 = next(m for m in wait_to(relay, JANE, 4) if parsed(m)["Thread-Topic"] == "New thing")
    assert index_of(ack2)[:22] == base64.b64decode(opening) and len(index_of(ack2)) == 27
    assert row["ticket_id"] != t["id"]


def test_thread_index_blocks_follow_outlooks_layout() -> None:
    from mailgate.outbound import thread_index as ti

    guid = bytes(range(16))
    start = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    header = ti.header_block(start, guid)
    ticks = int((start + 11_644_473_600) * 10_000_000)
    assert header == b"\x01" + (ticks >> 24).to_bytes(5, "big") + guid
    # an hour later: delta code 0, bits 48..18 of the difference
    hour = ti.reply_index(header, start + 3600)
    assert len(hour) == 27 and hour[:22] == header
    delta = ticks + 3600 * 10_000_000 - ((ticks >> 24) << 24)
    word = int.from_bytes(hour[22:26], "big")
    assert word >> 31 == 0 and word & 0x7FFF_FFFF == (delta >> 18) & 0x7FFF_FFFF
    assert hour[26] & 0x0F == 1
    # ten years later the difference passes 2^49 ticks: delta code 1, bits 53..23
    late = ti.reply_index(hour, start + 10 * 365 * 86400)
    word = int.from_bytes(late[27:31], "big")
    delta = ticks + 10 * 365 * 86400 * 10_000_000 - ((ticks >> 24) << 24)
    assert word >> 31 == 1 and word & 0x7FFF_FFFF == (delta >> 23) & 0x7FFF_FFFF
    assert late[31] & 0x0F == 2
    # parse: only well-formed indexes; never grown past MAX_BYTES
    assert ti.parse(ti.encode(late)) == late
    for bad in ("", "!!!", ti.encode(b"\x02" + late[1:]), ti.encode(late[:25]),
                ti.encode(late + b"\x00" * ti.MAX_BYTES)):
        assert ti.parse(bad) is None, bad
    full = header + b"\x00" * (ti.MAX_BYTES - 22)
    assert ti.reply_index(full, start) == full


def test_a_mailboxs_team_takes_its_mail_forwarded_or_direct(start, relay: RelayStub) -> None:
    """`[[mailboxes]] team` (issue 12's mailboxes) gives the mailbox's new tickets that team,
    also when the company's forwarding left only its public address in To."""
    d = start(TEAMS + '''
[[mailboxes]]
address = "support@example.com"
name = "Example Support"

[[mailboxes]]
address = "help@example.com"
public_address = "help@acme.test"
name = "Acme Help"
team = "tier2"
''')
    direct = deliver(d, mail("Direct", "mt1@customer.test", JANE, "Hi.", to="help@example.com"),
                     rcpts=("help@example.com",))
    forwarded = deliver(d, mail("Forwarded", "mt2@customer.test", JANE, "Hi.",
                                to="help@acme.test", extra="X-Forwarded-To: help@acme.test\r\n"),
                        rcpts=("help@help.example.org",))  # an MTA rewrote the envelope
    other = deliver(d, mail("Support", "mt3@customer.test", JANE, "Hi."))
    team = {k: d.json("tickets", "show", str(r["ticket_id"]))["team"]
            for k, r in (("direct", direct), ("forwarded", forwarded), ("other", other))}
    assert team["direct"] == team["forwarded"] == "tier2" and not team["other"]
    assert d.json("tickets", "show", str(forwarded["ticket_id"]))["mailbox"] == "help@example.com"
