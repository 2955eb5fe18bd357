"""Agent accounts on the admin endpoint, end to end: a running daemon with `[admin] listen` on
loopback, a real aiosmtpd relay, plain HTTP from http.client (each test from its own loopback
source address, 127.0.0.x, so the per-address sign-in limits of one test never touch another),
and the CLI (`mailgate agents passwd|token|list`).

Sign-in with the right and the wrong password; agents' own API tokens; role `agent` refused
(403) on admin routes and pages and let in on tickets, role `admin` let in; the shared admin
token still working; CSRF; the per-account and per-address sign-in limits (429 even with the
right password); idle and absolute expiry of sessions; sign-out everywhere when the password
changes; logout; a reply through the API with an agent's token going out From that agent, the
actor recorded on every change; and the daemon's log never holding a password.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import Daemon, free_port, queue_id_of, relay_section, send, write_config
from relay_stub import RelayStub

from mailgate.cli import cli
from mailgate.config import load_config
from mailgate.errors import ConfigError
from mailgate.ops.accounts import sha256

ALICE = "alice@example.com"  # role agent (the default), from conftest's config
BOB = "bob@example.com"  # role agent
CAROL = "carol@example.com"  # role admin
DAVE = "dave@example.com"  # role agent: the per-account limit locks him out
ERIN = "erin@example.com"  # role agent: password changes and logout
PASSWORDS = {ALICE: "alice-Secret-4711", BOB: "bob-Secret-0815", CAROL: "carol-Secret-2024",
             DAVE: "dave-Secret-1999", ERIN: "erin-Secret-3141"}
WRONG = "Wrong-Guess-42-xyz"
AGENTS = f'''
[[agents]]
name = "Bob Agent"
email = "{BOB}"

[[agents]]
name = "Carol Admin"
email = "{CAROL}"
role = "admin"

[[agents]]
name = "Dave Agent"
email = "{DAVE}"

[[agents]]
name = "Erin Agent"
email = "{ERIN}"
'''
ADMIN_PAGES = ("/audit/incoming", "/audit/outgoing", "/forwarding", "/spam", "/orgs",
               "/templates")
ADMIN_API = ("/api/audit/incoming", "/api/audit/outgoing", "/api/orgs", "/api/spam",
             "/metrics")


# --- a small HTTP client: one loopback source address, its own cookies ----------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")


@dataclass
class Web:
    port: int
    source: str = "127.0.0.1"
    bearer: str = ""
    cookies: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, form: dict[str, str] | None = None,
             body: Any = None) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30,
                                          source_address=(self.source, 0))
        headers = {}
        data = None
        if self.bearer:
            headers["Authorization"] = f"Bearer {self.bearer}"
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            reply = Reply(resp.status, resp.headers, resp.read())
        finally:
            conn.close()
        for header in reply.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            value = rest.split(";", 1)[0]
            if value in ("", '""') or "Max-Age=0" in header:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return reply

    def get(self, path: str) -> Reply:
        return self.call("GET", path)

    def post(self, path: str, form: dict[str, str] | None = None, body: Any = None) -> Reply:
        return self.call("POST", path, form, body)

    def login(self, email: str, password: str) -> Reply:
        page = self.get("/login")
        return self.post("/login", {"csrf": hidden(page.text, "csrf"), "email": email,
                                    "password": password, "next": "/tickets"})

    def csrf(self, path: str = "/tickets") -> str:
        return hidden(self.get(path).text, "csrf")


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, html
    return match.group(1)


def run_cli(config: Path, *args: str, input: str | None = None, expect: int = 0) -> str:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], input=input)
    assert result.exit_code == expect, (result.output, result.exception)
    return result.output


@dataclass
class Desk:
    daemon: Daemon
    port: int  # the admin endpoint's
    relay: RelayStub
    tokens: dict[str, str]

    def web(self, source: str, bearer: str = "") -> Web:
        return Web(self.port, source, bearer)

    @property
    def admin_token(self) -> str:
        return (self.daemon.data_dir / "admin.token").read_text().strip()

    def ticket(self, subject: str, sender: str = "jane@customer.test") -> int:
        mid = f"{time.time_ns()}@customer.test"
        code, reply = send(self.daemon.port,
                           f"From: Jane <{sender}>\r\nTo: support@example.com\r\n"
                           f"Subject: {subject}\r\nMessage-ID: <{mid}>\r\n\r\nHelp, {subject}."
                           "\r\n", mail_from=sender)
        assert code == 250, reply
        return int(self.daemon.audit_for(queue_id_of(reply))["ticket_id"])

    def session_rows(self, email: str) -> list[tuple[Any, ...]]:
        db = self.daemon.store()
        try:
            return db.execute("SELECT id, seen_ts, expires_ts FROM agent_sessions"
                              " WHERE email = ?", (email,)).fetchall()
        finally:
            db.close()

    def db_execute(self, sql: str, args: tuple[Any, ...]) -> None:
        db = self.daemon.store()
        try:
            db.execute(sql, args)
        finally:
            db.close()


def _start_desk(directory: Path) -> Iterator[Desk]:
    relay = RelayStub(port=free_port()).start()
    port, admin_port = free_port(), free_port()
    cfg = write_config(directory, port, relay_section(relay.port) + AGENTS
                       + f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
                         "session_idle_minutes = 1\n")
    daemon = Daemon(cfg, port)
    daemon.start()
    try:
        for email, password in PASSWORDS.items():
            out = run_cli(cfg, "agents", "passwd", email, "--password-stdin",
                          input=password + "\n")
            assert out.strip() == f"password set for {email}; 0 session(s) ended"
        tokens = {email: run_cli(cfg, "agents", "token", email).strip()
                  for email in (BOB, CAROL)}
        desk = Desk(daemon, admin_port, relay, tokens)
        deadline = time.monotonic() + 20
        while True:
            try:
                if desk.web("127.0.0.1").get("/api/health").status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.05)
        yield desk
    finally:
        daemon.stop()
        relay.stop()


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    yield from _start_desk(tmp_path_factory.mktemp("agents"))


# --- the CLI ---------------------------------------------------------------------------------


def test_agents_cli_lists_hashes_and_prints_a_token_once(desk: Desk) -> None:
    cfg = desk.daemon.config
    rows = {r["email"]: r for r in json.loads(run_cli(cfg, "agents", "list", "--json"))}
    assert set(rows) == {ALICE, *PASSWORDS}
    assert rows[CAROL]["role"] == "admin" and rows[BOB]["role"] == "agent"
    assert rows[ALICE]["role"] == "agent"  # the default
    assert all(r["password"] for r in rows.values())
    assert rows[BOB]["token"] and not rows[DAVE]["token"]
    table = run_cli(cfg, "agents", "list")
    assert table.splitlines()[0].split() == ["EMAIL", "NAME", "ROLE", "PASSWORD", "TOKEN",
                                            "SESSIONS"]

    db = desk.daemon.store()
    try:
        stored = db.execute("SELECT email, password_hash, token_hash FROM agent_credentials"
                            ).fetchall()
    finally:
        db.close()
    text = repr(stored)
    assert all(p not in text for p in PASSWORDS.values())  # never in clear
    assert all(t not in text for t in desk.tokens.values())
    assert {r[0]: r[1].startswith("$argon2id$") for r in stored} == dict.fromkeys(PASSWORDS,
                                                                                  True)
    assert sha256(desk.tokens[BOB]) in text
    assert "PASSWORDS" not in cfg.read_text() and PASSWORDS[BOB] not in cfg.read_text()

    # A second token needs --rotate; the rotated one replaces the old at once.
    err = run_cli(cfg, "agents", "token", BOB, expect=1)
    assert err.count("\n") == 1 and "--rotate" in err
    assert desk.web("127.0.0.30", desk.tokens[BOB]).get("/api/me").status == 200
    new = run_cli(cfg, "agents", "token", BOB, "--rotate").strip()
    assert new != desk.tokens[BOB]
    assert desk.web("127.0.0.30", desk.tokens[BOB]).get("/api/me").status == 401
    desk.tokens[BOB] = new
    assert desk.web("127.0.0.30", new).get("/api/me").json() == {
        "actor": BOB, "role": "agent", "name": "Bob Agent"}


@pytest.mark.parametrize("args", [
    ("agents", "passwd", "mallory@evil.test", "--password-stdin"),
    ("agents", "token", "mallory@evil.test"),
])
def test_an_address_that_is_not_an_agent_is_one_line_and_exit_1(desk: Desk,
                                                                 args: tuple[str, ...]) -> None:
    out = run_cli(desk.daemon.config, *args, input="whatever-password\n", expect=1)
    assert out == f"mailgate: mallory@evil.test is not a configured agent ([[agents]] in" \
                  f" {desk.daemon.config})\n"


def test_a_short_or_mistyped_password_is_refused(desk: Desk) -> None:
    out = run_cli(desk.daemon.config, "agents", "passwd", ALICE, "--password-stdin",
                  input="short\n", expect=1)
    assert "too short" in out and out.count("\n") == 1
    assert desk.web("127.0.0.31").login(ALICE, PASSWORDS[ALICE]).status == 303  # unchanged


# --- signing in --------------------------------------------------------------------------------


def test_sign_in_with_the_right_and_the_wrong_password(desk: Desk) -> None:
    web = desk.web("127.0.0.2")
    wrong = web.login(BOB, WRONG)
    assert wrong.status == 401 and "Wrong e-mail or password." in wrong.text
    assert "mailgate_session" not in web.cookies
    unknown = web.login("nobody@example.com", WRONG)  # the same answer for a non-agent
    assert unknown.status == 401 and "Wrong e-mail or password." in unknown.text
    assert web.get("/tickets").status == 303

    ok = web.login(BOB, PASSWORDS[BOB])
    assert ok.status == 303 and ok.location == "/tickets", ok.text
    cookie = next(c for c in ok.headers.get_all("Set-Cookie") if "mailgate_session=" in c)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    page = web.get("/tickets")
    assert page.status == 200 and f"{BOB} · agent" in page.text
    # The database keeps the SHA-256 of the cookie's secret, never the secret.
    secret = web.cookies["mailgate_session"]
    ids = [row[0] for row in desk.session_rows(BOB)]
    assert sha256(secret) in ids and secret not in ids


def test_roles_on_the_api(desk: Desk) -> None:
    ticket_id = desk.ticket("Roles on the API")
    bob = desk.web("127.0.0.3", desk.tokens[BOB])
    carol = desk.web("127.0.0.3", desk.tokens[CAROL])
    shared = desk.web("127.0.0.3", desk.admin_token)
    for web in (bob, carol, shared):
        assert web.get("/api/tickets").status == 200
        assert web.get(f"/api/tickets/{ticket_id}").json()["id"] == ticket_id
        # what an agent works with: search, customers, canned replies, a ticket's history
        assert web.get("/api/tickets?q=roles").json()[0]["id"] == ticket_id
        customers = web.get("/api/customers")
        assert customers.status == 200 and customers.headers["X-Total-Count"] != "0"
        requester = web.get(f"/api/tickets/{ticket_id}").json()["requester_id"]
        assert web.get(f"/api/customers/{requester}").json()["ticket_total"] >= 1
        assert web.get("/api/canned").status == 200
        assert web.get(f"/api/tickets/{ticket_id}/actions").status == 200
    assert bob.get("/api/audit/incoming?address=x@y.test&since=2026-01-01").status == 403
    assert desk.web("127.0.0.3").get("/api/customers").status == 401
    for path in ADMIN_API:
        refused = bob.get(path)
        assert refused.status == 403, path
        assert refused.headers["Content-Type"].startswith("application/json")
        assert "role agent" in refused.json()["error"]
        assert carol.get(path).status == 200, path
        assert shared.get(path).status == 200, path
    assert bob.post("/api/spam/Q123/release").status == 403
    # Health: agents get the short answer, admins the report.
    assert bob.get("/api/health").json() == {"status": "up"}
    assert "storage" in carol.get("/api/health").json()
    assert shared.get("/api/me").json()["actor"] == "admin-token"
    assert desk.web("127.0.0.3", "mga_not-a-token").get("/api/tickets").status == 401


def test_roles_on_the_panels(desk: Desk) -> None:
    ticket_id = desk.ticket("Roles on the panels")
    bob, carol = desk.web("127.0.0.4"), desk.web("127.0.0.4")
    assert bob.login(BOB, PASSWORDS[BOB]).status == 303
    assert carol.login(CAROL, PASSWORDS[CAROL]).status == 303
    for path in ("/", "/tickets", "/tickets?view=all", f"/tickets/{ticket_id}",
                 "/tickets?q=panels", "/customers"):
        assert bob.get(path).status == 200, path
    nav = bob.get("/tickets").text
    assert 'href="/audit/incoming"' not in nav and 'href="/orgs"' not in nav
    for path in ADMIN_PAGES:
        refused = bob.get(path)
        assert refused.status == 403, path
        assert refused.headers["Content-Type"].startswith("text/html")
        assert "role agent" in refused.text and "for admins" in refused.text
        assert carol.get(path).status == 200, path
    assert 'href="/orgs"' in carol.get("/tickets").text
    # The ticket page links to its audits only for an admin.
    assert 'href="/audit/' not in bob.get(f"/tickets/{ticket_id}").text
    assert f'href="/audit/outgoing?ticket={ticket_id}"' in carol.get(f"/tickets/{ticket_id}").text


def test_the_shared_admin_token_still_signs_in(desk: Desk) -> None:
    web = desk.web("127.0.0.5")
    page = web.get("/login")
    ok = web.post("/login", {"csrf": hidden(page.text, "csrf"), "token": desk.admin_token})
    assert ok.status == 303
    assert web.get("/orgs").status == 200
    assert "admin-token · admin" in web.get("/tickets").text
    wrong = web.post("/login", {"csrf": hidden(web.get("/login").text, "csrf"),
                                "token": "nope"})
    assert wrong.status == 401 and "Wrong token" in wrong.text


def test_a_form_without_its_csrf_token_is_refused(desk: Desk) -> None:
    ticket_id = desk.ticket("CSRF for agents")
    web = desk.web("127.0.0.6")
    assert web.login(BOB, PASSWORDS[BOB]).status == 303
    url = f"/tickets/{ticket_id}/status"
    assert web.post(url, {"status": "closed"}).status == 403
    assert web.post(url, {"status": "closed", "csrf": "0" * 40}).status == 403
    other = desk.web("127.0.0.6")  # another session's token does not do either
    assert other.login(BOB, PASSWORDS[BOB]).status == 303
    assert web.post(url, {"status": "closed", "csrf": other.csrf()}).status == 403
    admin = desk.web("127.0.0.6", desk.admin_token)
    assert admin.get(f"/api/tickets/{ticket_id}").json()["status"] == "open"
    assert web.post(url, {"status": "closed", "csrf": web.csrf()}).status == 303
    assert admin.get(f"/api/tickets/{ticket_id}").json()["status"] == "closed"
    # The login form has its own CSRF token.
    assert desk.web("127.0.0.6").post("/login", {"email": BOB, "password": PASSWORDS[BOB]}
                                      ).status == 403


# --- sign-in limits ----------------------------------------------------------------------------


def test_the_per_account_limit_refuses_even_the_right_password(desk: Desk) -> None:
    web = desk.web("127.0.0.7")
    for _ in range(5):
        assert web.login(DAVE, WRONG).status == 401
    locked = web.login(DAVE, PASSWORDS[DAVE])  # the 6th attempt, with the right password
    assert locked.status == 429, locked.text
    assert f"Too many failed sign-ins for {DAVE}: try again in 15 minutes" in locked.text
    assert "mailgate_session" not in web.cookies
    # From another address too: the account is what is locked.
    assert desk.web("127.0.0.8").login(DAVE, PASSWORDS[DAVE]).status == 429
    # Another account from the first address is not locked (5 failures < 20 per address).
    assert web.login(ERIN, PASSWORDS[ERIN]).status == 303
    # When the window has passed (moved back in the database), Dave signs in again.
    desk.db_execute("UPDATE login_failures SET at_ts = at_ts - 901 WHERE key = ?",
                    (f"account:{DAVE}",))
    assert desk.web("127.0.0.8").login(DAVE, PASSWORDS[DAVE]).status == 303


def test_the_per_address_limit_refuses_even_the_right_password(desk: Desk) -> None:
    web = desk.web("127.0.0.9")
    for i in range(20):  # spread over accounts: no account reaches its own limit
        assert web.login(f"guess{i}@example.com", WRONG).status == 401
    locked = web.login(ALICE, PASSWORDS[ALICE])
    assert locked.status == 429, locked.text
    assert "Too many failed sign-ins from your address" in locked.text
    token_login = web.post("/login", {"csrf": hidden(web.get("/login").text, "csrf"),
                                      "token": desk.admin_token})
    assert token_login.status == 429  # the token form counts against the address too
    assert desk.web("127.0.0.10").login(ALICE, PASSWORDS[ALICE]).status == 303


# --- sessions ------------------------------------------------------------------------------------


def test_an_idle_session_ends(desk: Desk) -> None:
    web = desk.web("127.0.0.11")
    assert web.login(CAROL, PASSWORDS[CAROL]).status == 303
    assert web.get("/tickets").status == 200
    sid = sha256(web.cookies["mailgate_session"])
    # 59 seconds unused: still on (session_idle_minutes = 1), and using it moves it on.
    desk.db_execute("UPDATE agent_sessions SET seen_ts = ? WHERE id = ?",
                    (time.time() - 59, sid))
    assert web.get("/tickets").status == 200
    seen = next(r[1] for r in desk.session_rows(CAROL) if r[0] == sid)
    assert time.time() - seen < 5
    desk.db_execute("UPDATE agent_sessions SET seen_ts = ? WHERE id = ?",
                    (time.time() - 61, sid))
    gone = web.get("/tickets")
    assert gone.status == 303 and gone.location.startswith("/login")
    assert sid not in [r[0] for r in desk.session_rows(CAROL)]


def test_a_session_ends_at_its_absolute_expiry_even_when_used(desk: Desk) -> None:
    web = desk.web("127.0.0.12")
    assert web.login(CAROL, PASSWORDS[CAROL]).status == 303
    sid = sha256(web.cookies["mailgate_session"])
    desk.db_execute("UPDATE agent_sessions SET expires_ts = ? WHERE id = ?",
                    (time.time() - 1, sid))
    assert web.get("/tickets").status == 303


def test_a_new_password_ends_every_session_of_the_agent(desk: Desk) -> None:
    phone, laptop, other = desk.web("127.0.0.13"), desk.web("127.0.0.14"), desk.web("127.0.0.13")
    for web, who in ((phone, ERIN), (laptop, ERIN), (other, BOB)):
        assert web.login(who, PASSWORDS[who]).status == 303
        assert web.get("/tickets").status == 200
    new = "erin-New-Secret-2718"
    out = run_cli(desk.daemon.config, "agents", "passwd", ERIN, "--password-stdin",
                  input=new + "\n")
    assert re.fullmatch(rf"password set for {ERIN}; [2-9]\d* session\(s\) ended\n", out), out
    assert phone.get("/tickets").status == 303 and laptop.get("/tickets").status == 303
    assert other.get("/tickets").status == 200  # Bob's session is not Erin's
    assert desk.web("127.0.0.15").login(ERIN, PASSWORDS[ERIN]).status == 401
    assert desk.web("127.0.0.15").login(ERIN, new).status == 303
    PASSWORDS[ERIN] = new


def test_logout_ends_that_session_only(desk: Desk) -> None:
    first, second = desk.web("127.0.0.16"), desk.web("127.0.0.16")
    assert first.login(ALICE, PASSWORDS[ALICE]).status == 303
    assert second.login(ALICE, PASSWORDS[ALICE]).status == 303
    copy = Web(desk.port, "127.0.0.16", cookies=dict(first.cookies))
    out = first.post("/logout", {"csrf": first.csrf()})
    assert out.status == 303 and out.location == "/login"
    assert copy.get("/tickets").status == 303  # every copy of the cookie
    assert second.get("/tickets").status == 200


# --- who did it ---------------------------------------------------------------------------------


def speaker(mail: Any) -> str:
    """Whose words a relayed agent_reply carries: the name it is signed with (the mail itself
    speaks as the mailbox, From support@…)."""
    lines = [line.strip() for line in mail.message.get_body(("plain",)).get_content()
             .splitlines()]
    names = {"Alice Agent", "Bob Agent", "Carol Admin", "Dave Agent", "Erin Agent"}
    found = [line for line in lines if line in names]
    assert len(found) == 1, lines
    return found[0]


def senders(desk: Desk, ticket_id: int) -> list[str]:
    """The agent each agent_reply of the ticket was queued for (outbound.sender)."""
    db = desk.daemon.store()
    try:
        rows = db.execute("SELECT sender FROM outbound WHERE ticket_id = ? AND"
                          " kind = 'agent_reply' ORDER BY id", (ticket_id,)).fetchall()
    finally:
        db.close()
    return [r[0] for r in rows]


def relayed(relay: RelayStub, to: str, words: tuple[str, ...], timeout: float = 20.0
            ) -> list[Any]:
    """The relayed mails to `to` holding one of `words`, once each of `words` has arrived."""
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in list(relay.messages) if m.rcpt_tos == (to,)
                 and any(w in m.message.get_body(("plain",)).get_content() for w in words)]
        if len(found) >= len(words):
            return found
        assert time.monotonic() < deadline, [m.message["Subject"] for m in relay.messages]
        time.sleep(0.1)


def test_a_reply_with_an_agents_token_goes_out_from_that_agent(desk: Desk) -> None:
    ticket_id = desk.ticket("Printer eats paper", sender="paul@customer.test")
    bob = desk.web("127.0.0.17", desk.tokens[BOB])

    named = bob.post(f"/api/tickets/{ticket_id}/reply",
                     body={"agent": ALICE, "body": "I am Alice, honest."})
    assert named.status == 403 and "may not name alice@example.com" in named.json()["error"]
    r = bob.post(f"/api/tickets/{ticket_id}/reply", body={"body": "Bob here: fixed it."})
    assert r.status == 200, r.text
    own = bob.post(f"/api/tickets/{ticket_id}/reply",
                   body={"agent": BOB.upper(), "body": "Bob again."})
    assert own.status == 200, own.text

    replies = relayed(desk.relay, "paul@customer.test", ("Bob here", "Bob again"))
    assert all(speaker(m) == "Bob Agent" for m in replies), [speaker(m) for m in replies]
    assert not any("I am Alice" in m.data.decode(errors="replace")
                   for m in desk.relay.messages)
    messages = bob.get(f"/api/tickets/{ticket_id}").json()["messages"]
    assert [(m["direction"], m["from"]) for m in messages[1:]] == [("out", BOB), ("out", BOB)]
    assert senders(desk, ticket_id) == [BOB, BOB]

    # The shared token may still name the agent; the record says it was the token.
    shared = desk.web("127.0.0.17", desk.admin_token)
    assert shared.post(f"/api/tickets/{ticket_id}/reply",
                       body={"agent": ALICE, "body": "Alice, by the token."}).status == 200
    assert bob.post(f"/api/tickets/{ticket_id}/assign", body={"agent": CAROL}).status == 200
    run_cli(desk.daemon.config, "tickets", "status", str(ticket_id), "resolved")

    history = bob.get(f"/api/tickets/{ticket_id}/actions").json()
    assert [(a["actor"], a["action"]) for a in history] == [
        (BOB, "reply"), (BOB, "reply"), ("admin-token", "reply"), (BOB, "assign"),
        ("cli", "status")]
    assert history[2]["details"]["agent"] == ALICE
    assert history[3]["details"] == {"assignee": CAROL, "was": None}
    cli_rows = json.loads(run_cli(desk.daemon.config, "tickets", "history", str(ticket_id),
                                  "--json"))
    assert cli_rows == history
    outgoing = json.loads(run_cli(desk.daemon.config, "audit", "outgoing", "--ticket",
                                  str(ticket_id), "--json"))
    assert {o["id"] for o in outgoing} >= {r.json()["outbound_id"], own.json()["outbound_id"]}


def test_a_reply_from_the_panel_goes_out_as_the_signed_in_agent(desk: Desk) -> None:
    ticket_id = desk.ticket("Panel reply", sender="pia@customer.test")
    web = desk.web("127.0.0.18")
    assert web.login(BOB, PASSWORDS[BOB]).status == 303
    page = web.get(f"/tickets/{ticket_id}").text
    assert 'id="reply-agent"' not in page and "Bob Agent &lt;bob@example.com&gt; (you)" in page
    csrf = hidden(page, "csrf")
    forged = web.post(f"/tickets/{ticket_id}/reply",
                      {"csrf": csrf, "agent": ALICE, "body": "Forged as Alice."})
    assert forged.status == 403 and "may not name" in forged.text
    done = web.post(f"/tickets/{ticket_id}/reply", {"csrf": csrf, "body": "From Bob's panel."})
    assert done.status == 303, done.text
    (sent,) = relayed(desk.relay, "pia@customer.test", ("From Bob's panel.",))
    assert speaker(sent) == "Bob Agent" and senders(desk, ticket_id) == [BOB]
    assert not any("Forged as Alice" in m.data.decode(errors="replace")
                   for m in desk.relay.messages)
    page = web.get(f"/tickets/{ticket_id}").text
    assert re.search(r"bob@<wbr>example\.com</td><td>reply</td>", page), page


def test_participant_changes_record_the_actor(desk: Desk) -> None:
    ticket_id = desk.ticket("Participants by an agent")
    bob = desk.web("127.0.0.19", desk.tokens[BOB])
    run_cli(desk.daemon.config, "tickets", "participants", "add", str(ticket_id),
            "boss@customer.test")
    history = bob.get(f"/api/tickets/{ticket_id}/actions").json()
    assert [(a["actor"], a["action"], a["details"]) for a in history] == [
        ("cli", "participant_add", {"email": "boss@customer.test"})]


# --- the log ------------------------------------------------------------------------------------


def test_the_log_never_holds_a_password_or_a_token(desk: Desk) -> None:
    web = desk.web("127.0.0.20")
    assert web.login(BOB, "typo-" + PASSWORDS[BOB]).status == 401
    assert web.login(CAROL, PASSWORDS[CAROL]).status == 303
    log = desk.daemon.log()
    assert f"{CAROL} signed in from 127.0.0.20" in log  # the log is there, and says who
    assert f"failed sign-in for {BOB} from 127.0.0.2" in log  # (repeats beyond 20 a minute
    # are folded into one line by the log's repeat limiter)
    for secret in (*PASSWORDS.values(), WRONG, "typo-" + PASSWORDS[BOB], *desk.tokens.values(),
                   desk.admin_token):
        assert secret not in log


def test_a_password_typed_into_the_email_field_is_never_logged(
        make_daemon: Callable[..., Daemon]) -> None:
    """A daemon of its own, so that no earlier failure folds this one's log line away."""
    admin_port = free_port()
    d = make_daemon(f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n')
    web = Web(admin_port)
    deadline = time.monotonic() + 20
    while True:
        try:
            if web.get("/api/health").status == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.05)
    misplaced = "Password-In-The-Email-Box-1"
    assert web.login(misplaced, "anything-at-all").status == 401
    assert web.login("alice@example.com", "not-her-password").status == 401
    log = d.log()
    assert "failed sign-in for an address that is no agent from 127.0.0.1" in log
    assert "failed sign-in for alice@example.com from 127.0.0.1" in log  # an agent: named
    assert misplaced.lower() not in log.lower()


