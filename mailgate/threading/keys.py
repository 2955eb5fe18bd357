"""The conversation keys of a message: what two messages share when storing one could change
where the other goes.

Input: a `ParsedMail` (untrusted headers) and its sender's address. Output: a set of strings —
the message's own Message-ID, every id it replies to or references (the oldest and the newest
`MAX_REFERENCES`, as a long References header may list hundreds), and the sender (whose
customer record two new conversations could both create). Two messages that could land on one
ticket, or be one message twice, always share a key; the pipeline takes a lock per key
(`store.locks`) before it stores either, so nodes that process them at once take turns.
"""

from __future__ import annotations

from mailgate.model import ParsedMail

MAX_REFERENCES = 50


def conversation_keys(parsed: ParsedMail, sender: str) -> set[str]:
    refs = parsed.references
    if len(refs) > MAX_REFERENCES:
        refs = refs[:1] + refs[-(MAX_REFERENCES - 1):]
    ids = {parsed.message_id, *parsed.in_reply_to, *refs}
    keys = {f"id:{i}" for i in ids if i}
    if sender:
        keys.add(f"from:{sender.lower()}")
    return keys
