"""The admin HTTP endpoint, end to end: a running daemon with `[admin] listen` on loopback, a
real aiosmtpd relay, and plain HTTP from urllib.

The API with and without the token (401), replies and assignments through it reaching the
relay, the CLI's `--json` fields, searches of both audits, the Prometheus metrics, every panel's
HTML with a `<script>` subject escaped everywhere, the login form with its session cookie and
CSRF token, token rotation, and the refusals at start (beyond loopback without TLS; a port in
use), each in one line.
"""

from __future__ import annotations

import datetime
import http.cookiejar
import json
import re
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Daemon,
    free_port,
    queue_id_of,
    record_forwarding_confirmation,
    relay_section,
    send,
    write_config,
)
from relay_stub import RelayStub

SCRIPT = "<script>alert(1)</script>"
PANELS = ("/", "/tickets", "/tickets?view=unassigned", "/tickets?view=pending_customer",
          "/tickets?view=pending_agent", "/tickets?view=all", "/audit/incoming",
          "/audit/outgoing", "/forwarding", "/orgs", "/templates", "/spam")


# --- a small HTTP client (urllib: no redirects followed, cookies kept) ----------------------


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class Client:
    base: str
    token_file: Path
    context: ssl.SSLContext | None = None
    jar: http.cookiejar.CookieJar = field(default_factory=http.cookiejar.CookieJar)

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def call(self, method: str, path: str, *, auth: bool | str = True, form: dict | None = None,
             body: Any = None, raw: bytes | None = None, cookies: bool = False) -> Reply:
        headers = {}
        data = raw
        if auth:
            headers["Authorization"] = f"Bearer {self.token if auth is True else auth}"
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            headers["Content-Type"] = "application/json"
        handlers: list[Any] = [_NoRedirect()]
        if cookies:
            handlers.append(urllib.request.HTTPCookieProcessor(self.jar))
        if self.context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.context))
        opener = urllib.request.build_opener(*handlers)
        request = urllib.request.Request(self.base + path, data=data, headers=headers,
                                         method=method)
        try:
            with opener.open(request, timeout=30) as resp:
                return Reply(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, exc.headers, exc.read())

    def get(self, path: str, **kw: Any) -> Reply:
        return self.call("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Reply:
        return self.call("POST", path, **kw)


def admin_section(port: int, extra: str = "") -> str:
    return f'\n[admin]\nlisten = "127.0.0.1:{port}"\n{extra}\n'


def wait_http(client: Client, daemon: Daemon, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.get("/api/health", auth=False).status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"admin endpoint never answered\n{daemon.log()}")
        time.sleep(0.05)


def wait_for(fetch: Callable[[], Any], ok: Callable[[Any], bool], what: str,
             timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: last value {value!r}")
        time.sleep(0.1)


@dataclass
class Admin:
    daemon: Daemon
    http: Client
    relay: RelayStub

    def mail(self, subject: str, sender: str = "jane@customer.test", html: str = "") -> dict:
        """Send one mail, wait for its incoming audit row (through the API) and return it."""
        mid = f"{time.time_ns()}.{abs(hash(subject))}@customer.test"
        headers = (f"From: Jane Doe <{sender}>\r\nTo: support@example.com\r\n"
                   f"Subject: {subject}\r\nMessage-ID: <{mid}>\r\n")
        if html:
            body = (headers + "MIME-Version: 1.0\r\n"
                    "Content-Type: multipart/alternative; boundary=XX\r\n\r\n"
                    f"--XX\r\nContent-Type: text/plain\r\n\r\nHello about {subject}.\r\n"
                    f"--XX\r\nContent-Type: text/html\r\n\r\n{html}\r\n--XX--\r\n")
        else:
            body = headers + f"\r\nHello, I need help with {subject}.\r\n"
        code, reply = send(self.daemon.port, body, mail_from=sender)
        assert code == 250, reply
        qid = queue_id_of(reply)
        rows = wait_for(lambda: self.http.get(f"/api/audit/incoming?queue_id={qid}").json(),
                        lambda rows: bool(rows), f"audit row of {qid}")
        return rows[0]


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    relay = RelayStub(port=free_port()).start()
    port, admin_port = free_port(), free_port()
    cfg = write_config(tmp_path_factory.mktemp("admin"), port,
                       relay_section(relay.port) + admin_section(admin_port))
    daemon = Daemon(cfg, port)
    daemon.start()
    client = Client(f"http://127.0.0.1:{admin_port}", daemon.data_dir / "admin.token")
    try:
        wait_http(client, daemon)
        yield Admin(daemon, client, relay)
    finally:
        daemon.stop()
        relay.stop()


# --- the API ------------------------------------------------------------------------------


def test_health_without_the_token_says_only_up_and_with_it_everything(admin: Admin) -> None:
    admin.mail("Health check mail")
    r = admin.http.get("/api/health", auth=False)
    assert r.status == 200, r.text
    assert r.json() == {"status": "up"}  # no counts, no problems, no relay address
    assert admin.http.get("/api/health", auth="wrong-token").status == 401
    health = admin.http.get("/api/health").json()
    assert health["status"] in ("ok", "degraded")
    assert health["storage"] == {"spool": "ok", "database": "ok"}
    assert set(health["spool"]) >= {"incoming", "active", "deferred", "hold", "done"}
    assert isinstance(health["outbound"], dict)
    assert health["last_mail_received_at"].endswith("Z")
    assert set(health["relay"]) >= {"host", "port", "last_ok", "last_attempt_at"}
    wait_for(lambda: admin.http.get("/api/health").json()["relay"]["last_ok"],
             lambda ok: ok is True, "the relay answered the acknowledgement")


def test_token_file_is_private_and_the_cli_prints_it(admin: Admin) -> None:
    path = admin.daemon.data_dir / "admin.token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert admin.daemon.cli("admin", "token").strip() == path.read_text().strip()


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/tickets"), ("GET", "/api/tickets/1"), ("GET", "/api/audit/incoming"),
    ("GET", "/api/audit/outgoing"), ("GET", "/api/orgs"), ("GET", "/metrics"),
    ("POST", "/api/tickets/1/reply"), ("POST", "/api/tickets/1/assign"),
    ("POST", "/api/tickets/1/status"), ("GET", "/api/no-such-route"),
])
def test_every_api_route_but_health_needs_the_token(admin: Admin, method: str, path: str
                                                    ) -> None:
    for auth in (False, "wrong-token", admin.http.token[:-1]):
        r = admin.http.call(method, path, auth=auth, form={"agent": "alice@example.com",
                                                          "body": "x", "status": "closed"})
        assert r.status == 401, (path, auth, r.text)
        assert "token" in r.json()["error"]
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_ticket_json_has_the_fields_of_the_cli(admin: Admin) -> None:
    row = admin.mail("Printer on fire")
    ticket_id = row["ticket_id"]
    api = admin.http.get(f"/api/tickets/{ticket_id}").json()
    cli = admin.daemon.json("tickets", "show", str(ticket_id))
    assert api == cli
    assert api["reply_address"].startswith("support+")
    listing = admin.http.get("/api/tickets?limit=500").json()
    assert any(t["id"] == ticket_id and t["subject"] == "Printer on fire" for t in listing)
    cli_list = admin.daemon.json("tickets", "list", "--limit", "500")
    assert set(listing[0]) >= set(cli_list[0]) - {"status_label"}


