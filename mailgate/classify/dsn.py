"""Reading a bounce for the recipient that failed, the status, the action and the diagnostic.

Input: a `MailView` of a message already judged a bounce (or, through `read_dsn`, the raw bytes of
anything that came back to one of our VERP addresses) — untrusted: any MTA's idea of a DSN, often
broken, sometimes a person's forward of one. Output: `Dsn(recipient, status, action, diagnostic)`.
Where it comes from, in order: the per-recipient fields of RFC 3464 (`message/delivery-status`,
`message/global-delivery-status`, or the same fields written into the text, even quoted with
`>`); Amazon SES's JSON notification; the `X-Failed-Recipients` header (Exim, Gmail); then the
text of non-standard bounces — an address after the phrases MTAs put before the failed recipients
(qmail, Exim, Postfix, Exchange, Gmail, Yahoo, Sendmail, ...), or on the line of an SMTP error,
never the bounce's own sender or recipient nor the returned message's sender. The status is the
enhanced status code (RFC 3463); an SMTP reply code alone gives its class (`550` → `5.0.0`).
Fields that cannot be read stay empty: this never raises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from mailgate.classify.view import MailView

# Bounded parts (RFC 5321 limits) keep the search linear on hostile text without spaces.
ADDRESS = re.compile(r"[\w.+'=%&/!#$*?^`{|}~-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,10}",
                     re.ASCII)
# An enhanced status code, not a piece of an IP address or a version number.
ENHANCED = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?![\w-]|\.\d)")
# An SMTP reply code at the start of a reply line (`550 ...`, `550-...`, `<<< 550 ...`).
REPLY = re.compile(r"(?:^|[\s>:(\[\"'])([45][0-5]\d)(?:[ -](?=\S)|:\s|$)", re.M)
DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")
_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)\s*:\s*(.*)$")
_QUOTE = re.compile(r"^[ \t]*(?:>[ \t]?)+", re.M)
_DELAY = re.compile(r"\b(?:delay(?:ed)?|still being retried|will (?:continue|keep) (?:to )?try"
                    r"|could not (?:be )?sen[dt] (?:message )?for (?:the )?past|warning)\b", re.I)

# Phrases that MTAs write just before the list of recipients that failed.
_BEFORE_RECIPIENT = re.compile(
    r"following (?:address(?:\(es\)|es)?|recipients?(?:\(s\))?)(?: or groups)?"
    r"|to these recipients or groups"
    r"|did not reach the following"
    r"|delivery to the following"
    r"|permanent fatal errors"
    r"|could not be delivered to"
    r"|could ?n[o']t (?:be )?deliver(?:ed)?(?: your message)? to"
    r"|unable to deliver (?:your message )?to"
    r"|(?:error|failure) (?:while )?delivering (?:your )?(?:mail|message) to"
    r"|undeliverable to"
    r"|delivery (?:has )?failed to"
    r"|unknown user\s*:|user unknown|no such user|invalid (?:recipient|user|address)"
    r"|recipient address(?:es)?\s*:"
    r"|original-recipient|final-recipient",
    re.I,
)


@dataclass(frozen=True)
class Dsn:
    recipient: str = ""
    status: str = ""
    action: str = ""
    diagnostic: str = ""


def read_dsn(raw: bytes) -> Dsn:
    """The DSN of raw bytes that no parse stage has read."""
    return read(MailView.from_raw(raw))


def read(view: MailView) -> Dsn:
    found = _from_report(view) or _from_ses(view) or _from_text(view)
    diagnostic = found.diagnostic
    if not diagnostic and found.recipient:  # a report without Diagnostic-Code: its text says why
        line = _status_and_line(view.text, 0)[1]
        if _FIELD.match(line):  # only the report's own Status: field: say nothing twice
            line = ""
        diagnostic = line or _lines_after(view.text, view.text.find(found.recipient))
    status = found.status or _status_in(diagnostic)
    action = found.action
    if not action:
        # a 4.x.x code alone does not make a delay: qmail gives up on temporary errors too
        action = "delayed" if _DELAY.search(view.parsed.subject) else "failed"
    return Dsn(found.recipient.lower(), status, action, diagnostic[:500])


# --- RFC 3464 fields -------------------------------------------------------------------------


def _blocks(text: str) -> list[dict[str, str]]:
    """Groups of `Name: value` lines separated by blank lines, continuation lines unfolded."""
    out: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in _QUOTE.sub("", text).splitlines():
        if not line.strip():
            if current:
                out.append(current)
            current, last = {}, ""
            continue
        if line[:1] in " \t" and last:
            current[last] += " " + line.strip()
            continue
        m = _FIELD.match(line.strip())
        if m:
            last = m.group(1).lower()
            current.setdefault(last, m.group(2).strip())
    if current:
        out.append(current)
    return out


def _typed(value: str) -> str:
    """`rfc822; user@example.com` → `user@example.com`; `smtp; 550 ...` → `550 ...`."""
    if ";" in value.split(" ", 1)[0] or re.match(r"^[\w-]+\s*;", value):
        value = value.split(";", 1)[1]
    return " ".join(value.split()).strip()


def _from_report(view: MailView) -> Dsn | None:
    texts = [p.text for p in view.parts if p.content_type in DSN_TYPES and not p.inside_message]
    texts.append(view.text)
    for text in texts:
        recipients = [b for b in _blocks(text)
                      if b.get("final-recipient") or b.get("original-recipient")]
        if not recipients:
            continue
        failed = [b for b in recipients if b.get("action", "").lower().startswith("failed")]
        block = (failed or recipients)[0]
        rcpt = _typed(block.get("final-recipient") or block.get("original-recipient", ""))
        # a local delivery may name a file or a program; then the address is elsewhere
        candidates = (rcpt, block.get("original-recipient", ""),
                      *view.headers("x-failed-recipients"))
        addr = next((m for m in map(ADDRESS.search, candidates) if m), None)
        status_field = ENHANCED.search(block.get("status", ""))
        return Dsn(
            recipient=addr.group(0) if addr else rcpt.strip("<>"),
            status=status_field.group(0) if status_field else "",
            action=block.get("action", "").split()[0].lower() if block.get("action") else "",
            diagnostic=_typed(block.get("diagnostic-code", "")),
        )
    return None


# --- Amazon SES notifications ------------------------------------------------------------------


def _from_ses(view: MailView) -> Dsn | None:
    data = ses_notification(view.text)
    if not data:
        return None
    kind = str(data.get("notificationType", "")).lower()
    found = data.get(kind)
    event: dict[str, Any] = found if isinstance(found, dict) else {}
    if kind == "delivery":
        recipients = event.get("recipients") or [""]
        response = str(event.get("smtpResponse", ""))
        return Dsn(recipient=str(recipients[0]), status=_status_in(response, success=True),
                   action="delivered", diagnostic=response)
    listed = event.get("bouncedRecipients") or event.get("complainedRecipients") or [{}]
    first = listed[0] if isinstance(listed[0], dict) else {}
    action = str(first.get("action", "")) or ("complained" if kind == "complaint" else "")
    return Dsn(
        recipient=str(first.get("emailAddress", "")),
        status=str(first.get("status", "")),
        action=action,
        diagnostic=_typed(str(first.get("diagnosticCode", "")))
        or str(event.get("complaintFeedbackType", "")),
    )


SES_TYPES = ("bounce", "complaint", "delivery")


def ses_notification(text: str) -> dict[str, object] | None:
    """The JSON of an Amazon SES notification about a sent message — a bounce, a complaint or a
    delivery, bare or wrapped in an SNS envelope — or None."""
    start = text.find("{")
    if start < 0 or "notificationType" not in text:
        return None
    decoder = json.JSONDecoder(strict=False)  # SNS mail wraps long JSON lines
    try:
        try:
            data, _ = decoder.raw_decode(text[start:])
        except ValueError:
            data, _ = decoder.raw_decode(re.sub(r"\r?\n", "", text[start:]))
        if isinstance(data, dict) and isinstance(data.get("Message"), str):
            data = decoder.decode(data["Message"])
    except (ValueError, RecursionError):  # not JSON, or nested deeper than any notification
        return None
    if isinstance(data, dict) and str(data.get("notificationType", "")).lower() in SES_TYPES:
        return data
    return None


# --- the text of non-standard bounces ----------------------------------------------------------


def _excluded(view: MailView) -> set[str]:
    """Addresses that are not the failed recipient: the bounce's own sender, recipients and
    envelope sender, and the addresses in the sender and id headers of the returned message."""
    own = {view.from_address, *(a.email for a in view.parsed.to), view.return_path or ""}
    own |= {a.lower() for a in ADDRESS.findall(view.envelope_sender or "")}
    header = r"^[ \t>]*(?:From|Sender|Return-Path|Reply-To|Message-ID|In-Reply-To|References):"
    for m in re.finditer(header + r"[^\n]*", view.text, re.M | re.I):
        own |= {a.lower() for a in ADDRESS.findall(m.group(0))}
    return {a for a in own if a}


_SYSTEM_LOCALS = frozenset({"mailer-daemon", "postmaster", "post_master", "double-bounce", "root",
                            "abuse", "no-reply", "noreply", "support"})


def _usable(addr: str, excluded: set[str], strict: bool = False) -> bool:
    """Not one of the excluded addresses; when `strict` (an address found anywhere, not where a
    notice lists its recipients), not a mail-system or help-desk mailbox either."""
    local = addr.split("@")[0].lower()
    return addr.lower() not in excluded and not (strict and local in _SYSTEM_LOCALS)


def _from_text(view: MailView) -> Dsn:
    text = view.text
    excluded = _excluded(view)
    recipient, anchor = "", 0
    for value in view.headers("x-failed-recipients"):
        m = ADDRESS.search(value)
        if m:
            recipient = m.group(0)
            break
    if not recipient:  # qmail, Postfix without DSN, Yahoo: "<user@example.com>:" on its own line
        for m in _ANGLE_LINE.finditer(text):
            if m.group(1).lower() != view.from_address:
                recipient, anchor = m.group(1), m.start()
                break
    if not recipient:
        for m in _BEFORE_RECIPIENT.finditer(text):
            window = text[m.start():m.end() + 400]
            cand = [a for a in ADDRESS.findall(window) if _usable(a, excluded)]
            if cand:
                recipient, anchor = cand[0], m.start()
                break
    if not recipient:
        for line in text.splitlines():
            if ENHANCED.search(line) or REPLY.search(line):
                cand = [a for a in ADDRESS.findall(line) if _usable(a, excluded, strict=True)]
                if cand:
                    recipient = cand[0]
                    break
    if not recipient:
        cand = [a for a in ADDRESS.findall(text) if _usable(a, excluded, strict=True)]
        recipient = cand[0] if cand else ""
    status, line = _status_and_line(text, anchor)
    if not line and recipient:
        line = _lines_after(text, text.find(recipient, anchor))
    return Dsn(recipient=recipient, status=status, diagnostic=line)


_RETURNED = re.compile(r"^[ \t>]*(?:Received|Return-Path|Message-ID|DKIM-Signature):"
                       r"|original message|copy of the message|message follows|"
                       r"returned message|message headers follow", re.M | re.I)
_ANGLE_LINE = re.compile(r"^[ \t]*<([^<>\s@]+@[^<>\s@]+)>:", re.M)
_SEPARATOR = re.compile(r"^\W*(?:-{3,}|={3,}|\*{3,}|_{3,})|^[\w-]+:\s|original message|"
                        r"copy of the message|message follows", re.I)


def _lines_after(text: str, at: int) -> str:
    """What a notice says about a recipient when it gives no code: the rest of the
    recipient's line and the line after it."""
    if at < 0:
        return ""
    end = text.find("\n", at)
    rest = text[end + 1:] if end >= 0 else ""
    own = text[at:end if end >= 0 else None]
    returned = _RETURNED.search(text)
    if returned and at >= returned.start():  # only in the returned mail: it says nothing
        return ""
    pieces = [ADDRESS.sub("", own).strip(" <>:;,()\t\r")]
    for line in rest.splitlines()[:3]:
        if not line.strip():
            continue
        if _SEPARATOR.search(line.strip()):
            break
        pieces.append(line.strip())
        if len(pieces) >= 3:
            break
    return " ".join(" ".join(p.split()) for p in pieces if p)[:300]


def _status_in(text: str, success: bool = False) -> str:
    m = ENHANCED.search(text or "")
    if m and (success or not m.group(0).startswith("2")):
        return m.group(0)
    r = REPLY.search(text or "")
    return f"{r.group(1)[0]}.0.0" if r else ""


def _status_and_line(text: str, anchor: int) -> tuple[str, str]:
    """The first failure or delay status after `anchor` (then anywhere), and its line."""
    for start in (anchor, 0):
        for pattern in (ENHANCED, REPLY):
            for m in pattern.finditer(text, start):
                code = m.group(0) if pattern is ENHANCED else m.group(1)
                if code.startswith("2"):
                    continue
                begin = text.rfind("\n", 0, m.start()) + 1
                end = text.find("\n", m.end())
                line = " ".join(text[begin:end if end >= 0 else None].split())
                status = code if pattern is ENHANCED else f"{code[0]}.0.0"
                if pattern is REPLY:  # prefer an enhanced code on the same line
                    enhanced = ENHANCED.search(line)
                    if enhanced and not enhanced.group(0).startswith("2"):
                        status = enhanced.group(0)
                return status, line
    return "", ""
