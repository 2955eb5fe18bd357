"""The parse stage: raw message bytes → `ParsedMail`.

Input: the bytes of a message exactly as received (hostile: broken MIME, unknown charsets, bad
base64, encoded words in odd places, path-like filenames, NUL bytes, headers of any size, MIME
nested to any depth). Output: a frozen `ParsedMail`. This function never raises for any bytes
(only `TemporaryFailure`, when the machine cannot start the TNEF decoder): whatever cannot be
read is recorded in `defects` and the rest is kept. The parsers are given the
message as `mailbounds.bound` leaves it (oversized headers, too deep or too many MIME parts cut,
each cut a defect), so their work is linear in the size of the mail; the raw .eml the pipeline
keeps is the untouched original. mail-parser reads the headers (subject, addresses, ids, date,
defects); the body tree is walked with the standard library so attachment bytes come out
exactly as sent. Addresses are read from the header's structure before any encoded word in it
is decoded, so a display name can never supply or change an address. HTML is sanitised here
(bounded in size and nesting, see `htmltext`), so nothing downstream ever holds unsanitised
markup outside the raw .eml. Filenames are made path-safe and lose bidirectional and other
invisible formatting characters.
"""

from __future__ import annotations

import email
import email.header
import email.parser
import email.utils
import logging
import re
import unicodedata
from datetime import UTC
from email.message import Message
from typing import Any

import mailparser

from mailgate import mailbounds
from mailgate.errors import TemporaryFailure
from mailgate.model import Address, ParsedAttachment, ParsedMail
from mailgate.parsing import attached_mail, htmltext, tnef