def test_reply_assign_and_status_through_the_api(admin: Admin) -> None:
    ticket_id = admin.mail("Scanner jams", sender="bob@customer.test")["ticket_id"]
    before = len(admin.relay.messages)

    r = admin.http.post(f"/api/tickets/{ticket_id}/reply",
                        body={"agent": "Alice@Example.com", "body": "Try turning it off."})
    assert r.status == 200, r.text
    result = r.json()
    assert result["status"] == "queued" and result["outbound_id"] > 0
    got = admin.relay.wait_for(before + 1, timeout=20)
    replies = [m for m in got[before:] if m.rcpt_tos == ("bob@customer.test",)
               and "Try turning it off." in m.message.get_body(("plain",)).get_content()]
    assert replies, [m.message["Subject"] for m in got]
    rows = wait_for(
        lambda: admin.http.get(f"/api/audit/outgoing?ticket={ticket_id}").json(),
        lambda rows: any(o["id"] == result["outbound_id"] and o["status"] == "sent"
                         for o in rows), "the reply marked sent")
    assert {"id", "ticket_id", "kind", "to", "subject", "status", "attempts",
            "last_error", "created_at", "sent_at"} <= set(rows[0])
    ticket = admin.http.get(f"/api/tickets/{ticket_id}").json()
    assert ticket["status"] == "pending_customer"
    assert ticket["messages"][-1]["direction"] == "out"

    r = admin.http.post(f"/api/tickets/{ticket_id}/assign", form={"agent": "alice@example.com"})
    assert r.status == 200, r.text
    assert r.json()["assignee"] == "alice@example.com"
    wait_for(lambda: [m for m in admin.relay.messages if m.rcpt_tos == ("alice@example.com",)],
             bool, "the assignee notification")
    assert admin.http.get(f"/api/tickets/{ticket_id}").json()["assignee"] == "alice@example.com"
    assigned = admin.http.get("/api/tickets?unassigned=true&limit=1000").json()
    assert ticket_id not in [t["id"] for t in assigned]

    r = admin.http.post(f"/api/tickets/{ticket_id}/status", body={"status": "resolved"})
    assert r.status == 200, r.text
    assert r.json()["status"] == "resolved"
    resolved = admin.http.get("/api/tickets?status=resolved").json()
    assert ticket_id in [t["id"] for t in resolved]
    assert all(t["status"] == "resolved" for t in resolved)
    assert admin.http.get("/api/tickets?status=resolved&org=NoSuchOrg").json() == []


