"""Spam (issue 11): a real rspamd on loopback (tests/rspamd_server.py, started here with a
configuration of its own), asked by a running daemon after DATA and before the 250. Spam is
refused in the session, doubtful mail is quarantined and can be released, nothing automatic
answers spam or unauthenticated mail, and a scanner that is down never loses mail."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, free_port, queue_id_of, send, shared_dns, wait_outgoing
from dns_server import DnsTestServer
from relay_stub import RelayStub
from rspamd_server import GTUBE, MARKER_HEADER, MARKER_SYMBOL, RspamdServer, available
from test_admin import Client, _hidden, admin_section, wait_http

from mailgate.config import Spam, load_config
from mailgate.errors import ConfigError
from mailgate.model import Envelope
from mailgate.ops.doctor import Doctor
from mailgate.smtp.spamscan import Scanner

JANE = "jane@customer.test"
NO_RSPAMD = ("rspamd is not installed here (Debian's package `rspamd`; .ci/run installs it when"
             " run as root)")


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RspamdServer]:
    if not available():
        pytest.skip(NO_RSPAMD)
    with RspamdServer(tmp_path_factory.mktemp("rspamd"), shared_dns().address) as server:
        yield server


def spam_section(url: str, **settings: object) -> str:
    values = {"reject_score": 15, "quarantine_score": 6, "no_autoreply_score": 4, "timeout": 5,
              **settings}
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in values.items())
    return f'\n[spam]\nrspamd = "{url}"\n{lines}'


def mail(subject: str, sender: str = JANE, score: float | None = None,
         body: str = "Hello, my printer stopped printing yesterday. Can you help?",
         extra: str = "") -> str:
    """A well-formed mail (Date, Message-ID: rspamd scores it near 0 from loopback), with the
    test rule's marker header when `score` is given."""
    headers = (f"From: Jane Doe <{sender}>\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
               f"Date: {email.utils.formatdate()}\r\n"
               f"Message-ID: <{time.time_ns()}.{abs(hash(subject))}@customer.test>\r\n")
    if score is not None:
        headers += f"{MARKER_HEADER}: {score}\r\n"
    return headers + extra + "\r\n" + body + "\r\n"


def wait_rows(d: Daemon, *args: str, count: int = 1, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = d.json(*args)
        if len(rows) >= count:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"{args}: {rows}\n{d.log()}")
        time.sleep(0.1)


@pytest.fixture
def spamd(out_daemon: Callable[..., Daemon], rspamd: RspamdServer) -> Daemon:
    """A daemon asking the test rspamd, with the relay stub for its automatic mail."""
    return out_daemon(extra=spam_section(rspamd.url))


# --- refused in the session ------------------------------------------------------------------


def test_gtube_is_refused_in_the_session_and_audited(spamd: Daemon, relay: RelayStub) -> None:
    code, reply = send(spamd.port, mail("You won", body=GTUBE))
    assert code == 550 and reply.startswith("5.7.1"), (code, reply)
    (row,) = wait_rows(spamd, "audit", "incoming", "--action", "rejected")
    assert row["reason"].startswith("spam: rspamd score 15")
    assert "GTUBE" in row["reason"]
    assert "GTUBE" in row["details"]["spam"]["symbols"]
    assert row["spam"]["action"] == "reject" and row["spam"]["score"] == 15
    assert row["mail_from"] == "customer@client.test" and row["subject"] == ""
    stats = spamd.wait_idle()
    assert stats["tickets"] == 0
    assert spamd.json("audit", "outgoing") == [] and relay.messages == []  # no backscatter


def test_a_forced_reject_wins_over_a_higher_reject_score(rspamd: RspamdServer) -> None:
    """rspamd's own refusal (a pre-result such as GTUBE) counts whatever reject_score says;
    the scanner client is asked directly, once with the bytes and once with a file."""
    scanner = Scanner(Spam(rspamd=rspamd.url, reject_score=50, quarantine_score=40), "mx.test")
    env = Envelope("TESTQ1", time.time(), "127.0.0.1", "client.test", JANE,
                   ("support@example.com",), 100)
    raw = mail("Forced", body=GTUBE).encode()

    async def both(path: Path) -> tuple:
        try:
            return await scanner.scan(raw, env), await scanner.scan(path, env)
        finally:
            await scanner.close()

    path = rspamd.workdir / "gtube.eml"
    path.write_bytes(raw)
    from_bytes, from_file = asyncio.run(both(path))
    for verdict in (from_bytes, from_file):
        assert verdict.action == "reject", verdict
        assert "refused by rspamd itself" in verdict.reason
        assert dict(verdict.symbols).keys() == {"GTUBE"}


