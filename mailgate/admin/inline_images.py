"""Inline images of a message's HTML (`<img src="cid:...">`), shown from our own store only.

Input: a message's HTML as the pipeline stored it (already sanitised by nh3, `cid:` URLs kept;
still mail: untrusted), the message's row id and its attachments (id and Content-ID). Output:
the HTML cleaned again by nh3, where each `cid:X` image source that names one of that message's
attachments becomes the admin endpoint's URL of that attachment
(`/messages/<message>/attachments/<id>`), and every other image source — remote, `data:`, a
`cid:` naming nothing — is removed, as is any other `cid:` URL. The count of images kept tells
the panel the message needs its frame to load them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

import nh3

SCHEMES = nh3.ALLOWED_URL_SCHEMES | {"cid"}  # as the pipeline stored it
URL_ATTRIBUTES = frozenset({"src", "href", "srcset", "background", "poster", "cite"})


def attachment_url(message_row: int, attachment_id: int) -> str:
    return f"/messages/{message_row}/attachments/{attachment_id}"


def _content_id(url: str) -> str:
    """`cid:Part1.abc@x` (RFC 2392: %-encoded, no angle brackets) → `part1.abc@x`."""
    return unquote(url[4:]).strip().strip("<>").lower()


def rewrite(html: str, message_row: int, attachments: Iterable[Mapping[str, Any]]
            ) -> tuple[str, int]:
    """(the HTML with images served by us, how many images it shows)."""
    by_cid = {str(a["content_id"]).strip().strip("<>").lower(): int(a["id"])
              for a in attachments if a.get("content_id")}
    shown = 0

    def keep(tag: str, attribute: str, value: str) -> str | None:
        nonlocal shown
        if attribute not in URL_ATTRIBUTES:
            return value
        is_cid = value[:4].lower() == "cid:"
        if tag == "img" and attribute == "src":
            found = by_cid.get(_content_id(value)) if is_cid else None
            if found is None:
                return None  # remote, data: or unknown: no image is fetched from elsewhere
            shown += 1
            return attachment_url(message_row, found)
        if is_cid or tag == "img":
            return None
        return value

    cleaned = nh3.clean(html, attribute_filter=keep, url_schemes=SCHEMES,
                        link_rel="noopener noreferrer nofollow")
    return cleaned, shown