@pytest.fixture(scope="module")
def error_ticket(admin: Admin) -> int:
    return int(admin.mail("Error cases")["ticket_id"])


@pytest.mark.parametrize("method,path,payload,status,words", [
    ("POST", "/api/tickets/{id}/reply", {"agent": "mallory@evil.test", "body": "hi"}, 409,
     "not a configured agent"),
    ("POST", "/api/tickets/{id}/assign", {"agent": "bob@customer.test"}, 409,
     "not a configured agent"),
    ("POST", "/api/tickets/{id}/reply", {"agent": "alice@example.com", "body": "  "}, 400,
     "body"),
    ("POST", "/api/tickets/{id}/reply", {"body": "hello"}, 400, "agent"),
    ("POST", "/api/tickets/{id}/status", {"status": "exploded"}, 400, "status"),
    ("POST", "/api/tickets/{id}/status", {}, 400, "status"),
    ("POST", "/api/tickets/{id}/status", [1, 2], 400, "object"),
    ("POST", "/api/tickets/999999/reply", {"agent": "alice@example.com", "body": "hi"}, 404,
     "no ticket #999999"),
    ("GET", "/api/tickets/999999", None, 404, "no ticket #999999"),
    ("GET", "/api/tickets?limit=0", None, 400, "limit"),
    ("GET", "/api/tickets?status=nope", None, 400, "status"),
    ("GET", "/api/tickets?unassigned=maybe", None, 400, "unassigned"),
    ("GET", "/api/audit/incoming?day=2026-02-30", None, 400, "day"),
    ("GET", "/api/audit/incoming?action=DROP%20TABLE", None, 400, "action"),
    ("GET", "/api/audit/outgoing?status=gone", None, 400, "status"),
    ("GET", "/api/audit/outgoing?ticket=x", None, 400, "ticket"),
])
def test_api_errors_are_json_with_the_right_status(
        admin: Admin, error_ticket: int, method: str, path: str, payload: Any, status: int,
        words: str) -> None:
    r = admin.http.call(method, path.format(id=error_ticket), body=payload)
    assert r.status == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert words in r.json()["error"], r.json()


def test_bad_json_is_a_400(admin: Admin, error_ticket: int) -> None:
    r = admin.http.post(f"/api/tickets/{error_ticket}/reply", raw=b"{not json")
    assert r.status == 400 and "JSON" in r.json()["error"]


def test_audit_search_by_address_subject_message_id_and_day(admin: Admin) -> None:
    row = admin.mail("Invoice 42_% missing", sender="carol.search@customer.test")
    qid = row["queue_id"]

    def found(query: str) -> list[str]:
        rows = admin.http.get("/api/audit/incoming?" + urllib.parse.urlencode(query)).json()
        return [r["queue_id"] for r in rows]

    assert qid in found({"q": "carol.search@customer"})
    assert qid in found({"q": "CAROL.SEARCH"})  # case does not matter
    assert qid in found({"q": "Invoice 42_%"})
    assert qid in found({"q": f"<{row['message_id']}>"})
    assert qid in found({"q": qid})
    assert qid not in found({"q": "Invoice 42__"})  # _ and % are taken literally
    assert qid in found({"q": "carol.search", "action": "created_ticket"})
    assert qid not in found({"q": "carol.search", "action": "duplicate"})
    today = row["received_at"][:10]
    assert qid in found({"day": today, "q": "carol"})
    assert not found({"day": "2001-01-01"})
    assert row["rcpt_to"] == ["support@example.com"]

    rows = wait_for(lambda: admin.http.get(
        "/api/audit/outgoing?q=carol.search@customer.test").json(), bool, "the acknowledgement")
    assert all(r["to"] == "carol.search@customer.test" for r in rows)
    assert admin.http.get(f"/api/audit/outgoing?day={today}&limit=1000").json()
    assert admin.http.get("/api/audit/outgoing?day=2001-01-01").json() == []
    assert admin.http.get("/api/orgs").json() == []


