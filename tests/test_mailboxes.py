"""Several mailboxes and brands, end to end: a running daemon, real aiosmtpd relays, real DKIM
keys verified by dkimpy against a stub DNS function.

Two mailboxes in two domains and two brands: `support@example.com` answers as Acme
(`support@acme.test`, token replies, the global relay) and `help@help.example.org` as Globex
(`help@globex.test`, replies through the public address, its own relay). A mail to each,
directly and forwarded (the envelope rewritten to another address of ours, the public address in
To / X-Forwarded-To), is acknowledged From that mailbox's public address, in its brand, signed
for its domain; an agent's reply keeps the mailbox; a reply through the public address with
In-Reply-To only threads. And the config errors check-config names.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import pytest
from conftest import Daemon, free_port, queue_id_of, relay_section, send, wait_outgoing
from relay_stub import RelayStub
from test_admin import Client, admin_section, wait_http
from test_outbound import parts

from mailgate.outbound.dkim_sign import keygen

ACME_COLOR, GLOBEX_COLOR = "#ff6600", "#0a7d3b"


def dnsfunc_for(records: list[str]) -> Callable[..., bytes | None]:
    """A dnsfunc for dkimpy serving the TXT record lines keygen printed."""
    values = {}
    for record in records:
        name, strings = record.split(" IN TXT ", 1)
        values[name] = "".join(strings.split('"')[1::2]).encode()

    def dnsfunc(qname: bytes, timeout: float = 5) -> bytes | None:
        return values.get(qname.decode())

    return dnsfunc


@pytest.fixture
def globex_relay() -> Iterator[RelayStub]:
    stub = RelayStub()
    stub.start()
    yield stub
    stub.stop()


@pytest.fixture
def two_brands(make_daemon: Callable[..., Daemon], relay: RelayStub, globex_relay: RelayStub,
               tmp_path: Path) -> tuple[Daemon, Callable[..., bytes | None]]:
    acme_key, acme_record = keygen(tmp_path / "keys", "s1", "acme.test", per_domain=True)
    globex_key, globex_record = keygen(tmp_path / "keys", "s1", "globex.test", per_domain=True)
    extra = relay_section(relay.port) + admin_section(free_port()) + f"""
[branding]
company_name = "Example default"

[brands.acme]
company_name = "Acme"
primary_color = "{ACME_COLOR}"
signature = "Your Acme care team"
footer = "Acme Inc, 1 Road, Town"

[brands.globex]
company_name = "Globex"
primary_color = "{GLOBEX_COLOR}"
signature = "Globex Customer Happiness"
footer = "Globex Corporation, Cypress Creek"

[[dkim]]
domain = "acme.test"
selector = "s1"
key_file = "{acme_key}"

[[dkim]]
domain = "globex.test"
selector = "s1"
key_file = "{globex_key}"

[[teams]]
name = "globex-team"

[[mailboxes]]
address = "support@example.com"
public_address = "support@acme.test"
name = "Acme Support"
brand = "acme"

