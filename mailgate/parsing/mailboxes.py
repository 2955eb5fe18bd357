"""Reading mail archives: mbox files (a Gmail Takeout `.mbox` included), Maildir folders and
`.eml` files, streamed.

Input: paths an administrator names (trusted as places to read; the bytes in them are
untrusted mail of any shape, written by other programs over years). Output: an `Archive` — an
index of every message found (its date, where it lies), sorted oldest first so a conversation
is read in the order it was written, and the raw bytes of each message on demand, with CRLF
line ends as SMTP would have delivered them.

Memory: the index holds a few numbers per message (and a path per Maildir or .eml message),
never a message's content; an mbox is scanned line by line and each message read back by
its offset, so a 10 GB Takeout needs no more memory than a small one with as many messages.

mbox: a message starts at a line `From ` at the start of the file or after an empty line (or
one that looks like a From_ line with a date, for writers that leave no empty line); quoted
`>From ` lines are unquoted one level (mboxrd, what Gmail Takeout, mutt and Python write).
Maildir: the files in `cur/` and `new/` (never `tmp/`, where a writer is still busy); Maildir++
subfolders are read too. A directory is walked for Maildirs, `*.eml` and `*.mbox` files; other
files in it are reported, not read. The date of a message is its Date header, else the date on
its mbox From_ line or in its Maildir file name, else the file's modification time.
"""

from __future__ import annotations

import email.utils
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mailgate.errors import UserError

FROM_LINE = re.compile(rb"^From \S+ +(?:\w{3},? +)?\w{3} +\d{1,2} ")  # From addr Mon Jan  1 …
ESCAPED_FROM = re.compile(rb"^>(>*From )", re.M)
FROM_HEADER = re.compile(rb"^From[ \t]*:")  # `From  : x` is a header (RFC 822's obsolete form)
BARE_LF = re.compile(rb"(?<!\r)\n")
MAILDIR_TIME = re.compile(r"^(\d{9,11})\.")
HEADER_LIMIT = 256 * 1024  # bytes of a header section read for its Date at most
MBOX_SUFFIXES = (".mbox", ".mbx")
EML_SUFFIXES = (".eml", ".msg822")


@dataclass(frozen=True)
class Entry:
    """One message of an archive: when it was written (Unix time; 0 when nothing says), which
    source it is in and where: an mbox's byte range, or a file (`start` -1)."""

    when: float
    order: int
    source: int
    start: int = -1
    end: int = -1


@dataclass
class Archive:
    """Every message of the paths given, oldest first, and what was not read (path, why)."""

    sources: list[str] = field(default_factory=list)  # mbox files, or one message file each
    entries: list[Entry] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    _open: dict[int, BinaryIO] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.entries)

    def where(self, entry: Entry) -> str:
        """Where a message lies, for people: `file` or `file@offset`."""
        path = self.sources[entry.source]
        return path if entry.start < 0 else f"{path}@{entry.start}"

    def read(self, entry: Entry) -> bytes:
        """The message's bytes, From_ line and mbox quoting removed, with CRLF line ends."""
        if entry.start < 0:
            data = Path(self.sources[entry.source]).read_bytes()
            if data.startswith(b"From ") and not FROM_HEADER.match(data):  # an mbox of one
                data = data.split(b"\n", 1)[1] if b"\n" in data else b""
        else:
            handle = self._open.get(entry.source)
            if handle is None:
                handle = self._open[entry.source] = open(  # noqa: SIM115 - closed by close()
                    self.sources[entry.source], "rb")
            handle.seek(entry.start)
            data = handle.read(entry.end - entry.start)
            data = data.split(b"\n", 1)[1] if b"\n" in data else b""  # the From_ line
            if data.endswith((b"\n\n", b"\r\n\r\n")):  # the empty line before the next one
                data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
            data = ESCAPED_FROM.sub(rb"\1", data)
        return BARE_LF.sub(b"\r\n", data)

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)


def open_archive(paths: list[str]) -> Archive:
    """The archive made of `paths` (files or directories), indexed and sorted by date.
    UserError (one line) when a path does not exist or cannot be read at all."""
    archive = Archive()
    for name in paths:
        path = Path(name)
        if not path.exists():
            raise UserError(f"{name}: no such file or directory")
        if path.is_dir():
            _walk(archive, path)
        else:
            _add_file(archive, path, explicit=True)
    archive.entries.sort(key=lambda e: (e.when, e.order))
    return archive


