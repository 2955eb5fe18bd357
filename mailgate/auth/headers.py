"""The header fields of a raw message, with their exact byte spans.

Input: message bytes exactly as received (untrusted; CRLF or LF line ends; anything at all).
Output: `header_fields` → one `HeaderField` per field of the header section, in order: its name
as written, its value unfolded to one line of text (decoded as UTF-8 with replacement), and the
byte span `[start, end)` it occupies including its continuation lines and line end, so a caller
can drop a field and keep every other byte as it was. The header section ends at the first empty
line, or at a line that is neither a field nor a continuation (as RFC 5322 parsers do). Never
raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")


@dataclass(frozen=True)
class HeaderField:
    name: str
    value: str
    start: int
    end: int


def header_fields(raw: bytes) -> list[HeaderField]:
    fields: list[HeaderField] = []
    pos = 0
    current: tuple[str, int, int] | None = None  # name, start, value start
    while pos < len(raw):
        newline = raw.find(b"\n", pos)
        end = len(raw) if newline < 0 else newline + 1
        line = raw[pos:end]
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and current is not None:
            pos = end
            continue
        if current is not None:
            fields.append(_field(raw, *current, pos))
            current = None
        match = _FIELD.match(line)
        if match is None:
            break
        current = (match.group(1).decode("ascii"), pos, pos + match.end())
        pos = end
    if current is not None:
        fields.append(_field(raw, *current, pos))
    return fields


def _field(raw: bytes, name: str, start: int, value_start: int, end: int) -> HeaderField:
    value = re.sub(rb"\r?\n(?=[ \t])", b"", raw[value_start:end]).strip()
    return HeaderField(name, value.decode("utf-8", "replace"), start, end)
