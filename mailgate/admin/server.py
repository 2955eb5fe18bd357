"""The admin endpoint's aiohttp application and its life inside the daemon.

Input: the config's `[admin]` settings (trusted) and the relay worker (for its health). Output:
an HTTP(S) listener on `[admin] listen` serving `mailgate.admin.api` (JSON), `/metrics` and
`mailgate.admin.panels` (HTML), behind `mailgate.admin.auth`. Every response carries a
Content-Security-Policy (no scripts at all; images only from this site; inline styles only on
the pages that show mail HTML in a sandboxed frame; downloads get their own `sandbox`
policy), `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
`X-Frame-Options: DENY` and `Cache-Control: no-store`.

Refused at start, with one line saying why (`UserError`): a listen address beyond loopback
without `[admin] tls_cert` and `tls_key` (the token would cross the network in clear text), or
an address that cannot be bound.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from mailgate.admin import api, auth, directory, panels
from mailgate.admin import token as token_file
from mailgate.admin.backend import BACKEND, Backend, RelayHealth
from mailgate.config import Config, is_loopback
from mailgate.errors import UserError
from mailgate.ops import metrics

log = logging.getLogger("mailgate.admin")

STATIC_DIR = Path(__file__).resolve().parent / "static"
# A request body may hold [admin] max_upload_bytes of files plus this much for the text fields
# and the multipart framing; the files themselves are held to the limit by the reply path.
FORM_ROOM = 1024 * 1024


def check_listen(config: Config) -> None:
    """Raise UserError when the admin endpoint would listen beyond loopback without TLS."""
    host = config.admin_host
    if host is None or is_loopback(host):
        return
    if config.admin_tls_cert is None or config.admin_tls_key is None:
        raise UserError(
            f"refusing to serve the admin endpoint on {host}:{config.admin_port} without TLS:"
            f" set [admin] tls_cert and tls_key in {config.path}, or listen on 127.0.0.1"
        )


def tls_context(config: Config) -> ssl.SSLContext | None:
    if config.admin_tls_cert is None or config.admin_tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(config.admin_tls_cert), str(config.admin_tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"[admin] tls_cert/tls_key in {config.path}: cannot load:"
                        f" {exc}") from None
    return ctx


def _csp(inline_styles: bool) -> str:
    style = "style-src 'self' 'unsafe-inline'" if inline_styles else "style-src 'self'"
    return ("default-src 'none'; " + style + "; img-src 'self'; form-action 'self';"
            " frame-ancestors 'none'; base-uri 'none'")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    h = response.headers
    if "Content-Security-Policy" not in h:  # a download sets its own, stricter one
        h["Content-Security-Policy"] = _csp(bool(request.get(panels.INLINE_STYLES)))
    h["X-Content-Type-Options"] = "nosniff"
    h["Referrer-Policy"] = "no-referrer"
    h["X-Frame-Options"] = "DENY"
    h["Cross-Origin-Opener-Policy"] = "same-origin"
    if not request.path.startswith("/static/"):
        h["Cache-Control"] = "no-store"
    if request.secure:
        h["Strict-Transport-Security"] = "max-age=31536000"


def build_app(config: Config, backend: Backend, secure: bool) -> web.Application:
    authn = auth.Auth(config.data_dir, secure_cookies=secure, backend=backend)
    app = web.Application(middlewares=[api.error_middleware,
                                       auth.middleware(authn, panels.forbidden)],
                          client_max_size=config.admin_max_upload_bytes + FORM_ROOM)
    app[BACKEND] = backend
    app[auth.AUTH] = authn
    app.on_response_prepare.append(_security_headers)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.DatabaseCollector(backend.counts))

    async def scrape(request: web.Request) -> web.Response:
        def expose() -> bytes:
            return generate_latest(REGISTRY) + generate_latest(registry)

        body = await backend.run(expose)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", scrape)
    api.add_routes(app)
    panels.add_routes(app)
    directory.add_routes(app)
    app.router.add_static("/static", STATIC_DIR, show_index=False, follow_symlinks=False)
    return app


class AdminServer:
    """Start after the SMTP server, stop at shutdown. Construct it before anything else binds:
    the constructor refuses a bad `[admin] listen` (UserError) without side effects."""

    def __init__(self, config: Config, relay: RelayHealth | None = None) -> None:
        check_listen(config)
        self.config = config
        self.relay = relay
        self.ssl = tls_context(config)
        self.backend: Backend | None = None
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl else "http"
        host = self.config.admin_host or ""
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.config.admin_port}"

    async def start(self) -> None:
        config = self.config
        token_file.load_or_create(config.data_dir)
        backend = Backend(config, self.relay)
        runner = web.AppRunner(build_app(config, backend, secure=self.ssl is not None),
                               access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, config.admin_host, config.admin_port,
                           ssl_context=self.ssl, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            backend.close()
            raise UserError(
                f"cannot listen on {config.admin_host}:{config.admin_port} ([admin] listen in"
                f" {config.path}): {exc.strerror or exc}"
            ) from None
        self.backend, self.runner = backend, runner
        log.info("admin endpoint on %s (token in %s)", self.url,
                 token_file.token_path(config.data_dir))

    def reload(self, config: Config) -> None:
        """SIGHUP: new agents, templates and branding (the listen address stays)."""
        self.config = config
        if self.backend is not None:
            self.backend.reload(config)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.backend is not None:
            self.backend.close()
            self.backend = None
