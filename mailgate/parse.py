"""The parse stage: raw message bytes → `ParsedMail`.

Input: the bytes of a message exactly as received (hostile: broken MIME, unknown charsets, bad
base64, encoded words in odd places, path-like filenames). Output: a frozen `ParsedMail`. This
function never raises for bad mail: whatever cannot be read is recorded in `defects` and the
rest is kept. mail-parser reads the headers (subject, addresses, ids, date, defects); the body
tree is walked with the standard library so attachment bytes come out exactly as sent. HTML is
sanitised here, so nothing downstream ever holds unsanitised markup outside the raw .eml.
"""

from __future__ import annotations

import codecs
import email
import email.header
import email.utils
import logging
import re
from datetime import UTC
from email.message import Message
from typing import Any

import mailparser

from mailgate import attached_mail, htmltext, tnef
from mailgate.model import Address, ParsedAttachment, ParsedMail

_MSGID = re.compile(r"<([^<>\s]+)>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FILENAME_BAD = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
MAX_FILENAME_BYTES = 200

# mail-parser logs every defect it finds at WARNING; the defects are kept on ParsedMail instead.
logging.getLogger("mailparser").setLevel(logging.ERROR)


def parse(raw: bytes) -> ParsedMail:
    defects: list[str] = []
    mp: Any = None
    try:
        mp = mailparser.parse_from_bytes(raw)
        msg: Message = mp.message
    except Exception as exc:  # mail-parser gives up on some broken mail: fall back, note why
        defects.append(f"mail-parser failed: {type(exc).__name__}: {exc}")
        msg = email.message_from_bytes(raw)

    headers = _headers(msg, defects)
    subject = _field(mp, "subject", lambda: decode_header_value(msg.get("Subject", ""), defects))
    if not isinstance(subject, str):  # mail-parser returns a list for some broken headers
        subject = " ".join(str(s) for s in subject) if isinstance(subject, list) else ""
    subject = _CONTROL.sub(" ", subject).strip()
    from_list = _addresses(mp, "from_", msg, "From", defects)
    body = _Body(defects)
    body.walk(msg)
    if mp is not None:
        for entry in mp.defects or ():
            for part, items in entry.items() if isinstance(entry, dict) else ():
                defects.extend(f"{part}: {item}" for item in items)

    found = tnef.expand(body.attachments, safe_filename)  # winmail.dat: the files inside
    defects.extend(found.defects)
    html_raw = "\n".join(body.html)
    text = "\n".join(body.text)
    if not text.strip() and not html_raw.strip():  # the body Outlook put in winmail.dat
        text, html_raw = found.text, found.html
    if not text.strip() and html_raw:
        text = htmltext.to_text(html_raw)
    return ParsedMail(
        message_id=_first_id(msg.get("Message-ID", "")),
        in_reply_to=tuple(_MSGID.findall(str(msg.get("In-Reply-To", "")))),
        references=tuple(_MSGID.findall(" ".join(str(v) for v in msg.get_all("References", [])))),
        from_=from_list[0] if from_list else Address(""),
        to=tuple(_addresses(mp, "to", msg, "To", defects)),
        cc=tuple(_addresses(mp, "cc", msg, "Cc", defects)),
        reply_to=tuple(_addresses(None, "", msg, "Reply-To", defects)),
        subject=subject,
        date=_date(msg.get("Date", "")),
        text=text,
        html=htmltext.sanitize(html_raw) if html_raw else "",
        attachments=attached_mail.describe(found.attachments, decode_header_value,
                                           safe_filename),
        headers=headers,
        defects=tuple(dict.fromkeys(defects)),
    )


def _field(mp: Any, name: str, fallback: Any) -> Any:
    if mp is not None:
        try:
            return getattr(mp, name)
        except Exception:
            pass
    return fallback()


def _headers(msg: Message, defects: list[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for name, value in msg.items():
        out.setdefault(str(name).lower(), []).append(decode_header_value(value, defects))
    return {k: tuple(v) for k, v in out.items()}


def decode_header_value(value: Any, defects: list[str] | None = None) -> str:
    """Decode RFC 2047 encoded words; undecodable pieces are replaced and noted as defects."""
    if isinstance(value, email.header.Header):
        value = str(value)
    text = str(value)
    if any("\udc80" <= ch <= "\udcff" for ch in text):
        # raw 8-bit bytes in a header (RFC 6532 UTF-8, or a legacy charset undeclared)
        raw = text.encode("ascii", "surrogateescape")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            if defects is not None:
                defects.append("undeclared 8-bit header, read as latin-1")
            text = raw.decode("latin-1")
    try:
        pieces = email.header.decode_header(text)
    except Exception as exc:
        if defects is not None:
            defects.append(f"undecodable header: {exc}")
        return text
    out = []
    for piece, charset in pieces:
        if isinstance(piece, str):
            out.append(piece)
            continue
        out.append(decode_bytes(piece, charset, defects))
    joined = "".join(out)
    return re.sub(r"\s*\r?\n\s*", " ", joined)


def decode_bytes(data: bytes, charset: str | None, defects: list[str] | None = None) -> str:
    name = (charset or "us-ascii").strip().strip('"').lower()
    aliases = {"unknown-8bit": "latin-1", "x-unknown": "latin-1", "iso-8859-8-i": "iso-8859-8",
               "gb2312": "gb18030", "gbk": "gb18030", "ks_c_5601-1987": "cp949"}
    name = aliases.get(name, name)
    try:
        codecs.lookup(name)
    except LookupError:
        if defects is not None:
            defects.append(f"unknown charset {charset!r}")
        name = "utf-8"
    try:
        return data.decode(name)
    except UnicodeDecodeError:
        if name in ("us-ascii", "ascii"):
            try:
                return data.decode("utf-8")  # undeclared 8-bit text is most often UTF-8
            except UnicodeDecodeError:
                pass
        if defects is not None:
            defects.append(f"bytes not valid in charset {name}")
        return data.decode(name, errors="replace")


def _addresses(mp: Any, attr: str, msg: Message, header: str, defects: list[str]
               ) -> list[Address]:
    pairs: list[tuple[str, str]] = []
    if mp is not None and attr:
        try:
            pairs = list(getattr(mp, attr) or [])
        except Exception:
            pairs = []
    if not pairs:
        values = [decode_header_value(v, defects) for v in msg.get_all(header, [])]
        try:
            pairs = email.utils.getaddresses(values)
        except Exception:
            defects.append(f"unparsable {header} header")
            pairs = []
    out = []
    for name, addr in pairs:
        addr = _CONTROL.sub("", str(addr)).strip().strip("<>").lower()
        if "@" not in addr:
            continue
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
    """A display filename that cannot name a path: no directories, no control characters,
    no leading dots, at most 200 bytes of UTF-8."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _FILENAME_BAD.sub("_", name).strip().lstrip(".").strip()
    if not name:
        ext = {"text/plain": ".txt", "text/html": ".html", "message/rfc822": ".eml"}.get(
            content_type, ".bin"
        )
        name = "attachment" + ext
    while len(name.encode("utf-8")) > MAX_FILENAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        name = (stem[:-1] + dot + ext) if dot and len(ext) < 16 and stem else name[:-1]
    return name


class _Body:
    """Walks the MIME tree collecting text, html and attachments."""

    def __init__(self, defects: list[str]) -> None:
        self.defects = defects
        self.text: list[str] = []
        self.html: list[str] = []
        self.attachments: list[ParsedAttachment] = []

    def walk(self, part: Message, depth: int = 0) -> None:
        for d in getattr(part, "defects", []):
            self.defects.append(type(d).__name__)
        if depth > 50:
            self.defects.append("MIME nesting deeper than 50 levels; rest kept only in raw")
            return
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":
            self.text.append(self._delivery_status(part))
            return
        if part.is_multipart() and ctype != "message/rfc822":
            payload = part.get_payload()
            for sub in payload if isinstance(payload, list) else []:
                if isinstance(sub, Message):
                    self.walk(sub, depth + 1)
            return
        filename = self._filename(part)
        disposition = (part.get_content_disposition() or "").lower()
        if ctype.startswith("message/"):
            self._attach(part, filename or "", ctype, self._message_bytes(part))
            return
        inline_text = disposition != "attachment" and not filename
        if inline_text and ctype in ("text/plain", "text/html"):
            data = self._payload(part)
            text = decode_bytes(data, part.get_content_charset(), self.defects)
            (self.html if ctype == "text/html" else self.text).append(text)
            return
        if inline_text and ctype.startswith("text/"):  # text/enriched, text/rfc822-headers, ...
            charset = part.get_content_charset()
            self.text.append(decode_bytes(self._payload(part), charset, self.defects))
            return
        self._attach(part, filename or "", ctype, self._payload(part))

    def _delivery_status(self, part: Message) -> str:
        payload = part.get_payload()
        if isinstance(payload, list):
            blocks = [sub.as_string() if isinstance(sub, Message) else str(sub) for sub in payload]
            return "\n".join(blocks)
        return decode_bytes(self._payload(part), "utf-8", self.defects)

    def _payload(self, part: Message) -> bytes:
        try:
            data = part.get_payload(decode=True)
        except Exception as exc:
            self.defects.append(f"undecodable part: {exc}")
            data = None
        if data is None:
            raw = part.get_payload()
            data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""
        return data

    def _message_bytes(self, part: Message) -> bytes:
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            try:
                return payload[0].as_bytes()
            except Exception as exc:
                self.defects.append(f"attached message could not be serialised: {exc}")
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
        cid = str(part.get("Content-ID", "")).strip().strip("<>")
        self.attachments.append(
            ParsedAttachment(
                filename=safe_filename(filename, ctype),
                content_type=ctype,
                payload=payload,
                content_id=_CONTROL.sub("", cid),
                inline=(part.get_content_disposition() or "") == "inline",
            )
        )
