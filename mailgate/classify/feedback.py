"""Is this message an abuse or feedback report rather than a conversation?

Input: a `MailView` (untrusted). Output: one line saying why it is a feedback report, or "".

Recognised: the Abuse Reporting Format (RFC 5965: `multipart/report;
report-type=feedback-report`, or its `message/feedback-report` part in another container —
complaint loops of Yahoo, AOL, Amazon SES, DMARC failure reports, ...); Microsoft's Junk Mail
Reporting Program, whose complaints are a plain `multipart/mixed` around the reported message,
marked by the `X-HmXmrOriginalRecipient` header Microsoft adds to it and sent from a Microsoft
mail domain (`staff@hotmail.com`); and the unsubscribe request
that Apple Mail sends on the user's behalf (`X-Apple-Unsubscribe: true`), an opt-out complaint.
"""

from __future__ import annotations

import re

from mailgate.classify.view import MailView

_JMRP_MARKER = re.compile(rb"^X-HmXmrOriginalRecipient\s*:", re.M | re.I)
_MICROSOFT_MAIL = frozenset({"hotmail.com", "outlook.com", "live.com", "msn.com"})


def detect(view: MailView) -> str:
    if view.content_type == "multipart/report" and \
            view.content_param("report-type") == "feedback-report":
        return "multipart/report; report-type=feedback-report (ARF, RFC 5965)"
    if any(not p.inside_message for p in view.parts_of("message/feedback-report")):
        return f"a message/feedback-report part (ARF, RFC 5965) inside {view.content_type}"
    domain = view.from_address.rpartition("@")[2]
    if domain in _MICROSOFT_MAIL and view.has_part("message/rfc822") \
            and _JMRP_MARKER.search(view.raw):
        return ("a reported message carrying X-HmXmrOriginalRecipient"
                " (Microsoft Junk Mail Reporting Program complaint)")
    if view.header("x-apple-unsubscribe").lower() == "true":
        return "X-Apple-Unsubscribe: true (an unsubscribe request Apple Mail sent for its user)"
    return ""