# --- the config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("extra,words", [
    ('[[agents]]\nemail = "x@example.com"\nrole = "boss"\n',
     '[[agents]] #2 role: expected "agent" or "admin", got \'boss\''),
    ('[[agents]]\nemail = "x@example.com"\nrole = 1\n',
     "[[agents]] #2 role: expected a string"),
    ('[admin]\nsession_idle_minutes = 0\n', "[admin] session_idle_minutes: expected more than 0"),
    ('[admin]\nsession_idle_minutes = "1h"\n',
     "[admin] session_idle_minutes: expected a number of minutes"),
])
def test_role_and_idle_minutes_are_validated(tmp_path: Path, extra: str, words: str) -> None:
    cfg = write_config(tmp_path, free_port(), extra)
    with pytest.raises(ConfigError) as caught:
        load_config(cfg)
    assert str(caught.value).startswith(f"{cfg}: ") and words in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.both_engines
def test_accounts_on_both_engines(make_daemon: Callable[..., Daemon], relay: RelayStub
                                  ) -> None:
    admin_port = free_port()
    daemon = make_daemon(extra=relay_section(relay.port) + AGENTS
                         + f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n')
    run_cli(daemon.config, "agents", "passwd", BOB, "--password-stdin",
            input=PASSWORDS[BOB] + "\n")
    token = run_cli(daemon.config, "agents", "token", BOB).strip()
    desk = Desk(daemon, admin_port, relay, {BOB: token})
    deadline = time.monotonic() + 20
    while True:
        try:
            if desk.web("127.0.0.21").get("/api/health").status == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    ticket_id = desk.ticket("Both engines", sender="eve@customer.test")
    web = desk.web("127.0.0.21")
    assert web.login(BOB, WRONG).status == 401
    assert web.login(BOB, PASSWORDS[BOB]).status == 303
    assert web.get(f"/tickets/{ticket_id}").status == 200
    assert web.get("/orgs").status == 403
    api = desk.web("127.0.0.21", token)
    assert api.post(f"/api/tickets/{ticket_id}/reply", body={"body": "Hi Eve"}).status == 200
    (sent,) = relayed(relay, "eve@customer.test", ("Hi Eve",))
    assert speaker(sent) == "Bob Agent" and senders(desk, ticket_id) == [BOB]
    assert [a["actor"] for a in api.get(f"/api/tickets/{ticket_id}/actions").json()] == [BOB]
    run_cli(daemon.config, "agents", "passwd", BOB, "--password-stdin",
            input="bob-Changed-Secret-1\n")
    assert web.get("/tickets").status == 303
