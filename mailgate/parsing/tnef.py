"""TNEF (`winmail.dat`, application/ms-tnef): the files and the body Outlook packed inside.

Input: the bytes of one application/ms-tnef part (hostile: whatever a sender wrote). Output:
`Unpacked` — the files inside (each with the name the sender gave it, not yet made safe, and
its bytes exactly), the plain-text and HTML bodies (the RTF body turned into text when there
is no other), and defects. `unpack` never raises for what is in the file: a TNEF that cannot
be read gives no files and a defect, and the caller keeps the original part either way. Only
a shortage of the machine (no process, descriptor or memory to start the decoder with) raises
`TemporaryFailure`, so the message is retried later rather than stored without its files.

tnefparse does the decoding (compressed-rtf and striprtf read an RTF-only body). It was
written for well-formed files: a 40-byte winmail.dat that claims four billion MAPI properties
keeps it looping for hours, and a multi-valued property grows its memory without bound. So the
decoding runs in a child process (`python -I -m mailgate.tnef`) limited in CPU time, address
space and wall-clock time. The child reads the TNEF on stdin and writes one line of JSON (file
names and sizes, bodies, defects) followed by the files' bytes back to back.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mailgate.errors import TemporaryFailure, temporary_cause
from mailgate.model import ParsedAttachment

TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})
CPU_SECONDS = 10  # the child's CPU time (RLIMIT_CPU)
WALL_SECONDS = 30.0  # the child's wall-clock time, CPU time included
MEMORY_BYTES = 256 * 1024 * 1024  # the child's address space, plus 8 times the input's size
MAX_FILES = 1000
EMBEDDED_DEPTH = 3  # Outlook items attached to Outlook items: how deep files are taken from
MAX_PARTS = 5  # TNEF parts unpacked per message; more are kept only as they came
CONTAINER = "container"  # details["tnef"] of a winmail.dat kept beside what it held
_TYPES = mimetypes.MimeTypes(filenames=())  # Python's own table: the same on every machine

log = logging.getLogger("mailgate.tnef")


@dataclass(frozen=True)
class TnefFile:
    name: str  # as the sender gave it (untrusted, not yet made path-safe); "" when none
    data: bytes


@dataclass(frozen=True)
class Unpacked:
    files: tuple[TnefFile, ...] = ()
    text: str = ""
    html: str = ""  # unsanitised: the caller sanitises it like any HTML from mail
    defects: tuple[str, ...] = ()


def is_tnef(content_type: str, filename: str) -> bool:
    """An application/ms-tnef part, or a `winmail.dat` sent as application/octet-stream."""
    if content_type.lower() in TNEF_TYPES:
        return True
    return (content_type.lower() == "application/octet-stream"
            and filename.strip().lower() == "winmail.dat")


@dataclass(frozen=True)
class Expansion:
    """A message's attachments with each TNEF part followed by the files it held."""

    attachments: tuple[ParsedAttachment, ...]
    text: str = ""  # the first TNEF body, for a message that has none of its own
    html: str = ""
    defects: tuple[str, ...] = ()


def guess_type(filename: str) -> str:
    return _TYPES.guess_type(filename, strict=False)[0] or "application/octet-stream"