def _walk(archive: Archive, top: Path) -> None:
    for directory, subdirs, names in os.walk(top):
        subdirs.sort()
        here = Path(directory)
        if {"cur", "new"} <= set(subdirs):  # a Maildir: its messages, then its subfolders
            for part in ("cur", "new"):
                for name in sorted(os.listdir(here / part)):
                    if not name.startswith("."):
                        _add_message_file(archive, here / part / name)
            subdirs[:] = [d for d in subdirs if d not in ("cur", "new", "tmp")]
            continue  # its own files are the Maildir's bookkeeping (dovecot-uidlist, …)
        for name in sorted(names):
            if not name.startswith("."):
                _add_file(archive, here / name, explicit=False)


def _add_file(archive: Archive, path: Path, explicit: bool) -> None:
    suffix = path.suffix.lower()
    try:
        with open(path, "rb") as handle:
            first = handle.readline(4096)
    except OSError as exc:
        if explicit:
            raise UserError(f"{path}: cannot be read: {exc.strerror or exc}") from None
        archive.unreadable.append((str(path), f"cannot be read: {exc.strerror or exc}"))
        return
    if (first.startswith(b"From ") and not FROM_HEADER.match(first)) \
            or suffix in MBOX_SUFFIXES or path.name == "mbox":
        _scan_mbox(archive, path)
    elif suffix in EML_SUFFIXES or (explicit and _looks_like_mail(first)):
        _add_message_file(archive, path)
    else:
        archive.unreadable.append((str(path), "not an mbox, a Maildir or an .eml file"))


def _looks_like_mail(first: bytes) -> bool:
    """A header line: a field name, a colon."""
    return re.match(rb"^[!-9;-~]+:", first) is not None


def _add_message_file(archive: Archive, path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            head = _header_section(handle)
        stat = path.stat()
    except OSError as exc:
        archive.unreadable.append((str(path), f"cannot be read: {exc.strerror or exc}"))
        return
    when = _date_of(head)
    if when is None:
        found = MAILDIR_TIME.match(path.name)
        when = float(found.group(1)) if found else stat.st_mtime
    archive.sources.append(str(path))
    archive.entries.append(Entry(when, len(archive.entries), len(archive.sources) - 1))


def _header_section(handle: BinaryIO) -> bytes:
    lines = []
    size = 0
    for line in handle:
        if line in (b"\n", b"\r\n") or size > HEADER_LIMIT:
            break
        lines.append(line)
        size += len(line)
    return b"".join(lines)


def _scan_mbox(archive: Archive, path: Path) -> None:
    """Every message of an mbox: its byte range and date, in one pass over the lines."""
    archive.sources.append(str(path))
    source = len(archive.sources) - 1
    start = -1
    from_line = b""
    head: list[bytes] = []
    in_head = False
    previous_blank = True
    offset = 0

    def close(end: int) -> None:
        when = _date_of(b"".join(head))
        if when is None:
            when = _from_line_date(from_line)
        archive.entries.append(Entry(when or 0.0, len(archive.entries), source, start, end))

    with open(path, "rb") as handle:
        for line in handle:
            if line.startswith(b"From ") and (previous_blank or FROM_LINE.match(line)):
                if start >= 0:
                    close(offset)
                start, from_line, head, in_head = offset, line, [], True
            elif in_head:
                if line in (b"\n", b"\r\n") or len(head) > 2000:
                    in_head = False
                else:
                    head.append(line)
            previous_blank = line in (b"\n", b"\r\n")
            offset += len(line)
        if start >= 0:
            close(offset)


def _date_of(head: bytes) -> float | None:
    """The Date header's time (Unix seconds) in a header section, None when absent or bad."""
    found = re.search(rb"^date:[ \t]*(.*(?:\r?\n[ \t].*)*)", head, re.I | re.M)
    if found is None:
        return None
    value = b" ".join(found.group(1).split()).decode("latin-1")
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    try:
        return parsed.timestamp()
    except (OverflowError, ValueError, OSError):
        return None


def _from_line_date(line: bytes) -> float | None:
    """The date on an mbox From_ line (`From addr Mon Jan  1 10:00:00 2024`)."""
    parts = line.decode("latin-1").split(None, 2)
    if len(parts) < 3:
        return None
    found = email.utils.parsedate_tz(parts[2])
    if found is None:
        return None
    try:
        return float(email.utils.mktime_tz(found))
    except (OverflowError, ValueError):
        return None
