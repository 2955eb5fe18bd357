"""Who may use the admin endpoint: the bearer token, the panels' session cookie and CSRF tokens.

Input: the `Authorization` header, the session and login cookies and the `csrf` form field of
each request (all untrusted), and the token file in `data_dir` (trusted; read again whenever it
changes, so `mailgate admin token --rotate` takes effect without a restart and ends every
session). Output: a verdict per request, as aiohttp middleware: `/api/*` and `/metrics` need
`Authorization: Bearer <token>` (else 401 JSON); the panels take the bearer token or a session
cookie (else a redirect to `/login`), and a POST made with the cookie must carry the CSRF token
of that session (else 403). Only `/api/health`, `/login` and `/static/*` are open. Secrets are
compared in constant time (`hmac.compare_digest`).

Sessions live on the server: the cookie is `<expiry>.<nonce>.<HMAC(token, expiry, nonce)>`, and
it opens the panels only while its nonce is in the daemon's session table (in memory). Logging
out removes it, so a copy of the cookie made before no longer works; a restart ends every
session; a new token invalidates every cookie (the HMAC). The CSRF token of a session is
`HMAC(token, nonce)`. The login form's own CSRF token is bound to a short-lived login cookie
with a per-process key. `safe_next` keeps the page to return to after logging in on this site.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web

from mailgate.admin import token as token_file

SESSION_COOKIE = "mailgate_session"
LOGIN_COOKIE = "mailgate_login"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 1000  # beyond this, logging in ends the oldest session
LOGIN_SECONDS = 3600
HEALTH_PATH = "/api/health"
OPEN_PATHS = frozenset({HEALTH_PATH, "/login"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _mac(key: str | bytes, *parts: str) -> str:
    key_bytes = key.encode() if isinstance(key, str) else key
    return hmac.new(key_bytes, "|".join(parts).encode(), hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time equality of two secrets (False when either is empty)."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode(), b.encode())


class Auth:
    """The token (re-read when its file changes) and the session and CSRF values built on it."""

    def __init__(self, data_dir: Path, secure_cookies: bool) -> None:
        self.data_dir = data_dir
        self.secure_cookies = secure_cookies
        self._login_key = secrets.token_bytes(32)
        self._stamp: tuple[int, int, int] | None = None
        self._token: str | None = None
        self._sessions: dict[str, int] = {}  # nonce → expiry (unix time), oldest first

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

    def bearer_ok(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.check_token(value)

    # --- sessions ---------------------------------------------------------------------------

    def new_session(self) -> str | None:
        current = self.token()
        if current is None:
            return None
        now = int(time.time())
        for nonce in [n for n, expiry in self._sessions.items() if expiry < now]:
            del self._sessions[nonce]
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        expires = now + SESSION_SECONDS
        nonce = secrets.token_urlsafe(16)
        self._sessions[nonce] = expires
        return f"{expires}.{nonce}.{_mac(current, 'session', str(expires), nonce)}"

    def session_nonce(self, cookie: str) -> str | None:
        """The nonce of a valid, unexpired session cookie whose session has not ended."""
        current = self.token()
        parts = cookie.split(".")
        if current is None or len(parts) != 3 or not parts[0].isdigit():
            return None
        expires, nonce, mac = parts
        if int(expires) < time.time() or self._sessions.get(nonce) != int(expires):
            return None
        return nonce if same(mac, _mac(current, "session", expires, nonce)) else None

    def end_session(self, cookie: str) -> None:
        """Log out: the session of this cookie ends here, for every copy of the cookie."""
        nonce = self.session_nonce(cookie)
        if nonce is not None:
            del self._sessions[nonce]

    def csrf_for(self, nonce: str) -> str:
        current = self.token() or ""
        return _mac(current, "csrf", nonce)[:40]

    def set_session(self, response: web.StreamResponse, value: str) -> None:
        response.set_cookie(SESSION_COOKIE, value, max_age=SESSION_SECONDS, path="/",
                            httponly=True, samesite="Strict", secure=self.secure_cookies)

    def clear_session(self, response: web.StreamResponse) -> None:
        response.del_cookie(SESSION_COOKIE, path="/")

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
                  " (`mailgate admin token` prints it)"},
        status=401, headers={"WWW-Authenticate": 'Bearer realm="mailgate"'})


def middleware(auth: Auth) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Sets request["auth"] ("open", "bearer" or "session") and request["csrf"] (the value
    forms must carry; "" when the request came with the bearer token)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        request["csrf"] = ""
        if path in OPEN_PATHS or path.startswith("/static/"):
            request["auth"] = "open"
            if path == HEALTH_PATH and "Authorization" in request.headers:
                if not auth.bearer_ok(request):
                    return _unauthorized()
                request["auth"] = "bearer"  # the full report
            return await handler(request)
        if auth.bearer_ok(request):
            request["auth"] = "bearer"
            return await handler(request)
        if _is_api(path):
            return _unauthorized()
        nonce = auth.session_nonce(request.cookies.get(SESSION_COOKIE, ""))
        if nonce is None:
            target = request.path_qs if request.method == "GET" else "/"
            raise web.HTTPSeeOther("/login?next=" + quote(target, safe="/"))
        request["auth"] = "session"
        request["csrf"] = auth.csrf_for(nonce)
        if request.method not in ("GET", "HEAD"):
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
