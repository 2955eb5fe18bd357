"""Attachments people can open, end to end against a running daemon (SMTP over loopback, the
admin endpoint over HTTP, the CLI on the same data directory).

- TNEF: a winmail.dat written by real Outlook installations (tests/fixtures/tnef, from
  tnefparse's own test suite) becomes the files it holds — names, sizes and sha256 as tnefparse
  reads them — next to the winmail.dat itself; a TNEF-only mail takes its body; a broken TNEF,
  or one built to keep the decoder busy for hours, is kept with a defect and stops nothing.
- A forwarded message (message/rfc822 without a filename) is listed by its subject and From.
- An HTML mail's `cid:` image shows in the panel from our own endpoint only (the session
  required), and no remote image is left in the frame.
- Downloads from the API and the panels: `Content-Disposition: attachment` with an RFC 6266
  filename, the stored type except HTML/SVG, nosniff, the token or session required, 404 for
  another message's attachment; the CLI's `tickets attachment` and `tickets raw` byte-exact.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import html
import json
import logging
import re
import struct
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import Daemon, free_port, queue_id_of, send, write_config
from test_admin import Client, Reply, _hidden, admin_section, wait_http

from mailgate.cli import cli

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tnef"
CUSTOMER = "olga.outlook@customer.test"


def tnef_files(name: str) -> list[tuple[str, bytes]]:
    """What tnefparse itself reads out of a fixture: (long file name, bytes) per file."""
    from tnefparse.tnef import TNEF

    logging.getLogger("tnefparse").setLevel(logging.CRITICAL)
    t = TNEF((FIXTURES / name).read_bytes())
    return [(a.long_filename(), a.data) for a in t.attachments]


def png(width: int = 3, height: int = 2) -> bytes:
    """A real PNG image (red pixels), as a mail client would attach one."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                               0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode().replace("\n", "\r\n")


def mime(subject: str, parts: list[str], *, top: str = "multipart/mixed") -> str:
    mid = f"<{time.time_ns()}.{abs(hash(subject))}@customer.test>"
    head = (f"From: Olga Outlook <{CUSTOMER}>\r\nTo: support@example.com\r\n"
            f"Subject: {subject}\r\nMessage-ID: {mid}\r\nMIME-Version: 1.0\r\n")
    body = "".join(f"--BOUNDARY\r\n{p}\r\n" for p in parts)
    return head + f"Content-Type: {top}; boundary=BOUNDARY\r\n\r\n{body}--BOUNDARY--\r\n"


def text_part(text: str) -> str:
    return f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}"


def file_part(ctype: str, data: bytes, *, name: str | None = None, extra: str = "") -> str:
    disposition = (f'Content-Disposition: attachment; filename="{name}"\r\n'
                   if name is not None else "")
    return (f"Content-Type: {ctype}\r\n{disposition}{extra}"
            f"Content-Transfer-Encoding: base64\r\n\r\n{b64(data)}")


def tnef_part(data: bytes) -> str:
    return file_part("application/ms-tnef; name=winmail.dat", data, name="winmail.dat")


@dataclass
class Desk:
    daemon: Daemon
    http: Client

    def deliver(self, message: str) -> dict[str, Any]:
        """Send one mail; return its ticket as `tickets show --json` gives it."""
        code, reply = send(self.daemon.port, message, mail_from=CUSTOMER)
        assert code == 250, reply
        row = self.daemon.audit_for(queue_id_of(reply), timeout=60)
        assert row["action"] == "created_ticket", row
        return self.daemon.json("tickets", "show", str(row["ticket_id"]))

    def login(self) -> Client:
        web = Client(self.http.base, self.http.token_file)
        csrf = _hidden(web.get("/login", auth=False, cookies=True).text, "csrf")
        ok = web.post("/login", auth=False, cookies=True,
                      form={"csrf": csrf, "token": web.token, "next": "/"})
        assert ok.status == 303, ok.text
        return web


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    port, admin_port = free_port(), free_port()
    cfg = write_config(tmp_path_factory.mktemp("attachments"), port, admin_section(admin_port))
    daemon = Daemon(cfg, port)
    daemon.start()
    client = Client(f"http://127.0.0.1:{admin_port}", daemon.data_dir / "admin.token")
    try:
        wait_http(client, daemon)
        yield Desk(daemon, client)
    finally:
        daemon.stop()


