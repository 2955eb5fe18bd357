"""Logging for the daemon: one line per event on stderr, as text or as JSON.

Input: log records from every module. Their messages may quote untrusted text (addresses, header
values, a remote server's reply), so line breaks and other control characters are escaped and a
traceback is folded into the same line: one event is always one line, and mail cannot forge a
log line. Output, per `[log] format`:

- `text`: `LEVEL logger: message`, with a UTC time stamp first when stderr is a terminal or a
  file, and with a syslog priority prefix (`<3>`) and no time when stderr is the journal
  (`$JOURNAL_STREAM` names it): journald adds the time and turns the prefix into the priority,
  so `journalctl -p warning` works.
- `json`: one object per line with `time` (ISO 8601, UTC), `level`, `logger`, `message`, and the
  ids of the mail concerned as fields — `queue_id` (inbound), `outbound_id`, `ticket_id` —
  plus `exc` with the traceback when there is one.

Repeats are limited: a warning or error logged from the same place more than `BURST` times in
`WINDOW` seconds (a resource running out makes some lines repeat thousands of times a second)
is dropped, and the next one that passes says how many were. Information lines — one per mail —
are never dropped.

The ids come from `extra={"queue_id": ...}` when the caller passes it, else from the
`queue_id=X` / `outbound_id=N` that mailgate's messages carry; a text line logged with
`extra=` gets `queue_id=X` put in front of its message, so both formats always show it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any, TextIO

ID_FIELDS = ("queue_id", "outbound_id", "ticket_id")
_ID_IN_MESSAGE = re.compile(r"\b(queue_id|outbound_id)=([A-Za-z0-9_.:-]+)")
# C0 and C1 controls and DEL become visible escapes; tab stays.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if c != 0x09}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})
_SYSLOG_PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}


def one_line(text: str) -> str:
    return text.translate(_ESCAPES)


def mail_ids(record: logging.LogRecord, message: str) -> dict[str, Any]:
    """The mail ids of a record: from `extra=` first, else parsed from the message."""
    ids: dict[str, Any] = {}
    for name in ID_FIELDS:
        value = getattr(record, name, None)
        if value not in (None, "", "-"):
            ids[name] = value
    for name, value in _ID_IN_MESSAGE.findall(message):
        if name not in ids and value != "-":
            ids[name] = int(value) if name == "outbound_id" and value.isdigit() else value
    return ids


def _traceback_line(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_info:
        text = formatter.formatException(record.exc_info)
    elif record.exc_text:
        text = record.exc_text
    else:
        return ""
    if record.stack_info:
        text += "\n" + record.stack_info
    return " | ".join(one_line(part.rstrip()) for part in text.splitlines() if part.strip())


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        queue_id = getattr(record, "queue_id", None)
        if queue_id and "queue_id=" not in message:
            message = f"queue_id={queue_id} {message}"
        line = f"{record.levelname} {record.name}: {one_line(message)}"
        trace = _traceback_line(self, record)
        if trace:
            line += f" | {trace}"
        if self.journal:
            return f"<{_SYSLOG_PRIORITY.get(record.levelname, 6)}>{line}"
        return f"{_utc(record.created)} {line}"


class JsonFormatter(logging.Formatter):
    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        doc.update(mail_ids(record, message))
        trace = _traceback_line(self, record)
        if trace:
            doc["exc"] = trace
        line = json.dumps(doc, ensure_ascii=False, default=str)
        line = line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        if self.journal:
            return f"<{_SYSLOG_PRIORITY.get(record.levelname, 6)}>{line}"
        return line


def stderr_is_journal(stream: TextIO) -> bool:
    """True when `stream` is the journal stream systemd names in `$JOURNAL_STREAM`."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class RepeatLimiter(logging.Filter):
    """Drops a warning or error beyond `burst` of the same kind (logger, level, message
    template) per `window` seconds; the first one let through afterwards carries the count."""

    def __init__(self, burst: int = 20, window: float = 60.0) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key → [start, passed, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        state = self._seen.get(key)
        if state is None or now - state[0] >= self.window:
            dropped = int(state[2]) if state is not None else 0
            self._seen[key] = [now, 1, 0]
            if len(self._seen) > 10_000:  # never grows without bound
                self._seen = {key: self._seen[key]}
            if dropped:
                record.msg = (f"{record.getMessage()} (and {dropped} more like this in the last"
                              f" {self.window:.0f}s, not logged)")
                record.args = ()
            return True
        if state[1] < self.burst:
            state[1] += 1
            return True
        state[2] += 1
        return False


class _MailgateHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Our stderr handler; a marker class so that `setup_logging` can reconfigure it."""


def setup_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Install (or, on a reload, reconfigure) the stderr handler on the root logger."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _MailgateHandler)), None)
    if handler is None:
        handler = _MailgateHandler(stream or sys.stderr)
        handler.addFilter(RepeatLimiter())
        root.addHandler(handler)
    elif stream is not None:
        handler.setStream(stream)
    journal = stderr_is_journal(handler.stream)
    handler.setFormatter(JsonFormatter(journal) if fmt == "json" else TextFormatter(journal))
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin and context chatter
    logging.captureWarnings(True)
