"""The data passed between stages: frozen dataclasses, stdlib only.

Input: none (definitions). Output: `Envelope` (what SMTP learned about a delivery),
`SpamVerdict` (what the spam scanner said, carried by the envelope),
`SpoolEntry` (an envelope plus its bytes and spool state), `ParsedMail` and `ParsedAttachment`
(what the parse stage read out of the bytes), `ThreadMatch` (which ticket, and why), `Upload`
(a file an agent attaches to a reply). Every value
that came from the network is untrusted text: whoever displays it escapes it.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

# Spool states.
INCOMING = "incoming"
ACTIVE = "active"
DONE = "done"
DEFERRED = "deferred"
HOLD = "hold"
SPOOL_STATES = (INCOMING, ACTIVE, DEFERRED, HOLD, DONE)

# Spool entry kinds: a message to process, or a refusal at DATA to record in the audit.
KIND_MESSAGE = "message"
KIND_REJECTION = "rejection"


def new_queue_id() -> str:
    """A short, unique, roughly time-ordered id: 10 hex digits of milliseconds + 6 random."""
    return f"{int(time.time() * 1000):010X}{secrets.token_hex(3).upper()}"


def base_mailbox(address: str) -> str:
    """`Support+tag@Example.COM` → `support@example.com` (lower-cased, plus tag removed)."""
    local, _, domain = address.rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}".lower().rstrip(".")


# Mail providers that ignore dots in the local part: t.arget@gmail.com is target@gmail.com.
DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def canonical_mailbox(address: str) -> str:
    """The mailbox an address delivers to, as far as we can tell from outside: lower-cased,
    the plus-part removed and, where the provider ignores them (Gmail), the dots. What rate
    limits count by, so `target+1@`, `target+2@` and `t.arget@` are one recipient."""
    local, _, domain = base_mailbox(address).rpartition("@")
    if domain in DOTLESS_DOMAINS:
        local, domain = local.replace(".", ""), DOTLESS_DOMAINS[domain]
    return f"{local}@{domain}"


# What the SMTP stage decided from the spam scanner's answer (`SpamVerdict.action`).
SPAM_ACCEPT = "accept"  # below quarantine_score: a ticket as usual, the score kept with it
SPAM_QUARANTINE = "quarantine"  # between the scores: the pipeline quarantines it
SPAM_REJECT = "reject"  # at or above reject_score: refused in the session (550 5.7.1)
SPAM_TEMPFAIL = "tempfail"  # the scanner failed and [spam] on_error = "tempfail" (451)
SPAM_UNSCANNED = "unscanned"  # the scanner failed, the mail taken anyway (on_error = "accept")
SPAM_RELEASED = "released"  # let out of quarantine by a person: never quarantined again


@dataclass(frozen=True)
class SpamVerdict:
    action: str  # one of the SPAM_* above
    score: float | None = None  # rspamd's score; None when the message could not be scanned
    symbols: tuple[tuple[str, float], ...] = ()  # rspamd's symbols and their scores
    rspamd_action: str = ""  # what rspamd itself would have done ("no action", "reject", ...)
    reason: str = ""  # in words: the thresholds crossed, the scanner's error, who released it
    no_autoreply: str = ""  # why no automatic mail may answer it ("" when it may)

    def symbol_text(self, limit: int = 12) -> str:
        """`GTUBE(0), R_SPF_FAIL(1.5), …`: the symbols that count most, for reasons and logs."""
        shown = [f"{name}({score:g})" for name, score in self.symbols[:limit]]
        if len(self.symbols) > limit:
            shown.append(f"+{len(self.symbols) - limit} more")
        return ", ".join(shown) or "no symbols"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpamVerdict:
        data = dict(data)
        data["symbols"] = tuple((str(n), float(s)) for n, s in data.get("symbols") or ())
        return cls(**data)


@dataclass(frozen=True)
class Envelope:
    queue_id: str
    received_at: float
    client_ip: str
    helo: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    size: int
    tls: bool = False
    spam: SpamVerdict | None = None  # None: no scanner configured

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Envelope:
        data = json.loads(text)
        data["rcpt_to"] = tuple(data["rcpt_to"])
        if data.get("spam") is not None:
            data["spam"] = SpamVerdict.from_dict(data["spam"])
        return cls(**data)


@dataclass(frozen=True)
class SpoolEntry:
    envelope: Envelope
    kind: str
    state: str
    attempts: int
    content: bytes | None = None
    reason: str | None = None  # why a rejection was refused; the last error for a held message
    updated_at: float = 0.0
    deferrals: int = 0  # times put off for a shortage of the machine (not counted as attempts)
    content_path: str | None = None  # a big message's file in the spool directory

    @property
    def queue_id(self) -> str:
        return self.envelope.queue_id


@dataclass(frozen=True)
class Address:
    email: str  # lower-cased addr-spec; "" when the header had none usable
    name: str = ""


@dataclass(frozen=True)
class ParsedAttachment:
    filename: str  # decoded and made path-safe
    content_type: str
    payload: bytes
    content_id: str = ""
    inline: bool = False
    # What else is known about it, stored with it: "tnef" = "container" for a winmail.dat
    # that was unpacked, "from_tnef" = the container's filename for a file found inside one,
    # "subject" and "from" of an attached message (message/rfc822).
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedMail:
    message_id: str  # without angle brackets; "" when absent
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]  # oldest first, as in the header
    from_: Address
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    subject: str
    date: str  # ISO 8601 UTC when the Date header parsed, else ""
    text: str
    html: str  # already sanitised
    attachments: tuple[ParsedAttachment, ...]
    headers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # lower-case name → values
    defects: tuple[str, ...] = ()

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower(), ())
        return values[0] if values else ""


@dataclass(frozen=True)
class ThreadMatch:
    ticket_id: int | None  # None: a new ticket
    method: str  # "token", "in-reply-to", "references", "subject" or "new"
    detail: str = ""  # what matched: the address, the Message-ID, the tag
    notes: tuple[str, ...] = ()  # what was refused on the way (forged token, stranger's tag)


@dataclass(frozen=True)
class Upload:
    """A file an agent attaches to a reply (CLI `--attach`, the admin endpoint's multipart
    form): its name and declared type are untrusted until the reply path makes them safe."""

    filename: str
    content_type: str
    data: bytes
