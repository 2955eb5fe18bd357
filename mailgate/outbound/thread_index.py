"""Outlook's conversation index (the `Thread-Index` header): one conversation per ticket.

Input: a time (Unix seconds), 16 random bytes for a new conversation, and a Thread-Index read
from mail (untrusted: base64 text of any length). Output: Thread-Index values as Outlook writes
them (MS-OXOMSG 2.2.1.3, PidTagConversationIndex), base64-encoded:

- the first mail of a conversation carries the 22-byte header block: one reserved byte 0x01,
  the five most significant bytes of the current FILETIME (100 ns ticks since 1601-01-01 UTC,
  big-endian; its 24 least significant bits left out), and a 16-byte GUID naming the thread;
- each later mail carries its parent's index plus one 5-byte child block: a 1-bit delta code
  and 31 bits of the time since the header's time (bits 48..18 of the FILETIME difference when
  it is below 2^49 ticks, else bits 53..23 with the code bit set), then one byte whose high four
  bits are random and whose low four bits count the blocks (modulo 16).

`parse` accepts only a well-formed index (header byte 0x01, 22 bytes plus whole child blocks,
at most `MAX_BYTES`); anything else is None and is neither stored nor continued.
"""

from __future__ import annotations

import base64
import binascii
import secrets

HEADER_BYTES = 22
CHILD_BYTES = 5
MAX_BYTES = HEADER_BYTES + CHILD_BYTES * 60  # Outlook's own indexes stay far below this
_EPOCH_DIFF = 11_644_473_600  # seconds from 1601-01-01 to 1970-01-01
_TICKS = 10_000_000  # FILETIME ticks per second


def filetime(unix_seconds: float) -> int:
    return int((unix_seconds + _EPOCH_DIFF) * _TICKS)


def header_block(unix_seconds: float, guid: bytes | None = None) -> bytes:
    """The 22 bytes that start a new conversation."""
    guid = guid if guid is not None else secrets.token_bytes(16)
    if len(guid) != 16:
        raise ValueError("a conversation GUID has 16 bytes")
    stamp = (filetime(unix_seconds) >> 24) & 0xFF_FFFF_FFFF
    return b"\x01" + stamp.to_bytes(5, "big") + guid


def header_time(index: bytes) -> int:
    """The FILETIME the header block records (its 24 least significant bits zero)."""
    return int.from_bytes(index[1:6], "big") << 24


def child_block(index: bytes, unix_seconds: float) -> bytes:
    """The 5 bytes a reply to `index` appends."""
    delta = max(0, filetime(unix_seconds) - header_time(index))
    if delta < 1 << 49:
        code, bits = 0, (delta >> 18) & 0x7FFF_FFFF
    else:
        code, bits = 1, (delta >> 23) & 0x7FFF_FFFF
    count = (len(index) - HEADER_BYTES) // CHILD_BYTES + 1
    last = (secrets.randbelow(16) << 4) | (count & 0x0F)
    return ((code << 31) | bits).to_bytes(4, "big") + bytes([last])


def reply_index(parent: bytes, unix_seconds: float) -> bytes:
    """The index of a mail answering `parent`; an index at `MAX_BYTES` is not grown further
    (its conversation is still the same one)."""
    if len(parent) + CHILD_BYTES > MAX_BYTES:
        return parent
    return parent + child_block(parent, unix_seconds)


def parse(value: str | None) -> bytes | None:
    """The bytes of a well-formed Thread-Index header value, else None."""
    text = "".join((value or "").split())
    if not text or len(text) > MAX_BYTES * 2:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if (len(raw) < HEADER_BYTES or len(raw) > MAX_BYTES or raw[0] != 0x01
            or (len(raw) - HEADER_BYTES) % CHILD_BYTES):
        return None
    return raw


def encode(index: bytes) -> str:
    return base64.b64encode(index).decode("ascii")


def same_conversation(a: bytes, b: bytes) -> bool:
    return a[:HEADER_BYTES] == b[:HEADER_BYTES]