def test_metrics_in_prometheus_format(admin: Admin) -> None:
    admin.mail("Metrics mail")
    wait_for(lambda: admin.http.get("/api/audit/outgoing?status=sent").json(), bool,
             "a mail sent through the relay")
    r = admin.http.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    assert samples['mailgate_mail_received_total{action="created_ticket"}'] >= 1
    assert samples['mailgate_outgoing_mail{status="sent"}'] >= 1
    assert 'mailgate_spool_depth{state="hold"}' in samples
    assert samples['mailgate_spool_depth{state="done"}'] >= 1
    assert samples["mailgate_pipeline_seconds_count"] >= 1
    assert samples["mailgate_relay_seconds_count"] >= 1
    assert samples["mailgate_smtp_sessions_total"] >= 1
    assert samples["mailgate_smtp_sessions_open"] >= 0
    assert samples["mailgate_database_up"] == 1


# --- the panels ---------------------------------------------------------------------------


def add_forwarding_confirmation(data_dir: Path, link: str) -> None:
    record_forwarding_confirmation(
        data_dir, code="123456", address=f"jane{SCRIPT}@gmail.test", link=link,
        subject=f"(#123456) Gmail Forwarding Confirmation {SCRIPT}")


def test_every_panel_escapes_a_script_subject(admin: Admin) -> None:
    row = admin.mail(SCRIPT, sender="xss@customer.test",
                     html=f"<p style='color:red'>Hi <b>there</b></p>{SCRIPT}"
                          "<img src='http://tracker.test/p.gif'>")
    ticket_id = row["ticket_id"]
    add_forwarding_confirmation(admin.daemon.data_dir, "https://mail.google.test/confirm?x=1")
    add_forwarding_confirmation(admin.daemon.data_dir, "javascript:alert(1)")
    api = admin.http.get(f"/api/tickets/{ticket_id}").json()
    assert api["subject"] == SCRIPT  # JSON carries the data as it is
    wait_for(lambda: admin.http.get(f"/api/audit/outgoing?ticket={ticket_id}").json(), bool,
             "the acknowledgement")

    pages = {path: admin.http.get(path) for path in
             (*PANELS, f"/tickets/{ticket_id}", "/audit/incoming?q=xss%40customer.test",
              f"/audit/outgoing?ticket={ticket_id}", "/login")}
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for path, r in pages.items():
        assert r.status == 200, (path, r.status, r.text[:500])
        assert r.headers["Content-Type"].startswith("text/html")
        assert "<script" not in r.text.lower(), path
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src" not in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"
    for path in ("/tickets?view=all", f"/tickets/{ticket_id}", "/audit/incoming",
                 "/audit/incoming?q=xss%40customer.test", "/audit/outgoing", "/forwarding"):
        assert escaped in pages[path].text, path

    page = pages[f"/tickets/{ticket_id}"].text
    frames = re.findall(r"<iframe[^>]*>", page)
    assert frames and all('sandbox=""' in f and "srcdoc=" in f for f in frames)
    assert "unsafe-inline" in pages[f"/tickets/{ticket_id}"].headers["Content-Security-Policy"]
    assert "unsafe-inline" not in pages["/"].headers["Content-Security-Policy"]
    assert "img-src 'self';" in pages["/"].headers["Content-Security-Policy"]  # no remote,
    assert "data:" not in pages["/"].headers["Content-Security-Policy"]      # no data: images

    forwarding = pages["/forwarding"].text
    assert "123456" in forwarding and "gmail" in forwarding
    assert 'href="https://mail.google.test/confirm?x=1"' in forwarding
    assert 'href="javascript:' not in forwarding and "javascript:alert(1)" in forwarding
    assert pages["/templates"].text.count("<iframe") >= 3  # the three built-in kinds
    assert "No organizations yet" in pages["/orgs"].text