def expand(attachments: Sequence[ParsedAttachment], safe_name: Callable[[str, str], str]
           ) -> Expansion:
    """Each TNEF part of `attachments` kept (marked `details["tnef"] = "container"`) and
    followed by the files inside it, named with `safe_name(name, content_type)`, their
    content type guessed from the name. Raises only `TemporaryFailure` (see `unpack`)."""
    out: list[ParsedAttachment] = []
    defects: list[str] = []
    text = html = ""
    parts = 0
    for att in attachments:
        if not is_tnef(att.content_type, att.filename):
            out.append(att)
            continue
        parts += 1
        if parts > MAX_PARTS:
            defects.append(f"more than {MAX_PARTS} TNEF parts; the rest kept as they came")
            out.append(att)
            continue
        try:
            found = unpack(att.payload)
        except TemporaryFailure:
            raise
        except Exception as exc:  # a bug of ours must not cost the customer the message
            log.exception("TNEF unpacking failed")
            found = Unpacked(defects=(f"TNEF not unpacked: {type(exc).__name__}",))
        defects.extend(found.defects)
        out.append(replace(att, details={**att.details, "tnef": CONTAINER,
                                         "files": str(len(found.files))}))
        for f in found.files:
            name = f.name or "attachment"
            ctype = guess_type(name)
            out.append(ParsedAttachment(filename=safe_name(name, ctype), content_type=ctype,
                                        payload=f.data, details={"from_tnef": att.filename}))
        if not (text.strip() or html.strip()):
            text, html = found.text, found.html
    return Expansion(tuple(out), text, html, tuple(defects))


def unpack(data: bytes, timeout: float = WALL_SECONDS) -> Unpacked:
    """The files and bodies inside `data`; never raises (what went wrong is a defect)."""
    if not data:
        return Unpacked(defects=("TNEF part is empty",))
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-m", "mailgate.parsing.tnef", str(len(data))],
            input=data, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Unpacked(defects=(f"TNEF not unpacked: it took longer than {timeout:g} s",))
    except OSError as exc:
        if temporary_cause(exc):  # no processes, descriptors or memory: try again later
            raise TemporaryFailure(f"cannot start the TNEF decoder: {exc}") from exc
        log.error("cannot start the TNEF decoder: %s", exc)
        return Unpacked(defects=(f"TNEF not unpacked: the decoder could not start: {exc}",))
    if done.returncode != 0:
        why = _child_failure(done.returncode, done.stderr)
        return Unpacked(defects=(f"TNEF not unpacked: {why}",))
    try:
        return _read_result(done.stdout)
    except (ValueError, KeyError, TypeError) as exc:
        return Unpacked(defects=(f"TNEF not unpacked: the decoder's answer was unreadable:"
                                 f" {exc}",))


def _child_failure(code: int, stderr: bytes) -> str:
    last = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    if code == -signal.SIGXCPU:
        return f"the decoder used up its {CPU_SECONDS} s of CPU time"
    if code < 0:
        return f"the decoder was stopped by signal {-code}"
    if "MemoryError" in last[0]:
        return "the decoder ran out of its memory limit"
    return f"the decoder failed ({last[0][:200] or f'exit status {code}'})"


def _read_result(out: bytes) -> Unpacked:
    head, sep, rest = out.partition(b"\n")
    if not sep:
        raise ValueError("no header line")
    meta = json.loads(head)
    files, offset = [], 0
    for entry in meta["files"]:
        size = int(entry["size"])
        if size < 0 or offset + size > len(rest):
            raise ValueError("file sizes do not match the bytes sent")
        files.append(TnefFile(str(entry["name"]), rest[offset:offset + size]))
        offset += size
    if offset != len(rest):
        raise ValueError("bytes left over after the last file")
    return Unpacked(files=tuple(files), text=str(meta["text"]), html=str(meta["html"]),
                    defects=tuple(str(d) for d in meta["defects"]))


# --- the child process ---------------------------------------------------------------------


def _as_text(value: Any, codepage: str | None) -> str:
    """A body or name from tnefparse (str, bytes, or a list of either) as text."""
    if isinstance(value, list):
        value = value[0] if value else ""
    if isinstance(value, bytes):
        for name in ("utf-8", codepage or "cp1252"):
            try:
                return value.decode(name).rstrip("\x00")
            except (UnicodeDecodeError, LookupError):
                continue
        return value.decode("latin-1").rstrip("\x00")
    return "" if value is None else str(value).rstrip("\x00")


