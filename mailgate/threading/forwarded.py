"""Finding the original sender of a message an agent forwarded from their own mailbox.

Input: a `ParsedMail` (untrusted) sent by one of our agents. Output: the original sender's
address and the original subject, from an attached message/rfc822 or from the headers block
that mail clients write above an inline forward ("---------- Forwarded message ---------",
"Begin forwarded message:", "-----Original Message-----"), or None when it is not a forward.
"""

from __future__ import annotations

import email
import email.utils
import re
from dataclasses import dataclass

from mailgate.model import Address, ParsedMail

_FWD_SUBJECT = re.compile(r"^\s*(fwd?|wg|tr|rv|fs|vs|doorst|i)\s*:\s*", re.I)
_INLINE_MARKERS = re.compile(
    r"^-{2,}\s*(forwarded message|original message|weitergeleitete nachricht|"
    r"message transféré|mensaje reenviado|ursprüngliche nachricht)\s*-{2,}\s*$"
    r"|^begin forwarded message:\s*$",
    re.I | re.M,
)
_HEADER_LINE = re.compile(r"^\s*\*?(from|von|de|da|van|från)\*?\s*:\s*(.+)$", re.I | re.M)
_SUBJECT_LINE = re.compile(r"^\s*\*?(subject|betreff|objet|asunto|oggetto)\*?\s*:\s*(.+)$",
                           re.I | re.M)


@dataclass(frozen=True)
class Forwarded:
    sender: Address
    subject: str


def strip_forward_prefix(subject: str) -> str:
    while True:
        new = _FWD_SUBJECT.sub("", subject, count=1)
        if new == subject:
            return subject.strip()
        subject = new


def _address(value: str) -> Address | None:
    name, addr = email.utils.parseaddr(value.replace("[mailto:", "<").replace("]", ">"))
    addr = addr.strip().lower()
    if "@" not in addr or any(c.isspace() for c in addr):
        return None
    return Address(addr, name.strip())


def original_of(parsed: ParsedMail) -> Forwarded | None:
    is_fwd_subject = bool(_FWD_SUBJECT.match(parsed.subject))
    for att in parsed.attachments:
        if att.content_type == "message/rfc822" and att.payload:
            inner = email.message_from_bytes(att.payload)
            sender = _address(str(inner.get("From", "")))
            if sender is not None:
                return Forwarded(sender, str(inner.get("Subject", "")).strip()
                                 or strip_forward_prefix(parsed.subject))
    marker = _INLINE_MARKERS.search(parsed.text)
    if not marker and not is_fwd_subject:
        return None
    block = parsed.text[marker.end():] if marker else parsed.text
    head = block[:2000]
    from_line = _HEADER_LINE.search(head)
    if not from_line:
        return None
    sender = _address(from_line.group(2))
    if sender is None:
        return None
    subject_line = _SUBJECT_LINE.search(head)
    subject = subject_line.group(2).strip() if subject_line else ""
    return Forwarded(sender, subject or strip_forward_prefix(parsed.subject))