# --- ham, doubtful mail and the quarantine ---------------------------------------------------


def test_ham_becomes_a_ticket_with_its_score(spamd: Daemon, relay: RelayStub) -> None:
    qid = queue_id_of(send(spamd.port, mail("Printer broken"), mail_from=JANE)[1])
    row = spamd.audit_for(qid)
    assert row["action"] == "created_ticket"
    assert row["spam"]["action"] == "accept" and row["spam"]["score"] < 4
    ticket = spamd.json("tickets", "show", str(row["ticket_id"]))
    spam = ticket["messages"][0]["spam"]
    assert spam["score"] == row["spam"]["score"] and "MIME_GOOD" in spam["symbols"]
    assert f"Spam: score {spam['score']:g} (accept)" in spamd.cli(
        "tickets", "show", str(row["ticket_id"]))
    assert list(relay.wait_for(1)[0].rcpt_tos) == [JANE]  # acknowledged as usual


def test_doubtful_mail_is_quarantined_and_release_makes_it_a_ticket(
        spamd: Daemon, relay: RelayStub) -> None:
    code, reply = send(spamd.port, mail("Cheap watches", score=8), mail_from=JANE)
    assert code == 250
    qid = queue_id_of(reply)
    row = spamd.audit_for(qid)
    assert row["action"] == "spam" and row["ticket_id"] is None
    assert "quarantine_score 6" in row["reason"] and MARKER_SYMBOL in row["reason"]
    assert 6 <= row["details"]["score"] < 15
    assert row["details"]["symbols"][MARKER_SYMBOL] == 8
    assert spamd.wait_idle()["tickets"] == 0
    assert spamd.json("stats")["quarantine"] == {"quarantined": 1, "released": 0}
    (listed,) = spamd.json("spam", "list")
    assert listed["queue_id"] == qid and listed["from"] == JANE
    assert listed["subject"] == "Cheap watches" and listed["score"] == row["details"]["score"]
    assert listed["symbols"][MARKER_SYMBOL] == 8
    shown = spamd.cli("spam", "show", qid)
    assert "Cheap watches" in shown and "printer stopped printing" in shown
    assert f"{MARKER_SYMBOL} 8" in shown
    time.sleep(0.5)
    assert spamd.json("audit", "outgoing") == [] and relay.messages == []  # nothing sent

    out = spamd.cli("spam", "release", qid)
    new_qid = out.split("released as ", 1)[1].split(";")[0]
    released = spamd.audit_for(new_qid)
    assert released["action"] == "created_ticket"
    ticket = spamd.json("tickets", "show", str(released["ticket_id"]))
    assert ticket["subject"] == "Cheap watches"
    spam = ticket["messages"][0]["spam"]
    assert spam["action"] == "released" and f"released from quarantine ({qid}) by" in \
        spam["reason"]
    assert spamd.json("spam", "list") == []
    (record,) = spamd.json("spam", "list", "--all")
    assert record["state"] == "released" and record["released_as"] == new_qid
    assert record["released_by"].startswith("cli (") and record["released_at"]
    assert "mailgate spam release" in record["released_by"]
    # its score is still above no_autoreply_score: the acknowledgement is suppressed, saying why
    (ack,) = wait_outgoing(spamd, lambda rows: len(rows) == 1)
    assert ack["status"] == "suppressed" and "no_autoreply_score" in ack["last_error"]
    error = spamd.cli("spam", "release", qid, expect=1)
    assert f"{qid} was already released (as {new_qid}" in error
    assert spamd.cli("spam", "release", "NOSUCHID", expect=1).count("\n") == 1


