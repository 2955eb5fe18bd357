"""Queueing one mail about a ticket: the decision, the rendering and the outbox row, together.

Input: a connection inside the caller's transaction (the pipeline's, or an agent action's),
the ticket, the recipient and the template context (untrusted values, escaped by templates),
and for an agent's reply the files the agent attached (names made safe by the caller).
Output: exactly one outbox row — `queued` with the composed message, `suppressed` with the rule
that stopped it, or `failed` with the template error — so every decision is in the outgoing
audit. Every mail speaks as the ticket's mailbox (`MailContext.for_ticket`: From, brand and
templates, Reply-To); automatic mail is never sent to one of our mailboxes' addresses (a loop).
Our Message-ID carries the ticket's signed token and is indexed for threading. Mail to an agent
never carries the customer's reply address: its Reply-To is the ticket's internal-note address
(what is sent there is stored as a note and goes to nobody), automatic mail to an agent is
marked `Auto-Submitted: auto-generated`, and the agent's personal reply address (a token made
for that agent alone) is only offered to the template, to be written to on purpose. An agent's
reply is copied (Cc) to the ticket's other participants: one outbox row per recipient, the same
message. Every mail about a ticket carries the ticket's Outlook `Thread-Index` (the first one
the header block, each later one its parent plus a child block) and `Thread-Topic`. Every
display name from mail is cut to one short line before it reaches a template or a header.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from mailgate.model import Address, ParsedMail, Upload, base_mailbox
from mailgate.outbound import thread_index
from mailgate.outbound.compose import BadAddress, Headers, compose, display_name
from mailgate.outbound.render import Renderer, TemplateError
from mailgate.outbound.suppress import RateLimits, SentLastHour, suppression_reason
from mailgate.store import outbound as outbox
from mailgate.store.tickets import (
    copied_participants,
    index_message_id,
    latest_customer_message,
    set_thread_index,
    thread_index_of,
)

_REPLY_PREFIXES = re.compile(r"^(?:\s*(?:re|aw|sv|fwd?|wg)(?:\[\d+\])?\s*:\s*)+", re.I)


class TokenMinter(Protocol):
    """What mail composition needs of the signed tokens (mailgate.threading.token.Signer)."""

    def reply_address(self, mailbox: str, ticket_id: int) -> str: ...
    def agent_reply_address(self, mailbox: str, ticket_id: int, agent: str) -> str: ...
    def note_address(self, mailbox: str, ticket_id: int) -> str: ...
    def message_id(self, ticket_id: int, domain: str) -> str: ...
    def bounce_address(self, bounce_mailbox: str, outbound_id: int) -> str: ...


@dataclass(frozen=True)
class Voice:
    """How one mailbox speaks: its From, its brand's templates, where replies go."""

    renderer: Renderer
    from_addr: str  # shown in From: the public address, else ours
    from_name: str
    mailbox: str  # ours (in our domains): reply tokens and bounces
    reply_to: str = "token"  # "token": Reply-To mailbox+token; "public": the public address


