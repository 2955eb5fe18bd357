"""Applying routing and automation rules to a ticket, inside the caller's transaction.

Input: a connection in the pipeline's (or an agent action's, or the scheduler's) transaction,
an event on a ticket and what triggered it (message text and headers are untrusted), the loaded
rules, the teams, and the organization's routing. Output: the actions applied (team, assignee
— in turn within a team too —, status, priority, tags, templates sent through the outbox with
the robot suppression, notifications to a team's members, internal notes), one
`rule_evaluations` row per rule considered (hit or miss and the deciding condition), and further
events (`assigned`, `status_changed`) evaluated in turn up to a depth of 5, and each of those two
events queued for the webhooks subscribed to it (`store.webhooks.emit`, in the same
transaction). An orchestrator: it calls the rules stage and the store; the rules stage itself
stays pure.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mailgate.config import Webhook
from mailgate.model import Address, ParsedMail
from mailgate.outbound.mailer import MailContext, queue_ticket_mail
from mailgate.rules import (
    BusinessHours,
    Facts,
    Rule,
    SlaPolicy,
    choose_sla,
    evaluate,
    sla_state,
)
from mailgate.store import outbound as outbox
from mailgate.store import webhooks as hooks
from mailgate.store.db import now_iso
from mailgate.store.orgs import next_round_robin
from mailgate.store.tickets import (
    latest_customer_message,
    set_assignee,
    set_priority,
    set_status,
    set_tags,
    set_team,
    ticket_row,
)

log = logging.getLogger("mailgate.rules")

MAX_DEPTH = 5


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    hours: BusinessHours | None = None
    agents: frozenset[str] = frozenset()
    slas: tuple[SlaPolicy, ...] = ()
    teams: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, members) of [[teams]]

    def team(self, name: str) -> tuple[str, tuple[str, ...]] | None:
        """(name as configured, members) of a team, None when there is no such team."""
        wanted = name.strip().lower()
        return next((t for t in self.teams if t[0].lower() == wanted), None)


@dataclass(frozen=True)
class Trigger:
    """What caused the event: the message (None for time events and people's actions)."""

    parsed: ParsedMail | None = None
    envelope_sender: str | None = None
    mailbox: str = ""
    body: str = ""
    queue_id: str = ""
    customer_mail_allowed: bool = True  # False for unauthenticated senders
    why_no_customer_mail: str = ""


@dataclass
class Run:
    """State shared by one cascade of events on one ticket."""

    acknowledged: bool = False  # an automatic mail already went to the requester
    log: list[str] = field(default_factory=list)


def _dt(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")) if iso else None


def facts_for(ticket: Mapping[str, Any], trigger: Trigger, now: datetime) -> Facts:
    parsed = trigger.parsed
    sender = parsed.from_.email if parsed is not None else ""
    return Facts(
        subject=parsed.subject if parsed is not None else ticket["subject"] or "",
        body=trigger.body,
        from_addr=sender,
        from_domain=sender.rpartition("@")[2],
        organization=ticket.get("organization") or "",
        mailbox=trigger.mailbox,
        status=ticket["status"],
        priority=ticket.get("priority") or "normal",
        tags=tuple(ticket.get("tags") or ()),
        assignee=ticket.get("assignee") or "",
        now=now,
    )


# The events a change of the ticket row fires that webhooks hear of too: (the column that
# changed, the key the webhook's body names it by).
CHANGES = {"status_changed": "status", "assigned": "assignee"}


class Automation:
    def __init__(self, ruleset: RuleSet, mail: MailContext | None,
                 webhooks: tuple[Webhook, ...] = ()) -> None:
        self.ruleset = ruleset
        self.mail = mail
        self.webhooks = webhooks  # [[webhooks]]: `status_changed` and `assigned` go out here

    # --- events -------------------------------------------------------------------------------

    def fire(self, conn: sqlite3.Connection, event: str, ticket_id: int, trigger: Trigger,
             run: Run | None = None, depth: int = 0, only: str | None = None, *,
             was: str | None = None, by: str = "") -> Run:
        """Evaluate the rules for `event` on the ticket and apply those that hit. `only` limits
        the evaluation to one rule (time events fire rule by rule). A status or assignee change
        (`was`: the value before, `by`: who or what changed it) is queued for the webhooks
        subscribed to it first, with the ticket as the change left it."""
        run = run or Run()
        ticket = ticket_row(conn, ticket_id)
        if ticket is None:
            return run
        if event in CHANGES and only is None and hooks.wanted(self.webhooks, event):
            key = CHANGES[event]
            hooks.emit(conn, self.webhooks, event, ticket_id,
                       change={key: ticket[key], "previous": was, "by": by or "rule"})
        now = datetime.now(UTC)
        rules = tuple(r for r in self.ruleset.rules if only is None or r.name == only)
        evaluations = evaluate(rules, event, facts_for(ticket, trigger, now), self.ruleset.hours)
        fresh: Mapping[str, Any] | None = ticket  # the row as read, until a rule changes it
        for ev in evaluations:
            self._record(conn, ticket_id, event, ev.rule, ev.hit, ev.why, depth)
            if not ev.hit:
                continue
            if depth >= MAX_DEPTH:
                self._record(conn, ticket_id, event, ev.rule, False,
                             f"not applied: rule depth limit {MAX_DEPTH} reached", depth)
                continue
            self.apply(conn, ticket_id, ev.actions, trigger, run, source=f"rule {ev.rule}",
                       depth=depth, ticket=fresh)
            fresh = None
        return run

    def fire_once(self, conn: sqlite3.Connection, event: str, ticket_id: int, key: str,
                  rules: tuple[Rule, ...]) -> bool:
        """A time event (idle, sla_breached): the rules that hit fire once per ticket and key,
        recorded in `rule_firings` so a restart never fires them twice. Misses leave no trace
        (they are checked again at the next tick)."""
        ticket = ticket_row(conn, ticket_id)
        if ticket is None:
            return False
        facts = facts_for(ticket, Trigger(), datetime.now(UTC))
        fired = False
        for ev in evaluate(rules, event, facts, self.ruleset.hours):
            if not ev.hit:
                continue
            cur = conn.execute(
                "INSERT INTO rule_firings (ticket_id, rule, key, fired_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", (ticket_id, ev.rule, key, now_iso()))
            if cur.rowcount == 0:
                continue  # fired before
            self._record(conn, ticket_id, event, ev.rule, True, ev.why, 0)
            self.apply(conn, ticket_id, ev.actions, Trigger(), Run(), source=f"rule {ev.rule}",
                       depth=0)
            fired = True
        return fired

    def sla(self, ticket: Mapping[str, Any]) -> dict[str, Any] | None:
        """The ticket's SLA: policy, due times, breaches (None when no policy applies, and for
        a ticket imported from a mail archive: its history was served before mailgate)."""
        if not self.ruleset.slas or ticket.get("imported_at"):
            return None
        now = datetime.now(UTC)
        policy = choose_sla(self.ruleset.slas, facts_for(ticket, Trigger(), now),
                            self.ruleset.hours)
        if policy is None:
            return None
        return sla_state(policy, _dt(ticket["created_at"]), _dt(ticket["first_response_at"]),
                         _dt(ticket["resolved_at"]), now, self.ruleset.hours)

    def route_new_ticket(self, conn: sqlite3.Connection, ticket_id: int, route: Mapping[str, Any],
                         trigger: Trigger, run: Run, org_name: str) -> None:
        """The organization's `on_new_ticket` routing, applied before the ticket_created rules."""
        if not route:
            return
        self._record(conn, ticket_id, "ticket_created", f"organization {org_name} routing", True,
                     "the requester belongs to this organization", 0)
        self.apply(conn, ticket_id, route, trigger, run, source=f"org:{org_name}", depth=0)

    # --- actions ------------------------------------------------------------------------------

    def apply(self, conn: sqlite3.Connection, ticket_id: int, actions: Mapping[str, Any],
              trigger: Trigger, run: Run, source: str, depth: int,
              ticket: Mapping[str, Any] | None = None) -> None:
        """`ticket`: the ticket's row as the caller just read it (nothing changed it since),
        else it is read here."""
        now = now_iso()
        events: list[tuple[str, str | None]] = []  # (event, the value before)
        ticket = ticket or ticket_row(conn, ticket_id)
        assert ticket is not None
        unchanged = not any(actions.get(k) for k in (
            "round_robin", "round_robin_team", "assign_team", "assign", "priority", "add_tags",
            "remove_tags", "status"))
        assignee = actions.get("assign")
        if actions.get("round_robin"):
            assignee = next_round_robin(conn, source, list(actions["round_robin"]))
        team_name = actions.get("round_robin_team") or actions.get("assign_team")
        if team_name:
            team = self.ruleset.team(team_name)
            if team is None:  # a routing stored in the database names a team no longer there
                run.log.append(f"{source}: no team {team_name!r} in [[teams]]: not applied")
            else:
                if team[0] != ticket["team"]:
                    set_team(conn, ticket_id, team[0], now)
                if actions.get("round_robin_team") and team[1]:
                    assignee = next_round_robin(conn, f"team:{team[0].lower()}", list(team[1]))
        if assignee and assignee.lower() != (ticket["assignee"] or ""):
            set_assignee(conn, ticket_id, assignee.lower(), now)
            self._notify_assignee(conn, ticket_id, assignee.lower(), trigger, run)
            events.append(("assigned", ticket["assignee"]))
        if actions.get("priority") and actions["priority"] != ticket["priority"]:
            set_priority(conn, ticket_id, actions["priority"], now)
        if actions.get("add_tags") or actions.get("remove_tags"):
            tags = set(ticket["tags"]) | set(actions.get("add_tags", ()))
            tags -= set(actions.get("remove_tags", ()))
            set_tags(conn, ticket_id, sorted(tags), now)
        if actions.get("status") and actions["status"] != ticket["status"]:
            set_status(conn, ticket_id, actions["status"], now)
            events.append(("status_changed", ticket["status"]))
        if actions.get("send_template"):  # the row read above, when no action changed it
            self._send_template(conn, ticket_id, actions["send_template"], trigger, run, source,
                                ticket if unchanged else None)
        if actions.get("notify_team"):
            self._notify_team(conn, ticket_id, str(actions["notify_team"]), trigger, run, source)
        if actions.get("internal_note"):
            self._internal_note(conn, ticket_id, str(actions["internal_note"]), source, now)
        for event, was in events:
            self.fire(conn, event, ticket_id, trigger, run, depth + 1, was=was, by=source)

    def _send_template(self, conn: sqlite3.Connection, ticket_id: int, spec: Any,
                       trigger: Trigger, run: Run, source: str,
                       ticket: Mapping[str, Any] | None = None) -> None:
        if self.mail is None:
            return
        kind, to = (spec, "requester") if isinstance(spec, str) else (spec["kind"],
                                                                        spec.get("to", "requester"))
        ticket = ticket or ticket_row(conn, ticket_id)
        assert ticket is not None
        if to == "requester":
            if run.acknowledged and kind == "new_ticket_ack":
                run.log.append(f"{source}: {kind} skipped, an acknowledgement was already sent")
                return
            if not trigger.customer_mail_allowed:  # recorded in the outgoing audit as suppressed
                outbox.enqueue(conn, ticket_id=ticket_id, kind=kind, automatic=True,
                               to_addr=ticket["requester"], subject="", message_id="", raw=None,
                               status="suppressed", reason=trigger.why_no_customer_mail,
                               queue_id=trigger.queue_id)
                run.log.append(f"{source}: no mail to the customer: {trigger.why_no_customer_mail}")
                return
            recipient = Address(ticket["requester"], ticket["requester_name"] or "")
        elif to == "assignee":
            if not ticket["assignee"]:
                run.log.append(f"{source}: {kind} to the assignee skipped: unassigned")
                return
            recipient = Address(ticket["assignee"], self.mail.agent_name(ticket["assignee"]))
        else:
            recipient = Address(str(to).lower(), self.mail.agent_name(str(to)))
        parsed = trigger.parsed
        latest = latest_customer_message(conn, ticket_id)
        context: dict[str, Any] = {
            "customer_message": latest,
            "agent": {"name": recipient.name or recipient.email, "email": recipient.email},
            "body": trigger.body,
            "team": spec.get("team", ticket["team"]) if isinstance(spec, Mapping)
            else ticket["team"],
        }
        queued = queue_ticket_mail(
            conn, self.mail, kind=kind, ticket=ticket, to=recipient, context=context,
            automatic=True, trigger=parsed, envelope_sender=trigger.envelope_sender,
            in_reply_to=(parsed.message_id if parsed is not None and to == "requester" else ""),
            references=(parsed.references if parsed is not None and to == "requester" else ()),
            queue_id=trigger.queue_id,
        )
        if to == "requester":
            run.acknowledged = True
        log.info("queue_id=%s %s: %s to %s outbound_id=%d status=%s", trigger.queue_id or "-",
                 source, kind, recipient.email, queued.outbound_id, queued.status)

    def _notify_assignee(self, conn: sqlite3.Connection, ticket_id: int, agent: str,
                         trigger: Trigger, run: Run) -> None:
        if self.mail is None:
            return
        self._send_template(conn, ticket_id, {"kind": "assignee_notification", "to": agent},
                            trigger, run, "assignment")

    def _notify_team(self, conn: sqlite3.Connection, ticket_id: int, team_name: str,
                     trigger: Trigger, run: Run, source: str) -> None:
        """A `team_notification` to each member of the team."""
        team = self.ruleset.team(team_name)
        if team is None:
            run.log.append(f"{source}: no team {team_name!r} in [[teams]]: nobody notified")
            return
        for member in team[1]:
            self._send_template(conn, ticket_id,
                                {"kind": "team_notification", "to": member, "team": team[0]},
                                trigger, run, source)

    def _internal_note(self, conn: sqlite3.Connection, ticket_id: int, text: str, source: str,
                       now: str) -> None:
        conn.execute(
            "INSERT INTO messages (ticket_id, direction, from_addr, from_name, to_addrs, cc_addrs,"
            " subject, text, reply_text, html, defects, matched_by, internal, internal_reason,"
            " created_at, classification) VALUES (?, 'note', '', ?, '[]', '[]', '', ?, ?, '',"
            " '[]', 'rule', 1, ?, ?, 'note')",
            (ticket_id, source, text, text, f"note added by {source}", now),
        )

    @staticmethod
    def _record(conn: sqlite3.Connection, ticket_id: int, event: str, rule: str, hit: bool,
                why: str, depth: int) -> None:
        conn.execute(
            "INSERT INTO rule_evaluations (ticket_id, event, rule, hit, why, depth, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (ticket_id, event, rule, int(hit), why, depth, now_iso()),
        )
