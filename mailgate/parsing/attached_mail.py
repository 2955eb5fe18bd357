"""Mail attached to mail (message/rfc822, a forward "as attachment"): what it is, by name.

Input: the parse stage's attachments (payloads are hostile bytes). Output: the same
attachments, where one is a message, with `details` "subject" and "from" read from the inner
message's headers (decoded by the caller's header decoder, control characters removed, at most
300 characters each), and — when it came without a filename, as Outlook and Gmail send
forwards — the name `Fwd - <subject>.eml`. Never raises: a message whose headers cannot be
read keeps the name it had.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from collections.abc import Callable, Sequence
from dataclasses import replace

from mailgate.model import ParsedAttachment

MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
HEADER_BYTES = 64 * 1024  # headers read from an attached message
MAX_CHARS = 300
UNNAMED = frozenset({"", "attachment.eml", "attachment.bin"})  # parse's names for no name
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def describe(attachments: Sequence[ParsedAttachment], decode: Callable[[str], str],
             safe_name: Callable[[str, str], str]) -> tuple[ParsedAttachment, ...]:
    return tuple(_describe(a, decode, safe_name) if a.content_type in MESSAGE_TYPES else a
                 for a in attachments)


def _clean(text: str) -> str:
    return _CONTROL.sub(" ", text).strip()[:MAX_CHARS]


def _describe(att: ParsedAttachment, decode: Callable[[str], str],
              safe_name: Callable[[str, str], str]) -> ParsedAttachment:
    try:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
            att.payload[:HEADER_BYTES])
        subject = _clean(decode(str(headers.get("Subject", ""))))
        sender = _clean(decode(str(headers.get("From", ""))))
    except Exception:  # headers beyond reading: the attachment stays as it came
        return att
    details = dict(att.details)
    if subject:
        details["subject"] = subject
    if sender:
        details["from"] = sender
    filename = att.filename
    if filename in UNNAMED:
        title = re.sub(r"[/\\]", "_", subject) or "no subject"  # a subject is no path
        filename = safe_name(f"Fwd - {title}.eml", att.content_type)
    return replace(att, filename=filename, details=details)
