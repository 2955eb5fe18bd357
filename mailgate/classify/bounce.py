"""Is this message a bounce — a delivery status notification, standard or not?

Input: a `MailView` (untrusted: anyone can write "Undeliverable" in a subject). Output: one line
saying why it is a bounce, or "" when it is not one.

A bounce is, in order of evidence:
1. RFC 3464: `multipart/report; report-type=delivery-status`, or a `message/delivery-status`
   part in any other container (delay warnings, `Action: delayed`, are bounces too);
2. an Amazon SES notification about a sent message (its JSON, mailed by SNS from an
   amazonaws.com address): a bounce, and also a complaint or a delivery event, which report on
   our outgoing mail the same way;
3. a non-standard notice: a mail-system sender — the null reverse-path (as the envelope or an
   upstream Return-Path header shows it: a forwarding mailbox rewrites the envelope), a
   MAILER-DAEMON/postmaster From, or no From address at all — together with a bounce subject
   ("Undelivered Mail Returned to Sender", "failure notice", "Undeliverable: ...", ...), the
   `X-Failed-Recipients` header, or the wording of a known MTA's notice in the text;
4. a mailing-list manager's refusal (a `-admin`/`owner-` sender with a refusal subject);
5. a forwarded notice: a bounce subject behind `Fwd:` over the quoted fields of a DSN.
A person's message that merely says "undeliverable" matches none of these: the words count only
from a mail system's sender, or together with the quoted DSN itself.
"""

from __future__ import annotations

import re

from mailgate.classify.dsn import DSN_TYPES, ses_notification
from mailgate.classify.view import MailView

# Subjects of the notices of common MTAs and providers (Postfix, Sendmail, Exim, qmail,
# Exchange/Office 365 in several languages, Gmail, Yahoo, Amazon SES/WorkMail, Domino, ...).
_SUBJECT = re.compile(
    r"undeliver(?:ed|able)"
    r"|non[- ]?deliver(?:y|able)|\bNDR\b"
    r"|delivery[- ](?:status[- ])?(?:notification|notice)"
    r"|delivery (?:status|report)\b"
    r"|(?:(?:mail|message)\s*)?deliver(?:y|ed)?\s+(?:has\s+)?(?:failed|failure|error|problem)"
    r"|(?:failed|failure|permanent) (?:mail )?delivery|delivery (?:failure|failed|error)"
    r"|failure notice|failure delivery"
    r"|returned (?:mail|message|to sender)|returning (?:message )?to sender|mail returned"
    r"|could ?n[o']t (?:be )?(?:deliver|sen[dt])|not (?:be )?delivered"
    r"|delivery (?:has been )?delayed|delayed mail|message .{0,40} delayed"
    r"|mail (?:system )?(?:error|failure)|mail failed"
    r"|error sending your (?:mail|message)"
    r"|postmaster notif|see transcript for details|smtp server: errors from"
    r"|unzustellbar|nicht zustellbar|non remis|impossible de remettre"
    r"|no se (?:puede|pudo) entregar|non recapitabile|onbestelbaar|kan ikke leveres"
    r"|não (?:é possível|foi possível) entregar|olevererbar|nie można dostarczyć"
    r"|не доставлено|配信でき|配送でき|届きません|送信できません|无法投递|退信",
    re.I,
)

# Wording that only a mail system's notice carries.
_BODY = re.compile(
    r"this is the qmail-send program"
    r"|this message was created automatically by mail delivery software"
    r"|this is the mail system at host"
    r"|this is the (?:\S{1,40} ){0,6}mail (?:delivery )?(?:agent|system|service)\b"
    r"|(?:could|can) ?n[o']t be delivered to (?:one or more|the following|all)"
    r"|(?:your )?(?:message|mail|e-?mail) (?:could|can) ?n[o']t be delivered"
    r"|(?:was|were) (?:not|un)able to deliver (?:your )?(?:message|mail)"
    r"|i'?m afraid i wasn'?t able to deliver"
    r"|delivery to the following recipients? (?:failed|has been delayed|was postponed)"
    r"|delivery has failed to these recipients"
    r"|did not reach the following recipient"
    r"|the following addresses had (?:permanent fatal|transient non-fatal) errors"
    r"|the following (?:address(?:\(es\)|es)?|recipients?) (?:failed|returned permanent errors)"
    r"|there was an error delivering your mail"
    r"|we had trouble delivering your message"
    r"|could ?n[o']t be delivered to\s*(?::\s*)?<?[\w.+-]+@"
    r"|(?:message|mail) (?:could not be|was not|wasn'?t) delivered"
    r"|unknown user:|user unknown|no such user|invalid user address"
    r"|transcript of session follows"
    r"|original message follows|unsent message below|returned message follows",
    re.I,
)

# Mailing-list managers (fml, Majordomo, ...) refusing a message.
_LIST_ADMIN = re.compile(r"^(?:owner-.+|.+-(?:admin|owner|request|bounces?))$", re.I)
_LIST_REFUSAL = re.compile(r"\bnot (?:a )?member\b|\bloop alert\b|\bpost(?:ing)? (?:is )?reject"
                           r"|\bmessage rejected\b|\bnot allowed to post\b", re.I)

# Where Amazon SES notifications come from: SNS topics mail them from no-reply@sns.amazonaws.com.
_AWS_DOMAINS = (".amazonaws.com", ".amazonses.com")
_FORWARD_PREFIX = re.compile(r"^\s*(?:(?:fwd?|fw|tr|wg|rv|doorst|vs|i)\s*:\s*)+", re.I)
_QUOTED_DSN_FIELDS = re.compile(r"^[ \t>]*(?:Final-Recipient|Original-Recipient)\s*:.*$"
                                r"[\s\S]{0,600}?^[ \t>]*Status\s*:\s*[245]\.\d", re.M | re.I)


def detect(view: MailView) -> str:
    report_type = view.content_param("report-type")
    if view.content_type == "multipart/report" and report_type == "delivery-status":
        return "multipart/report; report-type=delivery-status (RFC 3464)"
    for ctype in DSN_TYPES:
        if any(not p.inside_message for p in view.parts_of(ctype)):
            return f"a {ctype} part (RFC 3464) inside {view.content_type}"
    domain = view.from_address.rpartition("@")[2]
    ses = ses_notification(view.text) if domain.endswith(_AWS_DOMAINS) else None
    if ses:
        return f"an Amazon SES notification ({ses.get('notificationType')}) about a sent message"

    subject = view.parsed.subject
    robot = view.robot_sender
    if robot:
        m = _SUBJECT.search(subject)
        if m:
            return f"{robot}; subject matches bounce pattern {m.group(0).strip()!r}"
        if view.headers("x-failed-recipients"):
            return f"{robot}; X-Failed-Recipients header"
        m = _BODY.search(view.text)
        if m:
            return f"{robot}; text matches bounce notice {m.group(0).strip()!r}"

    local = view.from_address.split("@")[0]
    if _LIST_ADMIN.match(local) and (m := _LIST_REFUSAL.search(subject)):
        return f"mailing-list manager {view.from_address} refused the message ({m.group(0)!r})"

    unforwarded = _FORWARD_PREFIX.sub("", subject)
    if unforwarded != subject and _SUBJECT.search(unforwarded) \
            and _QUOTED_DSN_FIELDS.search(view.text):
        return "a forwarded delivery status notification (bounce subject and quoted DSN fields)"
    return ""
