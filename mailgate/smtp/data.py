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


FLUSH_BYTES = 64 * 1024  # message bytes gathered before one write to the body
CLOCK_STEP = 0.5  # seconds between two moves of the deadline (not once per line)


async def read_data(reader: StreamReader, body: Body, limits: DataLimits,
                    on_progress: object = None) -> DataResult:
    """Read DATA up to and including the final `.`, writing the message to `body`.
    `on_progress`, when callable, is called as data arrives (at most every CLOCK_STEP).
    Raises asyncio.IncompleteReadError when the client goes away before the final dot."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader_state = _State(limits, body)
    try:
        async with asyncio.timeout_at(started + limits.timeout) as clock:
            moved = started
            while True:
                piece, complete = await _next_piece(reader)
                if reader_state.take(piece, complete):
                    break
                now = loop.time()
                if now - moved >= CLOCK_STEP:  # silence allowed from now, and the rate
                    moved = now
                    deadline = now + limits.timeout
                    if limits.min_rate > 0:
                        deadline = min(deadline, started + limits.timeout
                                       + reader_state.size / limits.min_rate)
                    if deadline <= now:
                        raise TimeoutError
                    clock.reschedule(deadline)
                    if callable(on_progress):
                        on_progress()
    except TimeoutError:
        body.discard()
        return DataResult(TOO_SLOW, reader_state.size, reader_state.bare)
    return reader_state.finish()


class _State:
    """The line-by-line work of `read_data`, kept out of the coroutine."""

    def __init__(self, limits: DataLimits, body: Body) -> None:
        self.limits = limits
        self.body = body
        self.size = 0
        self.state = COMPLETE
        self.bare = False
        self.error = ""
        self.line_start = True  # the next byte begins a line
        self.after_crlf = True  # the line before ended with a real CRLF (or DATA just began)
        self.carry = b""  # a CR ending a fragment, waiting to learn whether an LF follows
        self.out = bytearray()

    def take(self, piece: bytes, complete: bool) -> bool:
        """One line with its LF (complete) or part of a long line; True at the final dot."""
        if self.carry:
            piece, self.carry = self.carry + piece, b""
        if complete:
            if piece[-2:-1] == b"\r":
                text, crlf = piece[:-2], True
            else:
                text, crlf = piece[:-1], False
            if crlf and self.line_start and self.after_crlf and text == b".":
                return True  # <CRLF>.<CRLF>: the only end of DATA
        else:  # part of a line longer than the read buffer
            if piece.endswith(b"\r"):
                piece, self.carry = piece[:-1], b"\r"
            text, crlf = piece, False
        if (complete and not crlf) or b"\r" in text:
            self.bare = True
            if self.limits.bare_newline == "reject" and self.state == COMPLETE:
                self._drop(BARE_LINE_END)
        if self.line_start and text[:1] == b"." and (len(text) > 1 or not complete):
            text = text[1:]  # RFC 5321 §4.5.2: undo dot-stuffing
        self.line_start = complete
        if complete:
            self.after_crlf = crlf
        self.size += len(text) + (2 if complete else 0)
        if self.state != COMPLETE:
            return False
        if self.size > self.limits.max_size:
            self._drop(TOO_BIG)
            return False
        self.out += text
        if complete:
            self.out += b"\r\n"
        if len(self.out) >= FLUSH_BYTES:
            self._flush()
        return False

    def _flush(self) -> None:
        if not self.out or self.state != COMPLETE:
            return
        try:
            self.body.write(bytes(self.out))
        except OSError as exc:  # keep reading to the final dot, then answer 4xx
            self.error = f"{exc.strerror or exc}"
            self._drop(NOT_STORED)
        self.out = bytearray()

    def _drop(self, state: str) -> None:
        self.state = state
        self.out = bytearray()
        self.body.discard()

    def finish(self) -> DataResult:
        if self.carry:
            self.out += self.carry
        self._flush()
        return DataResult(self.state, self.size, self.bare, self.error)


async def _next_piece(reader: StreamReader) -> tuple[bytes, bool]:
    """The next line with its LF (True), or, for a line longer than the reader's buffer, the
    part read so far (False)."""
    try:
        return await reader.readuntil(b"\n"), True
    except asyncio.LimitOverrunError as exc:
        return await reader.read(exc.consumed), False