def test_panels_without_a_session_go_to_the_login_form(admin: Admin) -> None:
    for path in PANELS:
        r = admin.http.get(path, auth=False)
        assert r.status == 303, path
        location = urllib.parse.urlsplit(r.headers["Location"])
        assert location.path == "/login"
        assert urllib.parse.parse_qs(location.query)["next"] == [path]
    r = admin.http.post("/tickets/1/assign", auth=False, form={"agent": "alice@example.com"})
    assert r.status == 303 and r.headers["Location"].startswith("/login")
    assert admin.http.get("/static/admin.css", auth=False).status == 200


def _hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, html
    return match.group(1)


def test_login_session_cookie_and_csrf(admin: Admin) -> None:
    ticket_id = admin.mail("Cookie flow")["ticket_id"]
    web = Client(admin.http.base, admin.http.token_file)
    form_page = web.get("/login?next=/tickets", auth=False, cookies=True)
    assert form_page.status == 200
    csrf = _hidden(form_page.text, "csrf")

    wrong = web.post("/login", auth=False, cookies=True,
                     form={"csrf": csrf, "token": "nope", "next": "/tickets"})
    assert wrong.status == 401 and "Wrong token" in wrong.text
    no_csrf = web.post("/login", auth=False, cookies=True,
                       form={"token": web.token, "next": "/tickets"})
    assert no_csrf.status == 403
    stranger = Client(admin.http.base, admin.http.token_file)  # no login cookie: no CSRF pair
    assert stranger.post("/login", auth=False, cookies=True,
                         form={"csrf": csrf, "token": web.token}).status == 403

    ok = web.post("/login", auth=False, cookies=True,
                  form={"csrf": csrf, "token": web.token, "next": "//evil.test/x"})
    assert ok.status == 303 and ok.headers["Location"] == "/"
    cookie = next(c for c in ok.headers.get_all("Set-Cookie") if "mailgate_session=" in c)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie

    for path in PANELS:
        r = web.get(path, auth=False, cookies=True)
        assert r.status == 200, path
    page = web.get(f"/tickets/{ticket_id}", auth=False, cookies=True).text
    session_csrf = _hidden(page, "csrf")
    # The API never takes the cookie: only the bearer token.
    assert web.get("/api/tickets", auth=False, cookies=True).status == 401

    url = f"/tickets/{ticket_id}/assign"
    assert web.post(url, auth=False, cookies=True,
                    form={"agent": "alice@example.com"}).status == 403
    assert web.post(url, auth=False, cookies=True,
                    form={"agent": "alice@example.com", "csrf": csrf}).status == 403
    assert admin.http.get(f"/api/tickets/{ticket_id}").json()["assignee"] is None
    done = web.post(url, auth=False, cookies=True,
                    form={"agent": "alice@example.com", "csrf": session_csrf})
    assert done.status == 303, done.text
    assert done.headers["Location"] == f"/tickets/{ticket_id}?notice=assigned"
    assert admin.http.get(f"/api/tickets/{ticket_id}").json()["assignee"] == "alice@example.com"
    assert "Ticket assigned." in web.get(done.headers["Location"], auth=False,
                                         cookies=True).text

    bad = web.post(f"/tickets/{ticket_id}/reply", auth=False, cookies=True,
                   form={"agent": "mallory@evil.test", "body": "x", "csrf": session_csrf})
    assert bad.status == 409 and "not a configured agent" in bad.text
    status = web.post(f"/tickets/{ticket_id}/status", auth=False, cookies=True,
                      form={"status": "closed", "csrf": session_csrf})
    assert status.status == 303
    assert admin.http.get(f"/api/tickets/{ticket_id}").json()["status"] == "closed"

    out = web.post("/logout", auth=False, cookies=True, form={"csrf": session_csrf})
    assert out.status == 303 and out.headers["Location"] == "/login"
    assert web.get("/tickets", auth=False, cookies=True).status == 303


def _login(admin: Admin, next_: str = "/") -> tuple[Client, Reply]:
    web = Client(admin.http.base, admin.http.token_file)
    csrf = _hidden(web.get("/login", auth=False, cookies=True).text, "csrf")
    return web, web.post("/login", auth=False, cookies=True,
                         form={"csrf": csrf, "token": web.token, "next": next_})


