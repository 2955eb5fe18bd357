"""Composing an outgoing message from rendered template parts.

Input: a `Rendered` (subject, text, html, inline images; its text came from untrusted mail and
was escaped by the templates) and header values we chose. Addresses are checked here: anything
that is not a plain addr-spec (CR, LF, spaces, angle brackets) is refused, so nothing from mail
can inject a header or an SMTP command. Output: the message as bytes with CRLF line endings:
multipart/alternative (text + HTML), the HTML inside multipart/related when images are inline.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
import time
from dataclasses import dataclass
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage

from mailgate.errors import PermanentFailure

_ADDR = re.compile(r"^[^\s<>()\[\]\\,;:\"@]+@[A-Za-z0-9.-]+$")
MAX_REFERENCES = 20


class BadAddress(PermanentFailure):
    pass


def checked_address(address: str) -> str:
    if not _ADDR.match(address or ""):
        raise BadAddress(f"not a deliverable address: {address!r}")
    return address


def _clean_name(name: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]+", " ", name or "").strip()[:120]


def _mailbox(name: str, address: str) -> HeaderAddress:
    local, _, domain = checked_address(address).rpartition("@")
    return HeaderAddress(display_name=_clean_name(name), username=local, domain=domain)


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


def compose(subject: str, text: str, html: str, images: tuple, headers: Headers) -> bytes:  # type: ignore[type-arg]
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Date"] = email.utils.formatdate(time.time(), localtime=False)
    msg["Message-ID"] = f"<{headers.message_id}>"
    msg["From"] = _mailbox(headers.from_name, headers.from_addr)
    msg["To"] = _mailbox(headers.to_name, headers.to_addr)
    msg["Reply-To"] = _mailbox(headers.from_name, headers.reply_to)
    msg["Subject"] = re.sub(r"[\x00-\x1f\x7f]+", " ", subject).strip()
    if headers.in_reply_to:
        msg["In-Reply-To"] = f"<{headers.in_reply_to}>"
    refs = [r for r in headers.references if r and not re.search(r"[\s<>]", r)]
    if headers.in_reply_to and headers.in_reply_to not in refs:
        refs.append(headers.in_reply_to)
    if refs:
        msg["References"] = " ".join(f"<{r}>" for r in refs[-MAX_REFERENCES:])
    if headers.automatic:
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"
    if headers.ticket_id is not None:
        msg["X-Mailgate-Ticket"] = str(headers.ticket_id)
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    if images:
        html_part = msg.get_payload()[1]
        for image in images:
            maintype, _, subtype = image.content_type.partition("/")
            html_part.add_related(image.data, maintype=maintype, subtype=subtype or "octet-stream",
                                  cid=f"<{image.cid}>", filename=image.filename,
                                  disposition="inline")
    return msg.as_bytes()
