"""Is this the mail a provider sends to confirm that a mailbox may be forwarded to us?

Input: a `MailView` (untrusted: a From header is easy to forge; whether Google or Microsoft really
signed it is the authenticate stage's record, not this one's). Output: a `ForwardingConfirmation`
— provider, code, link, the mailbox being forwarded and the address asked to confirm — or None.

- Gmail: when a user adds a forwarding address, `forwarding-noreply@google.com` sends it
  "(#123456789) Gmail Forwarding Confirmation - Receive Mail from user@gmail.com" (newer ones
  carry only a link, and the subject is translated into the user's language) with "Confirmation
  code: 123456789" and a confirm link `https://mail-settings.google.com/mail/vf-...` (or on
  `mail.google.com`). The `uf-` link beside it cancels the request and is never returned.
- Microsoft (Outlook.com, Microsoft 365 consumer accounts): Outlook does not confirm forwarding
  targets the way Gmail does; what reaches a support address when someone adds it to a Microsoft
  account (as an alias, security info, or an address to send from) is a "Verify your email
  address" / "Microsoft account security code" mail from
  `account-security-noreply@accountprotection.microsoft.com`, with a security code and sometimes
  a verify link (`https://account.live.com/Email/Verify?...`). The `Email/Remove` and `/dp`
  links beside it take the address off the account and are never returned.
Links are returned only on the provider's own hosts, so a forged confirmation cannot make anyone
follow an arbitrary URL; codes are digits only.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from mailgate.classify.dsn import ADDRESS
from mailgate.classify.view import MailView

GMAIL_SENDER = "forwarding-noreply@google.com"
_GMAIL_HOSTS = ("mail-settings.google.com", "mail.google.com")
_MICROSOFT_DOMAINS = ("accountprotection.microsoft.com", "microsoft.com", "outlook.com",
                      "live.com", "microsoftonline.com")
_MICROSOFT_HOSTS = ("account.live.com", "login.live.com", "account.microsoft.com",
                    "outlook.live.com", "login.microsoftonline.com")

_URL = re.compile(r"https://[^\s\"'<>()\[\]]+", re.I)
_GMAIL_SUBJECT = re.compile(
    r"gmail forwarding confirmation|confirmation de transfert gmail|"
    r"gmail-weiterleitungsbestätigung|bestätigung der gmail-weiterleitung|"
    r"confirmación de reenvío de gmail|conferma (?:di )?inoltro (?:di )?gmail|"
    r"confirmação de encaminhamento do gmail|gmail の転送の確認|gmail-doorstuurbevestiging", re.I)
_GMAIL_BODY = re.compile(r"has\s+requested\s+to\s+automatically\s+forward\s+mail|"
                         r"https://mail(?:-settings)?\.google\.com/mail/vf-", re.I)
_SUBJECT_CODE = re.compile(r"\(\s*(?:#|n[°º]\s*)(\d{5,12})\s*\)")
_BODY_CODE = re.compile(
    r"(?:(?:confirmation|verification|security|bestätigungs|sicherheits|best[aä]tigungs)\s*)?"
    r"(?:code|código|codice|kod|コード|код)\b[^\n\d]{0,40}?(\d{4,12})\b", re.I)
_REQUESTER = re.compile(r"(?:receive mail from|recevoir des messages de|mail from)\s+"
                        r"([^\s@]{1,64}@[^\s@]{1,255})", re.I)
_REQUESTED_BY = re.compile(r"(?<![^\s@])([^\s@]{1,64}@[^\s@]{1,255})\s+has\s+requested\s+to\s+"
                           r"automatically\s+forward", re.I)
_TO_ADDRESS = re.compile(r"forward\s+mail\s+to\s+(?:your\s+(?:email\s+)?address|you)\s+"
                         r"([^\s@]{1,64}@[\w.-]{1,255}\w)", re.I)
_MS_SUBJECT = re.compile(r"verify your email|verify your e-mail|email verification|"
                         r"security code|verification code|confirm your email|"
                         r"(?:microsoft|outlook)(?:\.com)? account", re.I)
_MS_CODE = re.compile(r"(?:security code|verification code|here is your code|your code is|"
                      r"use (?:this|the following) (?:security )?code)[^\d\n]{0,20}(\d{4,10})\b",
                      re.I)
_MS_ACCOUNT = re.compile(r"microsoft account\s+([\w.*+-]+@[\w.*-]+\.\w+)", re.I)


@dataclass(frozen=True)
class ForwardingConfirmation:
    provider: str  # "gmail" | "outlook"
    code: str  # digits; "" when the mail carries only a link
    link: str  # the confirm link on the provider's host; "" when there is none
    forwarding_address: str  # the mailbox that will be forwarded to us (asked for it)
    confirming_address: str  # our address, asked to confirm


def detect(view: MailView) -> ForwardingConfirmation | None:
    return _gmail(view) or _microsoft(view)


def _urls(view: MailView) -> list[str]:
    found = _URL.findall(view.text) + _URL.findall(html.unescape(view.html))
    return [u.rstrip(".,;:!?") for u in found]


def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def _path(url: str) -> str:
    try:
        return urlsplit(url).path
    except ValueError:
        return ""


def _first_to(view: MailView) -> str:
    return view.parsed.to[0].email if view.parsed.to else ""


def _gmail(view: MailView) -> ForwardingConfirmation | None:
    if view.from_address != GMAIL_SENDER:
        return None
    subject, text = view.parsed.subject, view.text + "\n" + html.unescape(view.html)
    if not (_GMAIL_SUBJECT.search(subject) or _GMAIL_BODY.search(text)):
        return None
    code_match = _SUBJECT_CODE.search(subject) or _BODY_CODE.search(text)
    links = [u for u in _urls(view) if _host(u) in _GMAIL_HOSTS]
    confirm = [u for u in links if "/mail/vf-" in u]
    requester = _REQUESTED_BY.search(text) or _REQUESTER.search(subject)
    confirming = _TO_ADDRESS.search(text)
    return ForwardingConfirmation(
        provider="gmail",
        code=code_match.group(1) if code_match else "",
        link=confirm[0] if confirm else "",
        forwarding_address=_address(requester.group(1)) if requester else "",
        confirming_address=_address(confirming.group(1)) if confirming else _first_to(view),
    )


def _microsoft(view: MailView) -> ForwardingConfirmation | None:
    domain = view.from_address.rpartition("@")[2]
    if not any(domain == d or domain.endswith("." + d) for d in _MICROSOFT_DOMAINS):
        return None
    local = view.from_address.split("@")[0]
    if not re.search(r"no-?reply|account|security|verif", local):
        return None
    text = view.text + "\n" + html.unescape(view.html)
    code_match = _MS_CODE.search(text)
    links = [u for u in _urls(view) if _host(u) in _MICROSOFT_HOSTS
             and re.search(r"verif|confirm", _path(u), re.I)]
    if not _MS_SUBJECT.search(view.parsed.subject) or not (code_match or links):
        return None
    account = _MS_ACCOUNT.search(text)
    return ForwardingConfirmation(
        provider="outlook",
        code=code_match.group(1) if code_match else "",
        link=links[0] if links else "",
        forwarding_address=account.group(1).rstrip(".").lower() if account else "",
        confirming_address=_first_to(view),
    )


def _address(value: str) -> str:
    m = ADDRESS.search(value)
    return m.group(0).lower().rstrip(".") if m else ""