[[mailboxes]]
address = "help@help.example.org"
public_address = "help@globex.test"
name = "Globex Help"
brand = "globex"
reply_to = "public"
team = "globex-team"
[mailboxes.relay]
host = "127.0.0.1"
port = {globex_relay.port}
retry_base_seconds = 0.3
retry_max_seconds = 1
timeout = 5
"""
    return make_daemon(extra=extra), dnsfunc_for([acme_record, globex_record])


def admin_client(d: Daemon) -> Client:
    listen = d.config.read_text().split('[admin]\nlisten = "', 1)[1].split('"', 1)[0]
    client = Client(f"http://{listen}", d.data_dir / "admin.token")
    wait_http(client, d)
    return client


def mail(subject: str, mid: str, to: str, sender: str = "jane@customer.test",
         extra: str = "") -> str:
    return (f"From: Jane Doe <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{mid}>\r\n{extra}\r\nHello, I need help with {subject}.\r\n")


def parsed(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def ticket_of(d: Daemon, queue_id: str) -> dict:
    row = d.audit_for(queue_id)
    assert row["action"] == "created_ticket", row
    return d.json("tickets", "show", str(row["ticket_id"]))


def assert_speaks_as(data: bytes, dnsfunc: Callable[..., bytes | None], *, name: str,
                     address: str, color: str, signature: str) -> email.message.EmailMessage:
    msg = parsed(data)
    sender = msg["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == (name, address)
    text, html = parts(msg)
    assert signature in text and signature in html
    assert color in html
    domain = address.rpartition("@")[2]
    assert f"d={domain}".encode() in data.split(b"\r\n\r\n", 1)[0]
    assert dkim.verify(data, dnsfunc=dnsfunc), "the DKIM signature does not verify"
    return msg


def test_each_mailbox_answers_as_itself_directly_and_forwarded(
        two_brands: tuple[Daemon, Callable[..., bytes | None]], relay: RelayStub,
        globex_relay: RelayStub) -> None:
    d, dnsfunc = two_brands
    # 1. straight to Acme's address of ours
    code, reply = send(d.port, mail("Acme direct", "a1@customer.test", "support@example.com"),
                       rcpts=("support@example.com",))
    assert code == 250
    acme = ticket_of(d, queue_id_of(reply))
    assert acme["mailbox"] == "support@example.com"
    assert acme["mailbox_from"] == "support@acme.test"
    (ack,) = relay.wait_for(1, timeout=20)
    msg = assert_speaks_as(ack.data, dnsfunc, name="Acme Support", address="support@acme.test",
                           color=ACME_COLOR, signature="Your Acme care team")
    # token mode: replies come to our address with the ticket's signed token
    assert msg["Reply-To"].addresses[0].addr_spec == acme["reply_address"]
    assert acme["reply_address"].startswith("support+") and \
        acme["reply_address"].endswith("@example.com")
    assert ack.rcpt_tos == ("jane@customer.test",)
    assert ack.mail_from.startswith("bounces+o") and ack.mail_from.endswith("@example.com")

    # 2. straight to Globex's address: its own relay, public Reply-To
    code, reply = send(d.port, mail("Globex direct", "g1@customer.test", "help@globex.test"),
                       rcpts=("help@help.example.org",))
    globex = ticket_of(d, queue_id_of(reply))
    assert globex["mailbox"] == "help@help.example.org"
    (gack,) = globex_relay.wait_for(1, timeout=20)
    gmsg = assert_speaks_as(gack.data, dnsfunc, name="Globex Help", address="help@globex.test",
                            color=GLOBEX_COLOR, signature="Globex Customer Happiness")
    assert gmsg["Reply-To"].addresses[0].addr_spec == "help@globex.test"
    assert globex["reply_address"] == "help@globex.test"
    assert gack.mail_from == "help@globex.test"  # SPF is the company relay's, for its domain
    assert ACME_COLOR not in parts(gmsg)[1] and "Acme" not in gack.data.decode()

    # 3. forwarded by a company MTA that rewrote the envelope to another address of ours:
    #    the public address in To and X-Forwarded-To names the mailbox
    code, reply = send(d.port, mail("Globex forwarded", "g2@customer.test", "help@globex.test",
                                    extra="X-Forwarded-To: help@globex.test\r\n"),
                       rcpts=("sales@example.com",))
    forwarded = ticket_of(d, queue_id_of(reply))
    assert forwarded["mailbox"] == "help@help.example.org"
    acks = globex_relay.wait_for(2, timeout=20)
    assert_speaks_as(acks[1].data, dnsfunc, name="Globex Help", address="help@globex.test",
                     color=GLOBEX_COLOR, signature="Globex Customer Happiness")
    code, reply = send(d.port, mail("Acme forwarded", "a2@customer.test", "support@acme.test"),
                       rcpts=("sales@example.com",))
    assert ticket_of(d, queue_id_of(reply))["mailbox"] == "support@example.com"
    acks = relay.wait_for(2, timeout=20)
    assert_speaks_as(acks[1].data, dnsfunc, name="Acme Support", address="support@acme.test",
                     color=ACME_COLOR, signature="Your Acme care team")
    # the public address is ours: never a participant of the ticket (nor copied)
    assert "help@globex.test" not in d.json("tickets", "show", str(forwarded["id"]))[
        "participants"]

    # 4. listed and filtered by mailbox (by either of its addresses)
    by_globex = d.json("tickets", "list", "--mailbox", "help@globex.test")
    assert sorted(t["id"] for t in by_globex) == sorted([globex["id"], forwarded["id"]])
    by_acme = d.json("tickets", "list", "--mailbox", "support@example.com")
    assert globex["id"] not in {t["id"] for t in by_acme} and acme["id"] in {
        t["id"] for t in by_acme}
    assert "mailbox: help@help.example.org" in d.cli("tickets", "show", str(globex["id"]))
    out = d.cli("tickets", "list", "--mailbox", "nobody@example.com", expect=1)
    assert out.startswith("mailgate: no mailbox 'nobody@example.com'") and out.count("\n") == 1


def test_agent_reply_keeps_the_mailbox_and_a_public_reply_threads_by_message_id(
        two_brands: tuple[Daemon, Callable[..., bytes | None]], relay: RelayStub,
        globex_relay: RelayStub) -> None:
    d, dnsfunc = two_brands
    _code, reply = send(d.port, mail("Invoice wrong", "g10@customer.test", "help@globex.test"),
                       rcpts=("help@help.example.org",))
    ticket = ticket_of(d, queue_id_of(reply))
    globex_relay.wait_for(1, timeout=20)  # the acknowledgement
    out = d.cli("tickets", "reply", str(ticket["id"]), "--agent", "alice@example.com",
                "--body", "We fixed the invoice.")
    assert "queued" in out
    agent_mail = globex_relay.wait_for(2, timeout=20)[1]
    msg = assert_speaks_as(agent_mail.data, dnsfunc, name="Globex Help",
                           address="help@globex.test", color=GLOBEX_COLOR,
                           signature="Globex Customer Happiness")
    assert "We fixed the invoice." in parts(msg)[0]
    assert msg["In-Reply-To"] == "<g10@customer.test>"
    assert msg["Reply-To"].addresses[0].addr_spec == "help@globex.test"
    assert not relay.messages  # nothing through the global relay

    # The customer answers the public address; the company forwards it to our address. No
    # token anywhere: In-Reply-To alone threads it.
    answer = mail("Re: Invoice wrong", "g11@customer.test", "help@globex.test",
                  extra=f"In-Reply-To: {msg['Message-ID']}\r\n")
    _code, reply = send(d.port, answer, rcpts=("help@help.example.org",))
    row = d.audit_for(queue_id_of(reply))
    assert row["action"] == "appended" and row["ticket_id"] == ticket["id"], row
    assert row["matched_by"] == "in-reply-to"
    shown = d.json("tickets", "show", str(ticket["id"]))
    assert shown["mailbox"] == "help@help.example.org"
    assert [m["direction"] for m in shown["messages"]] == ["in", "out", "in"]


def test_legacy_single_mailbox_is_unchanged(out_daemon, relay: RelayStub) -> None:
    """No [[mailboxes]]: the first of [mail] mailboxes under [branding], as before."""
    d = out_daemon()
    _code, reply = send(d.port, mail("Old style", "o1@customer.test", "sales@example.com"),
                       rcpts=("sales@example.com",))
    ticket = ticket_of(d, queue_id_of(reply))
    assert ticket["mailbox"] == "support@example.com"
    (ack,) = relay.wait_for(1, timeout=20)
    msg = parsed(ack.data)
    assert msg["From"].addresses[0].addr_spec == "support@example.com"
    assert msg["From"].addresses[0].display_name == "Acme Support"
    assert msg["Reply-To"].addresses[0].addr_spec == ticket["reply_address"]
    wait_outgoing(d, lambda rows: rows and rows[0]["status"] == "sent")


def test_api_and_panels_show_and_filter_by_mailbox_and_notifications_speak_as_it(
        two_brands: tuple[Daemon, Callable[..., bytes | None]], relay: RelayStub,
        globex_relay: RelayStub) -> None:
    d, dnsfunc = two_brands
    _code, reply = send(d.port, mail("Acme one", "a20@customer.test", "support@example.com"),
                        rcpts=("support@example.com",))
    acme = ticket_of(d, queue_id_of(reply))
    _code, reply = send(d.port, mail("Globex one", "g20@customer.test", "help@globex.test"),
                        rcpts=("help@help.example.org",))
    globex = ticket_of(d, queue_id_of(reply))
    client = admin_client(d)
    rows = client.get("/api/tickets?mailbox=help@help.example.org").json()
    assert [r["id"] for r in rows] == [globex["id"]]
    assert rows[0]["mailbox"] == "help@help.example.org"
    assert {r["id"] for r in client.get("/api/tickets").json()} == {acme["id"], globex["id"]}
    shown = client.get(f"/api/tickets/{globex['id']}").json()
    assert (shown["mailbox"], shown["mailbox_from"], shown["reply_address"]) == (
        "help@help.example.org", "help@globex.test", "help@globex.test")
    page = client.get("/tickets?view=all&mailbox=help@help.example.org").text
    assert "Globex one" in page and "Acme one" not in page
    assert "help@globex.test" in page and "support@acme.test" in page  # the mailbox tabs
    assert "help@help.example.org" in client.get(f"/tickets/{globex['id']}").text
    # the notification to the agent speaks as the mailbox too (its relay, From, key)
    globex_relay.wait_for(1, timeout=20)
    assert client.post(f"/api/tickets/{globex['id']}/assign",
                       form={"agent": "alice@example.com"}).status == 200
    note = globex_relay.wait_for(2, timeout=20)[1]
    assert note.rcpt_tos == ("alice@example.com",)
    msg = assert_speaks_as(note.data, dnsfunc, name="Globex Help", address="help@globex.test",
                           color=GLOBEX_COLOR, signature="Globex Customer Happiness")
    # a notification's Reply-To is the ticket's internal-note address, always at our own
    # address (never the public one), and so is the agent's personal reply address it offers
    assert msg["Reply-To"].addresses[0].addr_spec.startswith("help+n")
    assert msg["Reply-To"].addresses[0].addr_spec.endswith("@help.example.org")
    text = msg.get_body(("plain",)).get_content()
    assert re.search(r"help\+a[\w-]+@help\.example\.org", text), text


def confirmation(public: str, ours: str) -> str:
    return (
        f"From: Gmail Team <forwarding-noreply@google.com>\r\nTo: {ours}\r\n"
        f"Subject: (#{len(public)}2345678) Gmail Forwarding Confirmation - Receive Mail from"
        f" {public}\r\nMessage-ID: <gfc-{public}>\r\n"
        "Content-Type: text/plain; charset=UTF-8\r\n\r\n"
        f"{public} has requested to automatically forward mail to your email\r\n"
        f"address {ours}.\r\nConfirmation code: {len(public)}2345678\r\n\r\n"
        f"To allow {public} to automatically forward mail to your address, please\r\n"
        "click the link below to confirm the request:\r\n\r\n"
        "https://mail-settings.google.com/mail/vf-%5BANGjdJ8%5D-abcdef\r\n\r\n"
        "Thanks for using Gmail!\r\n")


def test_forwarding_confirmations_say_which_mailbox(
        two_brands: tuple[Daemon, Callable[..., bytes | None]]) -> None:
    d, _dns = two_brands
    for public, ours, rcpt in (("help@globex.test", "help@help.example.org",
                                "help@help.example.org"),
                               ("support@acme.test", "support@example.com", "sales@example.com")):
        _code, reply = send(d.port, confirmation(public, ours),
                           mail_from="forwarding-noreply@google.com", rcpts=(rcpt,))
        assert d.audit_for(queue_id_of(reply))["action"] == "forwarding_confirmation"
    pending = {p["forwarding_address"]: p for p in d.json("forwarding", "pending")}
    assert pending["help@globex.test"]["mailbox"] == "help@help.example.org"
    assert pending["support@acme.test"]["mailbox"] == "support@example.com"
    table = d.cli("forwarding", "pending")
    assert "MAILBOX" in table.splitlines()[0] and "help@help.example.org" in table


def test_mailbox_of_reads_envelope_then_forwarding_headers_then_to() -> None:
    from mailgate.config import Mailbox
    from mailgate.parsing.parse import parse
    from mailgate.threading import mailbox_of

    boxes = (Mailbox("support@example.com", "support@acme.test"),
             Mailbox("help@help.example.org", "help@globex.test"))

    def which(rcpt: str, headers: str) -> str:
        raw = (headers + "From: j@customer.test\r\nSubject: x\r\n\r\nhi\r\n").encode()
        return mailbox_of((rcpt,), parse(raw), boxes)[0]

    # the envelope names one of the mailboxes' own addresses (a +tag too): it wins
    assert which("help+x@help.example.org", "To: support@acme.test\r\n") == \
        "help@help.example.org"
    # else Delivered-To / X-Original-To / X-Forwarded-To, before To
    assert which("sales@example.com", "Delivered-To: help@globex.test\r\n"
                 "To: support@acme.test\r\n") == "help@help.example.org"
    assert which("sales@example.com", "X-Original-To: help@help.example.org\r\n"
                 "To: someone@else.test\r\n") == "help@help.example.org"
    assert which("sales@example.com", "To: Globex <help@globex.test>\r\n") == \
        "help@help.example.org"
    # nothing known: the default (first) mailbox
    assert which("sales@example.com", "To: someone@else.test\r\n") == "support@example.com"


# --- config errors ------------------------------------------------------------------------------


BASE = """
[mail]
domains = ["example.com", "help.example.org"]
[brands.acme]
company_name = "Acme"
[[mailboxes]]
address = "support@example.com"
public_address = "support@acme.test"
brand = "acme"
"""


@pytest.mark.parametrize(("extra", "message"), [
    ('[[mailboxes]]\naddress = "help@elsewhere.test"\n',
     "[[mailboxes]] 'help@elsewhere.test' address: help@elsewhere.test is not in one of"
     " [mail] domains"),
    ('[[mailboxes]]\naddress = "help@example.com"\nbrand = "globex"\n',
     "[[mailboxes]] 'help@example.com' brand: no [brands.globex] table (brands: acme)"),
    ('[[mailboxes]]\naddress = "help@example.com"\npublic_address = "Support@Acme.test"\n',
     "[[mailboxes]] 'help@example.com' public_address: support@acme.test is already the"
     " public_address of [[mailboxes]] 'support@example.com'"),
    ('[[mailboxes]]\naddress = "support@example.com"\n',
     "[[mailboxes]] 'support@example.com' address: support@example.com is already the address"
     " of [[mailboxes]] 'support@example.com'"),
    ('[[mailboxes]]\naddress = "help@example.com"\npublic_address = "support@example.com"\n',
     "[[mailboxes]] 'help@example.com' public_address: support@example.com is already the"
     " address of [[mailboxes]] 'support@example.com'"),
    ('[[mailboxes]]\naddress = "help@example.com"\nreply_to = "public"\n',
     "[[mailboxes]] 'help@example.com' reply_to: \"public\" needs a public_address"),
    ('[[mailboxes]]\naddress = "help@example.com"\ncolour = "red"\n',
     "[[mailboxes]] #2 colour: unknown key"),
    ('[[mailboxes]]\naddress = "help@example.com"\n[mailboxes.relay]\nport = 0\n',
     "[[mailboxes]] 'help@example.com' relay.port: must be between 1 and 65535"),
    ('[brands.globex]\nprimary_colour = "red"\n', "[brands.globex] primary_colour: unknown key"),
    ('[[mailboxes]]\naddress = "help@example.com"\nteam = "Nobody"\n',
     "[[mailboxes]] 'help@example.com' team: no [[teams]] entry named 'Nobody'"),
    ('[[dkim]]\ndomain = "acme.test"\nselector = "s1"\nkey_file = "nope.private"\n',
     "[[dkim]] #1 key_file: file not found"),
])
def test_check_config_names_the_key_and_the_file(tmp_path: Path, run_cli, extra: str,
                                                 message: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(BASE + extra)
    output, code = run_cli("--config", str(path), "check-config")
    assert code == 1
    assert output.startswith(f"mailgate: {path}: {message}"), output
    assert output.count("\n") == 1


@pytest.fixture
def run_cli() -> Callable[..., tuple[str, int]]:
    from click.testing import CliRunner

    from mailgate.cli import cli

    def run(*args: str) -> tuple[str, int]:
        result = CliRunner().invoke(cli, list(args))
        return result.output, result.exit_code

    return run


# --- setup: init with a public address, doctor for every domain ---------------------------------


def test_init_with_a_public_address_and_doctor_checks_every_domain(
        tmp_path: Path, relay: RelayStub) -> None:
    from test_setup import DnsStub, doctor, init_args, run

    from mailgate.outbound.dkim_sign import dns_record, dns_txt_value

    config = tmp_path / "etc" / "mailgate.toml"
    result = run(*init_args(config, relay.port, "--public-address", "Support@Acme.test",
                            "--company-name", "Acme Inc"))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "3. Forward support@acme.test to support@help.example.com:" in out
    data = config.parent / "data"
    ours_key, acme_key = data / "dkim" / "s1.private", data / "dkim" / "acme.test" / "s1.private"
    acme_record = dns_record("s1", "acme.test", dns_txt_value(acme_key)).split(" IN TXT ")[1]
    assert any(line.strip().startswith("s1._domainkey.acme.test.") and line.endswith(acme_record)
               for line in out.splitlines())
    text = config.read_text()
    assert 'public_address = "support@acme.test"' in text and 'name = "Acme Inc"' in text
    assert run("--config", str(config), "check-config").exit_code == 0

    records = {
        "s1._domainkey.help.example.com.":
            dns_record("s1", "help.example.com", dns_txt_value(ours_key)).split(" IN TXT ")[1],
        "s1._domainkey.acme.test.": acme_record}

    def dkim_lines(served: dict[str, str]) -> list[str]:
        stub = DnsStub(served)
        try:
            _code, lines = doctor(config, "--nameserver", stub.address)
        finally:
            stub.close()
        return [line for line in lines if line[6:].startswith("dkim ")]

    assert [line[:4] for line in dkim_lines(records)] == ["ok  ", "ok  "]
    without = dkim_lines({k: v for k, v in records.items() if "acme" not in k})
    assert without[0].startswith("ok ") and without[1].startswith("FAIL")
    assert "s1._domainkey.acme.test has no TXT record" in without[1]

    # no key for the public address's domain: doctor says DMARC will fail, and how to fix it
    config.write_text(text.replace('[[dkim]]\ndomain = "acme.test"', '[[dkim]]\ndomain = "x.test"'))
    warn = dkim_lines(records)[-1]
    assert warn.startswith("warn") and "mail From support@acme.test is not DKIM-signed for" \
        " acme.test" in warn and "DMARC will fail" in warn
    assert "fix: mailgate dkim keygen --selector mg1 --domain acme.test" in warn
    assert "or unset public_address of [[mailboxes]] 'support@help.example.com'" in warn


def test_dkim_keygen_for_a_second_domain(tmp_path: Path) -> None:
    from test_setup import run

    config = tmp_path / "m.toml"
    config.write_text('[mail]\ndomains = ["example.com"]\n[storage]\ndata_dir = "data"\n')
    first = run("--config", str(config), "dkim", "keygen", "--selector", "s1")
    assert first.exit_code == 0 and "[dkim]\ndomain = \"example.com\"" in first.output
    second = run("--config", str(config), "dkim", "keygen", "--selector", "s1", "--domain",
                 "Acme.test")
    assert second.exit_code == 0, second.output
    assert (tmp_path / "data" / "dkim" / "s1.private").is_file()
    assert (tmp_path / "data" / "dkim" / "acme.test" / "s1.private").is_file()
    assert "s1._domainkey.acme.test. IN TXT" in second.output
    assert "[[dkim]]\ndomain = \"acme.test\"" in second.output


def test_no_automatic_mail_to_our_own_public_address(
        two_brands: tuple[Daemon, Callable[..., bytes | None]], relay: RelayStub) -> None:
    """The company's shared mailbox writing to us gets no acknowledgement: it would be
    forwarded straight back (a loop)."""
    d, _dns = two_brands
    _code, reply = send(d.port, mail("From our own inbox", "own1@acme.test",
                                     "support@example.com", sender="support@acme.test"),
                        mail_from="support@acme.test", rcpts=("support@example.com",))
    ticket = ticket_of(d, queue_id_of(reply))
    rows = wait_outgoing(d, lambda rows: len(rows) >= 1)
    assert rows[0]["status"] == "suppressed" and rows[0]["ticket_id"] == ticket["id"], rows
    assert "is one of our mailboxes (loop prevention)" in rows[0]["last_error"]
    assert not relay.messages
