"""Delivering one parsed, classified message into the store: the pipeline's decisions applied.

Input: a connection inside the pipeline's transaction and an `Incoming` (the envelope, the
parsed message — untrusted —, its class and reply text, where its raw bytes and attachments were
written, its authentication result). Output: the rows that record what happened — a bounce
matched to our outgoing mail, a forwarding confirmation, an ignored robot, a duplicate (the same
Message-ID, content digest and sender), or a ticket message with its workflow consequences
(status, internal note, acknowledgement, an agent's emailed reply relayed to the customer when
it is authenticated as that agent, else an outgoing row saying why not; mail to a ticket's
internal-note address kept as a note and sent to nobody; the Cc of a conversation joining it as
participants; the team of the mailbox it came to; its Outlook Thread-Index; mail matching a
ticket that was merged into another forwarded to that one), the `ticket_created` and
`message_received` events for the webhooks subscribed to them — and the incoming-audit row
saying why. Part of the pipeline (an orchestrator): it calls the stages
(threading, workflow, outbound) with look-ups bound to this transaction.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from mailgate.classify import Classification
from mailgate.config import Mailbox
from mailgate.model import Address, ParsedMail, SpoolEntry, ThreadMatch, base_mailbox
from mailgate.outbound import thread_index
from mailgate.outbound.mailer import MailContext, queue_agent_reply
from mailgate.parsing.digest import content_digest
from mailgate.pipeline import quarantine
from mailgate.pipeline.automation import Automation, RuleSet, Run, Trigger
from mailgate.rules.organizations import domain_of, find_organization, why_no_auto_organization
from mailgate.rules.workflow import (
    AGENT,
    PARTICIPANT,
    STRANGER,
    Decision,
    Situation,
    agent_proof,
    decide,
)
from mailgate.store import outbound as outbox
from mailgate.store import webhooks as hooks
from mailgate.store.audit import IncomingAudit, record_incoming
from mailgate.store.db import now_iso
from mailgate.store.merge import resolve
from mailgate.store.orgs import (
    add_domain,
    create_org,
    customer_org,
    org_for_domain,
    route_of,
    set_customer_org,
)
from mailgate.store.tickets import (
    add_attachment,
    add_incoming_message,
    add_participant,
    create_ticket,
    duplicate_of,
    get_or_create_customer,
    index_message_id,
    is_participant,
    link_outbound,
    mark_first_response,
    set_status,
    set_team,
    set_thread_index,
    thread_index_of,
    ticket_exists,
    ticket_for_message_id,
    ticket_row,
    touch_ticket,
)
from mailgate.threading import Lookups, find_ticket, mailbox_of, our_addresses
from mailgate.threading.forwarded import original_of
from mailgate.threading.token import Signer

log = logging.getLogger("mailgate.pipeline")

UNKNOWN_SENDER = Address(email="unknown-sender@invalid", name="(no sender address)")


@dataclass(frozen=True)
class Policy:
    domains: frozenset[str] = frozenset()
    agents: frozenset[str] = frozenset()
    strangers: str = "internal"
    reopen_closed_days: float = 7.0
    auto_create_organizations: bool = False
    free_mail_domains: frozenset[str] = frozenset()
    agent_reply_auth: tuple[tuple[str, tuple[str, ...]], ...] = ()  # ([[agents]] reply_auth)
    agent_replies_by_email_per_hour: int = 60
    # (mailbox, team) of [[teams]] mailboxes and of [[mailboxes]] with a team
    team_mailboxes: tuple[tuple[str, str], ...] = ()
    mailboxes: tuple[Mailbox, ...] = ()  # [[mailboxes]] (or the implicit one), default first

    @property
    def own_addresses(self) -> frozenset[str]:
        """Our mailboxes' addresses, the public ones (the company's) included."""
        return frozenset(a for m in self.mailboxes for a in m.addresses())

    def reply_auth(self, agent: str) -> tuple[str, ...]:
        return dict(self.agent_reply_auth).get(agent, ("dkim",))


@dataclass(frozen=True)
class Incoming:
    entry: SpoolEntry
    parsed: ParsedMail
    content: bytes
    raw_path: str
    blobs: list[str]
    classification: Classification
    reply_text: str
    auth: dict[str, Any] | None = None  # the authentication stage's result, None when off

    @property
    def unauthenticated(self) -> str:
        """Why the From address cannot be trusted ("" when it can, or nothing is known)."""
        if self.auth and self.auth.get("verdict") == "fail":
            return str(self.auth.get("reason") or "authentication failed")
        return ""


@dataclass(frozen=True)
class Outcome:
    queue_id: str
    action: str
    ticket_id: int | None = None
    reason: str = ""


def forward_merged(conn: sqlite3.Connection, match: ThreadMatch) -> ThreadMatch:
    """A match on a ticket that was merged into another lands on that one (noted)."""
    if match.ticket_id is None:
        return match
    target = resolve(conn, match.ticket_id)
    if target == match.ticket_id:
        return match
    return replace(match, ticket_id=target, notes=(
        *match.notes, f"ticket #{match.ticket_id} was merged into #{target}: forwarded there"))


def _days_since(iso: str | None) -> float | None:
    if not iso:
        return None
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (datetime.now(UTC) - then).total_seconds() / 86400


class Deliverer:
    def __init__(self, policy: Policy, mail: MailContext | None, tokens: Signer | None,
                 automation: Automation | None = None) -> None:
        self.policy = policy
        self.mail = mail
        self.tokens = tokens
        self.automation = automation or Automation(RuleSet(), mail)

    # --- the entry point ----------------------------------------------------------------------

    def deliver(self, conn: sqlite3.Connection, inc: Incoming) -> Outcome:
        env, parsed, cls = inc.entry.envelope, inc.parsed, inc.classification
        base = IncomingAudit(
            env, "", message_id=parsed.message_id, from_addr=parsed.from_.email,
            subject=parsed.subject, defects=len(parsed.defects), classification=cls.kind,
            auth=inc.auth,
        )
        verp = self._verp_target(env.rcpt_to)
        if cls.kind == "bounce" or verp is not None:
            return self._bounce(conn, inc, base, verp)
        if cls.kind == "forwarding_confirmation":
            details = asdict(cls.forwarding) if cls.forwarding is not None else {}
            if self.policy.mailboxes:  # which mailbox is being forwarded here
                named = [base_mailbox(str(details.get(k) or ""))
                         for k in ("forwarding_address", "confirming_address")]
                details["mailbox"] = next(
                    (m.address for a in named for m in self.policy.mailboxes
                     if a in m.addresses()),
                    mailbox_of(env.rcpt_to, parsed, self.policy.mailboxes)[0])
            reason = (f"forwarding confirmation ({details.get('provider', '?')}): finish setup"
                      " with the code or link (mailgate forwarding pending)")
            record_incoming(conn, replace(base, action="forwarding_confirmation", reason=reason,
                                          details=details))
            return Outcome(env.queue_id, "forwarding_confirmation", reason=reason)
        if cls.kind == "feedback_report":
            reason = f"abuse/feedback report, not a conversation: {cls.reason}"
            record_incoming(conn, replace(base, action="ignored", reason=reason))
            return Outcome(env.queue_id, "ignored", reason=reason)
        digest = content_digest(inc.content)
        duplicate = self._duplicate(conn, parsed, digest)
        if duplicate is not None:
            existing, reason = duplicate
            record_incoming(conn, replace(base, action="duplicate", reason=reason,
                                          ticket_id=existing))
            return Outcome(env.queue_id, "duplicate", existing, reason)
        quarantined = quarantine.gate(conn, env, parsed, inc.auth, inc.raw_path, base,
                                      self._lookups(conn, parsed.from_.email))
        if quarantined is not None:  # doubtful spam: no ticket, nothing sent
            return Outcome(env.queue_id, "spam", reason=quarantined)
        return self._thread(conn, inc, base, digest)

    def _duplicate(self, conn: sqlite3.Connection, parsed: ParsedMail, digest: str
                   ) -> tuple[int | None, str] | None:
        """(ticket, reason) when this mail is stored already: the same Message-ID, the same
        content and the same sender — a retransmission, or one mail to two of our addresses —
        or our own outgoing mail come back to us. A Message-ID alone proves nothing: anyone
        can send first with the id of someone else's future mail."""
        mid, sender = parsed.message_id, parsed.from_.email
        if not mid:
            return None
        existing = duplicate_of(conn, mid, digest, sender)
        if existing is not None:
            return existing, (f"Message-ID <{mid}> from {sender or '(no sender)'} with the same"
                              f" content is already stored on ticket #{existing}")
        if sender.rpartition("@")[2].rstrip(".") in self.policy.domains \
                or base_mailbox(sender) in self.policy.own_addresses:
            ours = outbox.sent_with_message_id(conn, mid)
            if ours is not None:
                return ours[1], f"our own outgoing mail #{ours[0]} came back (Message-ID <{mid}>)"
        return None

    # --- bounces ------------------------------------------------------------------------------

    def _verp_target(self, rcpts: tuple[str, ...]) -> int | None:
        """None: not sent to a bounce address; 0: to one, without a valid token; else the id."""
        bounce_rcpts = [r for r in rcpts if base_mailbox(r).startswith("bounces@")]
        if not bounce_rcpts:
            return None
        for r in bounce_rcpts:
            oid = self.tokens.outbound_from_address(r) if self.tokens else None
            if oid:
                return oid
        return 0

    def _bounce(self, conn: sqlite3.Connection, inc: Incoming, base: IncomingAudit,
                verp: int | None) -> Outcome:
        env, parsed, dsn = inc.entry.envelope, inc.parsed, inc.classification.dsn
        status = dsn.status if dsn else ""
        diagnostic = dsn.diagnostic if dsn else ""
        recipient = dsn.recipient if dsn else ""
        detail = " ".join(x for x in (status, diagnostic) if x) or "no status given"
        outbound_id = verp or None
        if outbound_id is None:  # a DSN that quotes one of our Message-IDs
            for mid in (*parsed.in_reply_to, *reversed(parsed.references), *self._quoted_ids(inc)):
                outbound_id = outbox.outbound_for_message_id(conn, mid)
                if outbound_id:
                    break
        if outbound_id and outbox.mark_bounced(conn, outbound_id, status, detail):
            reason = (f"delivery failure for our outbound mail #{outbound_id} to"
                      f" {recipient or '?'}: {detail}")
        elif verp == 0:
            reason = f"bounce to our VERP address without a valid token (not matched): {detail}"
        else:
            reason = (f"delivery status notification for {recipient or 'an unknown recipient'}:"
                      f" {detail}; not one of our outgoing mails")
        details = {"recipient": recipient, "status": status, "diagnostic": diagnostic,
                   "outbound_id": outbound_id or None}
        record_incoming(conn, replace(base, action="bounce", reason=reason, details=details,
                                      classification="bounce"))
        return Outcome(env.queue_id, "bounce", reason=reason)

    def _quoted_ids(self, inc: Incoming) -> list[str]:
        """Message-IDs of ours quoted in the returned headers of a DSN."""
        if self.tokens is None:
            return []
        found = re.findall(rb"Message-ID:\s*<([^<>\s]+)>", inc.content, re.I)
        ids = [m.decode("ascii", "replace") for m in found]
        return [i for i in ids if self.tokens.ticket_from_message_id(i) is not None]

    # --- conversations ------------------------------------------------------------------------

    def _lookups(self, conn: sqlite3.Connection, sender: str = "") -> Lookups:
        tokens = self.tokens
        domains = self.policy.domains
        agents = self.policy.agents

        def from_token(address: str) -> int | None:
            """A ticket's reply token, or an agent's personal one made for the sender."""
            if tokens is None:
                return None
            found = tokens.ticket_from_address(address)
            if found is None:
                found = tokens.ticket_from_note_address(address)
            if found is None and sender in agents:
                found = tokens.ticket_from_agent_address(address, sender)
            return found

        return Lookups(
            ticket_for_message_id=lambda mid: ticket_for_message_id(conn, mid, sender),
            ticket_from_token_address=from_token,
            ticket_from_our_message_id=(tokens.ticket_from_message_id if tokens
                                        else lambda _m: None),
            is_participant=lambda tid, email: (email.lower() in agents
                                               or is_participant(conn, resolve(conn, tid),
                                                                 email)),
            is_ours=lambda addr: addr.rpartition("@")[2].rstrip(".") in domains,
            ticket_exists=lambda tid: ticket_exists(conn, tid),
        )

    def _role(self, conn: sqlite3.Connection, ticket_id: int | None, sender: str) -> str:
        if sender in self.policy.agents:
            return AGENT
        if ticket_id is None or (sender and is_participant(conn, ticket_id, sender)):
            return PARTICIPANT
        return STRANGER

    def _agent_check(self, conn: sqlite3.Connection, inc: Incoming, ticket_id: int | None
                     ) -> tuple[str, str]:
        """For mail from an agent's address: (how it was authenticated as that agent, why it
        may not reach the customer) — one of the two is "". A reply that would be relayed also
        keeps to the agent's hourly limit of replies by email."""
        env, sender = inc.entry.envelope, inc.parsed.from_.email
        token = False
        if ticket_id is not None and self.tokens is not None:
            ours = our_addresses(inc.parsed, env.rcpt_to,
                                 lambda a: a.rpartition("@")[2].rstrip(".") in self.policy.domains)
            token = any(self.tokens.ticket_from_agent_address(a, sender) == ticket_id
                        for a in ours)
        proof = agent_proof(sender, inc.auth, self.policy.reply_auth(sender), token)
        if not proof.proven:
            return "", proof.detail
        limit = self.policy.agent_replies_by_email_per_hour
        if ticket_id is not None:
            sent = outbox.agent_replies_by_email_since(conn, sender, time.time() - 3600)
            if sent >= limit:
                return "", (f"over the rate limit: {sender} already sent {sent} replies by email"
                            f" this hour ([limits] agent_replies_by_email_per_hour = {limit})")
        return proof.detail, ""

    def _to_note_address(self, inc: Incoming, ticket_id: int | None) -> bool:
        """Was the mail sent to the matched ticket's internal-note address (the Reply-To of
        our notifications to agents)? Any of our recipient addresses counts."""
        if ticket_id is None or self.tokens is None:
            return False
        ours = our_addresses(inc.parsed, inc.entry.envelope.rcpt_to,
                             lambda a: a.rpartition("@")[2].rstrip(".") in self.policy.domains)
        return any(self.tokens.ticket_from_note_address(a) == ticket_id for a in ours)

    def _thread(self, conn: sqlite3.Connection, inc: Incoming, base: IncomingAudit,
                digest: str) -> Outcome:
        env, parsed = inc.entry.envelope, inc.parsed
        sender = parsed.from_.email
        match = forward_merged(conn, find_ticket(parsed, env.rcpt_to,
                                                 self._lookups(conn, sender)))
        ticket = ticket_row(conn, match.ticket_id) if match.ticket_id is not None else None
        to_note = self._to_note_address(inc, match.ticket_id if ticket else None)
        role = self._role(conn, match.ticket_id if ticket else None, sender)
        agent_auth = agent_refused = ""
        if role == AGENT and inc.classification.kind == "normal" and not to_note:
            agent_auth, agent_refused = self._agent_check(
                conn, inc, match.ticket_id if ticket else None)
        situation = Situation(
            kind=inc.classification.kind,
            ticket_id=match.ticket_id,
            ticket_status=ticket["status"] if ticket else None,
            closed_days_ago=_days_since(ticket["closed_at"]) if ticket else None,
            sender_role=role,
            sender=sender,
            strangers=self.policy.strangers,
            reopen_closed_days=self.policy.reopen_closed_days,
            unauthenticated=inc.unauthenticated,
            agent_auth=agent_auth,
            agent_refused=agent_refused,
            note_address=to_note,
        )
        decision = decide(situation)
        notes = "; ".join(match.notes)
        details: dict[str, Any] = {"notes": list(match.notes)} if match.notes else {}
        if decision.action == "ignore":
            reason = "; ".join(x for x in (decision.reason, notes) if x)
            record_incoming(conn, replace(base, action="ignored", reason=reason,
                                          matched_by=match.method, details=details or None))
            return Outcome(env.queue_id, "ignored", reason=reason)
        now = now_iso()
        if decision.action == "create":
            ticket_id, _requester = self._create(conn, inc, decision, now)
            action, matched_by = "created_ticket", "new"
        else:
            assert match.ticket_id is not None
            ticket_id, action, matched_by = match.ticket_id, "appended", match.method
        index = self._thread_index(conn, parsed, ticket_id)
        row = add_incoming_message(
            conn, ticket_id, env.queue_id, parsed, inc.raw_path, matched_by, now,
            internal_reason=decision.internal_reason, reply_text=inc.reply_text,
            classification=inc.classification.kind, direction=decision.direction, auth=inc.auth,
            digest=digest, thread_index=index,
        )
        if decision.action == "append" and role == PARTICIPANT and not decision.internal_reason:
            self._add_copied(conn, parsed, ticket_id, sender, now)
        for att, sha in zip(parsed.attachments, inc.blobs, strict=True):
            add_attachment(conn, row, sha, att.filename, att.content_type, len(att.payload),
                           att.content_id, att.inline, att.details)
        self._emit_stored(conn, decision.action == "create", ticket_id, row, env.queue_id)
        status_before = ticket["status"] if ticket else None
        if decision.new_status:
            set_status(conn, ticket_id, decision.new_status, now)
        touch_ticket(conn, ticket_id, now)
        if decision.direction == "out":
            mark_first_response(conn, ticket_id, now)
        reason = "; ".join(x for x in (decision.reason, notes) if x)
        if decision.internal_reason:
            details["internal"] = decision.internal_reason
        record_incoming(conn, replace(
            base, action=action, ticket_id=ticket_id, message_row=row, matched_by=matched_by,
            reason=reason, details=details or None))
        if self.mail is not None and not to_note and (decision.relay_agent_reply or (
                role == AGENT and decision.action == "append"
                and inc.classification.kind == "normal")):
            # an agent's reply goes to the customer, or its outgoing-audit row says why not
            self._relay_agent_reply(conn, inc, ticket_id, row,
                                    refuse="" if decision.relay_agent_reply
                                    else decision.internal_reason)
        why_silent = (f"unauthenticated sender: {inc.unauthenticated}" if inc.unauthenticated
                      else f"mail from agent {sender}, {agent_refused}")
        self._run_rules(conn, inc, decision, ticket_id, status_before, why_silent)
        return Outcome(env.queue_id, action, ticket_id, reason)

    def _emit_stored(self, conn: sqlite3.Connection, created: bool, ticket_id: int,
                     message_row: int, queue_id: str) -> None:
        """The webhooks' events for a stored message (nothing read when none wants them)."""
        webhooks = self.automation.webhooks
        if created:
            hooks.emit(conn, webhooks, "ticket_created", ticket_id, queue_id=queue_id)
        if hooks.wanted(webhooks, "message_received"):
            hooks.emit(conn, webhooks, "message_received", ticket_id, queue_id=queue_id,
                       message=hooks.message_fields(conn, message_row))

    def _thread_index(self, conn: sqlite3.Connection, parsed: ParsedMail, ticket_id: int
                      ) -> str | None:
        """The message's Thread-Index when it is well-formed (stored with the message). It
        becomes the ticket's latest — what our next mail answers — when the ticket has none
        yet or it continues the ticket's conversation."""
        values = parsed.headers.get("thread-index") or ()
        found = thread_index.parse(values[0]) if values else None
        if found is None:
            return None
        latest = thread_index.parse(thread_index_of(conn, ticket_id))
        if latest is None or (thread_index.same_conversation(latest, found)
                              and len(found) >= len(latest)):
            set_thread_index(conn, ticket_id, thread_index.encode(found))
        return thread_index.encode(found)

    def _is_customer_address(self, email: str) -> bool:
        domain = email.rpartition("@")[2].rstrip(".")
        return bool(email) and email not in self.policy.agents and domain not in \
            self.policy.domains

    def _add_copied(self, conn: sqlite3.Connection, parsed: ParsedMail, ticket_id: int,
                    sender: str, now: str) -> None:
        """A customer's reply-all: whoever it copied (Cc, To) joins the ticket as a participant
        (not our addresses, not agents; someone an agent removed stays removed)."""
        for addr in (*parsed.cc, *parsed.to):
            email = addr.email.lower()
            if email != sender and self._is_customer_address(email):
                add_participant(conn, ticket_id, email, "cc", now)

    def _run_rules(self, conn: sqlite3.Connection, inc: Incoming, decision: Decision,
                   ticket_id: int, status_before: str | None, why_silent: str) -> None:
        """Organization routing and the automation rules for what this message did."""
        env = inc.entry.envelope
        allowed = decision.acknowledge or decision.action != "create"
        spam_block = quarantine.autoreply_block(env)  # the backscatter rule for spam
        trigger = Trigger(
            parsed=inc.parsed, envelope_sender=env.mail_from,
            mailbox=base_mailbox(env.rcpt_to[0]) if env.rcpt_to else "", body=inc.reply_text,
            queue_id=env.queue_id, customer_mail_allowed=allowed and not spam_block,
            why_no_customer_mail=spam_block if allowed else why_silent,
        )
        if decision.internal_reason:
            return  # notes from robots and strangers trigger nothing
        run = Run()
        if decision.action == "create":
            ticket = ticket_row(conn, ticket_id)
            assert ticket is not None
            if ticket["organization_id"] is not None:
                self.automation.route_new_ticket(
                    conn, ticket_id, route_of(conn, ticket["organization_id"]), trigger, run,
                    ticket["organization"])
            self.automation.fire(conn, "ticket_created", ticket_id, trigger, run)
        elif decision.direction == "out":
            self.automation.fire(conn, "agent_replied", ticket_id, trigger, run)
        else:
            self.automation.fire(conn, "customer_replied", ticket_id, trigger, run)
        if decision.new_status and decision.new_status != status_before \
                and decision.action != "create":
            self.automation.fire(conn, "status_changed", ticket_id, trigger, run,
                                 was=status_before, by=f"mail {env.queue_id}")
        for line in run.log:
            log.info("queue_id=%s %s", env.queue_id, line)

    def _create(self, conn: sqlite3.Connection, inc: Incoming, decision: Decision, now: str
                ) -> tuple[int, Address]:
        env, parsed = inc.entry.envelope, inc.parsed
        requester = parsed.from_ if parsed.from_.email else (
            Address(env.mail_from.lower()) if env.mail_from else UNKNOWN_SENDER)
        subject = parsed.subject
        if requester.email in self.policy.agents:
            forwarded = original_of(parsed)
            if forwarded is not None and forwarded.sender.email not in self.policy.agents:
                requester, subject = forwarded.sender, forwarded.subject or subject
        customer_id = get_or_create_customer(conn, requester, now)
        self._join_organization(conn, customer_id, requester.email)
        mailbox = None
        if self.policy.mailboxes:
            mailbox, how = mailbox_of(env.rcpt_to, parsed, self.policy.mailboxes)
            log.info("queue_id=%s mailbox %s (%s)", env.queue_id, mailbox, how)
        ticket_id = create_ticket(conn, subject or "(no subject)", customer_id, now,
                                  decision.linked_ticket_id, mailbox=mailbox)
        team = self._team_of(env.rcpt_to, mailbox)
        if team:
            set_team(conn, ticket_id, team, now)
        add_participant(conn, ticket_id, requester.email, "requester", now)
        own = self.policy.own_addresses
        for cc in (*parsed.cc, *parsed.to):
            domain = cc.email.rpartition("@")[2]
            if cc.email != requester.email and cc.email not in self.policy.agents \
                    and domain not in self.policy.domains and base_mailbox(cc.email) not in own:
                add_participant(conn, ticket_id, cc.email, "cc", now)
        return ticket_id, requester

    def _team_of(self, rcpts: tuple[str, ...], mailbox: str | None = None) -> str:
        """The team of the first envelope recipient that is a team's mailbox, else of the
        mailbox `mailbox_of` found (a forwarded mail's public address); "" for none."""
        teams = dict(self.policy.team_mailboxes)
        for rcpt in (*rcpts, mailbox or ""):
            team = teams.get(base_mailbox(rcpt))
            if team:
                return team
        return ""

    def _join_organization(self, conn: sqlite3.Connection, customer_id: int, email: str
                           ) -> None:
        """A customer without an organization joins the one owning their domain (or a parent
        domain); with auto-creation on, a new company domain gets an organization of its own."""
        if customer_org(conn, customer_id) is not None:
            return
        found = find_organization(email, lambda d: org_for_domain(conn, d))
        if found is not None:
            set_customer_org(conn, customer_id, found[0])
            return
        if not self.policy.auto_create_organizations:
            return
        domain = domain_of(email)
        if why_no_auto_organization(domain, self.policy.free_mail_domains,
                                    self.policy.domains) is not None:
            return
        existing = conn.execute("SELECT id FROM organizations WHERE lower(name)=lower(?)",
                                (domain,)).fetchone()
        if existing is not None:
            org_id = int(existing[0])
            add_domain(conn, org_id, domain)
        else:
            org_id = create_org(conn, domain, [domain], auto_created=True)
            log.info("organization %r created for a new company domain", domain)
        set_customer_org(conn, customer_id, org_id)

    def _relay_agent_reply(self, conn: sqlite3.Connection, inc: Incoming, ticket_id: int,
                           message_row: int, refuse: str = "") -> None:
        """An agent answered by email: send their words on to the customer, in our template —
        or, with `refuse`, record in the outgoing audit why they were not sent."""
        assert self.mail is not None
        parsed = inc.parsed
        ticket = ticket_row(conn, ticket_id)
        assert ticket is not None
        queued = queue_agent_reply(conn, self.mail, ticket, parsed.from_, inc.reply_text,
                                   queue_id=inc.entry.queue_id, refuse=refuse)
        if queued.status == "queued":
            index_message_id(conn, queued.message_id, ticket_id, message_row)
        link_outbound(conn, message_row, queued.outbound_id)
        self._log_queued(inc, "agent_reply", queued.outbound_id, queued.status, queued.reason)

    @staticmethod
    def _log_queued(inc: Incoming, kind: str, outbound_id: int, status: str, reason: str
                    ) -> None:
        log.info("queue_id=%s %s outbound_id=%d status=%s%s", inc.entry.queue_id, kind,
                 outbound_id, status, f" reason={reason!r}" if reason else "")

