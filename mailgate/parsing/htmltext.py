"""HTML from mail: bounded, sanitised for display, and flattened to text.

Input: HTML from a message body (hostile: scripts, trackers, broken markup, any size, any
nesting). Output: `sanitize` returns HTML that nh3 (ammonia) has reduced to safe tags and
attributes, with no scripts, event handlers or `javascript:` URLs; `well_formed` returns the
same kind of HTML for text extraction (keeping `class` and `id`, which quote detection reads);
`to_text` returns readable plain text for HTML-only mail.

Work is bounded before any parser runs (`bound`): at most `MAX_HTML_CHARS` characters, cut
before the `MAX_HTML_TAGS`+1-th thing that may open a tag (`<` and a letter: every start tag,
plus some that are not). html5ever, inside nh3, spends time proportional to the depth of open
elements on each tag, and no element opens without a start tag, so its work is at most
quadratic in `MAX_HTML_TAGS` whatever the nesting (100,000 nested `<div>` took over a minute;
bounded, the worst input found — unclosed formatting tags with distinct attributes — takes well
under a second, and nh3 releases the GIL meanwhile). Real mail is far below the bound (the
corpus's largest HTML part has under 800 tags); in a longer one the end is cut, which in a reply
is the oldest quoted history. A cut is reported as one defect line; text stays
searchable in the raw message. Python's `html.parser` is only ever given nh3's output
(well-formed: no comments, no stray `<`), on which it runs in linear time; on raw mail HTML it is
quadratic (`<!--` repeated).
"""

from __future__ import annotations

import re
from functools import lru_cache
from html.parser import HTMLParser

import nh3

MAX_HTML_CHARS = 2_000_000
MAX_HTML_TAGS = 3_000
_TAG_OPEN = re.compile(r"<[A-Za-z]")

_BLOCK = {
    "p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre",
    "table", "ul", "ol", "hr", "section", "article", "header", "footer",
}
_SKIP = {"script", "style", "head", "title", "template"}
# For text: every tag that carries structure stays (with class and id, which mark quotes);
# the content of these goes with them.
_TEXT_TAGS = (set(nh3.ALLOWED_TAGS) | {"address", "main", "section", "font", "center",
                                       "fieldset", "form", "label", "legend", "dir", "menu"})
_TEXT_DROPPED = {"script", "style", "head", "title", "template"}


def bound(html: str, defects: list[str] | None = None) -> str:
    """`html` cut to `MAX_HTML_CHARS` characters and `MAX_HTML_TAGS` tags. Linear time."""
    if len(html) > MAX_HTML_CHARS:
        html = html[:MAX_HTML_CHARS]
        _note(defects, f"HTML longer than {MAX_HTML_CHARS} characters: cut for display")
    if html.count("<") <= MAX_HTML_TAGS:
        return html
    for n, m in enumerate(_TAG_OPEN.finditer(html)):
        if n == MAX_HTML_TAGS:
            _note(defects, f"HTML with more than {MAX_HTML_TAGS} tags: cut for display")
            return html[:m.start()]
    return html


def _note(defects: list[str] | None, line: str) -> None:
    if defects is not None:
        defects.append(line)


def sanitize(html: str, defects: list[str] | None = None) -> str:
    # cid: URLs are kept: the admin panel shows them from the message's own attachments
    return nh3.clean(bound(html, defects), link_rel="noopener noreferrer nofollow",
                     url_schemes=nh3.ALLOWED_URL_SCHEMES | {"cid"})


@lru_cache(maxsize=8)
def well_formed(html: str) -> str:
    """Bounded, sanitised HTML that keeps the structure text extraction reads (block tags,
    `class` and `id`): what `html.parser` may safely be given."""
    return nh3.clean(bound(html), tags=_TEXT_TAGS, clean_content_tags=_TEXT_DROPPED,
                     attributes={"*": {"class", "id"}}, link_rel=None)


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
        parser.feed(well_formed(html))
        parser.close()
    except Exception:  # html.parser is lenient, but never let markup stop ingestion
        return re.sub(r"<[^<>]*>", " ", html[:MAX_HTML_CHARS])
    text = "".join(parser.parts)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    text = "\n".join(line.strip(" ") for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()
