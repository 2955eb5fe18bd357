"""An agent's working day in a real browser (Debian's headless Chromium, selenium).

Alice (role agent) signs in with her password, finds a ticket by a word that is only in a
message's body, pages to the last of 250 tickets and opens it, downloads its attachment (the
same sha256 as the one mailed in), adds an internal note (no mail leaves), replies with an
attachment (it reaches the relay, a real aiosmtpd server, byte for byte), merges two tickets
and mails a reply to the merged one (it lands on the ticket it was merged into), and splits a
ticket. Screenshots of each step are saved under the test's tmp_path (`screens/`). Skipped,
saying why, only when chromium or chromedriver is not installed (as test_admin_browser.py).
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import secrets
import smtplib
import time
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner
from conftest import Daemon, free_port, queue_id_of, relay_section, send
from relay_stub import RelayStub
from test_admin_browser import (
    By,
    Screens,
    WebDriver,
    WebDriverWait,
    expected,
    wait_until,
)
from test_admin_browser import browser as browser  # the fixture, with downloads

from mailgate.cli import cli

CUSTOMER = "pat@customer.test"
PASSWORD = "alice-Workday-Secret-7"


def _mail(i: int, body: str, attachment: bytes | None = None) -> bytes:
    head = (f"From: Pat Customer <{CUSTOMER}>\r\nTo: support@example.com\r\n"
            f"Subject: Question number {i}\r\n"
            f"Message-ID: <q{i}.{time.time_ns()}@customer.test>\r\n")
    if attachment is None:
        return (head + f"\r\n{body}\r\n").encode()
    encoded = base64.encodebytes(attachment).decode().replace("\n", "\r\n")
    return (head + "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
            f"--B\r\nContent-Type: text/plain\r\n\r\n{body}\r\n"
            "--B\r\nContent-Type: application/pdf; name=report.pdf\r\n"
            "Content-Disposition: attachment; filename=report.pdf\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{encoded}--B--\r\n").encode()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _attachments(data: bytes) -> dict[str, str]:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    return {part.get_filename(): _sha(part.get_payload(decode=True))
            for part in parsed.iter_attachments()}  # type: ignore[attr-defined]


def test_an_agents_day_search_page_download_note_reply_merge_split(
        make_daemon: Callable[..., Daemon], relay: RelayStub, browser: WebDriver,
        tmp_path: Path) -> None:
    admin_port = free_port()
    d = make_daemon(extra=relay_section(relay.port)
                    + f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n')
    result = CliRunner().invoke(cli, ["--config", str(d.config), "agents", "passwd",
                                      "alice@example.com", "--password-stdin"],
                                input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    base = f"http://127.0.0.1:{admin_port}"

    # 250 tickets, in one SMTP session: the first (the oldest, the last of the list) carries
    # a PDF; the second a word nowhere else.
    report = secrets.token_bytes(20_000)
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as smtp:
        for i in range(1, 251):
            body = {1: "The report is attached.", 2: "Our quokka ate the cable."}.get(
                i, f"Something else broke, case {i}.")
            smtp.sendmail(CUSTOMER, ["support@example.com"],
                          _mail(i, body, report if i == 1 else None))
    wait_until(lambda: d.json("stats")["spool"]["incoming"] == 0
               and len(d.json("tickets", "list", "--limit", "300")) == 250,
               "the 250 tickets were not all made", timeout=120)
    screens = Screens(browser, tmp_path / "screens")

    # Sign in as Alice.
    browser.get(base + "/tickets")
    browser.find_element(By.ID, "email").send_keys("alice@example.com")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#password-login button").click()
    WebDriverWait(browser, 20).until(expected.url_contains("/tickets"))
    screens.shot("signed-in")

    # Search by a word only in a message body.
    box = browser.find_element(By.CSS_SELECTOR, "form[role=search] input[name=q]")
    box.send_keys("quokka")
    box.submit()
    WebDriverWait(browser, 20).until(expected.url_contains("q=quokka"))
    rows = browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr")
    assert len(rows) == 1 and "Question number 2" in rows[0].text, browser.page_source
    assert "1 ticket" in browser.find_element(By.ID, "ticket-count").text
    screens.shot("search")

    # Page to the last of the 250 and open it.
    browser.get(base + "/tickets?view=all")
    assert "250 tickets" in browser.find_element(By.ID, "ticket-count").text
    pages = 1
    while browser.find_elements(By.ID, "next-page"):
        browser.find_element(By.ID, "next-page").click()
        pages += 1
        assert pages < 10, "the pages never end"
    assert pages == 5  # 50 a page
    last = browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr")[-1]
    assert "Question number 1" in last.text
    screens.shot("last-page")
    last.find_element(By.CSS_SELECTOR, "a[href^='/tickets/']").click()
    WebDriverWait(browser, 20).until(expected.url_contains("/tickets/"))
    first_path = browser.current_url[len(base):]
    first = int(first_path.rsplit("/", 1)[1])

    # Download its attachment: the same bytes as mailed in.
    link = browser.find_element(By.CSS_SELECTOR,
                                "ul.attachments a[download][href*='/attachments/']")
    assert link.text == "report.pdf"
    link.click()
    downloaded = tmp_path / "downloads" / "report.pdf"
    wait_until(downloaded.exists, "the attachment was never downloaded")
    wait_until(lambda: _sha(downloaded.read_bytes()) == _sha(report),
               "the download differs from the attachment")
    screens.shot("ticket")

    # An internal note: shown, and no mail leaves.
    wait_until(lambda: any("Question number 1" in m.data.decode(errors="replace")
                           for m in relay.messages), "the acknowledgement never went out")
    before = len(relay.messages)
    outgoing_before = len(d.json("audit", "outgoing", "--ticket", str(first)))
    browser.find_element(By.ID, "note-body").send_keys("Pat called; the PDF is the old one.")
    browser.find_element(By.CSS_SELECTOR, "#note button[type=submit]").click()
    WebDriverWait(browser, 20).until(expected.url_contains("notice=noted"))
    assert "the PDF is the old one." in browser.page_source
    time.sleep(1.5)
    assert len(relay.messages) == before
    assert len(d.json("audit", "outgoing", "--ticket", str(first))) == outgoing_before
    screens.shot("note")

    # A reply with an attachment reaches the relay with the same bytes.
    manual = tmp_path / "manual.pdf"
    manual.write_bytes(secrets.token_bytes(12_345))
    browser.find_element(By.ID, "reply-body").send_keys("Hello Pat,\nhere is the manual.")
    browser.find_element(By.ID, "reply-files").send_keys(str(manual))
    browser.find_element(By.CSS_SELECTOR, "#reply button[type=submit]").click()
    WebDriverWait(browser, 20).until(expected.url_contains("notice=replied"))
    wait_until(lambda: any("here is the manual." in m.data.decode(errors="replace")
                           for m in relay.messages), "the reply never reached the relay")
    sent = next(m for m in relay.messages if b"here is the manual." in m.data)
    assert _attachments(sent.data) == {"manual.pdf": _sha(manual.read_bytes())}
    screens.shot("replied")

    # Merge ticket 3 into the first, then the customer answers ticket 3's reply address:
    # the answer lands on the first.
    third = next(t["id"] for t in d.json("tickets", "list", "--limit", "300")
                 if t["subject"] == "Question number 3")
    reply_address = d.json("tickets", "show", str(third))["reply_address"]
    browser.get(base + f"/tickets/{third}")
    browser.find_element(By.ID, "merge-into").send_keys(str(first))
    browser.find_element(By.CSS_SELECTOR, "#merge button[type=submit]").click()
    WebDriverWait(browser, 20).until(expected.url_contains(f"/tickets/{first}?notice=merged"))
    screens.shot("merged")
    code, answer = send(d.port, (
        f"From: Pat Customer <{CUSTOMER}>\r\nTo: {reply_address}\r\n"
        "Subject: Re: Question number 3\r\n\r\nThanks, the merged one works now.\r\n"),
        mail_from=CUSTOMER, rcpts=(reply_address,))
    assert code == 250, answer
    audit = d.audit_for(queue_id_of(answer))
    assert audit["ticket_id"] == first, audit
    browser.get(base + first_path)
    assert "the merged one works now." in browser.page_source

    # Split that answer off into a ticket of its own, linked to the first.
    message = next(m["id"] for m in d.json("tickets", "show", str(first))["messages"]
                   if "the merged one works now." in (m["text"] or ""))
    browser.find_element(By.CSS_SELECTOR, f"#split-message option[value='{message}']").click()
    browser.find_element(By.CSS_SELECTOR, "#split button[type=submit]").click()
    WebDriverWait(browser, 20).until(expected.url_contains("notice=split"))
    new = int(browser.current_url.split("/tickets/")[1].split("?")[0])
    assert new != first and f'href="/tickets/{first}"' in browser.page_source
    assert "the merged one works now." in browser.page_source
    screens.shot("split")
    history = [(h["actor"], h["action"]) for h in d.json("tickets", "history", str(first))]
    assert ("alice@example.com", "note") in history and ("alice@example.com", "reply") in history
    assert ("alice@example.com", "merge") in history and ("alice@example.com", "split") in history
    assert len(screens.saved) == 8 and all(p.stat().st_size > 1000 for p in screens.saved)
