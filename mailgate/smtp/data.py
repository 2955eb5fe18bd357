"""Reading the DATA of one SMTP transaction, as Postfix 3.9 does, into a body sink.

Input: the session's byte stream after `354` (untrusted: any bytes, any line length, any pace),
the limits, and a `Body` to write the message into. Output: a `DataResult` saying how DATA
ended — complete, too big, with bare line ends (in reject mode), too slow, or cut off.

- Only `<CRLF>.<CRLF>` ends DATA: a `.` line after a bare LF (`\\n.\\n`, `\\n.\\r\\n`), a `.` after
  a bare CR (`\\r.\\r\\n`) and every other smuggling sequence is message content, so no client can
  end one message and start another inside it.
- `bare_newline = "normalize"` (the default, as Postfix's `smtpd_forbid_bare_newline`): a bare
  LF ends a line like CRLF and is stored as CRLF; dot-stuffing is undone after it too. A bare CR
  is kept as it came. `"reject"`: a bare CR or LF anywhere makes the whole message refused.
- Lines of any length are taken (up to the size limit) and stored byte-exact; the work is linear
  in the bytes read and the memory held is one read buffer, whatever the line length.
- Beyond `max_size` the rest is read and thrown away (the reply comes after the final dot, as
  RFC 5321 §4.2.5 wants). A client slower than `min_rate` bytes/s after the first
  `timeout` seconds, or silent for `timeout`, is cut off (slowloris).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

COMPLETE = "complete"
TOO_BIG = "too_big"
BARE_LINE_END = "bare_line_end"
TOO_SLOW = "too_slow"
NOT_STORED = "not_stored"  # the body could not be written (disk full): read on, answer 4xx


class Body(Protocol):
    """Where the message goes (the spool decides: memory, or a file once it is big)."""

    def write(self, data: bytes) -> None: ...

    def discard(self) -> None: ...


class StreamReader(Protocol):
    async def readuntil(self, separator: bytes = ...) -> bytes: ...

    async def read(self, n: int = ...) -> bytes: ...


@dataclass(frozen=True)
class DataResult:
    state: str  # COMPLETE, TOO_BIG, BARE_LINE_END, TOO_SLOW or NOT_STORED
    size: int  # bytes of message stored (or that would have been, past the limit)
    bare_line_ends: bool = False  # a bare LF was normalized (normalize mode)
    error: str = ""  # why the body could not be written (NOT_STORED)


@dataclass(frozen=True)
class DataLimits:
    max_size: int
    bare_newline: str = "normalize"  # or "reject"
    timeout: float = 300.0  # silence allowed between two reads, and the base of the deadline
    min_rate: float = 500.0  # bytes per second a transfer must keep up (0: no deadline)


async def read_data(reader: StreamReader, body: Body, limits: DataLimits,
                    on_progress: object = None) -> DataResult:
    """Read DATA up to and including the final `.`, writing the message to `body`.
    `on_progress`, when callable, is called after each read (the session's idle timer).
    Raises asyncio.IncompleteReadError when the client goes away before the final dot."""
    started = time.monotonic()
    size = 0
    state = COMPLETE
    bare = False
    line_start = True  # the next byte begins a line
    after_crlf = True  # the line before ended with a real CRLF (or DATA just began)
    carry = b""  # a CR at the end of a fragment, waiting to learn whether an LF follows
    error = ""
    while True:
        remaining = None
        if limits.min_rate > 0:
            remaining = started + limits.timeout + size / limits.min_rate - time.monotonic()
            if remaining <= 0:
                body.discard()
                return DataResult(TOO_SLOW, size, bare)
        wait = limits.timeout if remaining is None else min(limits.timeout, remaining)
        try:
            chunk = await asyncio.wait_for(_next_piece(reader), wait)
        except TimeoutError:
            body.discard()
            return DataResult(TOO_SLOW, size, bare)
        if callable(on_progress):
            on_progress()
        piece, complete = chunk
        piece = carry + piece
        carry = b""
        if complete:  # a whole line, or the end of a long one, with its LF
            if piece.endswith(b"\r\n"):
                text, crlf = piece[:-2], True
            else:
                text, crlf = piece[:-1], False
            if line_start and after_crlf and crlf and text == b".":
                break  # <CRLF>.<CRLF>: the only end of DATA
        else:  # part of a line longer than the read buffer
            if piece.endswith(b"\r"):
                piece, carry = piece[:-1], b"\r"
            text, crlf = piece, False
        if (complete and not crlf) or b"\r" in text:
            bare = True
            if limits.bare_newline == "reject" and state == COMPLETE:
                state = BARE_LINE_END
                body.discard()
        if line_start and text.startswith(b".") and (len(text) > 1 or not complete):
            text = text[1:]  # RFC 5321 §4.5.2: undo dot-stuffing
        out = text + b"\r\n" if complete else text
        size += len(out)
        if state == COMPLETE and size > limits.max_size:
            state = TOO_BIG
            body.discard()
        if state == COMPLETE:
            try:
                body.write(out)
            except OSError as exc:  # keep reading to the final dot, then answer 451
                state, error = NOT_STORED, f"{exc.strerror or exc}"
                body.discard()
        line_start = complete
        if complete:
            after_crlf = crlf
    if state == COMPLETE and carry:
        try:
            body.write(carry)
        except OSError as exc:
            state, error = NOT_STORED, f"{exc.strerror or exc}"
            body.discard()
    return DataResult(state, size, bare, error)


async def _next_piece(reader: StreamReader) -> tuple[bytes, bool]:
    """The next line with its LF (True), or, for a line longer than the reader's buffer, the
    part read so far (False)."""
    try:
        return await reader.readuntil(b"\n"), True
    except asyncio.LimitOverrunError as exc:
        return await reader.read(exc.consumed), False
