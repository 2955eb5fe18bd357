"""HTTP responses that hand a stored file to a browser or a script, never render it.

Input: a `Download` (filename and content type from mail: untrusted). Output: an aiohttp
response with `Content-Disposition: attachment` and an RFC 6266 filename (an ASCII fallback
plus the UTF-8 `filename*`), the stored content type unless it is one a browser would run or
render as a page (HTML, XHTML, SVG, XML, scripts: sent as application/octet-stream instead),
and a Content-Security-Policy `sandbox` so that even a file opened directly runs nothing.
`X-Content-Type-Options: nosniff` and the rest come from the server's own header hook.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import web

from mailgate.admin import params
from mailgate.admin.backend import BACKEND
from mailgate.store.downloads import Download

SAFE_FALLBACK = "application/octet-stream"
# Types a browser renders as a document or runs: never served under their own name.
ACTIVE_TYPES = frozenset({
    "text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml",
    "text/xsl", "application/xslt+xml", "text/javascript", "application/javascript",
    "application/ecmascript", "text/ecmascript", "application/x-javascript", "text/css",
    "application/x-shockwave-flash", "text/vtt", "multipart/x-mixed-replace",
})
_TOKEN = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
_NOT_QUOTABLE = re.compile(r'[^\x20-\x7e]|["\\%]')
CSP = "default-src 'none'; sandbox"


def served_type(content_type: str) -> str:
    """The content type to send for a stored one: itself when it is a well-formed type that
    browsers do not render as a page or run, else application/octet-stream."""
    ctype = content_type.strip().lower()
    if not _TOKEN.match(ctype) or ctype in ACTIVE_TYPES:
        return SAFE_FALLBACK
    if ctype.endswith(("+xml", "/xml")) or "script" in ctype or "html" in ctype:
        return SAFE_FALLBACK
    return ctype


def content_disposition(filename: str) -> str:
    """`attachment; filename="<ASCII>"; filename*=UTF-8''<percent-encoded>` (RFC 6266)."""
    name = "".join(ch for ch in filename if ch >= " " and ch != "\x7f").strip() or "download"
    fallback = _NOT_QUOTABLE.sub("_", name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def response(download: Download) -> web.Response:
    return web.Response(body=download.data, headers={
        "Content-Type": served_type(download.content_type),
        "Content-Disposition": content_disposition(download.filename),
        "Content-Security-Policy": CSP,
    })


async def attachment(request: web.Request) -> web.Response:
    """GET .../messages/{message}/attachments/{attachment}: that message's attachment only."""
    message_row = params.row_id(request.match_info["message"], "a message")
    attachment_id = params.row_id(request.match_info["attachment"], "an attachment")
    b = request.app[BACKEND]
    return response(await b.run(b.attachment, message_row, attachment_id))


async def raw_message(request: web.Request) -> web.Response:
    """GET .../messages/{message}/raw: the message's .eml as it came in or went out."""
    message_row = params.row_id(request.match_info["message"], "a message")
    b = request.app[BACKEND]
    return response(await b.run(b.raw_message, message_row))


def add_routes(app: web.Application, prefix: str) -> None:
    """The two downloads under `prefix` ("/api" for the bearer token, "" for the panels)."""
    r = app.router
    r.add_get(prefix + r"/messages/{message:\d+}/attachments/{attachment:\d+}", attachment)
    r.add_get(prefix + r"/messages/{message:\d+}/raw", raw_message)
