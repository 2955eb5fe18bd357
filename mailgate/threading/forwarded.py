"""Finding the original sender of a message an agent forwarded from their own mailbox.

Input: a `ParsedMail` (untrusted) sent by one of our agents. Output: the original sender's
address and the original subject, from an attached message/rfc822 or from the headers block
that mail clients write above an inline forward ("---------- Forwarded message ---------",
"Begin forwarded message:", "-----Original Message-----"), or None when it is not a forward.
"""

from __future__ import annotations

import email.parser
import email.utils
import re
from dataclasses import dataclass

import mailgate.mailbounds as mailbounds
from mailgate.model import Address, ParsedMail

_FWD_SUBJECT = re.compile(r"^\s*(fwd?|wg|tr|rv|fs|vs|doorst|i)\s*:\s*", re.I)
_INLINE_MARKERS = re.compile(
    r"^-{2,}\s*(forwarded message|original message|weitergeleitete nachricht|"
    r"message transféré|mensaje reenviado|ursprüngliche nachricht)\s*-{2,}\s*$"
    r"|^begin forwarded message:\s*$",
    re.I | re.M,
)
# Within one line ([ \t], not \s, which would run on over following blank lines from every
# line start: quadratic on a body of blank lines).
_HEADER_LINE = re.compile(r"^[ \t]*\*?(from|von|de|da|van|från)\*?[ \t]*:[ \t]*(.+)$", re.I | re.M)
_SUBJECT_LINE = re.compile(r"^[ \t]*\*?(subject|betreff|objet|asunto|oggetto)\*?[ \t]*:[ \t]*(.+)$",
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
    try:  # the stdlib recurses on nested comments: "((((" ... raises RecursionError
        name, addr = email.utils.parseaddr(value[:2000].replace("[mailto:", "<").replace("]", ">"))
    except Exception:
        return None
    addr = addr.strip().lower()
    if "@" not in addr or any(c.isspace() for c in addr):
        return None
    return Address(addr, name.strip())


def original_of(parsed: ParsedMail) -> Forwarded | None:
    is_fwd_subject = bool(_FWD_SUBJECT.match(parsed.subject))
    for att in parsed.attachments:
        if att.content_type == "message/rfc822" and att.payload:
            try:  # its header only, bounded like every message the parsers read
                inner = email.parser.BytesParser().parsebytes(
                    mailbounds.bound(att.payload).header, headersonly=True)
                sender = _address(str(inner.get("From", "")))
                subject = str(inner.get("Subject", "")).strip()
            except Exception:
                continue
            if sender is not None:
                return Forwarded(sender, subject or strip_forward_prefix(parsed.subject))
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