def _session_cookie(web: Client) -> str:
    return next(c.value for c in web.jar if c.name == "mailgate_session")


def test_logout_ends_the_session_for_every_copy_of_the_cookie(admin: Admin) -> None:
    web, ok = _login(admin)
    assert ok.status == 303
    stolen = _session_cookie(web)  # copied before logout (a shared machine, a proxy log)

    def with_copy(path: str) -> Reply:
        request = urllib.request.Request(admin.http.base + path,
                                         headers={"Cookie": f"mailgate_session={stolen}"})
        opener = urllib.request.build_opener(_NoRedirect())
        try:
            with opener.open(request, timeout=30) as resp:
                return Reply(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, exc.headers, exc.read())

    assert with_copy("/tickets").status == 200
    csrf = _hidden(web.get("/tickets", auth=False, cookies=True).text, "csrf")
    out = web.post("/logout", auth=False, cookies=True, form={"csrf": csrf})
    assert out.status == 303 and out.headers["Location"] == "/login"
    copy = with_copy("/tickets")
    assert copy.status == 303 and copy.headers["Location"].startswith("/login")
    # Another session is not affected.
    other, ok = _login(admin)
    assert other.get("/tickets", auth=False, cookies=True).status == 200


@pytest.mark.parametrize("target", [
    "/\t/evil.test", "//evil.test", "/\\evil.test", "\\/evil.test", "https://evil.test",
    "http:/evil.test", "javascript:alert(1)", " //evil.test", "/\r\n/evil.test",
    "/%09/evil.test", "/%2F/evil.test", "%2F%2Fevil.test", "/%5Cevil.test",
    "/%252F/evil.test", "/%2509/evil.test", "/%0d%0a/evil.test",
])
def test_next_after_login_goes_nowhere_but_this_site(admin: Admin, target: str) -> None:
    web, ok = _login(admin, target)
    assert ok.status == 303 and ok.headers["Location"] == "/", (target, ok.headers["Location"])
    form = web.get("/login?" + urllib.parse.urlencode({"next": target}), auth=False,
                   cookies=True)
    assert _hidden(form.text, "next") == "/"


def test_next_after_login_keeps_a_path_of_this_site(admin: Admin) -> None:
    for target in ("/tickets?view=unassigned", "/audit/incoming?q=jane%40customer.test"):
        _web, ok = _login(admin, target)
        assert ok.status == 303 and ok.headers["Location"] == target


def test_rotating_the_token_locks_out_the_old_one_at_once(admin: Admin) -> None:
    old = admin.http.token
    web = Client(admin.http.base, admin.http.token_file)
    csrf = _hidden(web.get("/login", auth=False, cookies=True).text, "csrf")
    assert web.post("/login", auth=False, cookies=True,
                    form={"csrf": csrf, "token": old}).status == 303
    assert web.get("/tickets", auth=False, cookies=True).status == 200

    new = admin.daemon.cli("admin", "token", "--rotate").strip()
    assert new != old and admin.http.token == new
    assert (admin.daemon.data_dir / "admin.token").stat().st_mode & 0o777 == 0o600
    assert admin.http.get("/api/tickets", auth=old).status == 401
    assert admin.http.get("/api/tickets", auth=new).status == 200
    assert web.get("/tickets", auth=False, cookies=True).status == 303  # the session ended


# --- health of the spool and the database ----------------------------------------------------


def admin_daemon(make_daemon: Callable[..., Daemon], extra: str = "", name: str = "d"
                 ) -> tuple[Daemon, Client]:
    """A daemon (config `extra` added) with the admin endpoint on a free port, once it
    answers, and a client holding its token."""
    admin_port = free_port()
    daemon = make_daemon(extra=extra + admin_section(admin_port), name=name)
    client = Client(f"http://127.0.0.1:{admin_port}", daemon.data_dir / "admin.token")
    wait_http(client, daemon)
    return daemon, client


def _admin_daemon(make_daemon: Callable[..., Daemon], relay: RelayStub, name: str
                  ) -> tuple[Daemon, Client]:
    return admin_daemon(make_daemon, relay_section(relay.port), name)


def _try_health(client: Client) -> Any:
    try:
        return client.get("/api/health").json()
    except OSError:
        return None