_MSGID = re.compile(r"<([^<>\s]+)>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FILENAME_BAD = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
MAX_FILENAME_BYTES = 200
# Format (bidi overrides and isolates, zero-width marks), line/paragraph separators, controls
# and lone surrogates: invisible or misleading in a filename.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Zl", "Zp", "Cc", "Cs"})
MAX_SUBJECT_CHARS = 2000  # a ticket's subject; the whole header stays in `headers`
MAX_MIME_DEPTH = mailbounds.MAX_MIME_DEPTH

# mail-parser logs every defect it finds (WARNING, ERROR, with the header text in it: a log line
# a sender writes); the defects are kept on ParsedMail instead.
logging.getLogger("mailparser").setLevel(logging.CRITICAL)


def parse(raw: bytes) -> ParsedMail:
    try:
        return _parse(raw)
    except TemporaryFailure:  # the machine, not the mail (the TNEF decoder could not start)
        raise
    except Exception as exc:  # a bug, not the mail: keep what the headers give, say why
        return _headers_only(raw, f"{PARSE_FAILED}: {type(exc).__name__}: {exc}"[:300])


# The defect recorded when `parse` itself failed (tests and bench/fuzz.py count these).
PARSE_FAILED = "parse failed, headers only"


def _parse(raw: bytes) -> ParsedMail:
    bounded = mailbounds.bound(raw)
    defects: list[str] = list(bounded.defects)
    data = bounded.raw
    mp: Any = None
    try:  # the header only: the body is read below, with the standard library
        mp = mailparser.parse_from_bytes(bounded.header)
    except Exception as exc:  # mail-parser gives up on some broken mail: fall back, note why
        defects.append(f"mail-parser failed: {type(exc).__name__}: {exc}"[:300])
    msg = _stdlib_message(data, defects)

    headers = _headers(msg, defects)
    subject = _field(mp, "subject", lambda: decode_header_value(msg.get("Subject", ""), defects))
    if not isinstance(subject, str):  # mail-parser returns a list for some broken headers
        subject = " ".join(str(s) for s in subject) if isinstance(subject, list) else ""
    subject = _CONTROL.sub(" ", subject).strip()
    if len(subject) > MAX_SUBJECT_CHARS:
        defects.append(f"subject longer than {MAX_SUBJECT_CHARS} characters, cut")
        subject = subject[:MAX_SUBJECT_CHARS]
    from_list = _addresses(mp, "from_", msg, "From", defects)
    body = _Body(defects, bounded)
    body.walk(msg)
    if mp is not None:
        try:
            for entry in mp.defects or ():
                for part, items in entry.items() if isinstance(entry, dict) else ():
                    defects.extend(f"{part}: {item}" for item in items)
        except Exception as exc:
            defects.append(f"mail-parser defects unreadable: {type(exc).__name__}")

    found = tnef.expand(body.attachments, safe_filename)  # winmail.dat: the files inside
    defects.extend(found.defects)
    html_raw = "\n".join(body.html)
    text = "\n".join(body.text)
    if not text.strip() and not html_raw.strip():  # the body Outlook put in winmail.dat
        text, html_raw = found.text, found.html
    if not text.strip() and html_raw:
        text = htmltext.to_text(html_raw)
    return ParsedMail(
        message_id=_first_id(_get(msg, "Message-ID")),
        in_reply_to=tuple(_MSGID.findall(_get(msg, "In-Reply-To"))),
        references=tuple(_MSGID.findall(" ".join(_get_all(msg, "References")))),
        from_=from_list[0] if from_list else Address(""),
        to=tuple(_addresses(mp, "to", msg, "To", defects)),
        cc=tuple(_addresses(mp, "cc", msg, "Cc", defects)),
        reply_to=tuple(_addresses(None, "", msg, "Reply-To", defects)),
        subject=subject,
        date=_date(_get(msg, "Date")),
        text=text,
        html=htmltext.sanitize(html_raw, defects) if html_raw else "",
        attachments=attached_mail.describe(found.attachments, decode_header_value,
                                           safe_filename),
        headers=headers,
        defects=tuple(dict.fromkeys(defects)),
    )


def _stdlib_message(data: bytes, defects: list[str]) -> Message:
    try:
        return email.message_from_bytes(data)
    except Exception as exc:
        defects.append(f"MIME structure unreadable ({type(exc).__name__}); headers only")
    try:
        return email.parser.BytesParser().parsebytes(data, headersonly=True)
    except Exception:
        return Message()


def _headers_only(raw: bytes, why: str) -> ParsedMail:
    """What is left when parsing failed: the decoded header fields (no body), and why."""
    defects = [why]
    headers: dict[str, tuple[str, ...]] = {}
    subject = ""
    try:
        msg = email.parser.BytesParser().parsebytes(mailbounds.bound(raw).raw, headersonly=True)
        headers = _headers(msg, defects)
        subject = _CONTROL.sub(" ", headers.get("subject", ("",))[0]).strip()[:MAX_SUBJECT_CHARS]
        from_list = _addresses(None, "", msg, "From", defects)
    except Exception:
        from_list = []
    return ParsedMail(
        message_id="", in_reply_to=(), references=(),
        from_=from_list[0] if from_list else Address(""), to=(), cc=(), reply_to=(),
        subject=subject, date="", text="", html="", attachments=(), headers=headers,
        defects=tuple(defects),
    )


def _get(msg: Message, name: str) -> str:
    try:
        return str(msg.get(name, "") or "")
    except Exception:
        return ""


def _get_all(msg: Message, name: str) -> list[str]:
    try:
        return [str(v) for v in msg.get_all(name, [])]
    except Exception:
        return []


def _field(mp: Any, name: str, fallback: Any) -> Any:
    if mp is not None:
        try:
            return getattr(mp, name)
        except Exception:
            pass
    return fallback()


def _headers(msg: Message, defects: list[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        key = _CONTROL.sub("", str(name)).strip().lower()
        out.setdefault(key, []).append(decode_header_value(value, defects))
    return {k: tuple(v) for k, v in out.items()}


def decode_header_value(value: Any, defects: list[str] | None = None) -> str:
    """Decode RFC 2047 encoded words; undecodable pieces are replaced and noted as defects.
    Line breaks and the white space around them become one space. Linear in the value's length:
    a value whose unterminated encoded words would make the standard library's decoder slow is
    cut before them (a defect)."""
    if isinstance(value, email.header.Header):
        try:
            value = str(value)
        except Exception:
            value = ""
    text = _eight_bit(str(value), defects)
    cost, cut = mailbounds.encoded_word_cut(text)
    if cost > mailbounds.WORD_SCAN_BUDGET and cut >= 0:
        if defects is not None:
            defects.append("header with encoded words that never end, cut")
        text = text[:cut]
    try:
        pieces = email.header.decode_header(text)
    except Exception as exc:
        if defects is not None:
            defects.append(f"undecodable header: {exc}"[:200])
        return mailbounds.unfold(text)
    out = []
    for piece, charset in pieces:
        if isinstance(piece, str):
            out.append(piece)
            continue
        out.append(decode_bytes(piece, charset, defects))
    return mailbounds.unfold("".join(out))


def _eight_bit(text: str, defects: list[str] | None) -> str:
    """Raw 8-bit bytes in a header (RFC 6532 UTF-8, or a legacy charset undeclared) as text."""
    if not any("\udc80" <= ch <= "\udcff" for ch in text):
        return text
    raw = text.encode("ascii", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if defects is not None:
            defects.append("undeclared 8-bit header, read as latin-1")
        return raw.decode("latin-1")
    except UnicodeEncodeError:  # surrogates that are no raw bytes
        return text.encode("utf-8", "replace").decode("utf-8")


def decode_bytes(data: bytes, charset: str | None, defects: list[str] | None = None) -> str:
    text, problem = mailbounds.decode_text(data, charset)
    if problem and defects is not None:
        defects.append(problem)
    return text


def _addresses(mp: Any, attr: str, msg: Message, header: str, defects: list[str]
               ) -> list[Address]:
    pairs: list[tuple[str, str]] = []
    if mp is not None and attr:
        try:
            pairs = list(getattr(mp, attr) or [])
        except Exception:
            pairs = []
    if not pairs:
        # The structure first, from the undecoded value; encoded words only in display names
        # after that, so that no decoded text (an encoded "<x@y>" or CR LF) makes an address.
        values = [mailbounds.unfold(_eight_bit(v, defects)) for v in _get_all(msg, header)]
        pairs = [(decode_header_value(name, defects), addr)
                 for name, addr in mailbounds.address_pairs(values)]
        if values and not pairs:
            defects.append(f"unparsable {header} header")
    out = []
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            continue
        name, addr = pair
        addr = _CONTROL.sub("", str(addr)).strip().strip("<>").lower()
        if "@" not in addr or (not addr.startswith('"') and any(c.isspace() for c in addr)):
            continue  # no address (white space: words, or an encoded word, before one)
        out.append(Address(email=addr, name=_CONTROL.sub(" ", str(name)).strip()))
    return out


def _first_id(value: Any) -> str:
    text = str(value)
    found = _MSGID.findall(text)
    if found:
        return found[0]
    text = text.strip()
    return text if text and " " not in text else ""


def _date(value: Any) -> str:
    try:
        dt = email.utils.parsedate_to_datetime(str(value))
    except Exception:
        return ""
    if dt is None:
        return ""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC).isoformat()
    except (OverflowError, ValueError):
        return ""


def safe_filename(name: str, content_type: str = "application/octet-stream") -> str:
    """A display filename that cannot name a path or hide its real extension: no directories,
    no control characters, no leading dots, no bidirectional overrides or other invisible
    formatting characters (U+202E "RIGHT-TO-LEFT OVERRIDE" makes `invoice‮fdp.exe` show as
    `invoiceexe.pdf`): each becomes `_`; at most 200 bytes of UTF-8."""
    name = "".join("_" if unicodedata.category(c) in _INVISIBLE_CATEGORIES else c
                   for c in str(name))
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _FILENAME_BAD.sub("_", name).strip().lstrip(".").strip()
    if not name:
        ext = {"text/plain": ".txt", "text/html": ".html", "message/rfc822": ".eml"}.get(
            content_type, ".bin"
        )
        name = "attachment" + ext
    encoded = name.encode("utf-8")
    if len(encoded) > MAX_FILENAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        if not (dot and stem and len(ext.encode("utf-8")) < 16):
            stem, dot, ext = name, "", ""
        room = MAX_FILENAME_BYTES - len((dot + ext).encode("utf-8"))
        stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore")
        name = stem + dot + ext
    return name


def _block_text(block: object) -> str:
    """One header block of a message/delivery-status part, as text."""
    if not isinstance(block, Message):
        return str(block)
    try:
        return block.as_string()
    except Exception:
        return "".join(f"{k}: {v}\n" for k, v in block.raw_items())


def _disposition(part: Message) -> str:
    try:
        return str(part.get_content_disposition() or "").lower()
    except Exception:
        return ""


class _Body:
    """Walks the MIME tree collecting text, html and attachments."""

    def __init__(self, defects: list[str], bounded: mailbounds.Bounded | None = None) -> None:
        self.defects = defects
        self.bounded = bounded
        self.text: list[str] = []
        self.html: list[str] = []
        self.attachments: list[ParsedAttachment] = []

    def walk(self, part: Message, depth: int = 0) -> None:
        for d in getattr(part, "defects", []):
            self.defects.append(type(d).__name__)
        if depth > MAX_MIME_DEPTH:  # mailbounds cut deeper parts already; never recurse on
            self.defects.append(f"MIME nesting deeper than {MAX_MIME_DEPTH} levels; rest kept"
                                " only in raw")
            return
        ctype = mailbounds.content_type(part)
        if ctype == "message/delivery-status":
            self.text.append(self._delivery_status(part))
            return
        # get_payload() without decode=True is only ever called on a multipart (a list): on a
        # leaf with 8-bit bytes it decodes with the part's charset (punycode: quadratic).
        if part.is_multipart() and ctype != "message/rfc822":
            for sub in part.get_payload():
                if isinstance(sub, Message):
                    self.walk(sub, depth + 1)
            return
        filename = self._filename(part)
        disposition = _disposition(part)
        if ctype.startswith("message/"):
            self._attach(part, filename or "", ctype, self._message_bytes(part))
            return
        inline_text = disposition != "attachment" and not filename
        if inline_text and ctype in ("text/plain", "text/html"):
            data = self._payload(part)
            text = decode_bytes(data, mailbounds.content_charset(part), self.defects)
            (self.html if ctype == "text/html" else self.text).append(text)
            return
        if inline_text and ctype.startswith("text/"):  # text/enriched, text/rfc822-headers, ...
            charset = mailbounds.content_charset(part)
            self.text.append(decode_bytes(self._payload(part), charset, self.defects))
            return
        self._attach(part, filename or "", ctype, self._payload(part))

    def _delivery_status(self, part: Message) -> str:
        if part.is_multipart():
            return "\n".join(_block_text(sub) for sub in part.get_payload())
        return decode_bytes(self._payload(part), "utf-8", self.defects)

    def _payload(self, part: Message) -> bytes:
        return mailbounds.payload_bytes(part, self.bounded)

    def _message_bytes(self, part: Message) -> bytes:
        payload = part.get_payload() if part.is_multipart() else None
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            try:
                data = payload[0].as_bytes()
                return self.bounded.restore(data) if self.bounded is not None else data
            except Exception as exc:
                self.defects.append(f"attached message could not be serialised: {exc}"[:200])
                return b""
        return self._payload(part)

    def _filename(self, part: Message) -> str:
        try:
            name = part.get_filename() or ""
        except Exception:
            name = ""
        if "\ufffd" in name:
            name = self._filename_from_8bit_header(part) or name
        return decode_header_value(name, self.defects) if name else ""

    def _filename_from_8bit_header(self, part: Message) -> str:
        """The stdlib loses raw UTF-8 in parameters; re-read them from the raw header."""
        tmp = Message()
        for key, value in part.raw_items():
            if key.lower() in ("content-disposition", "content-type"):
                tmp[key] = decode_header_value(value, self.defects)
        try:
            return tmp.get_filename() or ""
        except Exception:
            return ""

    def _attach(self, part: Message, filename: str, ctype: str, payload: bytes) -> None:
        cid = _get(part, "Content-ID").strip().strip("<>")
        self.attachments.append(
            ParsedAttachment(
                filename=safe_filename(filename, ctype),
                content_type=ctype,
                payload=payload,
                content_id=_CONTROL.sub("", cid),
                inline=_disposition(part) == "inline",
            )
        )
