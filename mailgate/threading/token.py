"""Signed tokens: reply addresses, Message-IDs and VERP bounce addresses that prove themselves.

Input: a server secret (32 random bytes kept in `data_dir`, never logged) and either an id to
sign or a token read from mail (untrusted). Output: tokens of the form `<id>-<mac>` where mac is
the first 80 bits of HMAC-SHA256(secret, "<purpose>:<id>") in lower-case base32, so they survive
MTAs that fold the case of local parts; verification is constant-time and returns the id or None.

- ticket reply address: `support+<token>@example.com`
- an agent's personal reply address for a ticket: `support+a<token>@example.com`, the mac over
  the agent's address too (`"agent:<email>:<ticket id>"`), sent only to that agent: it proves the
  agent only together with the From address it was made for
- a ticket's internal-note address: `support+n<token>@example.com` (purpose "note"), the
  Reply-To of mail to agents: what is sent to it is stored as an internal note and goes to
  nobody, so an agent answering a notification never mails the customer
- our Message-IDs: `<token>.<random>@example.com`, so a reply decodes even if the index lost it
- VERP envelope sender: `bounces+o<token>@example.com`, naming the outbound mail that failed
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

_TOKEN = re.compile(r"^(\d{1,18})-([a-z2-7]{16})$")


class Signer:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("secret too short")
        self._secret = secret

    def _mac(self, purpose: str, number: int) -> str:
        digest = hmac.new(self._secret, f"{purpose}:{number}".encode(), hashlib.sha256).digest()
        return base64.b32encode(digest[:10]).decode().lower()

    def sign(self, purpose: str, number: int) -> str:
        return f"{number}-{self._mac(purpose, number)}"

    def verify(self, purpose: str, token: str) -> int | None:
        m = _TOKEN.match(token.strip().lower())
        if not m:
            return None
        number = int(m.group(1))
        if hmac.compare_digest(m.group(2), self._mac(purpose, number)):
            return number
        return None

    # --- tickets ------------------------------------------------------------------------------

    def reply_address(self, mailbox: str, ticket_id: int) -> str:
        local, _, domain = mailbox.rpartition("@")
        return f"{local}+{self.sign('ticket', ticket_id)}@{domain}"

    def ticket_from_address(self, address: str) -> int | None:
        """The ticket id in `local+<token>@domain`, or None (no tag, or a forged one)."""
        local = address.rpartition("@")[0]
        _, plus, tag = local.partition("+")
        return self.verify("ticket", tag) if plus else None

    def agent_reply_address(self, mailbox: str, ticket_id: int, agent: str) -> str:
        """The reply address for `agent` only: `local+a<id>-<mac>@domain`."""
        local, _, domain = mailbox.rpartition("@")
        return f"{local}+a{self.sign(_agent_purpose(agent), ticket_id)}@{domain}"

    def ticket_from_agent_address(self, address: str, agent: str) -> int | None:
        """The ticket id in an agent's personal reply address, when it was made for `agent`
        (the mail's From address); None for any other address or sender."""
        local = address.rpartition("@")[0]
        _, plus, tag = local.partition("+")
        if not plus or not tag.lower().startswith("a") or not agent:
            return None
        return self.verify(_agent_purpose(agent), tag[1:])

    def note_address(self, mailbox: str, ticket_id: int) -> str:
        """The ticket's internal-note address: `local+n<id>-<mac>@domain`."""
        local, _, domain = mailbox.rpartition("@")
        return f"{local}+n{self.sign('note', ticket_id)}@{domain}"

    def ticket_from_note_address(self, address: str) -> int | None:
        """The ticket id in an internal-note address, or None (not one, or forged)."""
        local = address.rpartition("@")[0]
        _, plus, tag = local.partition("+")
        if not plus or not tag.lower().startswith("n"):
            return None
        return self.verify("note", tag[1:])

    def message_id(self, ticket_id: int, domain: str) -> str:
        """A new Message-ID (without angle brackets) for mail about `ticket_id`."""
        return f"{self.sign('ticket', ticket_id)}.{secrets.token_hex(8)}@{domain}"

    def ticket_from_message_id(self, message_id: str) -> int | None:
        left = message_id.strip("<> ").partition("@")[0]
        return self.verify("ticket", left.partition(".")[0])

    # --- outbound mail (VERP) -----------------------------------------------------------------

    def bounce_address(self, bounce_mailbox: str, outbound_id: int) -> str:
        local, _, domain = bounce_mailbox.rpartition("@")
        return f"{local}+o{self.sign('outbound', outbound_id)}@{domain}"

    def outbound_from_address(self, address: str) -> int | None:
        local = address.rpartition("@")[0]
        _, plus, tag = local.partition("+")
        if not plus or not tag.lower().startswith("o"):
            return None
        return self.verify("outbound", tag[1:])


def _agent_purpose(agent: str) -> str:
    return f"agent:{agent.strip().lower()}"