def _damage_table_pages(path: Path) -> int:
    """Overwrite every table leaf page but the first (the schema) of a stopped SQLite file."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[16:18], "big") or 65536
    leaves = [n for n in range(1, len(data) // size) if data[n * size] == 0x0D]
    for n in leaves:
        data[n * size:(n + 1) * size] = b"\xa5" * size
    path.write_bytes(bytes(data))
    return len(leaves)


def test_health_reports_a_damaged_spool(make_daemon: Callable[..., Daemon], relay: RelayStub
                                        ) -> None:
    daemon, client = _admin_daemon(make_daemon, relay, "damaged")
    for i in range(60):
        code, _ = send(daemon.port, f"From: jane@customer.test\r\nSubject: fill {i}\r\n\r\n"
                       + "x" * 300 + "\r\n")
        assert code == 250
    daemon.wait_idle()
    daemon.stop()
    assert _damage_table_pages(daemon.data_dir / "spool.db") >= 1
    daemon.start()
    health = wait_for(lambda: _try_health(client), bool, "the admin endpoint")
    assert health["status"] == "degraded", health
    spool = str(daemon.data_dir / "spool.db")
    assert "damaged" in health["storage"]["spool"] and spool in health["storage"]["spool"]
    assert any(spool in p and "quick_check" in p for p in health["problems"]), health
    assert health["storage"]["database"] == "ok"
    down = client.get("/api/health", auth=False)
    assert down.status == 503 and down.json() == {"status": "down"}


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_health_reports_a_database_deleted_or_replaced_under_a_running_daemon(
        make_daemon: Callable[..., Daemon], relay: RelayStub, how: str) -> None:
    daemon, client = _admin_daemon(make_daemon, relay, how)
    assert send(daemon.port, "From: jane@customer.test\r\nSubject: hi\r\n\r\nhi\r\n")[0] == 250
    daemon.wait_idle()
    assert client.get("/api/health", auth=False).json() == {"status": "up"}
    database = daemon.data_dir / "mailgate.db"
    if how == "deleted":
        database.unlink()
    else:  # a copy put in its place (a restore over a running daemon)
        copy = database.with_name("copy.db")
        copy.write_bytes(database.read_bytes())
        copy.replace(database)
    health = client.get("/api/health").json()
    assert health["status"] == "degraded"
    words = "is gone" if how == "deleted" else "was replaced by another file"
    assert health["storage"]["database"].startswith(f"the database {database} {words}")
    assert health["storage"]["database"] in health["problems"]
    down = client.get("/api/health", auth=False)
    assert down.status == 503 and down.json() == {"status": "down"}


# --- refusals at start, and TLS -------------------------------------------------------------


def _serve(config: Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailgate", "--config", str(config), "serve"],
                          capture_output=True, text=True, timeout=timeout, cwd=config.parent)


def test_listening_beyond_loopback_without_tls_is_refused(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    cfg = write_config(tmp_path, port, f'\n[admin]\nlisten = "0.0.0.0:{admin_port}"\n')
    result = _serve(cfg)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "refusing to serve the admin endpoint on 0.0.0.0" in lines[0]
    assert "tls_cert" in lines[0] and str(cfg) in lines[0]


def test_an_admin_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = write_config(tmp_path, port, admin_section(busy.getsockname()[1]))
        result = _serve(cfg)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mailgate: cannot listen on 127.0.0.1:") and "[admin] listen" in last
    assert "Traceback" not in result.stderr


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "admin.crt", directory / "admin.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_serves_https_with_secure_cookies(make_daemon: Callable[..., Daemon],
                                              tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path / "tls")
    admin_port = free_port()
    daemon = make_daemon(extra=admin_section(
        admin_port, f'tls_cert = "{cert}"\ntls_key = "{key}"'))
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    web = Client(f"https://127.0.0.1:{admin_port}", daemon.data_dir / "admin.token", ctx)
    wait_http(web, daemon)
    assert web.get("/api/tickets").status == 200
    assert web.get("/api/tickets", auth=False).status == 401
    csrf = _hidden(web.get("/login", auth=False, cookies=True).text, "csrf")
    ok = web.post("/login", auth=False, cookies=True, form={"csrf": csrf, "token": web.token})
    cookie = next(c for c in ok.headers.get_all("Set-Cookie") if "mailgate_session=" in c)
    assert "Secure" in cookie
    assert ok.headers["Strict-Transport-Security"].startswith("max-age=")