def only_message(ticket: dict[str, Any]) -> dict[str, Any]:
    assert len(ticket["messages"]) == 1, ticket
    return ticket["messages"][0]


def run_cli(daemon: Daemon, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", str(daemon.config), *args])


# --- TNEF ------------------------------------------------------------------------------------


def test_tnef_mail_becomes_a_ticket_with_the_files_inside_and_the_winmail_dat(
        desk: Desk, tmp_path: Path) -> None:
    raw = (FIXTURES / "umlaut.tnef").read_bytes()
    ticket = desk.deliver(mime("Rechnung im Anhang", [
        text_part("Anbei die Dateien."), tnef_part(raw)]))
    message = only_message(ticket)
    atts = message["attachments"]
    container = atts[0]
    assert container["filename"] == "winmail.dat"
    assert container["content_type"] == "application/ms-tnef"
    assert container["sha256"] == hashlib.sha256(raw).hexdigest()  # the original, kept
    assert container["details"] == {"tnef": "container", "files": "3"}

    expected = tnef_files("umlaut.tnef")
    assert [n for n, _ in expected] == ["TBZ PARIV GmbH.jpg", "image003.jpg",
                                        "UmlautAnhang-äüö.txt"]
    unpacked = atts[1:]
    assert [(a["filename"], a["size"], a["sha256"]) for a in unpacked] == [
        (name, len(data), hashlib.sha256(data).hexdigest()) for name, data in expected]
    assert [a["content_type"] for a in unpacked] == ["image/jpeg", "image/jpeg", "text/plain"]
    assert all(a["details"] == {"from_tnef": "winmail.dat"} for a in unpacked)
    assert message["text"].startswith("Anbei die Dateien.")  # the mail's own body stays

    # the real bytes are in the store: the JPEG as Outlook attached it
    out = tmp_path / "photo.jpg"
    jpeg = run_cli(desk.daemon, "tickets", "attachment", str(unpacked[0]["id"]),
                   "--out", str(out))
    assert jpeg.exit_code == 0, jpeg.output
    assert out.read_bytes() == expected[0][1] and out.read_bytes()[:3] == b"\xff\xd8\xff"

    shown = desk.daemon.cli("tickets", "show", str(ticket["id"]))
    assert "winmail.dat (application/ms-tnef" in shown
    assert "[TNEF container, 3 file(s) unpacked]" in shown
    assert f"Attachment {unpacked[2]['id']}: UmlautAnhang-äüö.txt (text/plain, 14 bytes" in shown


def test_tnef_only_mail_takes_its_body_from_the_winmail_dat(desk: Desk) -> None:
    # Outlook's rich text: the whole mail is the TNEF, its body compressed RTF inside
    rtf = desk.deliver(mime("RTF only", [tnef_part((FIXTURES / "rtf.tnef").read_bytes())]))
    text = only_message(rtf)["text"]
    assert "aafgag'alga'kgk" in text and "-- Greg" in text and "Compuware Corporation" in text
    assert "\\par" not in text and "{\\rtf" not in text

    # an HTML body inside, no text part outside: shown as text, kept as sanitised HTML
    body = desk.deliver(mime("HTML in TNEF", [tnef_part((FIXTURES / "body.tnef").read_bytes())]))
    message = only_message(body)
    assert "THE BILL OF RIGHTS" in message["text"]
    assert "Congress shall make no law respecting" in message["text"]
    files = [a["filename"] for a in message["attachments"]]
    assert files == ["winmail.dat"]  # nothing inside but the body


def test_two_files_tnef_and_a_mail_body_that_wins(desk: Desk) -> None:
    ticket = desk.deliver(mime("Two files", [
        text_part("The logs are attached."),
        tnef_part((FIXTURES / "two-files.tnef").read_bytes())]))
    message = only_message(ticket)
    assert [(a["filename"], a["size"]) for a in message["attachments"]] == [
        ("winmail.dat", 3481), ("AUTHORS", 244), ("README", 893)]
    authors = dict(tnef_files("two-files.tnef"))["AUTHORS"]
    assert b"Authors" in authors
    assert message["attachments"][1]["sha256"] == hashlib.sha256(authors).hexdigest()
    assert message["text"].strip() == "The logs are attached."


def _tnef(mapi_properties: bytes) -> bytes:
    """A TNEF stream (signature, key) holding one MAPI properties object (level 1, 0x9003)."""
    head = struct.pack("<BHHI", 1, 0x9003, 6, len(mapi_properties))
    checksum = struct.pack("<H", sum(mapi_properties) & 0xFFFF)
    return struct.pack("<IH", 0x223E9F78, 1) + head + mapi_properties + checksum + b"\0" * 20


def _cpu_bomb() -> bytes:
    """40 bytes claiming 4,294,967,295 MAPI properties: tnefparse loops over every one of them
    (measured in-process: 12 s per million, so about 14 hours) unless something stops it."""
    return _tnef(struct.pack("<I", 2**32 - 1))


def _memory_bomb() -> bytes:
    """One multi-valued 16-bit property (type 0x1002) claiming 4,294,967,295 values: tnefparse
    appends an object per value, past the end of the data, until memory runs out."""
    return _tnef(struct.pack("<IHHI", 1, 0x1002, 0x0001, 2**32 - 1))


def test_broken_or_hostile_tnef_is_kept_with_a_defect_and_stops_nothing(desk: Desk) -> None:
    garbage = b"this is no TNEF at all\r\n" * 20
    broken = desk.deliver(mime("Broken winmail", [text_part("See attached."),
                                                  tnef_part(garbage)]))
    message = only_message(broken)
    assert [(a["filename"], a["sha256"]) for a in message["attachments"]] == [
        ("winmail.dat", hashlib.sha256(garbage).hexdigest())]
    assert any(d.startswith("TNEF unreadable") for d in message["defects"]), message["defects"]

    cpu, memory = _cpu_bomb(), _memory_bomb()
    started = time.monotonic()
    hostile = desk.deliver(mime("Hostile winmail", [text_part("Open me."), tnef_part(cpu),
                                                    tnef_part(memory)]))
    took = time.monotonic() - started
    message = only_message(hostile)
    assert [a["sha256"] for a in message["attachments"]] == [
        hashlib.sha256(cpu).hexdigest(), hashlib.sha256(memory).hexdigest()]
    assert any(d.startswith("TNEF not unpacked: ") and ("memory limit" in d or "longer than" in d)
               for d in message["defects"]), message["defects"]
    # stopped by its CPU limit (or, on a machine too busy to give it 10 s of CPU in 30 s, by
    # its wall-clock limit): seconds, not the hours it would take
    assert any(d.startswith("TNEF not unpacked: ") and ("CPU time" in d or "longer than" in d)
               for d in message["defects"]), message["defects"]
    assert took < 120, took
    # and the daemon goes on: the next mail becomes a ticket as usual
    after = desk.deliver(mime("Plain mail after the bomb", [text_part("Hello.")]))
    assert only_message(after)["text"].strip() == "Hello."


# --- forwarded mail --------------------------------------------------------------------------


def test_forwarded_message_without_a_filename_is_listed_by_subject_and_from(
        desk: Desk) -> None:
    inner = ("From: =?utf-8?q?J=C3=BCrgen_Vendor?= <jurgen@vendor.test>\r\n"
             "To: olga.outlook@customer.test\r\n"
             "Subject: =?utf-8?q?Angebot_f=C3=BCr_Q3_/_final?=\r\n"
             "Message-ID: <inner.1@vendor.test>\r\n\r\nThe offer, as discussed.\r\n")
    ticket = desk.deliver(mime("Fwd: the offer", [
        text_part("See the mail below."),
        f"Content-Type: message/rfc822\r\n\r\n{inner}"]))
    message = only_message(ticket)
    att = message["attachments"][0]
    assert att["content_type"] == "message/rfc822"
    assert att["filename"] == "Fwd - Angebot für Q3 _ final.eml"  # no "/" in a filename
    assert att["details"] == {"subject": "Angebot für Q3 / final",
                              "from": "Jürgen Vendor <jurgen@vendor.test>"}

    shown = desk.daemon.cli("tickets", "show", str(ticket["id"]))
    assert ("[forwarded message: 'Angebot für Q3 / final' from Jürgen Vendor"
            " <jurgen@vendor.test>]") in shown
    page = desk.http.get(f"/tickets/{ticket['id']}").text
    assert "Forwarded message: <strong>Angebot für Q3 / final</strong>" in page
    assert "Jürgen Vendor &lt;jurgen@vendor.test&gt;" in page

    inner_bytes = desk.http.get(f"/api/messages/{message['id']}/attachments/{att['id']}")
    assert inner_bytes.status == 200
    assert inner_bytes.headers["Content-Type"] == "message/rfc822"
    assert email.message_from_bytes(inner_bytes.body)["Message-ID"] == "<inner.1@vendor.test>"


# --- inline images ---------------------------------------------------------------------------


def _frame_images(page: str) -> list[list[str]]:
    """The img sources inside each sandboxed frame of a ticket page."""
    frames = re.findall(r'<iframe sandbox="([^"]*)"[^>]*srcdoc="([^"]*)"', page)
    return [re.findall(r'<img[^>]*?src="([^"]*)"', html.unescape(doc)) for _, doc in frames]


def test_inline_cid_image_shows_from_our_own_endpoint_only(desk: Desk) -> None:
    image = png()
    ticket = desk.deliver(mime("Screenshot inline", [
        "Content-Type: multipart/related; boundary=REL\r\n\r\n"
        "--REL\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        '<p>The error:</p><img src="cid:shot.1@customer.test" alt="screenshot">'
        '<img src="https://tracker.test/open.gif"><img src="data:image/png;base64,iVBORw0K">'
        "\r\n--REL\r\n"
        + file_part("image/png; name=shot.png", image,
                    extra="Content-ID: <shot.1@customer.test>\r\n"
                          "Content-Disposition: inline\r\n")
        + "\r\n--REL--"], top="multipart/mixed"))
    message = only_message(ticket)
    shot = next(a for a in message["attachments"] if a["content_id"] == "shot.1@customer.test")

    web = desk.login()
    page = web.get(f"/tickets/{ticket['id']}", auth=False, cookies=True)
    assert page.status == 200
    csp = page.headers["Content-Security-Policy"]
    assert "img-src 'self';" in csp and "data:" not in csp and "cid:" not in csp
    (sources,) = _frame_images(page.text)
    url = f"/messages/{message['id']}/attachments/{shot['id']}"
    assert sources == [url]  # the tracker and the data: image are gone
    assert 'sandbox="allow-same-origin"' in page.text  # so the frame's image request has
    assert "allow-scripts" not in page.text              # the session, and nothing runs

    got = web.get(url, auth=False, cookies=True)
    assert got.status == 200 and got.body == image
    assert got.headers["Content-Type"] == "image/png"
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    no_session = Client(desk.http.base, desk.http.token_file).get(url, auth=False)
    assert no_session.status == 303 and no_session.headers["Location"].startswith("/login")


# --- downloads -------------------------------------------------------------------------------


def _disposition_filename(reply: Reply) -> str:
    value = reply.headers["Content-Disposition"]
    assert value.startswith("attachment;"), value
    star = re.search(r"filename\*=UTF-8''([^;\s]+)", value)
    assert star, value
    return urllib.parse.unquote(star.group(1))


def test_downloads_from_the_api_and_the_panels(desk: Desk) -> None:
    page_html = b"<html><script>alert(document.cookie)</script></html>"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'
    pdf = b"%PDF-1.4\n% a small pdf\n"
    ticket = desk.deliver(mime("Three files", [
        text_part("Files attached."),
        file_part("text/html", page_html, name="invoice.html"),
        file_part("image/svg+xml", svg, name="logo.svg"),
        file_part("application/pdf", pdf, name='Résumé "2024".pdf')]))
    message = only_message(ticket)
    by_name = {a["filename"]: a for a in message["attachments"]}
    mid = message["id"]
    token = desk.http
    session = desk.login()

    for fetch in (lambda p: token.get("/api" + p),                      # the bearer token
                  lambda p: session.get(p, auth=False, cookies=True)):  # a panel session
        served = {}
        for name, att in by_name.items():
            r = fetch(f"/messages/{mid}/attachments/{att['id']}")
            assert r.status == 200, r.body
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert "sandbox" in r.headers["Content-Security-Policy"]
            assert _disposition_filename(r) == name
            served[name] = (r.headers["Content-Type"], r.body)
        assert served["invoice.html"] == ("application/octet-stream", page_html)
        assert served["logo.svg"] == ("application/octet-stream", svg)
        assert served["Résumé _2024_.pdf"] == ("application/pdf", pdf)

        raw = fetch(f"/messages/{mid}/raw")
        assert raw.status == 200 and raw.headers["Content-Type"] == "message/rfc822"
        assert _disposition_filename(raw) == f"message-{mid}.eml"
        assert raw.body.endswith(b"--BOUNDARY--\r\n") and b"Subject: Three files" in raw.body

    ascii_only = token.get(f"/api/messages/{mid}/attachments/{by_name['Résumé _2024_.pdf']['id']}")
    assert 'filename="R_sum_ _2024_.pdf"' in ascii_only.headers["Content-Disposition"]

    # the token or a session is required; another message's attachment is not found
    att_id = by_name["invoice.html"]["id"]
    assert token.get(f"/api/messages/{mid}/attachments/{att_id}", auth=False).status == 401
    assert token.get(f"/api/messages/{mid}/raw", auth="wrong").status == 401
    anonymous = Client(desk.http.base, desk.http.token_file)
    assert anonymous.get(f"/messages/{mid}/raw", auth=False).status == 303
    other = desk.deliver(mime("Another customer mail", [text_part("Hi.")]))
    other_mid = only_message(other)["id"]
    wrong = token.get(f"/api/messages/{other_mid}/attachments/{att_id}")
    assert wrong.status == 404, wrong.body
    assert "no attachment" in wrong.json()["error"]
    assert session.get(f"/messages/{other_mid}/attachments/{att_id}", auth=False,
                       cookies=True).status == 404
    assert token.get(f"/api/messages/{mid + 10**6}/raw").status == 404

    # an agent's reply: its raw .eml is the mail as we composed it for the relay
    sent = token.post(f"/api/tickets/{ticket['id']}/reply",
                      body={"agent": "alice@example.com", "body": "Got the three files."})
    assert sent.status == 200, sent.body
    reply_row = sent.json()["message_row"]
    mail = token.get(f"/api/messages/{reply_row}/raw")
    assert mail.status == 200 and mail.headers["Content-Type"] == "message/rfc822"
    composed = email.message_from_bytes(mail.body, policy=email.policy.default)
    assert composed["Message-ID"].strip("<>") == sent.json()["message_id"].strip("<>")
    assert "Got the three files." in composed.get_body(("plain",)).get_content()


def test_cli_exports_an_attachment_and_the_raw_message_byte_for_byte(
        desk: Desk, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    ticket = desk.deliver(mime("Binary file", [
        text_part("A binary."), file_part("application/octet-stream", data, name="blob.bin")]))
    message = only_message(ticket)
    att_id = str(message["attachments"][0]["id"])
    daemon = desk.daemon

    out = tmp_path / "blob.bin"
    done = run_cli(daemon, "tickets", "attachment", att_id, "--out", str(out))
    assert done.exit_code == 0, done.output
    assert out.read_bytes() == data
    assert f"written to {out}" in done.output

    out.write_bytes(b"precious")
    refused = run_cli(daemon, "tickets", "attachment", att_id, "--out", str(out))
    assert refused.exit_code == 1
    assert refused.output.strip().count("\n") == 0 and "--force" in refused.output
    assert out.read_bytes() == b"precious"
    forced = run_cli(daemon, "tickets", "attachment", att_id, "--out", str(out), "--force")
    assert forced.exit_code == 0 and out.read_bytes() == data

    to_stdout = run_cli(daemon, "tickets", "attachment", att_id, "--out", "-")
    assert to_stdout.exit_code == 0 and to_stdout.stdout_bytes == data

    eml = tmp_path / "message.eml"
    raw = run_cli(daemon, "tickets", "raw", str(message["id"]), "--out", str(eml))
    assert raw.exit_code == 0, raw.output
    stored = next((daemon.data_dir / "raw").rglob(f"{message['queue_id']}.eml")).read_bytes()
    assert eml.read_bytes() == stored
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    assert parsed["Subject"] == "Binary file"
    assert next(parsed.iter_attachments()).get_content() == data

    missing = run_cli(daemon, "tickets", "attachment", "999999", "--out", str(tmp_path / "x"))
    assert missing.exit_code == 1 and "no attachment #999999" in missing.output
    assert not (tmp_path / "x").exists()
    as_json = json.loads(daemon.cli("tickets", "show", str(ticket["id"]), "--json"))
    assert as_json["messages"][0]["attachments"][0]["id"] == int(att_id)
