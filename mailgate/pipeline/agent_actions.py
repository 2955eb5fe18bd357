"""What people do to tickets (from the CLI and the admin endpoint): reply (with attachments),
assign, set status, add and remove participants.

Input: a ticket id, an agent's address and text typed by that agent (trusted as the agent's
words, still untrusted markup: templates escape it), and `by`, who is acting (an agent's
e-mail, `admin-token` or `cli`: the caller sets it from how it authenticated the person, never
from what they typed). Output: the change, the mail it causes and the record of who did it
(`ticket_actions`), committed in one transaction (the outbox pattern): the agent's message
stored on the ticket with its Message-ID, and one outbox row. Like the pipeline, this is an
orchestrator: it calls the stages and the store, never the other way round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import sqlite_utils

from mailgate.config import Agent
from mailgate.config.settings import DEFAULT_MAX_UPLOAD
from mailgate.errors import NotFound, TooLarge, UserError
from mailgate.model import Address, Upload
from mailgate.outbound.compose import BadAddress, checked_address
from mailgate.outbound.mailer import MailContext, Queued, queue_agent_reply, queue_ticket_mail
from mailgate.parsing.parse import safe_filename
from mailgate.pipeline.automation import Automation, RuleSet, Trigger
from mailgate.store import actions, filestore
from mailgate.store.db import now_iso, transaction
from mailgate.store.tickets import (
    REMOVED,
    STATUSES,
    add_attachment,
    add_outgoing_message,
    latest_customer_message,
    link_outbound,
    mark_first_response,
    participants,
    set_assignee,
    set_participant_role,
    set_status,
    set_tags,
    ticket_row,
)

TAG = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,39}")
MAX_TAGS = 20


@dataclass(frozen=True)
class ReplyResult:
    ticket_id: int
    message_row: int
    queued: Queued


class Desk:
    def __init__(self, db: sqlite_utils.Database, mail: MailContext,
                 agents: tuple[Agent, ...], config_path: str = "the config",
                 automation: Automation | None = None, data_dir: Path | None = None,
                 max_upload: int = DEFAULT_MAX_UPLOAD) -> None:
        self.db = db
        self.data_dir = data_dir
        self.max_upload = max_upload
        self.mail = mail
        self.agents = {a.email: a for a in agents}
        self.config_path = config_path
        self.automation = automation or Automation(RuleSet(), mail)

    def agent(self, email: str) -> Agent:
        agent = self.agents.get(email.strip().lower())
        if agent is None:
            raise UserError(f"{email} is not a configured agent ([[agents]] in {self.config_path})")
        return agent

    def _ticket(self, conn: Any, ticket_id: int) -> dict[str, Any]:
        ticket = ticket_row(conn, ticket_id)
        if ticket is None:
            raise NotFound(f"no ticket #{ticket_id}")
        return ticket

    def checked_uploads(self, uploads: tuple[Upload, ...]) -> tuple[Upload, ...]:
        """The files of a reply with safe names; TooLarge when together they are over
        `[admin] max_upload_bytes` (nothing is stored or sent then)."""
        total = sum(len(u.data) for u in uploads)
        if total > self.max_upload:
            raise TooLarge(f"the attachments are {total} bytes together, over the limit of"
                           f" {self.max_upload} bytes ([admin] max_upload_bytes in"
                           f" {self.config_path}); nothing was sent")
        return tuple(replace(u, filename=safe_filename(u.filename, u.content_type),
                             content_type=u.content_type.strip().lower()
                             or "application/octet-stream") for u in uploads)

    def reply(self, ticket_id: int, agent_email: str, body: str,
              attachments: tuple[Upload, ...] = (), *, by: str) -> ReplyResult:
        """`by`: who acted (recorded with the ticket's actions). `attachments`: files sent
        with the reply and kept with the agent's message (in `data_dir`, or the database on
        PostgreSQL, as incoming attachments are)."""
        agent = self.agent(agent_email)
        if not body.strip():
            raise UserError("the reply is empty")
        attachments = self.checked_uploads(attachments)
        blobs: list[str] = []
        batch = None
        if attachments:
            if self.data_dir is None:
                raise UserError("attachments need the data directory ([storage] data_dir)")
            batch = filestore.batch_for(self.db, self.data_dir)
            blobs = [batch.add_blob(a.data) for a in attachments]
            batch.commit()  # the files durable before the rows that name them
        with transaction(self.db) as conn:
            ticket = self._ticket(conn, ticket_id)
            if batch is not None:
                batch.write(conn)
            queued = queue_agent_reply(conn, self.mail, ticket, Address(agent.email, agent.name),
                                       body, attachments=attachments)
            now = now_iso()
            latest = latest_customer_message(conn, ticket_id)
            row = add_outgoing_message(
                conn, ticket_id, from_addr=agent.email, from_name=agent.name,
                to_addr=ticket["requester"], subject=queued.subject or ticket["subject"],
                text=body, message_id=queued.message_id,
                in_reply_to=latest["message_id"] if latest else "", now=now, cc_addrs=queued.cc,
            )
            link_outbound(conn, row, queued.outbound_id)
            for upload, sha in zip(attachments, blobs, strict=True):
                add_attachment(conn, row, sha, upload.filename, upload.content_type,
                               len(upload.data), "", False)
            actions.record(conn, ticket_id, by, "reply", agent=agent.email, message_row=row,
                           outbound_id=queued.outbound_id)
            set_status(conn, ticket_id, "pending_customer", now)
            mark_first_response(conn, ticket_id, now)
            self.automation.fire(conn, "agent_replied", ticket_id, Trigger(body=body))
            if ticket["status"] != "pending_customer":
                self.automation.fire(conn, "status_changed", ticket_id, Trigger(body=body),
                                     was=ticket["status"], by=by)
        return ReplyResult(ticket_id, row, queued)

    def set_status(self, ticket_id: int, status: str, *, by: str) -> dict[str, Any]:
        """Move a ticket to `status` (closing records when, for the reopen rule)."""
        if status not in STATUSES:
            raise UserError(f"unknown status {status!r}; one of: {', '.join(STATUSES)}")
        with transaction(self.db) as conn:
            before = self._ticket(conn, ticket_id)
            set_status(conn, ticket_id, status, now_iso())
            actions.record(conn, ticket_id, by, "status", status=status, was=before["status"])
            if before["status"] != status:
                self.automation.fire(conn, "status_changed", ticket_id, Trigger(),
                                     was=before["status"], by=by)
            ticket = ticket_row(conn, ticket_id)
            assert ticket is not None
            return ticket

    def assign(self, ticket_id: int, agent_email: str, *, by: str) -> Queued:
        agent = self.agent(agent_email)
        with transaction(self.db) as conn:
            ticket = self._ticket(conn, ticket_id)
            set_assignee(conn, ticket_id, agent.email, now_iso())
            actions.record(conn, ticket_id, by, "assign", assignee=agent.email,
                           was=ticket["assignee"])
            was = ticket["assignee"]
            ticket["assignee"] = agent.email
            latest = latest_customer_message(conn, ticket_id)
            queued = queue_ticket_mail(
                conn, self.mail, kind="assignee_notification", ticket=ticket,
                to=Address(agent.email, agent.name),
                context={"agent": {"name": agent.name, "email": agent.email},
                         "customer_message": latest, "team": ticket["team"]},
                automatic=True, envelope_sender=None,
            )
            self.automation.fire(conn, "assigned", ticket_id, Trigger(), was=was, by=by)
            return queued

    def set_tags(self, ticket_id: int, tags: list[str], *, by: str) -> list[str]:
        """Replace the ticket's tags (lower-cased, each a word of letters, digits, `-`, `_`,
        `.` or `:`, at most 40 characters and 20 tags); UserError naming a bad one."""
        cleaned = sorted({t.strip().lower() for t in tags if t.strip()})
        bad = [t for t in cleaned if not TAG.fullmatch(t)]
        if bad:
            raise UserError(f"not a tag: {bad[0]!r} (letters, digits, - _ . : and at most 40"
                            " characters)")
        if len(cleaned) > MAX_TAGS:
            raise UserError(f"at most {MAX_TAGS} tags on a ticket")
        with transaction(self.db) as conn:
            ticket = self._ticket(conn, ticket_id)
            set_tags(conn, ticket_id, cleaned, now_iso())
            actions.record(conn, ticket_id, by, "tags", tags=cleaned, was=ticket["tags"])
        return cleaned

    # --- participants (copied on agent replies) ----------------------------------------------

    def participants(self, ticket_id: int) -> list[dict[str, str]]:
        with transaction(self.db) as conn:
            self._ticket(conn, ticket_id)
            return participants(conn, ticket_id)

    def add_participant(self, ticket_id: int, email: str, *, by: str) -> list[dict[str, str]]:
        """Copy `email` on the agents' replies from now on (again, after a removal)."""
        address = email.strip().lower()
        try:
            checked_address(address)
        except BadAddress:
            raise UserError(f"not a plain email address: {email!r}") from None
        if address in self.agents or address.rpartition("@")[2] in self.mail.domains:
            raise UserError(f"{address} is an agent or one of our addresses, not a participant")
        with transaction(self.db) as conn:
            ticket = self._ticket(conn, ticket_id)
            if address == ticket["requester"]:
                raise UserError(f"{address} is the requester of ticket #{ticket_id}")
            set_participant_role(conn, ticket_id, address, "cc", now_iso())
            actions.record(conn, ticket_id, by, "participant_add", email=address)
            return participants(conn, ticket_id)

    def remove_participant(self, ticket_id: int, email: str, *, by: str
                           ) -> list[dict[str, str]]:
        """Stop copying `email`: kept with the role `removed`, so a later Cc does not bring it
        back; its mail to the ticket is a stranger's from now on (an internal note)."""
        address = email.strip().lower()
        with transaction(self.db) as conn:
            ticket = self._ticket(conn, ticket_id)
            if address == ticket["requester"]:
                raise UserError(f"{address} is the requester of ticket #{ticket_id}; the"
                                " requester cannot be removed")
            known = {p["email"]: p["role"] for p in participants(conn, ticket_id)}
            if known.get(address) in (None, REMOVED):
                raise UserError(f"{address} is not a participant of ticket #{ticket_id}")
            set_participant_role(conn, ticket_id, address, REMOVED, now_iso())
            actions.record(conn, ticket_id, by, "participant_remove", email=address)
            return participants(conn, ticket_id)
