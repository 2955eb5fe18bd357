"""One read of a message for every detector of the classification stage.

Input: the `ParsedMail` of the parse stage, the raw bytes exactly as received and the SMTP
envelope sender (all untrusted: any header, sender or body can be forged, broken or absent).
Output: `MailView`, the facts the detectors test — content type and its parameters, the MIME
parts (read again with the standard library, because reports keep their machine-readable parts in
`message/*` bodies that `ParsedMail` holds only as attachments), the sender as the envelope, the
From header and an upstream Return-Path header give it, and the text to search. Nothing here
decides a class; it only reads, and it never raises for bad mail. The MIME parts are read from
the message as `mailbounds.bound` leaves it (linear work whatever the structure), and every text
the detectors search is cut to `MAX_TEXT` characters.
"""

from __future__ import annotations

import email
import email.header
import email.utils
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from functools import cached_property

import mailgate.mailbounds as mailbounds
from mailgate.model import Address, ParsedMail

# How much of a body the detectors search: enough for every notice, bounded for hostile mail.
MAX_TEXT = 200_000

# Local parts that MTAs and mailbox providers use for the messages they generate themselves.
_MTA_LOCALS = frozenset({
    "mailer-daemon", "mailerdaemon", "mail-daemon", "maildaemon", "postmaster", "post_master",
    "post-master", "double-bounce", "mail.delivery.system", "mdaemon",
})
_MTA_NAMES = re.compile(r"\b(?:mailer[- ]?daemon|postmaster|mail delivery (?:subsystem|system))\b",
                        re.I)


def _decode(data: bytes, charset: str | None) -> str:
    name = str(charset or "utf-8").strip().strip('"').lower()
    if name in ("unknown-8bit", "x-unknown", "us-ascii", "ascii"):
        name = "utf-8"
    return mailbounds.decode_text(data, name)[0]


def _header_text(value: object) -> str:
    text = str(value)[:MAX_TEXT]
    cost, cut = mailbounds.encoded_word_cut(text)
    if cost > mailbounds.WORD_SCAN_BUDGET and cut >= 0:
        text = text[:cut]
    try:
        pieces = email.header.decode_header(text)
    except Exception:
        return mailbounds.unfold(text)
    out = []
    for piece, charset in pieces:
        out.append(piece if isinstance(piece, str) else _decode(piece, charset))
    return mailbounds.unfold("".join(out))


def _message(bounded: mailbounds.Bounded) -> Message:
    """The MIME tree of (the bounded) raw message; an empty message when even that cannot be
    read."""
    try:
        return email.message_from_bytes(bounded.raw)
    except Exception:  # the stdlib parser is lenient; keep going with an empty message
        return Message()


def _strip_angle(value: str) -> str:
    return value.strip().strip("<>").strip()


@dataclass(frozen=True)
class Part:
    """One MIME leaf (or message/* body) of the message, with its decoded content."""

    content_type: str
    depth: int  # 0 for the top-level message, 1 for its direct parts, ...
    text: str  # the decoded payload for text/* and message/* parts, "" otherwise
    inside_message: bool  # within an attached message/rfc822 (the returned original mail)


