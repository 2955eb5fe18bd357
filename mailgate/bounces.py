"""Reading delivery status notifications (RFC 3464) for the failed recipient and status.

Input: the raw bytes of a message that came back to one of our VERP bounce addresses
(untrusted: any MTA's idea of a DSN). Output: `Dsn(recipient, status, action, diagnostic)`
from its message/delivery-status part, or, for non-standard bounces, from the first enhanced
status code and address found in the text; empty fields where nothing could be read.
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass
from email.message import Message

_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_ADDRESS = re.compile(r"[\w.+'=-]+@[\w-]+(?:\.[\w-]+)+")


@dataclass(frozen=True)
class Dsn:
    recipient: str = ""
    status: str = ""
    action: str = ""
    diagnostic: str = ""


def _field_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    text = part.get_payload(decode=True) or b""
    blocks = re.split(rb"\r?\n\r?\n", text)
    return [email.message_from_bytes(b + b"\n\n") for b in blocks if b.strip()]


def _strip_type(value: str) -> str:
    """`rfc822; user@example.com` → `user@example.com`."""
    return value.split(";", 1)[-1].strip().strip("<>")


def read_dsn(raw: bytes) -> Dsn:
    msg = email.message_from_bytes(raw)
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        for block in _field_blocks(part):
            recipient = _strip_type(str(block.get("Final-Recipient", "")
                                        or block.get("Original-Recipient", "")))
            if not recipient:
                continue
            diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())
            return Dsn(
                recipient=recipient.lower(),
                status=str(block.get("Status", "")).strip(),
                action=str(block.get("Action", "")).strip().lower(),
                diagnostic=_strip_type(diagnostic) if ";" in diagnostic else diagnostic,
            )
    # non-standard bounce: the first status code and address in the text parts
    text = []
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            data = part.get_payload(decode=True) or b""
            text.append(data.decode("utf-8", "replace"))
    body = "\n".join(text)
    status = _STATUS.search(body)
    addr = _ADDRESS.search(body)
    line = ""
    if status:
        start = body.rfind("\n", 0, status.start()) + 1
        end = body.find("\n", status.end())
        line = " ".join(body[start:end if end > 0 else None].split())
    return Dsn(
        recipient=addr.group(0).lower() if addr else "",
        status=status.group(1) if status else "",
        action="failed" if status and status.group(1).startswith("5") else "",
        diagnostic=line[:500],
    )
