"""Which of our mailboxes a message came to.

Input: the envelope recipients and a `ParsedMail` (untrusted headers), and the configured
mailboxes (trusted). Output: the `address` of the mailbox and how it was found. In this order,
first match wins:

1. an envelope recipient that is a mailbox's `address` (plus-part removed);
2. the addresses in `Delivered-To`, `X-Original-To`, `X-Forwarded-To`, then `To`, matching a
   mailbox's `address` or `public_address` (Gmail and Outlook forwarding keep the original
   To; a company MTA may rewrite the envelope to one address);
3. otherwise the first (default) mailbox.

Headers are only read for addresses (at most `MAX_ADDRESSES` in all), never trusted beyond
choosing among our own mailboxes: a forged header can pick a mailbox, never create one.
"""

from __future__ import annotations

from collections.abc import Iterable

from mailgate.config import Mailbox
from mailgate.model import ParsedMail, base_mailbox
from mailgate.threading.match import ADDRESS_TOKEN

HEADERS = ("delivered-to", "x-original-to", "x-forwarded-to")
MAX_ADDRESSES = 200


def mailbox_of(rcpt_to: Iterable[str], parsed: ParsedMail, mailboxes: tuple[Mailbox, ...]
               ) -> tuple[str, str]:
    """(the mailbox's address, how it was found) — see the module docstring. `mailboxes` must
    not be empty (the config always has at least the implicit one)."""
    by_address = {m.address: m.address for m in mailboxes}
    by_any = {a: m.address for m in mailboxes for a in m.addresses()}
    for rcpt in rcpt_to:
        found = by_address.get(base_mailbox(rcpt))
        if found:
            return found, f"envelope recipient {rcpt.lower()}"
    seen = 0
    for name in HEADERS:
        for value in parsed.headers.get(name, ()):
            for address in ADDRESS_TOKEN.findall(value)[:MAX_ADDRESSES]:
                seen += 1
                found = by_any.get(base_mailbox(address.strip("<>")))
                if found:
                    return found, f"{name.title()}: {address.lower()}"
                if seen >= MAX_ADDRESSES:
                    break
    for addr in parsed.to[:MAX_ADDRESSES]:
        found = by_any.get(base_mailbox(addr.email))
        if found:
            return found, f"To: {addr.email}"
    return mailboxes[0].address, "the default mailbox"
