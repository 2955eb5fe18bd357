"""Query-string and form values of admin requests, checked before they reach the library.

Input: strings from the request (untrusted). Output: typed values, or `BadInput` (a
`UserError`: 400 in the API, a message on the panel) naming the parameter and what it expects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any
from urllib.parse import urlencode

from mailgate.errors import UserError

MAX_LIMIT = 1000
MAX_BODY = 100_000
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_WORD = re.compile(r"[a-z][a-z0-9_]{0,39}\Z")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class BadInput(UserError):
    """A parameter is missing or malformed (HTTP 400)."""


def _get(values: Mapping[str, Any], name: str) -> str | None:
    value = values.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value) if isinstance(value, int | bool) else None
        if value is None:
            raise BadInput(f"{name}: expected a string")
    return value


def limit(values: Mapping[str, Any], default: int = 50) -> int:
    raw = _get(values, "limit")
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadInput(f"limit: expected a whole number from 1 to {MAX_LIMIT}, got {raw!r}")
    return int(raw)


def flag(values: Mapping[str, Any], name: str) -> bool:
    raw = (_get(values, name) or "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise BadInput(f"{name}: expected true or false, got {raw!r}")


def choice(values: Mapping[str, Any], name: str, choices: Sequence[str],
           required: bool = False) -> str | None:
    raw = (_get(values, name) or "").strip()
    if not raw:
        if required:
            raise BadInput(f"{name}: required, one of {', '.join(choices)}")
        return None
    if raw not in choices:
        raise BadInput(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
    return raw


def word(values: Mapping[str, Any], name: str) -> str | None:
    """An identifier such as an audit action (the set grows as classification lands)."""
    raw = (_get(values, name) or "").strip()
    if not raw:
        return None
    if not _WORD.match(raw):
        raise BadInput(f"{name}: expected a lower-case name like 'created_ticket', got {raw!r}")
    return raw


def day(values: Mapping[str, Any], name: str = "day") -> str | None:
    raw = (_get(values, name) or "").strip()
    if not raw:
        return None
    if not is_day(raw):
        raise BadInput(f"{name}: expected a date YYYY-MM-DD, got {raw!r}")
    return raw


def is_day(text: str) -> bool:
    if not _DAY.match(text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def integer(values: Mapping[str, Any], name: str) -> int | None:
    raw = (_get(values, name) or "").strip()
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise BadInput(f"{name}: expected a whole number, got {raw!r}")
    return int(raw)


def text(values: Mapping[str, Any], name: str, max_len: int = 500,
         required: bool = False) -> str:
    raw = _get(values, name) or ""
    if required and not raw.strip():
        raise BadInput(f"{name}: required")
    if len(raw) > max_len:
        raise BadInput(f"{name}: longer than {max_len} characters")
    return raw


_QUEUE_ID = re.compile(r"[0-9A-Za-z]{1,40}\Z")


def queue_id(raw: str) -> str:
    if not _QUEUE_ID.match(raw):
        raise BadInput(f"not a queue id: {raw[:60]!r}")
    return raw


def ticket_id(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 18:
        raise BadInput(f"not a ticket number: {raw!r}")
    return int(raw)


def row_id(raw: str, what: str) -> int:
    """A message or attachment number from a path (`what` names it in the error)."""
    if not raw.isdigit() or len(raw) > 18:
        raise BadInput(f"not {what} number: {raw!r}")
    return int(raw)


_CANNED = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}\Z")


def canned_name(raw: str) -> str:
    """A canned reply's name (letters, digits, `_` and `-`)."""
    if not _CANNED.match(raw):
        raise BadInput(f"not a canned reply name: {raw[:60]!r}")
    return raw


def page_link(path: str, values: Mapping[str, Any], key: str, value: object | None) -> str:
    """`path` with the query string `values` where `key` is `value`: the link to the next page
    of a list ("" when there is none, `value` None)."""
    if value is None or value == "":
        return ""
    query = {k: v for k, v in values.items() if k != key}
    query[key] = str(value)
    return f"{path}?{urlencode(query)}"
