"""The web panels in a real browser: Debian's headless Chromium driven by selenium.

A person logs in with the token, searches the incoming audit for a customer's address, opens
the ticket, sends a reply, and finds it in the outgoing audit as sent by the relay (a real
aiosmtpd server). No script runs anywhere (the pages have none, and a mail's own script stays
inert in the sandboxed frame). An agent signs in with e-mail and password and replies as
themselves, with no admin page in reach. Screenshots of every panel, wide and phone-sized, are saved
under the test's tmp_path (`screens/`). Skipped, saying why, only when chromium or chromedriver
is not installed (`.ci/run` installs them).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import (
    Daemon,
    free_port,
    queue_id_of,
    record_forwarding_confirmation,
    relay_section,
    send,
)
from relay_stub import RelayStub

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip("chromium and chromedriver are not installed (apt-get install -y chromium"
                " chromium-driver; .ci/run does it)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as expected  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CUSTOMER = "dana.browser@customer.test"
SCRIPT = "<script>alert(1)</script>"


@pytest.fixture
def relay() -> Iterator[RelayStub]:
    stub = RelayStub(port=free_port()).start()
    yield stub
    stub.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {  # downloads land in tmp_path/downloads
        "download.default_directory": str(tmp_path / "downloads"),
        "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Screens:
    def __init__(self, driver: WebDriver, directory: Path) -> None:
        self.driver = driver
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.saved: list[Path] = []

    def shot(self, name: str) -> None:
        path = self.directory / f"{len(self.saved) + 1:02d}-{name}.png"
        height = self.driver.execute_script(
            "return Math.min(4000, document.documentElement.scrollHeight)")
        width = self.driver.get_window_size()["width"]
        self.driver.set_window_size(width, max(600, int(height) + 140))
        assert self.driver.save_screenshot(str(path)), path
        self.saved.append(path)


def no_alert(driver: WebDriver) -> None:
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.2)


def test_login_search_open_reply_and_see_it_sent(
        make_daemon: Callable[..., Daemon], relay: RelayStub, browser: WebDriver,
        tmp_path: Path) -> None:
    admin_port = free_port()
    daemon = make_daemon(extra=relay_section(relay.port)
                         + f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n')
    base = f"http://127.0.0.1:{admin_port}"
    for subject in ("Keyboard types only vowels", SCRIPT):
        code, reply = send(daemon.port, (
            f"From: Dana <{CUSTOMER}>\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=B\r\n\r\n"
            "--B\r\nContent-Type: text/plain\r\n\r\nEvery consonant is gone.\r\n"
            "--B\r\nContent-Type: text/html\r\n\r\n<p>Every <b>consonant</b> is gone.</p>"
            f"{SCRIPT}<img src=\"http://tracker.test/p.gif\">\r\n--B--\r\n"), mail_from=CUSTOMER)
        assert code == 250, reply
        daemon.audit_for(queue_id_of(reply))
    record_forwarding_confirmation(
        daemon.data_dir, code="482913", address="helpdesk@acme.test",
        link="https://mail-settings.google.test/mail/vf-abc123",
        subject="(#482913) Gmail Forwarding Confirmation - Receive Mail from helpdesk@acme.test")
    token = (daemon.data_dir / "admin.token").read_text().strip()
    screens = Screens(browser, tmp_path / "screens")

    # Log in: any panel sends us to the form first.
    browser.get(base + "/tickets")
    assert browser.current_url.startswith(base + "/login")
    screens.shot("login")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#token-login button").click()
    WebDriverWait(browser, 20).until(expected.url_to_be(base + "/tickets"))
    assert "Keyboard types only vowels" in browser.page_source
    screens.shot("tickets-unassigned")
    browser.get(base + "/")
    assert "Health" in browser.page_source
    screens.shot("dashboard")

    # Search the incoming audit for the customer's address.
    browser.get(base + "/audit/incoming")
    box = browser.find_element(By.NAME, "q")
    box.send_keys(CUSTOMER)
    box.submit()
    WebDriverWait(browser, 20).until(expected.url_contains("q=dana.browser%40customer.test"))
    rows = browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr")
    assert len(rows) == 2, browser.page_source
    assert any(SCRIPT in r.text for r in rows)  # shown as text, never run
    no_alert(browser)
    screens.shot("incoming-search")

    # Open the ticket from its audit row and reply.
    row = next(r for r in rows if "Keyboard types only vowels" in r.text)
    row.find_element(By.CSS_SELECTOR, "a[href^='/tickets/']").click()
    WebDriverWait(browser, 20).until(expected.url_contains("/tickets/"))
    ticket_path = browser.current_url[len(base):]
    assert browser.find_element(By.CSS_SELECTOR, "h1.subject").text == \
        "Keyboard types only vowels"
    frame = browser.find_element(By.CSS_SELECTOR, "iframe[sandbox='']")
    browser.find_element(By.CSS_SELECTOR, "details.html summary").click()
    browser.switch_to.frame(frame)
    assert "consonant" in browser.find_element(By.TAG_NAME, "body").text
    browser.switch_to.default_content()
    no_alert(browser)
    screens.shot("ticket")
    body = browser.find_element(By.ID, "reply-body")
    body.send_keys("Hello Dana,\nplease try a new keyboard.\nAlice")
    browser.find_element(By.CSS_SELECTOR, "#reply button[type=submit]").click()
    WebDriverWait(browser, 20).until(expected.url_contains("notice=replied"))
    assert browser.current_url == base + ticket_path + "?notice=replied"
    assert "Reply queued." in browser.page_source
    assert "please try a new keyboard." in browser.page_source
    screens.shot("ticket-replied")

    # The reply reached the relay and the outgoing audit says so.
    wait_until(lambda: any("please try a new keyboard." in m.data.decode(errors="replace")
                           for m in relay.messages), "the reply never reached the relay")

    def sent_row() -> bool:
        browser.get(base + f"/audit/outgoing?q={CUSTOMER}&status=sent")
        return any("agent_reply" in r.text for r in
                   browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr"))

    wait_until(sent_row, "no sent agent_reply row in the outgoing audit")
    screens.shot("outgoing")

    for path, name in (("/tickets?view=all", "tickets-all"),
                       ("/tickets?view=pending_customer", "tickets-pending-customer"),
                       ("/tickets?view=pending_agent", "tickets-pending-agent"),
                       ("/forwarding", "forwarding"), ("/orgs", "orgs"),
                       ("/templates", "templates")):
        browser.get(base + path)
        assert "mailgate" in browser.title
        no_alert(browser)
        screens.shot(name)
        if name == "forwarding":
            link = browser.find_element(By.LINK_TEXT,
                                        "https://mail-settings.google.test/mail/vf-abc123")
            assert link.get_attribute("rel") == "noopener noreferrer nofollow"
            assert "482913" in browser.page_source

    # The same pages on a phone.
    browser.set_window_size(390, 844)
    for path, name in ((ticket_path, "phone-ticket"),
                       (f"/audit/incoming?q={CUSTOMER}", "phone-incoming"),
                       ("/", "phone-dashboard")):
        browser.get(base + path)
        screens.shot(name)
        assert browser.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1"), name

    # Log out: the panels want the token again.
    browser.set_window_size(1280, 1000)
    browser.get(base + "/")
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    WebDriverWait(browser, 20).until(expected.url_contains("/login"))
    browser.get(base + "/tickets")
    assert browser.current_url.startswith(base + "/login")
    assert len(screens.saved) >= 14
    assert all(p.stat().st_size > 1000 for p in screens.saved)


def test_inline_image_shows_in_the_html_view_from_our_own_store(
        make_daemon: Callable[..., Daemon], browser: WebDriver, tmp_path: Path) -> None:
    """A mail's `cid:` image is drawn in the panel's sandboxed HTML view, fetched from our own
    endpoint with the session; its remote tracker image is never requested. (With the frame's
    sandbox left empty the image does not load: the frame's opaque origin gets no
    SameSite=Strict session cookie, hence `allow-same-origin` — and still no allow-scripts.)"""
    from test_attachments import b64, png

    admin_port = free_port()
    daemon = make_daemon(extra=f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n')
    base = f"http://127.0.0.1:{admin_port}"
    image = png(40, 30)
    code, reply = send(daemon.port, (
        f"From: Dana <{CUSTOMER}>\r\nTo: support@example.com\r\nSubject: Inline screenshot\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/related; boundary=R\r\n\r\n"
        "--R\r\nContent-Type: text/html\r\n\r\n<p>See the red box:</p>"
        '<img id="shot" src="cid:box@customer.test" alt="box">'
        '<img id="tracker" src="http://tracker.test/p.gif" alt="tracker">\r\n'
        "--R\r\nContent-Type: image/png; name=box.png\r\nContent-ID: <box@customer.test>\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{b64(image)}\r\n--R--\r\n"),
        mail_from=CUSTOMER)
    assert code == 250, reply
    ticket_id = daemon.audit_for(queue_id_of(reply))["ticket_id"]
    token = (daemon.data_dir / "admin.token").read_text().strip()

    browser.get(base + f"/tickets/{ticket_id}")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#token-login button").click()
    WebDriverWait(browser, 20).until(expected.url_to_be(base + f"/tickets/{ticket_id}"))
    frame = browser.find_element(By.CSS_SELECTOR, "details.html iframe")
    browser.find_element(By.CSS_SELECTOR, "details.html summary").click()
    browser.switch_to.frame(frame)
    shot = browser.find_element(By.CSS_SELECTOR, "img[alt=box]")
    wait_until(lambda: shot.get_property("complete"), "the inline image never finished")
    assert shot.get_property("naturalWidth") == 40, shot.get_attribute("src")
    assert shot.get_attribute("src").startswith(base + "/messages/")
    tracker = browser.find_element(By.CSS_SELECTOR, "img[alt=tracker]")
    assert not tracker.get_attribute("src")  # removed: nothing is fetched from elsewhere
    browser.switch_to.default_content()
    no_alert(browser)
    Screens(browser, tmp_path / "screens").shot("inline-image")


def test_an_agent_signs_in_with_a_password_and_replies_as_themselves(
        make_daemon: Callable[..., Daemon], relay: RelayStub, browser: WebDriver,
        tmp_path: Path) -> None:
    """Alice (role agent) signs in with her e-mail and password, sees no admin page in the
    menu and a 403 page when she types one, and replies with no agent to pick: the relay gets
    her words signed with her name."""
    from click.testing import CliRunner

    from mailgate.cli import cli

    admin_port = free_port()
    daemon = make_daemon(extra=relay_section(relay.port)
                         + f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n')
    password = "alice-Browser-Secret-9"
    result = CliRunner().invoke(cli, ["--config", str(daemon.config), "agents", "passwd",
                                      "alice@example.com", "--password-stdin"],
                                input=password + "\n")
    assert result.exit_code == 0, result.output
    base = f"http://127.0.0.1:{admin_port}"
    code, reply = send(daemon.port, f"From: Dana <{CUSTOMER}>\r\nTo: support@example.com\r\n"
                       "Subject: Mouse drifts left\r\n\r\nIt drifts.\r\n", mail_from=CUSTOMER)
    assert code == 250, reply
    ticket_id = daemon.audit_for(queue_id_of(reply))["ticket_id"]
    screens = Screens(browser, tmp_path / "screens")

    browser.get(base + f"/tickets/{ticket_id}")
    assert browser.current_url.startswith(base + "/login")
    browser.find_element(By.ID, "email").send_keys("alice@example.com")
    browser.find_element(By.ID, "password").send_keys(password)
    screens.shot("agent-login")
    browser.find_element(By.CSS_SELECTOR, "#password-login button").click()
    WebDriverWait(browser, 20).until(expected.url_to_be(base + f"/tickets/{ticket_id}"))
    assert "alice@example.com · agent" in browser.find_element(By.CSS_SELECTOR, "header").text
    nav = browser.find_element(By.TAG_NAME, "nav").text
    assert "Tickets" in nav and "Incoming" not in nav and "Organizations" not in nav
    assert not browser.find_elements(By.ID, "reply-agent")
    assert "(you)" in browser.find_element(By.ID, "reply-as").text
    browser.find_element(By.ID, "reply-body").send_keys("Hello Dana,\nnew batteries help.")
    browser.find_element(By.CSS_SELECTOR, "#reply button[type=submit]").click()
    WebDriverWait(browser, 20).until(expected.url_contains("notice=replied"))
    history = browser.find_element(By.ID, "history").text
    assert "alice@example.com" in history and "reply" in history
    screens.shot("agent-replied")
    wait_until(lambda: any("new batteries help." in m.data.decode(errors="replace")
                           and "Alice Agent" in m.message.get_body(("plain",)).get_content()
                           for m in relay.messages), "Alice's reply never reached the relay")

    browser.get(base + "/audit/incoming")
    # under load chromium has been seen to hand back an empty page source for a moment
    WebDriverWait(browser, 20).until(lambda b: "Not for your role" in b.page_source)
    screens.shot("agent-forbidden")
    no_alert(browser)
