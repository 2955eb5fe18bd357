"""Matching a message to a ticket. First match wins:

1. a signed reply token in any of our addresses (envelope recipients, To, Cc, Delivered-To,
   X-Original-To, X-Forwarded-To); a token that fails verification matches nothing and is noted;
2. In-Reply-To, then References newest first, against every Message-ID a ticket has sent or
   received (the index), or our own Message-IDs decoded by their token when the index lost them;
3. a subject tag `[#ID]`, only when the sender is already a participant of that ticket;
4. otherwise a new ticket.

Input: a `ParsedMail` and the envelope recipients (untrusted), plus look-ups passed in by the
pipeline (so this stage never touches the store). Output: a `ThreadMatch` with the method
(`token`, `in-reply-to`, `references`, `subject`, `new`) and notes on anything refused. At most
`MAX_REFERENCES` ids are tried so a header stuffed with ids cannot make one message expensive.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mailgate.model import ParsedMail, ThreadMatch

MAX_REFERENCES = 50
ADDRESS_HEADERS = ("to", "cc", "delivered-to", "x-original-to", "x-forwarded-to")
_SUBJECT_TAG = re.compile(r"\[#(\d{1,12})\]")
# An address-like token. The lookbehind starts a match only where a token starts: without it
# every position of a long token without "@" rescans the token (quadratic: 41 KB took 11 s).
_ADDR = re.compile(r"(?<![^\s<>,;:\"()])[^\s<>,;:\"()]+@[^\s<>,;:\"()]+")
ADDRESS_TOKEN = _ADDR  # for other readers of address headers (mailbox.py)


@dataclass(frozen=True)
class Lookups:
    """What matching needs from the outside world."""

    ticket_for_message_id: Callable[[str], int | None]  # the index of ids sent or received
    ticket_from_token_address: Callable[[str], int | None]  # verified token → ticket id
    ticket_from_our_message_id: Callable[[str], int | None]  # our Message-IDs decode by token
    is_participant: Callable[[int, str], bool]  # (ticket id, sender address)
    is_ours: Callable[[str], bool]  # is this address in one of our domains?
    ticket_exists: Callable[[int], bool]


def our_addresses(parsed: ParsedMail, rcpt_to: Iterable[str], is_ours: Callable[[str], bool]
                  ) -> list[str]:
    """Every address of ours the message was sent to, envelope first, de-duplicated."""
    found: list[str] = [r.lower() for r in rcpt_to]
    for name in ADDRESS_HEADERS:
        for value in parsed.headers.get(name, ()):
            found += [a.lower() for a in _ADDR.findall(value)]
    return [a for a in dict.fromkeys(found) if is_ours(a)]


def _has_tag(address: str) -> bool:
    return "+" in address.rpartition("@")[0]


def find_ticket(parsed: ParsedMail, rcpt_to: Iterable[str], lookups: Lookups) -> ThreadMatch:
    notes: list[str] = []
    for addr in our_addresses(parsed, rcpt_to, lookups.is_ours):
        if not _has_tag(addr):
            continue
        ticket = lookups.ticket_from_token_address(addr)
        if ticket is not None and lookups.ticket_exists(ticket):
            return ThreadMatch(ticket, "token", addr)
        local_tag = addr.rpartition("@")[0].partition("+")[2]
        if local_tag and not local_tag.startswith("o"):
            notes.append(f"reply token in {addr} failed verification (ignored)")

    def by_id(mid: str) -> int | None:
        ticket = lookups.ticket_for_message_id(mid)
        if ticket is None:
            ticket = lookups.ticket_from_our_message_id(mid)
            if ticket is not None and not lookups.ticket_exists(ticket):
                ticket = None
        return ticket

    tried: set[str] = set()
    for mid in parsed.in_reply_to[:MAX_REFERENCES]:
        tried.add(mid)
        ticket = by_id(mid)
        if ticket is not None:
            return ThreadMatch(ticket, "in-reply-to", mid, tuple(notes))
    for mid in reversed(parsed.references[-MAX_REFERENCES:]):
        if mid in tried:
            continue
        tried.add(mid)
        ticket = by_id(mid)
        if ticket is not None:
            return ThreadMatch(ticket, "references", mid, tuple(notes))

    sender = parsed.from_.email
    for tag in _SUBJECT_TAG.findall(parsed.subject)[:3]:
        ticket = int(tag)
        if not lookups.ticket_exists(ticket):
            continue
        if sender and lookups.is_participant(ticket, sender):
            return ThreadMatch(ticket, "subject", f"[#{ticket}]", tuple(notes))
        notes.append(f"subject tag [#{ticket}] ignored: {sender or 'sender'} is not a"
                     " participant of that ticket")
    return ThreadMatch(None, "new", "", tuple(notes))