@dataclass
class MailView:
    parsed: ParsedMail
    raw: bytes
    envelope_sender: str

    @classmethod
    def from_raw(cls, raw: bytes, envelope_sender: str = "") -> MailView:
        """A view of bytes that no parse stage has read (for callers holding only the bytes):
        the headers are decoded here, the text comes from the MIME parts."""
        bounded = mailbounds.bound(raw)
        msg = _message(bounded)
        headers: dict[str, list[str]] = {}
        for name, value in msg.raw_items():
            headers.setdefault(str(name).lower(), []).append(_header_text(value))
        # the structure from the undecoded value: a display name never makes an address
        from_pairs = mailbounds.address_pairs(
            [mailbounds.unfold(str(v)) for v in msg.get_all("from", [])])
        addr = next((a.lower() for _, a in from_pairs if "@" in a), "")
        parsed = ParsedMail(
            message_id="", in_reply_to=(), references=(), from_=Address(addr), to=(), cc=(),
            reply_to=(), subject=" ".join(headers.get("subject", [])[:1]), date="", text="",
            html="", attachments=(), headers={k: tuple(v) for k, v in headers.items()},
        )
        view = cls(parsed, raw, envelope_sender)
        view.__dict__["bounded"] = bounded
        view.__dict__["message"] = msg
        return view

    # --- headers ------------------------------------------------------------------------------

    def header(self, name: str) -> str:
        return self.parsed.header(name).strip()

    def headers(self, name: str) -> tuple[str, ...]:
        return self.parsed.headers.get(name.lower(), ())

    @cached_property
    def bounded(self) -> mailbounds.Bounded:
        return mailbounds.bound(self.raw)

    @cached_property
    def message(self) -> Message:
        return _message(self.bounded)

    @cached_property
    def content_type(self) -> str:
        try:
            return self.message.get_content_type()
        except Exception:
            return "text/plain"

    def content_param(self, name: str) -> str:
        try:
            value = self.message.get_param(name, header="content-type")
            if isinstance(value, tuple):  # RFC 2231 encoded parameter
                value = email.utils.collapse_rfc2231_value(value)
            return str(value or "").strip().lower()[:MAX_TEXT]
        except Exception:
            return ""

    # --- the sender ---------------------------------------------------------------------------

    @cached_property
    def from_header(self) -> str:
        return self.header("from")

    @cached_property
    def from_address(self) -> str:
        return self.parsed.from_.email

    @cached_property
    def return_path(self) -> str | None:
        """What an upstream MTA recorded as the envelope sender (the Return-Path header of the
        first hop that delivered it, kept when the mailbox forwarded it on); None when absent."""
        values = self.headers("return-path")
        return _strip_angle(values[0]).lower() if values else None

    @cached_property
    def null_sender(self) -> str:
        """Why this message looks sent with the null reverse-path (RFC 5321 4.5.5), or ""."""
        env = _strip_angle(self.envelope_sender or "")
        if env == "":
            return "null envelope sender"
        if env.lower().split("@")[0] in _MTA_LOCALS:
            return f"envelope sender {env}"
        rp = self.return_path
        if rp is not None and (rp == "" or rp.split("@")[0] in _MTA_LOCALS):
            return f"Return-Path <{rp}>"
        return ""

    @cached_property
    def mta_from(self) -> str:
        """Why the From header names a mail system rather than a person, or ""."""
        local = self.from_address.split("@")[0]
        if local in _MTA_LOCALS:
            return f"From {self.from_address}"
        if not self.from_address:
            if _MTA_NAMES.search(self.from_header):
                return f"From {self.from_header!r}"
            return "no From address" if self.from_header.strip("<> ") == "" else ""
        return ""

    @cached_property
    def robot_sender(self) -> str:
        """The first sign that a mail system, not a person, sent this; "" when none."""
        return self.null_sender or self.mta_from

    # --- the body -----------------------------------------------------------------------------

    @cached_property
    def parts(self) -> tuple[Part, ...]:
        return tuple(self._walk(self.message, 0, False))

    def _walk(self, part: Message, depth: int, inside: bool) -> Iterator[Part]:
        if depth > 30:
            return
        ctype = mailbounds.content_type(part)
        payload = part.get_payload() if part.is_multipart() else None  # never on a leaf
        if isinstance(payload, list):
            if ctype.startswith("message/"):
                yield Part(ctype, depth, self._message_text(payload), inside)
                for sub in payload:
                    if isinstance(sub, Message):
                        yield from self._walk(sub, depth + 1, inside or ctype == "message/rfc822")
                return
            for sub in payload:
                if isinstance(sub, Message):
                    yield from self._walk(sub, depth + 1, inside)
            return
        text = ""
        if ctype.startswith(("text/", "message/")) or ctype == "application/json":
            data = mailbounds.payload_bytes(part, self.bounded)
            text = _decode(data[:MAX_TEXT], mailbounds.content_charset(part))
        yield Part(ctype, depth, text, inside)

    @staticmethod
    def _message_text(payload: list[object]) -> str:
        out = []
        for sub in payload:
            if isinstance(sub, Message):
                out.append("".join(f"{k}: {v}\n" for k, v in sub.raw_items()))
        return "\n".join(out)[:MAX_TEXT]

    def has_part(self, content_type: str) -> bool:
        return any(p.content_type == content_type for p in self.parts)

    def parts_of(self, content_type: str) -> list[Part]:
        return [p for p in self.parts if p.content_type == content_type]

    @cached_property
    def raw_body(self) -> str:
        """The undecoded body after the header block, as text (for mail whose MIME structure is
        too broken for any parser to find its text)."""
        raw = self.raw[: MAX_TEXT * 2]
        for sep in (b"\r\n\r\n", b"\n\n"):
            at = raw.find(sep)
            if at >= 0:
                return raw[at + len(sep):].decode("utf-8", "replace")
        return ""

    @cached_property
    def text(self) -> str:
        """The notice's own text: the parsed text and every text part outside a returned
        original message; the raw body when no parser found any text."""
        pieces = [self.parsed.text[:MAX_TEXT]]
        seen = {self.parsed.text.strip()}
        for p in self.parts:
            if p.inside_message or not p.text or p.content_type == "text/html":
                continue
            if p.text.strip() and p.text.strip() not in seen and p.text.strip() not in pieces[0]:
                pieces.append(p.text)
                seen.add(p.text.strip())
        joined = "\n".join(pieces)
        if not joined.strip():
            joined = self.raw_body
        return joined[:MAX_TEXT]

    @cached_property
    def html(self) -> str:
        return self.parsed.html[:MAX_TEXT]
