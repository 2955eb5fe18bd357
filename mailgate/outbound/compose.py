"""Composing an outgoing message from rendered template parts.

Input: a `Rendered` (subject, text, html, inline images; its text came from untrusted mail and
was escaped by the templates) and header values we chose, some of them copied from mail (the
recipient's display name, the Message-IDs we answer). Addresses are checked here: anything that
is not a plain addr-spec (CR, LF, spaces, angle brackets) is refused, so nothing from mail can
inject a header or an SMTP command. Display names are cut to one short line (`display_name`);
Message-IDs from mail are cleaned (`clean_message_id`: folding and control characters removed,
left out when no usable id remains) and written one per line, never encoded, so a malformed id
never makes a mail fail to compose. Notifications (`generated`) are marked `Auto-Submitted:
auto-generated`, other automatic mail `auto-replied`; `Thread-Index` / `Thread-Topic` are
written when given. Output: the message as bytes with CRLF line endings:
multipart/alternative (text + HTML), the HTML inside multipart/related when images are inline,
inside multipart/mixed with the files an agent attached (names already made safe by the caller).
"""

from __future__ import annotations

import email.utils
import re
import time
import unicodedata
from dataclasses import dataclass

from mailgate.errors import PermanentFailure
from mailgate.model import Upload
from mailgate.outbound import mimewriter

_ADDR = re.compile(r"^[^\s<>()\[\]\\,;:\"@]+@[A-Za-z0-9.-]+$")
MAX_REFERENCES = 20
MAX_NAME = 64  # characters of a display name from mail that reach a greeting or a header
MAX_ID = 250  # characters of a Message-ID we copy into In-Reply-To / References
# Format characters (category Cf) are dropped from names — bidi controls among them can reorder
# what a reader sees (U+202E shows text backwards) — except the joiners scripts and emoji need.
_JOINERS = frozenset("\u200c\u200d")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")


class BadAddress(PermanentFailure):
    pass


def checked_address(address: str) -> str:
    if not _ADDR.match(address or ""):
        raise BadAddress(f"not a deliverable address: {address!r}")
    return address


def display_name(name: str) -> str:
    """A display name from mail as it may appear in a greeting or a `To:`: control characters,
    line and paragraph separators → one space; bidi controls, other format characters and lone
    surrogates removed; white space collapsed; at most `MAX_NAME` characters. "" when it looks
    like an address or a link — a name must not pose as another address or carry a URL."""
    chars = []
    for c in name or "":
        category = unicodedata.category(c)
        if category == "Cs" or (category == "Cf" and c not in _JOINERS):
            continue
        chars.append(" " if category in ("Cc", "Zl", "Zp") or c.isspace() else c)
    text = " ".join("".join(chars).split())
    lowered = text.lower()
    if "@" in text or "://" in lowered or "www." in lowered:
        return ""
    return text[:MAX_NAME].rstrip()


def clean_message_id(value: str) -> str:
    """A Message-ID from mail, without angle brackets, as it may go into In-Reply-To or
    References: white space (folding) and control characters removed; "" when what is left is
    not `left@right` in printable ASCII without angle brackets, or is longer than `MAX_ID`."""
    text = "".join(c for c in value or "" if c > " " and c != "\x7f")
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    left, at, right = text.rpartition("@")
    if (not at or not left or not right or len(text) > MAX_ID or not text.isascii()
            or "<" in text or ">" in text):
        return ""
    return text


def _mailbox(name: str, address: str) -> tuple[str, str]:
    return display_name(name), checked_address(address)


@dataclass(frozen=True)
class Headers:
    from_name: str
    from_addr: str
    to_name: str
    to_addr: str
    reply_to: str
    message_id: str  # without angle brackets
    in_reply_to: str = ""
    references: tuple[str, ...] = ()
    automatic: bool = False
    ticket_id: int | None = None
    cc: tuple[tuple[str, str], ...] = ()  # (name, address) copied in Cc
    generated: bool = False  # a notification: Auto-Submitted: auto-generated (RFC 3834)
    thread_index: str = ""  # Outlook's Thread-Index (base64), "" for none
    thread_topic: str = ""


def compose(subject: str, text: str, html: str, images: tuple, headers: Headers,  # type: ignore[type-arg]
            attachments: tuple[Upload, ...] = ()) -> bytes:
    fields = [
        mimewriter.raw_field("Date", email.utils.formatdate(time.time(), localtime=False)),
        mimewriter.raw_field("Message-ID", f"<{headers.message_id}>"),
        mimewriter.address_list("From", [_mailbox(headers.from_name, headers.from_addr)]),
        mimewriter.address_list("To", [_mailbox(headers.to_name, headers.to_addr)]),
    ]
    if headers.cc:
        fields.append(mimewriter.address_list(
            "Cc", [_mailbox(name, addr) for name, addr in headers.cc]))
    fields.append(mimewriter.address_list(
        "Reply-To", [_mailbox(headers.from_name, headers.reply_to)]))
    fields.append(mimewriter.unstructured("Subject", _CONTROLS.sub(" ", subject).strip()))
    in_reply_to = clean_message_id(headers.in_reply_to)
    if in_reply_to:
        fields.append(mimewriter.raw_field("In-Reply-To", f"<{in_reply_to}>"))
    refs = [r for r in dict.fromkeys(clean_message_id(r) for r in headers.references) if r]
    if in_reply_to:
        refs = [r for r in refs if r != in_reply_to] + [in_reply_to]
    if refs:
        fields.append(mimewriter.raw_field(
            "References", "\r\n ".join(f"<{r}>" for r in refs[-MAX_REFERENCES:])))
    if headers.automatic or headers.generated:
        fields.append(mimewriter.raw_field(
            "Auto-Submitted", "auto-generated" if headers.generated else "auto-replied"))
        fields.append(mimewriter.raw_field("X-Auto-Response-Suppress", "All"))
    if headers.thread_index:
        fields.append(mimewriter.unstructured("Thread-Index", headers.thread_index))
        topic = _CONTROLS.sub(" ", headers.thread_topic).strip()
        if topic:
            fields.append(mimewriter.unstructured("Thread-Topic", topic))
    if headers.ticket_id is not None:
        fields.append(mimewriter.raw_field("X-Mailgate-Ticket", str(int(headers.ticket_id))))
    body = mimewriter.text_part("html", html)
    if images:
        body = mimewriter.multipart("related", [body, *(
            mimewriter.image_part(image.content_type, image.data, image.cid, image.filename)
            for image in images)])
    alternative = mimewriter.multipart("alternative", [mimewriter.text_part("plain", text), body])
    if attachments:  # files an agent attached: multipart/mixed, the text first
        alternative = mimewriter.multipart("mixed", [alternative, *(
            mimewriter.attachment_part(a.content_type, a.data, a.filename)
            for a in attachments)])
    return mimewriter.message(fields, alternative)
