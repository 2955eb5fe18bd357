"""Who may use the admin endpoint: bearer tokens, sessions, CSRF tokens, roles, sign-in limits.

Input: the `Authorization` header, the session and login cookies and the `csrf` form field of
each request (all untrusted); the shared admin token file in `data_dir` (trusted; read again
whenever it changes, so `mailgate admin token --rotate` takes effect without a restart and
ends every session opened with it); the agents' credentials and sessions in the database
(`mailgate.store.accounts`, shared by every node); the config's agents and their roles.
Output: a verdict per request, as aiohttp middleware, and `request["principal"]` (who acts,
which role: `mailgate.admin.principal`):
- `/api/*` and `/metrics` take `Authorization: Bearer <token>`: the shared admin token (role
  admin, actor `admin-token`) or an agent's personal token (`mailgate agents token`; the
  agent's role and address). Else 401 JSON.
- The panels take a bearer token too, or a session cookie (else a redirect to `/login`); a POST
  made with the cookie must carry the CSRF token of that session (else 403).
- Role `agent` opens only the dashboard, the tickets and their downloads: anything else is 403
  (JSON on the API, a page on the panels).
Only `/api/health`, `/login` and `/static/*` are open. Secrets are compared in constant time.

Sessions live in the database: the cookie holds a random secret, the row is keyed by its
SHA-256 (a copy of the table opens nothing). A session ends on logout, after
`[admin] session_idle_minutes` without a request, `SESSION_SECONDS` after sign-in at the
latest, when the agent's password changes (`mailgate agents passwd`) or the agent leaves the
config, and — for one opened with the shared token — when that token is rotated. The CSRF token
of a session is `HMAC(secret, "csrf")`. The login form's own CSRF token is bound to a
short-lived login cookie with a per-process key. Failed sign-ins are counted in the database
per account and per client address: beyond `ACCOUNT_FAILURES` / `IP_FAILURES` within
`FAILURE_WINDOW` seconds, sign-in answers 429 until the window has passed, even with the right
password. `safe_next` keeps the page to return to after logging in on this site.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web

from mailgate.admin import token as token_file
from mailgate.admin.principal import AGENT, TOKEN_HOLDER, Principal, may_open
from mailgate.ops import accounts as agent_accounts
from mailgate.store import accounts

SESSION_COOKIE = "mailgate_session"
LOGIN_COOKIE = "mailgate_login"
SESSION_SECONDS = 12 * 3600  # the absolute limit of a session
SESSIONS_PER_ACCOUNT = 50  # beyond this, signing in ends the account's oldest session
LOGIN_SECONDS = 3600
FAILURE_WINDOW = 15 * 60
ACCOUNT_FAILURES = 5  # failed sign-ins per account within the window, from anywhere
IP_FAILURES = 20  # failed sign-ins per client address within the window, any account
HEALTH_PATH = "/api/health"
OPEN_PATHS = frozenset({HEALTH_PATH, "/login"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Forbidden = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


def _mac(key: str | bytes, *parts: str) -> str:
    key_bytes = key.encode() if isinstance(key, str) else key
    return hmac.new(key_bytes, "|".join(parts).encode(), hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time equality of two secrets (False when either is empty)."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode(), b.encode())


def _minutes(seconds: float) -> str:
    n = max(1, math.ceil(seconds / 60))
    return f"{n} minute{'s' if n != 1 else ''}"


class Auth:
    """The shared token (re-read when its file changes), the agents' credentials and sessions
    in the database, and the CSRF values. Methods without `async` touch the database: run them
    on the backend's database thread (`backend.run`)."""

    def __init__(self, data_dir: Path, secure_cookies: bool, backend: Any) -> None:
        self.data_dir = data_dir
        self.secure_cookies = secure_cookies
        self.backend = backend  # .db, .config, .run(): mailgate.admin.backend.Backend
        self._login_key = secrets.token_bytes(32)
        self._stamp: tuple[int, int, int] | None = None
        self._token: str | None = None

    # --- the shared admin token ---------------------------------------------------------------

    def token(self) -> str | None:
        path = token_file.token_path(self.data_dir)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._stamp, self._token = None, None
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._token = token_file.read(self.data_dir)
            self._stamp = stamp
        return self._token

    def check_token(self, presented: str) -> bool:
        current = self.token()
        return current is not None and same(presented.strip(), current)

    def _token_mark(self) -> str | None:
        current = self.token()
        return None if current is None else _mac(current, "session-mark")[:32]

    def bearer(self, value: str) -> Principal | None:
        """Who a bearer token is: the shared admin token, or an agent's personal token."""
        value = value.strip()
        if self.check_token(value):
            return TOKEN_HOLDER
        agent = agent_accounts.agent_for_token(self.backend.db, self.backend.config, value)
        return None if agent is None else Principal(agent.email, agent.role, agent.name)

    # --- sessions -------------------------------------------------------------------------------

    def new_session(self, principal: Principal, remote: str) -> str:
        """A new session for `principal`; returns the cookie's secret (only its hash is kept)."""
        now = time.time()
        secret = secrets.token_urlsafe(32)
        mark = self._token_mark() if principal.is_token_holder else None
        accounts.create_session(
            self.backend.db,
            accounts.Session(agent_accounts.sha256(secret), principal.actor, mark, now, now,
                             now + SESSION_SECONDS),
            remote, SESSIONS_PER_ACCOUNT)
        return secret

    def session(self, secret: str) -> Principal | None:
        """Who the session of this cookie is, while it lasts (see the module docstring); a
        used session's last-seen time moves on."""
        if not 20 <= len(secret) <= 100:
            return None
        db, config = self.backend.db, self.backend.config
        sid = agent_accounts.sha256(secret)
        found = accounts.session(db, sid)
        if found is None:
            return None
        now = time.time()
        idle = config.admin_session_idle_minutes * 60
        if now >= found.expires_ts or now - found.seen_ts >= idle:
            accounts.end_session(db, sid)
            return None
        if found.email == TOKEN_HOLDER.actor:
            mark = self._token_mark()
            if mark is None or not same(found.token_mark or "", mark):
                return None  # the token was rotated: every session opened with it ends
            principal = TOKEN_HOLDER
        else:
            agent = config.agent(found.email)
            if agent is None:  # no longer an agent
                accounts.end_session(db, sid)
                return None
            principal = Principal(agent.email, agent.role, agent.name)
        if now - found.seen_ts >= min(60.0, idle / 10):
            accounts.touch_session(db, sid, now)
        return principal

    def end_session(self, secret: str) -> None:
        """Log out: the session of this cookie ends, for every copy of the cookie."""
        if secret:
            accounts.end_session(self.backend.db, agent_accounts.sha256(secret))

    @staticmethod
    def csrf_for(secret: str) -> str:
        return _mac(secret, "csrf")[:40]

    def set_session(self, response: web.StreamResponse, value: str) -> None:
        response.set_cookie(SESSION_COOKIE, value, max_age=SESSION_SECONDS, path="/",
                            httponly=True, samesite="Strict", secure=self.secure_cookies)

    def clear_session(self, response: web.StreamResponse) -> None:
        response.del_cookie(SESSION_COOKIE, path="/")

    # --- failed sign-ins ------------------------------------------------------------------------

    @staticmethod
    def _keys(email: str | None, remote: str) -> tuple[str, ...]:
        return ((f"account:{email}",) if email else ()) + (f"ip:{remote}",)

    def refused(self, email: str | None, remote: str) -> str | None:
        """Why sign-in is refused for now (too many failures for the account or from the
        address), None when it may be tried."""
        now = time.time()
        since = now - FAILURE_WINDOW
        db = self.backend.db
        if email:
            count, oldest = accounts.failures_since(db, f"account:{email}", since)
            if count >= ACCOUNT_FAILURES:
                wait = (oldest or now) + FAILURE_WINDOW - now
                return (f"Too many failed sign-ins for {email}: try again in"
                        f" {_minutes(wait)}.")
        count, oldest = accounts.failures_since(db, f"ip:{remote}", since)
        if count >= IP_FAILURES:
            wait = (oldest or now) + FAILURE_WINDOW - now
            return f"Too many failed sign-ins from your address: try again in {_minutes(wait)}."
        return None

    def failed(self, email: str | None, remote: str) -> None:
        now = time.time()
        accounts.record_failure(self.backend.db, self._keys(email, remote), now,
                                now - FAILURE_WINDOW)

    def check_password(self, email: str, password: str) -> Principal | None:
        agent = agent_accounts.check_password(self.backend.db, self.backend.config, email,
                                              password)
        if agent is None:
            return None
        accounts.clear_failures(self.backend.db, f"account:{agent.email}")
        return Principal(agent.email, agent.role, agent.name)

    # --- the login form's CSRF token ----------------------------------------------------------

    def login_csrf(self, request: web.Request, response: web.StreamResponse) -> str:
        """The CSRF value for the login form, bound to the login cookie (which is set, or
        refreshed, on `response`)."""
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if len(nonce) < 16:
            nonce = secrets.token_urlsafe(16)
        response.set_cookie(LOGIN_COOKIE, nonce, max_age=LOGIN_SECONDS, path="/login",
                            httponly=True, samesite="Strict", secure=self.secure_cookies)
        return _mac(self._login_key, "login", nonce)[:40]

    def login_csrf_ok(self, request: web.Request, presented: str) -> bool:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        return len(nonce) >= 16 and same(presented, _mac(self._login_key, "login", nonce)[:40])


