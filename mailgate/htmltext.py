"""HTML from mail: sanitised for display, and flattened to text.

Input: HTML from a message body (hostile: scripts, trackers, broken markup). Output: `sanitize`
returns HTML that nh3 (ammonia) has reduced to safe tags and attributes, with no scripts, event
handlers or `javascript:` URLs; `to_text` returns readable plain text for HTML-only mail.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import nh3

_BLOCK = {
    "p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre",
    "table", "ul", "ol", "hr", "section", "article", "header", "footer",
}
_SKIP = {"script", "style", "head", "title", "template"}


def sanitize(html: str) -> str:
    # cid: URLs are kept: the admin panel shows them from the message's own attachments
    return nh3.clean(html, link_rel="noopener noreferrer nofollow",
                     url_schemes=nh3.ALLOWED_URL_SCHEMES | {"cid"})


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self._skip += 1
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP and self._skip:
            self._skip -= 1
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def to_text(html: str) -> str:
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # html.parser is lenient, but never let markup stop ingestion
        return re.sub(r"<[^>]*>", " ", html)
    text = "".join(parser.parts)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
