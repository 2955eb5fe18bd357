"""Recipient policy: which RCPT TO addresses we accept.

Input: an address from RCPT TO (untrusted; aiosmtpd has already refused CR/LF in the command
line). Output: None to accept, or the SMTP reply refusing it. Mail for another domain is
refused with 5.7.1 (we are never an open relay); an unknown mailbox in our domains with 5.1.1.
`local+anything@domain` reaches `local@domain`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.config import Config
from mailgate.model import base_mailbox

BOUNCE_LOCAL = "bounces"


@dataclass(frozen=True)
class RecipientPolicy:
    domains: frozenset[str]
    mailboxes: frozenset[str]

    @classmethod
    def for_config(cls, config: Config) -> RecipientPolicy:
        """Our mailboxes, plus `bounces@` in each domain: the VERP return path of our mail."""
        boxes = set(config.mailboxes) | {f"{BOUNCE_LOCAL}@{d}" for d in config.domains}
        return cls(frozenset(config.domains), frozenset(boxes))

    def check(self, address: str) -> str | None:
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain:
            return "553 5.1.3 Recipient address must be local@domain"
        if domain.lower().rstrip(".") not in self.domains:
            return "550 5.7.1 Relaying denied: we accept mail only for our own domains"
        if base_mailbox(address) not in self.mailboxes:
            return "550 5.1.1 No such mailbox here"
        return None
