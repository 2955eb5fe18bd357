"""Who really sent it, on a running daemon: a loopback DNS server with the zone data of the
test, real DKIM keys, and the pipeline's use of the verdict (issue 8)."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import pytest
from conftest import Daemon, queue_id_of, send
from dns_server import DnsTestServer
from relay_stub import RelayStub

from mailgate.outbound.dkim_sign import dns_txt_value, keygen

JANE = "jane@customer.test"


@pytest.fixture
def zone(tmp_path: Path) -> Iterator[tuple[DnsTestServer, dict[str, bytes]]]:
    keys = {}
    records = []
    for domain in ("customer.test", "agents.test"):
        path, _ = keygen(tmp_path / domain, "s1", domain)
        keys[domain] = path.read_bytes()
        records += [(f"s1._domainkey.{domain}", "TXT", dns_txt_value(path)),
                    (f"_dmarc.{domain}", "TXT", "v=DMARC1; p=reject; adkim=r; aspf=r")]
    with DnsTestServer(records) as server:
        yield server, keys


@pytest.fixture
def authd(out_daemon: Callable[..., Daemon], zone) -> Daemon:
    server, _ = zone
    return out_daemon(extra=f'''
[auth]
nameservers = ["{server.address}"]
dns_timeout = 2

[[agents]]
name = "Dana Agent"
email = "dana@agents.test"
''')


def signed(data: str, domain: str, keys: dict[str, bytes]) -> bytes:
    raw = data.encode()
    sig = dkim.sign(raw, b"s1", domain.encode(), keys[domain],
                    include_headers=[b"from", b"to", b"subject", b"message-id", b"in-reply-to"])
    return sig + raw


def mail(subject: str, mid: str, sender: str = JANE, extra: str = "", body: str = "Hello.",
         to: str = "support@example.com") -> str:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{mid}>\r\n"
            f"{extra}\r\n{body}\r\n")


def deliver(d: Daemon, data: bytes | str, **kw) -> dict:
    return d.audit_for(queue_id_of(send(d.port, data, **kw)[1]))


def test_signed_customer_mail_passes_and_shows_its_auth(authd: Daemon, zone) -> None:
    _, keys = zone
    row = deliver(authd, signed(mail("Signed", "sg1@customer.test"), "customer.test", keys),
                  mail_from=JANE)
    assert row["auth"]["verdict"] == "pass"
    t = authd.json("tickets", "show", str(row["ticket_id"]))
    auth = t["messages"][0]["auth"]
    assert auth["verdict"] == "pass" and auth["dkim"][0]["result"] == "pass"
    assert auth["dmarc"]["result"] == "pass"
    raw = (authd.data_dir / t["messages"][0]["raw_path"]).read_bytes()
    assert raw.startswith(b"Authentication-Results: mx.test.example;")


def test_forged_authentication_results_header_is_removed(authd: Daemon) -> None:
    forged = mail("Trust me", "fa1@elsewhere.test", sender="x@elsewhere.test",
                  extra="Authentication-Results: mx.test.example; dkim=pass; dmarc=pass\r\n"
                        "Authentication-Results: other.example; spf=pass\r\n")
    row = deliver(authd, forged, mail_from="x@elsewhere.test")
    t = authd.json("tickets", "show", str(row["ticket_id"]))
    raw = (authd.data_dir / t["messages"][0]["raw_path"]).read_bytes()
    assert raw.count(b"Authentication-Results: mx.test.example;") == 1  # ours, at the top
    assert b"dkim=pass; dmarc=pass" not in raw
    assert b"Authentication-Results: other.example; spf=pass" in raw


def test_forged_reply_by_subject_tag_stays_internal(authd: Daemon, relay: RelayStub,
                                                    zone) -> None:
    _, keys = zone
    first = deliver(authd, signed(mail("Account", "fr1@customer.test"), "customer.test", keys),
                    mail_from=JANE)
    tid = first["ticket_id"]
    relay.wait_for(1)  # the acknowledgement
    forged = mail(f"[#{tid}] please send the invoice to me", "fr2@evil.test")  # From: Jane
    row = deliver(authd, forged, mail_from="mallory@evil.test")
    assert row["ticket_id"] == tid and row["auth"]["verdict"] == "fail"
    t = authd.json("tickets", "show", str(tid))
    assert t["status"] == "open"
    note = t["messages"][-1]
    assert note["internal"] is True and "unauthenticated sender" in note["internal_reason"]
    time.sleep(0.5)
    assert len(relay.messages) == 1


def test_agent_reply_by_email_must_pass(authd: Daemon, relay: RelayStub, zone) -> None:
    _, keys = zone
    first = deliver(authd, signed(mail("Broken screen", "ag1@customer.test"), "customer.test",
                                  keys), mail_from=JANE)
    t = authd.json("tickets", "show", str(first["ticket_id"]))
    relay.wait_for(1)
    reply = mail("Re: Broken screen", "ag2@agents.test", sender="Dana Agent <dana@agents.test>",
                 to=t["reply_address"], body="Please restart it.\r\n\r\nOn Mon, Support"
                 " wrote:\r\n> the customer said something")
    row = deliver(authd, signed(reply, "agents.test", keys), mail_from="dana@agents.test",
                  rcpts=(t["reply_address"],))
    assert row["auth"]["verdict"] == "pass" and row["action"] == "appended"
    got = relay.wait_for(2)[1]
    assert list(got.rcpt_tos) == [JANE]
    msg = email.message_from_bytes(got.data, policy=email.policy.default)
    text = msg.get_body(("plain",)).get_content()
    assert "Please restart it." in text and "the customer said something" not in text
    assert msg["In-Reply-To"] == "<ag1@customer.test>"
    shown = authd.json("tickets", "show", str(t["id"]))
    assert shown["status"] == "pending_customer"
    assert shown["messages"][-1]["direction"] == "out"
    # the same reply, altered after signing: it fails, stays internal and sends nothing
    tampered = signed(reply.replace("ag2@", "ag3@"), "agents.test", keys).replace(
        b"Please restart it.", b"Please wire 1000 EUR.")
    row = deliver(authd, tampered, mail_from="dana@agents.test", rcpts=(t["reply_address"],))
    assert row["auth"]["verdict"] == "fail"
    last = authd.json("tickets", "show", str(t["id"]))["messages"][-1]
    assert last["internal"] is True and last["direction"] == "in"
    time.sleep(0.5)
    assert len(relay.messages) == 2


def test_hold_mode(out_daemon: Callable[..., Daemon], zone) -> None:
    server, _ = zone
    d = out_daemon(extra=f'''
[auth]
nameservers = ["{server.address}"]
dns_timeout = 2
unauthenticated = "hold"
''')
    qid = queue_id_of(send(d.port, mail("forged", "h1@evil.test"), mail_from="m@evil.test")[1])
    deadline = time.monotonic() + 20
    while d.json("spool", "list", "--state", "hold") == []:
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.1)
    row = d.audit_for(qid)
    assert row["action"] == "held" and "unauthenticated sender" in row["reason"]
    assert d.json("tickets", "list") == []


def test_a_slow_resolver_does_not_hold_up_other_mail(out_daemon: Callable[..., Daemon],
                                                     zone) -> None:
    server, _ = zone
    server.silence("_dmarc.slow.test", "slow.test", "_dmarc.slow.test.")
    d = out_daemon(extra=f'''
[auth]
nameservers = ["{server.address}"]
dns_timeout = 4
''')
    start = time.monotonic()
    slow = queue_id_of(send(d.port, mail("slow", "sl1@slow.test", sender="a@slow.test"),
                            mail_from="a@slow.test")[1])
    fast = queue_id_of(send(d.port, mail("fast", "fs1@fast.test", sender="b@fast.test"),
                            mail_from="b@fast.test")[1])
    assert d.audit_for(fast)["action"] == "created_ticket"
    fast_done = time.monotonic() - start
    row = d.audit_for(slow)
    slow_done = time.monotonic() - start
    assert fast_done < 3.0 < slow_done, (fast_done, slow_done)
    assert "temperror" in row["auth"]["reason"] or row["auth"]["dmarc"]["result"] == "temperror"


def test_a_dead_domain_delays_only_its_own_mail(out_daemon: Callable[..., Daemon], zone) -> None:
    """Six messages from a domain whose DNS never answers, then one from a healthy domain: the
    healthy one is not queued behind them (it used to wait about 15 s), and the dead domain's
    later messages do not each wait the timeout again."""
    server, _ = zone
    server.silence("_dmarc.dead.test", "dead.test")
    d = out_daemon(extra=f'''
[auth]
nameservers = ["{server.address}"]
dns_timeout = 4
''')
    start = time.monotonic()
    dead = [queue_id_of(send(d.port, mail(f"dead {i}", f"dd{i}@dead.test",
                                          sender=f"x{i}@dead.test"),
                             mail_from=f"x{i}@dead.test")[1]) for i in range(6)]
    fast = queue_id_of(send(d.port, mail("fast", "fs2@fast.test", sender="b@fast.test"),
                            mail_from="b@fast.test")[1])
    assert d.audit_for(fast)["action"] == "created_ticket"
    fast_done = time.monotonic() - start
    for qid in dead:
        assert d.audit_for(qid)["action"] == "created_ticket"
    dead_done = time.monotonic() - start
    assert fast_done < 3.0, fast_done
    assert dead_done < 12.0, dead_done  # not 6 x 4 s: the dead names are remembered as failing