def test_no_acknowledgement_above_no_autoreply_score(spamd: Daemon, relay: RelayStub) -> None:
    qid = queue_id_of(send(spamd.port, mail("Questionable offer", score=5), mail_from=JANE)[1])
    row = spamd.audit_for(qid)
    assert row["action"] == "created_ticket" and 4 <= row["spam"]["score"] < 6
    (ack,) = wait_outgoing(spamd, lambda rows: len(rows) == 1)
    assert ack["status"] == "suppressed" and ack["to"] == JANE
    assert "spam score" in ack["last_error"] and "no_autoreply_score (4)" in ack["last_error"]
    time.sleep(0.5)
    assert relay.messages == []


def test_known_customers_and_threads_are_flagged_never_quarantined(
        spamd: Daemon, relay: RelayStub) -> None:
    first = spamd.audit_for(queue_id_of(send(spamd.port, mail("Invoice question"),
                                             mail_from=JANE)[1]))
    tid = first["ticket_id"]
    relay.wait_for(1)
    known = spamd.audit_for(queue_id_of(send(spamd.port, mail("Another question", score=8),
                                             mail_from=JANE)[1]))
    assert known["action"] == "created_ticket", known
    assert known["spam"]["action"] == "flagged"
    assert "known customer" in known["spam"]["note"]
    mid = spamd.json("tickets", "show", str(tid))["messages"][0]["message_id"]
    reply = mail("Re: Invoice question", sender="colleague@customer-two.test", score=8,
                 extra=f"In-Reply-To: <{mid}>\r\n")
    threaded = spamd.audit_for(queue_id_of(send(spamd.port, reply,
                                                mail_from="colleague@customer-two.test")[1]))
    assert threaded["action"] == "appended" and threaded["ticket_id"] == tid
    assert threaded["spam"]["action"] == "flagged"
    assert f"belongs to ticket #{tid}" in threaded["spam"]["note"]
    shown = spamd.json("tickets", "show", str(known["ticket_id"]))["messages"][0]["spam"]
    assert shown["action"] == "flagged" and shown["score"] >= 6
    assert spamd.json("spam", "list") == []
    rows = wait_outgoing(spamd, lambda rows: len(rows) == 2)
    assert all(r["status"] == "suppressed" or r["ticket_id"] == tid for r in rows)
    assert len(relay.messages) == 1  # only the first, clean mail was acknowledged


def test_unauthenticated_mail_gets_no_acknowledgement_and_a_forged_customer_is_quarantined(
        make_daemon: Callable[..., Daemon], relay: RelayStub, rspamd: RspamdServer) -> None:
    """customer.test publishes DMARC p=reject: unsigned mail in its name fails. The first one
    makes a ticket (Jane becomes a known customer) but is never answered; a doubtful one in
    her name is quarantined: a forged From earns no customer's exemption."""
    from conftest import outbound_config

    with DnsTestServer([("_dmarc.customer.test", "TXT", "v=DMARC1; p=reject")]) as dns:
        d = make_daemon(extra=outbound_config(relay.port, spam_section(rspamd.url) + (
            f'\n[auth]\nnameservers = ["{dns.address}"]\ndns_timeout = 2\n')))
        first = d.audit_for(queue_id_of(send(d.port, mail("Password reset"),
                                             mail_from=JANE)[1]))
        assert first["action"] == "created_ticket" and first["auth"]["verdict"] == "fail"
        (ack,) = wait_outgoing(d, lambda rows: len(rows) == 1)
        assert ack["status"] == "suppressed" and "unauthenticated sender" in ack["last_error"]
        forged = d.audit_for(queue_id_of(send(d.port, mail("Wire money", score=8),
                                              mail_from=JANE)[1]))
        assert forged["action"] == "spam"
    time.sleep(0.5)
    assert relay.messages == []


