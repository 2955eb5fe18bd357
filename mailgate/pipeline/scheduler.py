"""The scheduler: time-based rules (idle reminders and escalations), SLA breaches, retention.

Input: the database (its own connection) and the loaded rules; runs every `[scheduler]
tick_seconds` in the daemon. Output: `idle` rules fired once per ticket and rule when nothing
happened on the ticket for `after` while their conditions hold, and `sla_breached` rules fired
once per ticket, policy and target (first response, resolution); each firing recorded in
`rule_firings` in the same transaction as its actions, so a restart never fires twice. When
`[retention]` is configured, `store.retention` runs at the first tick and then every
`every_minutes` (in bounded batches; each run that removes anything is audited).

Several nodes on one PostgreSQL: the scheduler runs on one node at a time. Before each tick a
node tries to take (or checks that it still holds) a session-level advisory lock on the
scheduler's own connection; the node that has it leads and ticks, the others skip the tick
and try again at the next. The lock goes with the leader's connection — when that node stops
or its connection dies, another node takes it at its next tick. `leading` says whether this
node leads now (for `doctor` and the metrics). On SQLite (one host) the scheduler always leads.
The primary key of `rule_firings` stays the backstop: a firing is recorded once whichever node
makes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailgate.config import Retention
from mailgate.pipeline.automation import Automation
from mailgate.store import retention
from mailgate.store.connect import open_store
from mailgate.store.db import on_postgres, transaction
from mailgate.store.locks import give_up_leadership, holds_leadership, take_leadership
from mailgate.store.tickets import ticket_row

log = logging.getLogger("mailgate.scheduler")
BATCH = 500



def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z")


class Scheduler:
    def __init__(self, database: Path | str, automation: Callable[[], Automation],
                 tick_seconds: float, node_id: str = "mailgate",
                 retention: Callable[[], tuple[Retention, Path]] | None = None) -> None:
        self.database = database
        self.node_id = node_id
        self.leading = False  # this node runs the ticks now
        self.automation = automation  # read at each tick: a reload swaps the rules
        self.tick_seconds = tick_seconds
        self._stop = asyncio.Event()
        self._lock = threading.Lock()
        self.fired = 0
        self.retention = retention  # read at each tick: the settings and data_dir now
        self.retention_ran: float | None = None  # when this node last ran it (time.time())

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        db = await loop.run_in_executor(None, open_store, self.database)
        try:
            while not self._stop.is_set():
                try:
                    if await loop.run_in_executor(None, self.lead, db):
                        self.fired += await loop.run_in_executor(None, self.tick, db)
                except Exception:
                    log.exception("scheduler tick failed; trying again at the next tick")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.tick_seconds)
        finally:
            await loop.run_in_executor(None, self._step_down, db)

    def lead(self, db: object) -> bool:
        """Whether this node leads for the next tick: on PostgreSQL it holds the advisory lock
        on `db`'s session (still, or newly); on SQLite always. Logs every change."""
        try:
            if self.leading and holds_leadership(db):
                return True
            if self.leading:  # the session that held the lock is gone (a lost connection)
                self.leading = False
                log.warning("scheduler: node %r lost the leadership (its database session"
                            " ended); trying to take it again", self.node_id)
            if take_leadership(db):
                self.leading = True
                if on_postgres(db):
                    log.info("scheduler: node %r leads (runs the idle rules and SLA checks)",
                             self.node_id)
        except Exception:
            if self.leading:
                log.warning("scheduler: node %r lost the leadership (the database is"
                            " unreachable)", self.node_id)
            self.leading = False
            raise
        return self.leading

    def _step_down(self, db: object) -> None:
        """Stopping: give the lock up at once (closing the session would do it too)."""
        try:
            if self.leading and on_postgres(db):
                give_up_leadership(db)
                log.info("scheduler: node %r stops leading (stopping)", self.node_id)
        except Exception:
            log.warning("scheduler: node %r could not release the leadership lock; it goes"
                        " with the connection", self.node_id)
        finally:
            self.leading = False
            db.close()  # type: ignore[attr-defined]

    def tick(self, db: object) -> int:
        """One pass over idle rules and SLAs; returns how many rule firings happened."""
        with self._lock:
            fired = self._idle(db) + self._slas(db)
            self._retention(db)
            return fired

    def _retention(self, db: object) -> None:
        """Run `[retention]` when it is due (its failure is logged; the next tick tries)."""
        if self.retention is None:
            return
        settings, data_dir = self.retention()
        if not retention.due(self.retention_ran, settings):
            return
        self.retention_ran = time.time()
        try:
            report = retention.run_retention(db, data_dir, settings, actor="scheduler")
        except Exception:
            log.exception("retention run failed; trying again in %g minutes",
                          settings.every_minutes)
            return
        if report.removed_anything:
            log.info("retention: %s", ", ".join(
                f"{n} {what}" for what, n in report.counts.items() if n))

    def _idle(self, db: object) -> int:
        auto = self.automation()
        fired = 0
        now = datetime.now(UTC)
        for rule in auto.ruleset.rules:
            if rule.when != "idle" or not rule.enabled or rule.after is None:
                continue
            cutoff = _iso(now - timedelta(seconds=rule.after))
            rows = db.execute(  # type: ignore[attr-defined]
                "SELECT id FROM tickets WHERE last_activity_at <= ? AND status != 'closed'"
                " AND (imported_at IS NULL OR last_activity_at > imported_at)"
                " AND NOT EXISTS (SELECT 1 FROM rule_firings f WHERE f.ticket_id = tickets.id"
                " AND f.rule = ? AND f.key = 'idle') ORDER BY last_activity_at LIMIT ?",
                (cutoff, rule.name, BATCH),
            ).fetchall()
            for (ticket_id,) in rows:
                with transaction(db) as conn:  # type: ignore[arg-type]
                    if auto.fire_once(conn, "idle", ticket_id, "idle", (rule,)):
                        fired += 1
                        log.info("ticket #%d: idle rule %r fired", ticket_id, rule.name)
        return fired

    def _slas(self, db: object) -> int:
        auto = self.automation()
        if not auto.ruleset.slas:
            return 0
        breach_rules = tuple(r for r in auto.ruleset.rules if r.when == "sla_breached")
        fired = 0
        rows = db.execute(  # type: ignore[attr-defined]
            "SELECT id FROM tickets WHERE status NOT IN ('resolved', 'closed')"
            " AND imported_at IS NULL").fetchall()
        for (ticket_id,) in rows:
            with transaction(db) as conn:  # type: ignore[arg-type]
                ticket = ticket_row(conn, ticket_id)
                state = auto.sla(ticket) if ticket else None
                if not state or not state["breached"]:
                    continue
                for target in ("first_response", "resolution"):
                    if not state[f"{target}_breached"]:
                        continue
                    key = f"sla:{state['policy']}:{target}"
                    new = conn.execute(
                        "INSERT INTO rule_firings (ticket_id, rule, key, fired_at)"
                        " VALUES (?, '(sla)', ?, ?) ON CONFLICT DO NOTHING",
                        (ticket_id, key, _iso(datetime.now(UTC))),
                    ).rowcount
                    if not new:
                        continue
                    log.info("ticket #%d: SLA %s breached (%s)", ticket_id, state["policy"],
                             target)
                    if breach_rules and auto.fire_once(conn, "sla_breached", ticket_id, key,
                                                       breach_rules):
                        fired += 1
        return fired
