"""Is this mail forwarded to us by one of the company's own mailboxes (`[[forwarders]]`)?

Input: the envelope sender and the header fields of the message as `(name, value)` bytes
(untrusted: a sender can write any of these) and the configured forwarder addresses (trusted).
Output: the forwarder address it came through, or "". The answer only ever makes the verdict
stricter — forwarded mail is judged by its DKIM signature alone, SPF ignored — so a forged claim
gains its author nothing. Gmail's forwarding sender `support+caf_=...@company.com` counts as
`support@company.com`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mailgate.model import base_mailbox

SHOWN_IN = (b"sender", b"x-forwarded-for", b"x-forwarded-to", b"resent-from", b"resent-sender")
# Matches start only where a token starts (see threading/match.py: linear, not quadratic).
_ADDRESS = re.compile(r"(?<![^\s<>,;:\"()\[\]])[^\s<>,;:\"()\[\]]+@[^\s<>,;:\"()\[\]]+")


def forwarded_by(mail_from: str, fields: Sequence[tuple[bytes, bytes]],
                 forwarders: Sequence[str]) -> str:
    if not forwarders:
        return ""
    wanted = {base_mailbox(f): f for f in forwarders}
    if mail_from and base_mailbox(mail_from) in wanted:
        return wanted[base_mailbox(mail_from)]
    for name, value in fields:
        if name.lower() in SHOWN_IN:
            for address in _ADDRESS.findall(value.decode("utf-8", "replace")):
                if base_mailbox(address) in wanted:
                    return wanted[base_mailbox(address)]
    return ""