def _is_api(path: str) -> bool:
    return path.startswith("/api/") or path == "/metrics"


def _unauthorized() -> web.Response:
    return web.json_response(
        {"error": "missing or wrong token: send 'Authorization: Bearer <token>'"
                  " (`mailgate admin token` prints it; an agent's own: `mailgate agents"
                  " token EMAIL`)"},
        status=401, headers={"WWW-Authenticate": 'Bearer realm="mailgate"'})


def _bearer_value(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value if scheme.lower() == "bearer" and value.strip() else None


def middleware(auth: Auth, forbidden: Forbidden
               ) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Sets request["auth"] ("open", "bearer" or "session"), request["principal"] (None on an
    open path without credentials) and request["csrf"] (the value forms must carry; "" when
    the request came with a bearer token). `forbidden(request, message)` renders the 403 page
    of the panels."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        request["csrf"] = ""
        request["principal"] = None
        bearer = _bearer_value(request)
        principal = None
        if bearer is not None:  # the shared token without the database; an agent's with it
            principal = (TOKEN_HOLDER if auth.check_token(bearer)
                         else await auth.backend.run(auth.bearer, bearer))
        if path in OPEN_PATHS or path.startswith("/static/"):
            request["auth"] = "open"
            if path == HEALTH_PATH and "Authorization" in request.headers:
                if principal is None:
                    return _unauthorized()
                request["auth"], request["principal"] = "bearer", principal
            return await handler(request)
        if principal is not None:
            request["auth"] = "bearer"
        elif _is_api(path):
            return _unauthorized()
        else:
            secret = request.cookies.get(SESSION_COOKIE, "")
            principal = await auth.backend.run(auth.session, secret) if secret else None
            if principal is None:
                target = request.path_qs if request.method == "GET" else "/"
                raise web.HTTPSeeOther("/login?next=" + quote(target, safe="/"))
            request["auth"] = "session"
            request["csrf"] = auth.csrf_for(secret)
        request["principal"] = principal
        if not may_open(principal, path):
            message = (f"{principal.actor} has the role {AGENT}: this page is for admins"
                       " ([[agents]] role = \"admin\")")
            if _is_api(path):
                return web.json_response({"error": message}, status=403)
            return await forbidden(request, message)
        if request["auth"] == "session" and request.method not in ("GET", "HEAD"):
            form = await request.post()
            presented = form.get("csrf")
            if not isinstance(presented, str) or not same(presented, request["csrf"]):
                return web.Response(
                    status=403, content_type="text/plain",
                    text="403: the form's CSRF token is missing or stale; reload the page and"
                         " try again\n")
        return await handler(request)

    return check


def _same_site_path(text: str) -> bool:
    """A path on this site: `/` then no second `/` or `\\`, no scheme or host, and nothing a
    browser would strip or fold into one (controls, spaces, backslashes)."""
    if not text.startswith("/") or text[1:2] in ("/", "\\"):
        return False
    if any(c <= " " or c == "\x7f" or c == "\\" for c in text):
        return False
    parts = urlsplit(text)
    return not parts.scheme and not parts.netloc


def safe_next(target: str) -> str:
    """Where to go after logging in: `target` when it is a plain-ASCII path on this site, in
    every decoding of its %-escapes too (so `/%2F/host` or `/%09/host` are refused), else `/`."""
    if not target.isascii():
        return "/"
    text = target
    for _ in range(4):
        if not _same_site_path(text):
            return "/"
        try:
            decoded = unquote(text, errors="strict")
        except UnicodeDecodeError:
            return "/"
        if decoded == text:
            return target
        text = decoded
    return "/"  # still decoding after four rounds: nothing a link of ours holds


AUTH = web.AppKey("auth", Auth)