@dataclass(frozen=True)
class MailContext:
    renderer: Renderer
    tokens: TokenMinter
    from_addr: str
    from_name: str
    domains: frozenset[str]
    agents: frozenset[str]
    limits: RateLimits
    mailbox: str = ""  # our address for reply tokens and bounces ("": from_addr)
    reply_to: str = "token"
    voices: Mapping[str, Voice] = field(default_factory=dict)  # mailbox address → its voice
    agent_names: tuple[tuple[str, str], ...] = ()  # (email, name) of [[agents]]
    status_labels: tuple[tuple[str, str], ...] = ()  # [statuses]

    @property
    def from_domain(self) -> str:
        return self.from_addr.rpartition("@")[2]

    @property
    def our_address(self) -> str:
        return self.mailbox or self.from_addr

    def for_ticket(self, ticket: Mapping[str, Any]) -> MailContext:
        """This context speaking as the ticket's mailbox (the default one for a ticket older
        than mailboxes, or of a mailbox no longer configured)."""
        voice = self.voices.get(str(ticket.get("mailbox") or "")) or next(
            iter(self.voices.values()), None)
        if voice is None:
            return self
        return replace(self, renderer=voice.renderer, from_addr=voice.from_addr,
                       from_name=voice.from_name, mailbox=voice.mailbox,
                       reply_to=voice.reply_to)

    def is_agent(self, address: str) -> bool:
        return address.lower() in self.agents

    def agent_name(self, address: str) -> str:
        return dict(self.agent_names).get(address.lower(), "")

    def status_label(self, status: str) -> str:
        return dict(self.status_labels).get(status, status.replace("_", " "))

    def reply_address(self, ticket_id: int, recipient: str = "") -> str:
        """The Reply-To of mail about the ticket: for an agent, the ticket's internal-note
        address (a reply to it reaches no customer); in "public" mode the public address
        itself (replies thread by Message-ID); otherwise the customer's reply address."""
        if recipient and self.is_agent(recipient):
            return self.tokens.note_address(self.our_address, ticket_id)
        if self.reply_to == "public":
            return self.from_addr
        return self.tokens.reply_address(self.our_address, ticket_id)

    def bounce_address(self, outbound_id: int) -> str:
        domain = self.our_address.rpartition("@")[2]
        return self.tokens.bounce_address(f"bounces@{domain}", outbound_id)

    def ticket_view(self, ticket: Mapping[str, Any], recipient: str = "") -> dict[str, Any]:
        view = dict(ticket)
        ticket_id = int(ticket["id"])
        view["reply_address"] = self.reply_address(ticket_id, recipient)
        view["status_label"] = self.status_label(str(ticket.get("status") or ""))
        # for an agent: the address that answers the customer (written to on purpose only)
        view["agent_reply_address"] = (
            self.tokens.agent_reply_address(self.our_address, ticket_id, recipient)
            if recipient and self.is_agent(recipient) else "")
        if "requester_name" in view:
            view["requester_name"] = display_name(view["requester_name"] or "")
        return view


@dataclass(frozen=True)
class Queued:
    outbound_id: int
    status: str  # queued, suppressed, failed
    message_id: str
    subject: str
    reason: str = ""
    cc: tuple[str, ...] = ()  # copied to (each with an outbox row of its own)


