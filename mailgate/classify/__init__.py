"""The classification stage: what kind of mail is this — a bounce, an automatic reply, an abuse
report, a provider's forwarding confirmation, or normal mail from a person?

Input: the `ParsedMail` of the parse stage, the raw bytes exactly as received, and the SMTP
envelope sender ("" for the null reverse-path `<>`). All three are untrusted: headers and bodies
are whatever the sender wrote, and a mailbox that auto-forwards to us rewrites the envelope
sender, so no decision rests on the envelope alone. Output: a frozen `Classification` with the
kind, one line saying why, and for bounces the `Dsn` (failed recipient, status, action,
diagnostic), for forwarding confirmations the code and link. A pure function: no I/O, no database,
never raises, for any bytes (whatever cannot be read counts as absent; the MIME tree is read
within `mailbounds`' limits). Stdlib only.

The detectors run in this order, first match wins: feedback report (an ARF report is a
`multipart/report` too), bounce (DSNs carry `Auto-Submitted` as well, so bounces come before
automatic replies), forwarding confirmation, automatic reply; otherwise normal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mailgate.classify import autoreply, bounce, dsn, feedback, forwarding
from mailgate.classify.dsn import Dsn, read_dsn
from mailgate.classify.forwarding import ForwardingConfirmation
from mailgate.classify.view import MailView
from mailgate.model import ParsedMail

BOUNCE = "bounce"
AUTO_REPLY = "auto_reply"
FEEDBACK_REPORT = "feedback_report"
FORWARDING_CONFIRMATION = "forwarding_confirmation"
NORMAL = "normal"
KINDS = (BOUNCE, AUTO_REPLY, FEEDBACK_REPORT, FORWARDING_CONFIRMATION, NORMAL)

log = logging.getLogger("mailgate.classify")

__all__ = [
    "AUTO_REPLY", "BOUNCE", "FEEDBACK_REPORT", "FORWARDING_CONFIRMATION", "KINDS", "NORMAL",
    "Classification", "Dsn", "ForwardingConfirmation", "classify", "read_dsn",
]


@dataclass(frozen=True)
class Classification:
    kind: str  # one of KINDS
    reason: str  # why, one line
    dsn: Dsn | None = None  # bounces only
    forwarding: ForwardingConfirmation | None = None  # forwarding confirmations only

    def __post_init__(self) -> None:  # reasons quote headers: keep them one bounded line
        object.__setattr__(self, "reason", " ".join(self.reason.split())[:300])


# The start of the reason when classification itself failed (tests and bench/fuzz.py look for it).
CLASSIFY_FAILED = "classification failed"


def classify(parsed: ParsedMail, raw: bytes, envelope_sender: str) -> Classification:
    try:
        return _classify(parsed, raw, envelope_sender)
    except Exception as exc:  # a bug, not the mail: say so, and go on as with a person's mail
        log.warning("%s: %s: %s", CLASSIFY_FAILED, type(exc).__name__, exc, exc_info=True)
        return Classification(NORMAL, f"{CLASSIFY_FAILED} ({type(exc).__name__}: {exc});"
                                      " treated as normal mail")


def _classify(parsed: ParsedMail, raw: bytes, envelope_sender: str) -> Classification:
    view = MailView(parsed, raw, envelope_sender)
    reason = feedback.detect(view)
    if reason:
        return Classification(FEEDBACK_REPORT, reason)
    reason = bounce.detect(view)
    if reason:
        return Classification(BOUNCE, reason, dsn=dsn.read(view))
    confirmation = forwarding.detect(view)
    if confirmation is not None:
        what = ("Gmail forwarding confirmation" if confirmation.provider == "gmail"
                else "Microsoft account address verification")
        return Classification(
            FORWARDING_CONFIRMATION,
            f"{what} from {view.from_address} for"
            f" {confirmation.forwarding_address or 'an unnamed account'}"
            f" (code {confirmation.code or 'none'}, {'a' if confirmation.link else 'no'} link)",
            forwarding=confirmation,
        )
    reason = autoreply.detect(view)
    if reason:
        return Classification(AUTO_REPLY, reason)
    return Classification(NORMAL, "no bounce, report, confirmation or automatic-reply marker")