def _name_of(attachment: Any, codepage: str | None) -> str:
    for read in (attachment.long_filename, lambda: attachment.name):
        try:
            name = _as_text(read(), codepage).strip()
        except Exception:  # a name tnefparse cannot decode: try the next one
            continue
        if name:
            return name
    return ""


def _collect(tnef: Any, files: list[tuple[str, bytes]], defects: list[str], depth: int) -> None:
    for attachment in tnef.attachments:
        embedded = getattr(attachment, "embed", None)
        if embedded is not None and depth < EMBEDDED_DEPTH:
            _collect(embedded, files, defects, depth + 1)  # the files of an attached item
            continue
        data = attachment.data if isinstance(attachment.data, bytes) else b""
        name = _name_of(attachment, tnef.codepage)
        if not data and not name:
            continue
        if len(files) >= MAX_FILES:
            defects.append(f"TNEF holds more than {MAX_FILES} files; the rest kept only in"
                           " winmail.dat")
            return
        files.append((name, data))


def _bodies(tnef: Any, defects: list[str]) -> tuple[str, str]:
    text = _as_text(tnef.body, tnef.codepage)
    html = _as_text(tnef.htmlbody, tnef.codepage)
    if text.strip() or html.strip():
        return text, html
    try:
        rtf = tnef.rtfbody
    except Exception as exc:
        defects.append(f"TNEF RTF body unreadable: {type(exc).__name__}")
        return "", ""
    if not rtf:
        return "", ""
    from striprtf.striprtf import rtf_to_text

    try:
        return rtf_to_text(rtf.decode("latin-1"), errors="replace").strip(), ""
    except Exception as exc:
        defects.append(f"TNEF RTF body unreadable: {type(exc).__name__}")
        return "", ""


def _decode(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    from tnefparse.tnef import TNEF

    defects: list[str] = []
    try:
        tnef = TNEF(data, do_checksum=True)
    except Exception as exc:
        reason = str(exc)[:200] or type(exc).__name__
        return {"files": [], "text": "", "html": "",
                "defects": [f"TNEF unreadable ({reason}); kept as it came"]}, []
    files: list[tuple[str, bytes]] = []
    _collect(tnef, files, defects, 0)
    if any(not getattr(obj, "good_checksum", True) for obj in tnef.objects):
        defects.append("TNEF checksum mismatch")
    text, html = _bodies(tnef, defects)
    meta = {"files": [{"name": name, "size": len(blob)} for name, blob in files],
            "text": text, "html": html, "defects": defects}
    return meta, [blob for _name, blob in files]


def _decode_within_memory(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """`_decode`, or a defect when it runs out of the memory limit. Some memory is held back
    and given up first, so the defect can still be written."""
    reserve = bytearray(16 * 1024 * 1024)
    try:
        return _decode(data)
    except MemoryError:
        pass  # leave the except block: its traceback holds all that tnefparse had built
    finally:
        del reserve
    return {"files": [], "text": "", "html": "", "defects": [
        "TNEF not unpacked: the decoder ran out of its memory limit"]}, []


def _child(argv: list[str]) -> int:
    import resource

    expected = int(argv[0]) if argv and argv[0].isdigit() else 0
    memory = MEMORY_BYTES + 8 * expected
    logging.disable(logging.CRITICAL)  # tnefparse logs every bad property: millions of lines
    data = sys.stdin.buffer.read()
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS + 1))
    except (OSError, ValueError) as exc:  # e.g. a seccomp filter without setrlimit: no limits,
        meta: dict[str, Any] = {  # no decoding
            "files": [], "text": "", "html": "",
            "defects": [f"TNEF not unpacked: the decoder cannot limit its CPU and memory"
                        f" here (setrlimit: {exc}); kept as it came"]}
        blobs: list[bytes] = []
    else:
        meta, blobs = _decode_within_memory(data)
    out = sys.stdout.buffer
    out.write(json.dumps(meta, ensure_ascii=True).encode("ascii") + b"\n")
    for blob in blobs:
        out.write(blob)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