def queue_ticket_mail(
    conn: sqlite3.Connection,
    ctx: MailContext,
    *,
    kind: str,
    ticket: Mapping[str, Any],
    to: Address,
    context: Mapping[str, Any],
    automatic: bool,
    trigger: ParsedMail | None = None,
    envelope_sender: str | None = None,
    in_reply_to: str = "",
    references: tuple[str, ...] = (),
    queue_id: str = "",
    message_id: str | None = None,
    refuse: str = "",
    sender: str = "",
    cc: tuple[Address, ...] = (),
    attachments: tuple[Upload, ...] = (),
) -> Queued:
    """`refuse`: a reason decided by the caller not to send (recorded as `suppressed`);
    `sender`: the agent whose words the mail carries; `cc`: copied in Cc, each with an outbox
    row of its own carrying the same message (the returned `Queued` is `to`'s). The mail speaks
    as the ticket's mailbox: its From, brand, templates and reply address."""
    ctx = ctx.for_ticket(ticket)
    ticket_id = int(ticket["id"])
    message_id = message_id or ctx.tokens.message_id(ticket_id, ctx.from_domain)
    to_agent = ctx.is_agent(to.email)
    to = Address(to.email, display_name(to.name) or (ctx.agent_name(to.email) if to_agent
                                                     else ""))
    cc = tuple(Address(c.email, display_name(c.name)) for c in cc
               if c.email.lower() != to.email.lower())

    def record(status: str, reason: str, subject: str = "", raw: bytes | None = None) -> Queued:
        """One outbox row per recipient; a mail not sent keeps the Message-ID it would have
        had."""
        oid = 0
        for i, rcpt in enumerate((to, *cc)):
            row = outbox.enqueue(
                conn, ticket_id=ticket_id, kind=kind, automatic=automatic, to_addr=rcpt.email,
                subject=subject, message_id=message_id, raw=raw, status=status, reason=reason,
                queue_id=queue_id, sender=sender, to_agent=rcpt.email in ctx.agents,
            )
            oid = row if i == 0 else oid
        return Queued(oid, status, message_id, subject, reason, tuple(c.email for c in cc))

    if refuse:
        return record("suppressed", refuse)
    if not ctx.renderer.enabled(kind):
        return record("suppressed", f"[templates.{kind}] enabled = false")
    own = {a for v in ctx.voices.values() for a in (v.from_addr, v.mailbox)}
    if automatic and base_mailbox(to.email) in own and to.email not in ctx.agents:
        return record("suppressed", f"recipient {to.email} is one of our mailboxes"
                                    " (loop prevention)")
    if automatic:
        reason = suppression_reason(
            trigger=trigger,
            envelope_sender=envelope_sender,
            to_addr=to.email,
            our_domains=ctx.domains,
            sent=SentLastHour(*outbox.automatic_counts(conn, to.email, time.time() - 3600)),
            limits=ctx.limits,
            recipient_is_agent=to.email in ctx.agents,
        )
        if reason:
            return record("suppressed", reason)
    full_context = {
        **context,
        "ticket": ctx.ticket_view(ticket, to.email),
        "recipient": {"name": to.name, "email": to.email},
    }
    try:
        rendered = ctx.renderer.render(kind, full_context)
    except TemplateError as exc:
        return record("failed", f"template error: {exc}")
    index = _next_thread_index(conn, ticket_id)
    headers = Headers(
        from_name=ctx.from_name,
        from_addr=ctx.from_addr,
        to_name=to.name,
        to_addr=to.email,
        reply_to=ctx.reply_address(ticket_id, to.email),
        message_id=message_id,
        in_reply_to=in_reply_to,
        references=references,
        automatic=automatic and not to_agent,
        ticket_id=ticket_id,
        cc=tuple((c.name, c.email) for c in cc),
        generated=automatic and to_agent,
        thread_index=thread_index.encode(index),
        thread_topic=thread_topic(str(ticket.get("subject") or "")),
    )
    try:
        raw = compose(rendered.subject, rendered.text, rendered.html, rendered.images, headers,
                      attachments)
    except BadAddress as exc:
        return record("failed", str(exc), rendered.subject)
    queued = record("queued", "", rendered.subject, raw)
    index_message_id(conn, message_id, ticket_id, None)
    set_thread_index(conn, ticket_id, thread_index.encode(index))
    return queued


def thread_topic(subject: str) -> str:
    """Outlook's Thread-Topic: the ticket's subject without reply and forward prefixes."""
    return _REPLY_PREFIXES.sub("", subject).strip()[:250]


def _next_thread_index(conn: sqlite3.Connection, ticket_id: int) -> bytes:
    """The ticket's first mail starts a conversation (the header block); each later one
    answers the latest index the ticket saw, ours or a customer's (one child block more)."""
    latest = thread_index.parse(thread_index_of(conn, ticket_id))
    now = time.time()
    if latest is None:
        return thread_index.header_block(now)
    return thread_index.reply_index(latest, now)


def queue_agent_reply(conn: sqlite3.Connection, ctx: MailContext, ticket: Mapping[str, Any],
                      agent: Address, body: str, queue_id: str = "", refuse: str = "",
                      attachments: tuple[Upload, ...] = ()) -> Queued:
    """An agent's words to the ticket's requester (`agent_reply`), threaded under the latest
    customer message, with a new Message-ID of ours. `queue_id`: the agent's mail, for a reply
    by email; `refuse`: why it must not go out (recorded as `suppressed`). The ticket's other
    participants (not removed, not agents, not ours) are copied, as a reply-all would."""
    ticket_id = int(ticket["id"])
    latest = latest_customer_message(conn, ticket_id)
    cc = tuple(Address(p) for p in copied_participants(conn, ticket_id)
               if not ctx.is_agent(p) and p.rpartition("@")[2] not in ctx.domains)
    return queue_ticket_mail(
        conn, ctx, kind="agent_reply", ticket=ticket,
        to=Address(ticket["requester"], ticket["requester_name"] or ""),
        context={"agent": {"name": display_name(agent.name) or agent.email,
                           "email": agent.email},
                 "body": body},
        automatic=False, in_reply_to=latest["message_id"] if latest else "",
        references=latest["references"] if latest else (), queue_id=queue_id, refuse=refuse,
        sender=agent.email, cc=cc, attachments=attachments,
    )