def test_a_big_message_is_streamed_to_rspamd_from_its_spool_file(spamd: Daemon) -> None:
    """Past 512 KiB a message is received into a file: rspamd gets all of it, headers (the
    marker) and the end of the body (GTUBE in a last part) alike, and the ticket gets it byte
    for byte."""
    filler = "".join(f"line {i} of a long report, nothing to see here\r\n" for i in range(30000))
    assert len(filler) > 1024 * 1024
    quarantined = spamd.audit_for(queue_id_of(send(spamd.port, mail("Big doubtful", score=8,
                                                                      body=filler))[1]))
    assert quarantined["action"] == "spam" and quarantined["size"] > 1024 * 1024
    # rspamd looks for GTUBE in small text parts only: a last part after the big one
    multipart = ("--b1\r\nContent-Type: text/plain\r\n\r\n" + filler +
                 f"--b1\r\nContent-Type: text/plain\r\n\r\n{GTUBE}\r\n--b1--\r\n")
    code, reply = send(spamd.port, mail("Big spam", body=multipart, extra=(
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n")))
    assert code == 550 and reply.startswith("5.7.1"), (code, reply)
    big = mail("Big ham", body=filler)
    ham = spamd.audit_for(queue_id_of(send(spamd.port, big, mail_from=JANE)[1]))
    assert ham["action"] == "created_ticket" and ham["spam"]["action"] == "accept"
    ticket = spamd.json("tickets", "show", str(ham["ticket_id"]))
    raw = (spamd.data_dir / ticket["messages"][0]["raw_path"]).read_bytes()
    assert raw.endswith(big.encode())


# --- the scanner down, or too slow ------------------------------------------------------------


def test_rspamd_stopped_mail_is_accepted_unscanned_or_tempfailed(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    if not available():
        pytest.skip(NO_RSPAMD)
    own = RspamdServer(tmp_path / "rspamd", shared_dns().address).start()
    try:
        d = make_daemon(extra=spam_section(own.url))
        before = d.audit_for(queue_id_of(send(d.port, mail("While it runs"))[1]))
        assert before["spam"]["action"] == "accept"
    finally:
        own.stop()
    code, reply = send(d.port, mail("While it is down"))
    assert code == 250
    row = d.audit_for(queue_id_of(reply))
    assert row["action"] == "created_ticket"
    assert row["spam"]["action"] == "unscanned" and row["spam"]["score"] is None
    assert own.url in row["spam"]["reason"]
    shown = d.cli("tickets", "show", str(row["ticket_id"]))
    assert "Spam: not scanned (unscanned); not scanned: rspamd at" in shown

    strict = make_daemon(extra=spam_section(own.url, on_error="tempfail"), name="strict")
    code, reply = send(strict.port, mail("Come back later"))
    assert code == 451 and reply.startswith("4.7.1"), (code, reply)
    (refused,) = wait_rows(strict, "audit", "incoming", "--action", "rejected")
    assert "spam scanner unavailable" in refused["reason"]
    assert strict.wait_idle()["tickets"] == 0


def test_a_silent_scanner_costs_the_timeout_and_loses_nothing(
        make_daemon: Callable[..., Daemon]) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        d = make_daemon(extra=spam_section(url, timeout=1))
        started = time.monotonic()
        code, reply = send(d.port, mail("Slow scanner"))
        took = time.monotonic() - started
    assert code == 250 and 1 <= took < 10, (code, took)
    row = d.audit_for(queue_id_of(reply))
    assert row["action"] == "created_ticket" and row["spam"]["action"] == "unscanned"
    assert "did not answer within 1s ([spam] timeout)" in row["spam"]["reason"]


# --- the admin endpoint ------------------------------------------------------------------------


def test_admin_panel_lists_the_quarantine_and_releases_with_csrf(
        make_daemon: Callable[..., Daemon], rspamd: RspamdServer) -> None:
    admin_port = free_port()
    d = make_daemon(extra=spam_section(rspamd.url) + admin_section(admin_port))
    web = Client(f"http://127.0.0.1:{admin_port}", d.data_dir / "admin.token")
    wait_http(web, d)
    script = "<script>alert(1)</script>"
    first = queue_id_of(send(d.port, mail(f"Offer {script}", score=8),
                             mail_from="promo@offers.test")[1])
    second = queue_id_of(send(d.port, mail("Second offer", score=9),
                              mail_from="promo@offers.test")[1])
    for qid in (first, second):
        assert d.audit_for(qid)["action"] == "spam"

    listed = web.get("/api/spam").json()
    assert {r["queue_id"] for r in listed} == {first, second}
    assert web.get(f"/api/spam/{first}").json()["subject"] == f"Offer {script}"
    assert web.get("/api/spam/NOSUCH").status == 404

    csrf = _hidden(web.get("/login", auth=False, cookies=True).text, "csrf")
    assert web.post("/login", auth=False, cookies=True,
                    form={"csrf": csrf, "token": web.token}).status == 303
    page = web.get("/spam", auth=False, cookies=True)
    assert page.status == 200
    assert script not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "promo@<wbr>offers.test" in page.text and MARKER_SYMBOL in page.text
    detail = web.get(f"/spam/{first}", auth=False, cookies=True)
    assert detail.status == 200 and "printer stopped printing" in detail.text
    assert web.post(f"/spam/{first}/release", auth=False, cookies=True,
                    form={"csrf": "stale"}).status == 403
    session_csrf = _hidden(page.text, "csrf")
    done = web.post(f"/spam/{first}/release", auth=False, cookies=True,
                    form={"csrf": session_csrf})
    assert done.status == 303 and done.headers["Location"] == "/spam?notice=released"

    api = web.post(f"/api/spam/{second}/release", form={})
    assert api.status == 200, api.text
    again = web.post(f"/api/spam/{second}/release", form={})
    assert again.status == 409 and "already released" in again.json()["error"]
    records = {r["queue_id"]: r for r in web.get("/api/spam?state=all").json()}
    assert records[first]["released_by"] == "admin-token (admin panel from 127.0.0.1)"
    assert records[second]["released_by"] == "admin-token (admin API from 127.0.0.1)"
    for record in records.values():
        assert d.audit_for(record["released_as"])["action"] == "created_ticket"
    assert web.get("/api/spam").json() == []


def test_doctor_says_whether_rspamd_answers(tmp_path: Path, rspamd: RspamdServer) -> None:
    def spam_check(settings: str) -> str:
        path = tmp_path / "mailgate.toml"
        path.write_text(f'[storage]\ndata_dir = "data"\n{settings}')
        doctor = Doctor(str(path), timeout=2)
        return next(c.line() for c in doctor.checks() if c.name == "spam")

    assert spam_check(spam_section(rspamd.url)).startswith(f"ok    spam      rspamd answers at"
                                                         f" {rspamd.url}")
    dead = f"http://127.0.0.1:{free_port()}"
    line = spam_check(spam_section(dead))
    assert line.startswith("warn") and "mail is taken unscanned" in line and "fix:" in line
    line = spam_check(spam_section(dead, on_error="tempfail"))
    assert line.startswith("FAIL") and "every mail gets 451 4.7.1" in line


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(("lines", "message"), [
    ('on_error = "drop"', '[spam] on_error: expected "accept" or "tempfail", got \'drop\''),
    ("reject_score = 5\nquarantine_score = 8", "[spam] quarantine_score: must not be above"
                                               " reject_score (5)"),
    ('rspamd = "ftp://127.0.0.1:11333"', "[spam] rspamd: expected the URL of rspamd's"),
    ('rspamd = "http://127.0.0.1:11333/checkv2"', "[spam] rspamd: expected the URL"),
    ("timeout = 0", "[spam] timeout: must be between 0 and 600 seconds"),
    ('timeout = "5"', "[spam] timeout: expected a number (seconds), got '5'"),
    ("reject = 10", "[spam] reject: unknown key"),
])
def test_bad_spam_settings_are_one_line_naming_file_and_key(tmp_path: Path, lines: str,
                                                           message: str) -> None:
    path = tmp_path / "mailgate.toml"
    path.write_text(f"[spam]\n{lines}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_spam_defaults_and_no_scanning_without_rspamd(tmp_path: Path) -> None:
    path = tmp_path / "mailgate.toml"
    path.write_text("[spam]\nreject_score = 12\n")
    spam = load_config(path).spam
    assert spam == Spam(reject_score=12.0) and not spam.enabled
    assert (spam.quarantine_score, spam.no_autoreply_score, spam.timeout, spam.on_error) == (
        6.0, 4.0, 10.0, "accept")
    path.write_text('[spam]\nrspamd = "http://127.0.0.1:11333/"\n')
    assert load_config(path).spam.rspamd == "http://127.0.0.1:11333"
