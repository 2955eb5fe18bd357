"""Matching a message to a ticket by its In-Reply-To and References headers.

Input: a `ParsedMail` and `lookup(message_id) -> ticket id | None`. Output: a `ThreadMatch`.
In-Reply-To is tried first, then References from the newest (last) to the oldest, each id
looked up once; at most `MAX_REFERENCES` ids are tried so a header stuffed with ids cannot make
one message cost thousands of look-ups.
"""

from __future__ import annotations

from collections.abc import Callable

from mailgate.model import ParsedMail, ThreadMatch

MAX_REFERENCES = 50

Lookup = Callable[[str], int | None]


def find_ticket(parsed: ParsedMail, lookup: Lookup) -> ThreadMatch:
    for mid in parsed.in_reply_to[:MAX_REFERENCES]:
        ticket = lookup(mid)
        if ticket is not None:
            return ThreadMatch(ticket, "in-reply-to", mid)
    tried = set(parsed.in_reply_to)
    for mid in reversed(parsed.references[-MAX_REFERENCES:]):
        if mid in tried:
            continue
        tried.add(mid)
        ticket = lookup(mid)
        if ticket is not None:
            return ThreadMatch(ticket, "references", mid)
    return ThreadMatch(None, "new")
