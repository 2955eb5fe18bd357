"""What the admin endpoint reads and does, on its own database connection and thread.

Input: validated parameters from `api` and `panels`; the config (trusted); the relay worker's
health attributes. Output: plain dicts and lists with the CLI's `--json` field names, read
through `mailgate.store` and acted on through `mailgate.ops.app.desk` (the library, as the CLI does:
never around it). Values from mail are returned as data: escaping is the renderer's job.

Every database call runs on one dedicated thread (`await backend.run(fn, ...)`): sqlite and
the fsync of a commit stay off the event loop, and the admin's connection is never used by two
threads at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from aiohttp import web

from mailgate.admin import inline_images
from mailgate.admin.params import BadInput
from mailgate.admin.principal import Principal, reply_agent
from mailgate.admin.storecheck import DatabaseCheck, StoreCheck
from mailgate.admin.ticket_query import TicketQuery
from mailgate.config import Config
from mailgate.errors import NotFound, UserError
from mailgate.model import Address, Upload
from mailgate.ops import app, metrics
from mailgate.outbound.render import TemplateError
from mailgate.pipeline import quarantine, ticket_edits
from mailgate.spool import Spool
from mailgate.store import actions, audit, downloads, orgs, search, tickets
from mailgate.store import merge as merging
from mailgate.store import outbound as outbox
from mailgate.store import spam as spam_store
from mailgate.store.connect import open_store
from mailgate.store.db import now_iso

log = logging.getLogger("mailgate.admin")

T = TypeVar("T")

# The ticket views of the panels and of `GET /api/tickets?view=`.
OPEN_STATUSES = ("open", "pending_customer", "pending_agent")
VIEWS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    # name → (title, statuses, unassigned only)
    "unassigned": ("Unassigned", OPEN_STATUSES, True),
    "pending_customer": ("Pending customer", ("pending_customer",), False),
    "pending_agent": ("Pending agent", ("open", "pending_agent"), False),
    "all": ("All", (), False),
}
FORWARDING_ACTION = "forwarding_confirmation"


class RelayHealth(Protocol):
    """What the admin endpoint reads from the relay worker (`mailgate.outbound.relay`)."""

    last_ok: bool | None
    last_attempt_at: float | None
    last_error: str

    def wake(self) -> None: ...


@dataclass(frozen=True)
class AuditPage:
    """Rows of an audit, newest first; how many match in all; whether older ones follow (the
    next page: `before=` the last row's id)."""

    rows: list[dict[str, Any]]
    total: int
    more: bool

    @property
    def next_before(self) -> int | None:
        return int(self.rows[-1]["id"]) if self.more and self.rows else None

    @property
    def next_after(self) -> str | None:
        """The queue id the next page starts after (lists keyed by queue id)."""
        return str(self.rows[-1]["queue_id"]) if self.more and self.rows else None


class Conflict(UserError):
    """The request is well-formed but the state says no (HTTP 409): e.g. an address that is
    not a configured agent."""


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Backend:
    def __init__(self, config: Config, relay: RelayHealth | None = None) -> None:
        self.relay = relay
        self.db = open_store(config.database)
        self.spool = Spool(config.spool_path)
        self.stores: tuple[StoreCheck | DatabaseCheck, ...] = (
            StoreCheck("spool", config.spool_path),
            DatabaseCheck(config.database_url) if config.database_url
            else StoreCheck("database", config.db_path))
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="admin-db")
        self.reload(config)

    def reload(self, config: Config) -> None:
        """Take a new config (SIGHUP): agents, templates and branding used from now on."""
        self.config = config
        self.desk = app.desk(config, self.db)
        self.renderer = app.renderer(config)
        self.signer = app.signer(config)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        for check in self.stores:
            check.close()
        self.spool.close()
        self.db.close()

    # --- health and counts --------------------------------------------------------------------

    def relay_health(self) -> dict[str, Any]:
        r = self.relay
        return {
            "host": self.config.relay.host,
            "port": self.config.relay.port,
            "last_ok": None if r is None else r.last_ok,
            "last_attempt_at": None if r is None else _iso(r.last_attempt_at),
            "last_error": "" if r is None else r.last_error,
        }

    def health(self) -> dict[str, Any]:
        """The full report. `storage` says, for the spool and the database, "ok" or what is
        wrong (gone, replaced, damaged, unreadable); any problem makes `status` "degraded"."""
        return self._health()[0]

    def up(self) -> bool:
        """For `/api/health` without the token: False when the spool or the database is gone,
        replaced, damaged or cannot be read."""
        return self._health()[1]

    def _health(self) -> tuple[dict[str, Any], bool]:
        problems: list[str] = []
        storage: dict[str, str] = {}
        for check in self.stores:
            problem = check.problem()
            storage[check.name] = problem or "ok"
            if problem:
                problems.append(problem)

        def read(name: str, fn: Callable[[], T], default: T) -> T:
            try:
                return fn()
            except Exception as exc:
                log.warning("admin: health check cannot read the %s: %s", name, exc)
                text = f"cannot read the {name}: {type(exc).__name__}: {exc}"
                if storage.get(name, "ok") == "ok":
                    storage[name] = text
                problems.append(text)
                return default

        spool = read("spool", self.spool.counts, {})
        outgoing = read("database", lambda: outbox.counts_by_status(self.db), {})
        last_received = read("database", lambda: audit.last_received_at(self.db), None)
        up = all(state == "ok" for state in storage.values())
        relay = self.relay_health()
        if spool.get("hold"):
            problems.append(f"{spool['hold']} message(s) held in the spool"
                            " (`mailgate spool list --state hold`)")
        if relay["last_ok"] is False:
            problems.append(f"the relay {relay['host']}:{relay['port']} did not answer its last"
                            f" attempt: {relay['last_error']}")
        report = {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "time": now_iso(),
            "storage": storage,
            "spool": spool,
            "outbound": outgoing,
            "last_mail_received_at": last_received,
            "relay": relay,
        }
        return report, up

    def counts(self) -> metrics.Counts:
        return metrics.Counts(
            incoming_by_action=audit.counts_by_action(self.db),
            outgoing_by_status=outbox.counts_by_status(self.db),
            spool_by_state=self.spool.counts(),
        )

    def dashboard(self) -> dict[str, Any]:
        data = tickets.counts(self.db)
        data["incoming_by_action"] = audit.counts_by_action(self.db)
        data["health"] = self.health()
        data["views"] = {
            name: tickets.count_tickets(self.db, statuses=statuses, unassigned=unassigned)
            for name, (_title, statuses, unassigned) in VIEWS.items() if name != "all"
        }
        return data

    # --- tickets ------------------------------------------------------------------------------

    def tickets(self, query: TicketQuery) -> search.Page:
        """One page of the tickets `query` asks for, most recently updated first, with the
        total (`team`: a [[teams]] name, else BadInput; `mailbox`: either of a mailbox's
        addresses, an unknown one matching nothing)."""
        team = query.team
        if team is not None:
            found = self.config.team(team)
            if found is None:
                raise BadInput(f"team: no team {team!r} ([[teams]] in the config)")
            team = found.name
        statuses: tuple[str, ...] = ()
        unassigned = query.unassigned
        if query.view is not None:
            _title, statuses, only_unassigned = VIEWS[query.view]
            unassigned = unassigned or only_unassigned
        if query.status is not None:
            statuses = (query.status,)
        mailbox = query.mailbox
        if mailbox:
            mailbox = next((m.address for m in self.config.support_mailboxes
                            if mailbox in m.addresses()), mailbox)
        wanted = search.TicketFilter(
            q=query.q, statuses=statuses, assignee=query.assignee, unassigned=unassigned,
            team=team, mailbox=mailbox, default_mailbox=self.config.from_address,
            org=query.org, tag=query.tag, priority=query.priority, since=query.since,
            until=query.until, breached=query.breached)
        found_page = search.search_tickets(
            self.db, wanted, limit=query.limit, cursor=query.cursor,
            is_breached=app.sla_breached(self.config) if query.breached else None)
        for row in found_page.rows:
            app.describe_mailbox(self.config, row)
        return found_page

    def ticket(self, ticket_id: int) -> dict[str, Any]:
        """The fields of `mailgate tickets show ID --json` (raises NotFound)."""
        ticket = tickets.get_ticket(self.db, ticket_id)
        app.describe_mailbox(self.config, ticket)
        ticket["reply_address"] = app.mail_context(self.config).for_ticket(ticket).reply_address(
            ticket_id)
        ticket["sla"] = app.automation(self.config, None).sla(ticket)
        ticket.update(merging.links(self.db, ticket_id))
        return ticket

    def ticket_page(self, ticket_id: int) -> dict[str, Any]:
        """The ticket, each message's sanitised HTML (for the sandboxed frame), and the mail
        we sent about it."""
        ticket = self.ticket(ticket_id)
        html = tickets.message_html(self.db, ticket_id)
        for m in ticket["messages"]:  # inline images (cid:) from our own store, nothing else
            m["html"], m["inline_images"] = inline_images.rewrite(
                html.get(m["id"], ""), m["id"], m["attachments"]) if m["id"] in html else ("", 0)
        ticket["outgoing"] = outbox.search_outgoing(self.db, ticket_id=ticket_id, limit=200)
        ticket["actions"] = actions.for_ticket(self.db, ticket_id)
        return ticket

    def actions(self, ticket_id: int) -> list[dict[str, Any]]:
        """Who changed the ticket and how, oldest first (raises NotFound)."""
        tickets.get_ticket(self.db, ticket_id)
        return actions.for_ticket(self.db, ticket_id)

    def attachment(self, message_row: int, attachment_id: int) -> downloads.Download:
        """An attachment of that message (NotFound for another message's attachment)."""
        return downloads.attachment(self.db, self.config.data_dir, attachment_id, message_row)

    def raw_message(self, message_row: int) -> downloads.Download:
        return downloads.raw_message(self.db, self.config.data_dir, message_row)

    def _agent(self, email: str) -> str:
        email = email.strip().lower()
        if not email:
            raise BadInput("agent: required (the address of a configured agent)")
        if self.config.agent(email) is None:
            raise Conflict(f"{email} is not a configured agent ([[agents]] in"
                           f" {self.config.path})")
        return email

    def reply(self, ticket_id: int, agent: str, body: str, by: str,
              uploads: tuple[Upload, ...] = ()) -> dict[str, Any]:
        """`agent` speaks (the reply goes out From them); `by` acted (recorded)."""
        agent = self._agent(agent)
        result = self.desk.reply(ticket_id, agent, body, uploads, by=by)
        q = result.queued
        self._wake_relay()
        return {"ticket_id": ticket_id, "message_row": result.message_row,
                "outbound_id": q.outbound_id, "status": q.status, "message_id": q.message_id,
                "subject": q.subject, "reason": q.reason}

    def assign(self, ticket_id: int, agent: str, by: str) -> dict[str, Any]:
        agent = self._agent(agent)
        q = self.desk.assign(ticket_id, agent, by=by)
        self._wake_relay()
        return {"ticket_id": ticket_id, "assignee": agent, "notification": {
            "outbound_id": q.outbound_id, "status": q.status, "reason": q.reason}}

    def set_status(self, ticket_id: int, status: str, by: str) -> dict[str, Any]:
        return self.desk.set_status(ticket_id, status, by=by)

    def set_tags(self, ticket_id: int, tags: list[str], by: str) -> list[str]:
        return self.desk.set_tags(ticket_id, tags, by=by)

    def add_participant(self, ticket_id: int, email: str, by: str) -> list[dict[str, str]]:
        return self.desk.add_participant(ticket_id, email, by=by)

    def remove_participant(self, ticket_id: int, email: str, by: str) -> list[dict[str, str]]:
        return self.desk.remove_participant(ticket_id, email, by=by)

    # --- notes, canned replies, merge and split ----------------------------------------------

    def acting(self, who: Principal, named: str) -> str:
        """Who a note, merge or split is by: an agent acts as themselves (naming another is
        Forbidden); the admin token as the configured agent it names (Conflict for another
        address), else as `admin-token`."""
        agent = reply_agent(who, named)
        return self._agent(agent) if agent.strip() else who.actor

    def note(self, ticket_id: int, actor: str, body: str) -> dict[str, Any]:
        return ticket_edits.note(self.db, ticket_id, actor, body)

    def merge(self, source: int, target: int, actor: str) -> dict[str, Any]:
        return ticket_edits.merge(self.db, source, target, actor)

    def split(self, ticket_id: int, message_row: int, with_later: bool, actor: str
              ) -> dict[str, Any]:
        return ticket_edits.split(self.db, ticket_id, message_row, with_later, actor)

    def ticket_exists(self, ticket_id: int) -> bool:
        return self.db.execute("SELECT 1 FROM tickets WHERE id=?", [ticket_id]).fetchone() \
            is not None

    def canned_names(self) -> list[str]:
        return ticket_edits.canned_names(self.desk.mail)

    def canned(self, ticket_id: int, name: str, agent: str = "") -> dict[str, Any]:
        """Canned reply `name` rendered for the ticket, signed by `agent` (a configured one)
        or by nobody."""
        found = self.config.agent(self._agent(agent)) if agent.strip() else None
        return ticket_edits.canned(self.db, self.desk.mail, ticket_id, name,
                                   Address(found.email, found.name) if found else None)

    def _wake_relay(self) -> None:
        if self.relay is not None:
            self.relay.wake()

    # --- audits, organizations, forwarding, templates -----------------------------------------

    def incoming(self, *, limit: int = 50, before_id: int | None = None, **filters: Any
                 ) -> AuditPage:
        """A page of the incoming audit, newest first, the total, and whether more follow."""
        rows = audit.search_incoming(self.db, limit=limit + 1, before_id=before_id, **filters)
        return AuditPage(rows[:limit], audit.count_incoming(self.db, **filters),
                         len(rows) > limit)

    def outgoing(self, *, limit: int = 50, before_id: int | None = None, **filters: Any
                 ) -> AuditPage:
        """A page of the outgoing audit, newest first, the total, and whether more follow."""
        rows = outbox.search_outgoing(self.db, limit=limit + 1, before_id=before_id, **filters)
        return AuditPage(rows[:limit], outbox.count_outgoing(self.db, **filters),
                         len(rows) > limit)

    def orgs(self) -> list[dict[str, Any]]:
        return orgs.list_orgs(self.db)

    # --- the spam quarantine ----------------------------------------------------------------

    def quarantine(self, state: str | None = spam_store.QUARANTINED, limit: int = 50,
                   after: str | None = None) -> AuditPage:
        """A page of `mailgate spam list --json` (`state` None: released mail too), the total,
        and whether more follow (the next page: `after` the last row's queue id)."""
        rows = spam_store.list_quarantine(self.db, state, limit + 1, after=after)
        return AuditPage(rows[:limit], spam_store.count_quarantine(self.db, state),
                         len(rows) > limit)

    def forwarding(self, limit: int = 50, before_id: int | None = None) -> AuditPage:
        """A page of the forwarding confirmations received, newest first."""
        return self.incoming(action=FORWARDING_ACTION, limit=limit, before_id=before_id)

    def quarantined(self, queue_id: str) -> dict[str, Any]:
        """As `mailgate spam show ID --json` (raises NotFound)."""
        return quarantine.show(self.db, self.config.data_dir, queue_id)

    def release(self, queue_id: str, by: str) -> dict[str, Any]:
        """As `mailgate spam release ID`: the message goes through the pipeline as new.
        Raises NotFound, or Conflict when it was released already."""
        try:
            return quarantine.release(self.db, self.spool, self.config.data_dir, queue_id, by)
        except NotFound:
            raise
        except UserError as exc:
            raise Conflict(str(exc)) from None

    def template_previews(self) -> list[dict[str, Any]]:
        """Each template kind rendered with its sample data (or the error that stops it)."""
        previews = []
        for info in self.renderer.kinds():
            kind = info["kind"]
            entry = {**info, "subject": "", "html": "", "text": "", "error": ""}
            try:
                rendered = self.renderer.render(kind, self.renderer.sample_context(kind))
            except TemplateError as exc:
                entry["error"] = str(exc)
            else:
                entry.update(subject=rendered.subject, html=rendered.html, text=rendered.text)
            previews.append(entry)
        return previews


BACKEND = web.AppKey("backend", Backend)
