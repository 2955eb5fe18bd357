"""The content digest of a message: what makes two deliveries the same mail.

Input: a raw message as received (untrusted bytes of any shape). Output: a SHA-256 hex digest
over its header fields and body, leaving out the trace fields that each delivery adds on its
way (`TRACE_FIELDS`, `TRACE_PREFIXES`), so a retransmission, the same mail sent to two of our
addresses, or a copy that came through a forwarder digests the same, while any change to the
author's headers or the body gives another digest. Folding, line endings and runs of white
space in header values do not count (a relay may refold); header names are case-insensitive.
Linear in the size of the message; never raises.
"""

from __future__ import annotations

import hashlib

# Fields a transfer or a delivery adds: MTAs (Received, Return-Path, Delivered-To,
# X-Original-To, Exim's Envelope-To and Delivery-Date), authentication and its forwarding
# (Authentication-Results, Received-SPF, ARC-*, the DKIM-Signature a forwarder such as
# Microsoft 365 adds), forwarders (X-Forwarded-To, X-Forwarded-For, X-Original-Authentication-
# Results, Gmail's X-Received, Yahoo's X-Apparently-To, Hotmail's X-Incoming*), and the spam
# and virus scanners on the way; and what an export adds (Gmail Takeout's X-Gmail-Labels, which
# change as people file the mail, and its X-GM-THRID).
TRACE_FIELDS = frozenset({
    "received", "return-path", "delivered-to", "x-original-to", "envelope-to",
    "delivery-date", "authentication-results", "x-original-authentication-results",
    "received-spf", "dkim-signature", "x-forwarded-to", "x-forwarded-for", "x-received",
    "x-apparently-to", "x-incomingheadercount", "x-incomingtopheadermarker",
    "x-virus-scanned", "x-virus-status", "x-original-arrival-time", "x-originalarrivaltime",
    "x-gmail-labels",
})
TRACE_PREFIXES = ("arc-", "x-spam", "x-rspamd-", "x-ms-exchange-", "x-microsoft-antispam",
                  "x-forefront-antispam", "x-proofpoint-", "x-google-smtp-", "x-gm-")


def is_trace_field(name: str) -> bool:
    name = name.strip().lower()
    return name in TRACE_FIELDS or name.startswith(TRACE_PREFIXES)


def _split(raw: bytes) -> tuple[bytes, bytes]:
    """The header section and the body, at the first empty line (CRLF or LF)."""
    head, _sep, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    return head, body


def content_digest(raw: bytes) -> str:
    head, body = _split(raw)
    fields: list[list[bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)  # a continuation line: part of the field above
        elif line:
            fields.append([line])
    h = hashlib.sha256()
    for parts in fields:
        name, colon, value = b" ".join(parts).partition(b":")
        if not colon or is_trace_field(name.decode("latin-1")):
            continue
        h.update(name.strip().lower() + b":" + b" ".join(value.split()) + b"\n")
    h.update(b"\n")
    h.update(body.rstrip(b"\n"))
    return h.hexdigest()
