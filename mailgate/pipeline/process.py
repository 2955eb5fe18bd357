"""The pipeline: the one orchestrator that takes a spooled message through the stages.

Input: spool entries (the bytes are untrusted; the envelope was checked by the SMTP stage).
Stages: parse → authenticate → classify → reply text → (in `deliver`) threading, workflow,
organizations, routing and rules, outbound mail. Output: for each entry exactly one result
committed in the database in one transaction with its incoming-audit row and the mail it causes
— a ticket message (`created_ticket`, `appended`), a `duplicate`, a `bounce`, a
`forwarding_confirmation`, an `ignored` robot, quarantined `spam` (`pipeline.quarantine`), a
`rejected` refusal record, or a `held` message with its error — with the spam scanner's verdict
when there is one, and only then the spool entry marked done. Stages are pure functions where
possible; their database look-ups are passed in.
Re-running an entry whose result is already committed changes nothing (the audit's unique queue
id), so a crash between the commit and the spool update cannot store a message twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from mailgate.auth import Authenticator, AuthResult, strip_forged_results
from mailgate.classify import classify
from mailgate.errors import DatabaseGone, PermanentFailure, temporary_cause
from mailgate.model import KIND_REJECTION, Envelope, ParsedMail, SpoolEntry
from mailgate.ops import metrics
from mailgate.outbound.mailer import MailContext
from mailgate.parsing.parse import parse
from mailgate.parsing.replytext import reply_text
from mailgate.pipeline import quarantine
from mailgate.pipeline.automation import Automation
from mailgate.pipeline.deliver import Deliverer, Incoming, Outcome, Policy
from mailgate.spool import Spool
from mailgate.store import files, filestore
from mailgate.store.audit import IncomingAudit, audited, record_incoming
from mailgate.store.db import check_same_file, transaction
from mailgate.store.locks import lock_keys
from mailgate.threading.keys import conversation_keys
from mailgate.threading.token import Signer

log = logging.getLogger("mailgate.pipeline")

TEMPORARY_BACKOFF_MAX = 300.0  # seconds: the longest wait after a shortage of the machine


def temporary_delay(deferrals: int) -> float:
    """2 s, 4 s, 8 s ... up to TEMPORARY_BACKOFF_MAX: the wait after the n-th shortage."""
    return min(TEMPORARY_BACKOFF_MAX, 2.0 * 2 ** min(deferrals, 16))


@dataclass(frozen=True)
class Prepared:
    parsed: ParsedMail
    auth: AuthResult | None


def spam_details(env: Envelope) -> dict[str, Any] | None:
    """The scanner's verdict for a refusal's audit row (None when it was not scanned)."""
    if env.spam is None:
        return None
    return {"spam": {"action": env.spam.action, "score": env.spam.score,
                     "symbols": dict(env.spam.symbols), "rspamd_action": env.spam.rspamd_action}}


class Pipeline:
    def __init__(
        self, db: sqlite_utils.Database, spool: Spool, data_dir: Path, max_attempts: int = 3,
        mail: MailContext | None = None, tokens: Signer | None = None,
        policy: Policy | None = None, automation: Automation | None = None,
        auth: Authenticator | None = None, hold_unauthenticated: bool = False,
    ) -> None:
        self.db = db
        self.spool = spool
        self.data_dir = data_dir
        self.max_attempts = max_attempts
        self.mail = mail  # None: this pipeline sends no mail (tools, tests of ingest alone)
        self.tokens = tokens  # None: no signed tokens to match or decode
        self.policy = policy or Policy()
        self.automation = automation  # None: no routing or automation rules
        self.auth = auth  # None: no authentication (tools, tests of other stages)
        self.hold_unauthenticated = hold_unauthenticated  # [auth] unauthenticated = "hold"
        self.problem: str | None = None  # the database went away: no new mail is taken

    def database_problem(self) -> str | None:
        """Why the database cannot be written (its file deleted or replaced), else None."""
        if self.problem is None:
            try:
                check_same_file(self.db.conn)
            except DatabaseGone as exc:
                self.problem = str(exc)
                log.error("%s", exc)
        return self.problem

    # --- one entry --------------------------------------------------------------------------

    def prepare(self, entry: SpoolEntry) -> Prepared | None:
        """The parts of processing that wait on the network (authentication's DNS), done ahead
        and concurrently by the worker so one slow domain does not hold up other mail. Never
        raises: on any problem `process` simply does the work itself (and reports it)."""
        if self.auth is None or entry.kind == KIND_REJECTION or entry.content is None:
            return None  # big messages (in a file) are read and prepared only when processed
        try:
            parsed = parse(entry.content)
            return Prepared(parsed, self._authenticate(entry, entry.content, parsed))
        except Exception:
            return None

    def handle(self, entry: SpoolEntry, prepared: Prepared | None = None) -> Outcome:
        """Process one claimed entry and move it to its next spool state (`handle_batch` of
        one)."""
        return self.handle_batch([(entry, prepared)])[0]

    def handle_batch(self, items: list[tuple[SpoolEntry, Prepared | None]]) -> list[Outcome]:
        """Process claimed entries together and move each to its next spool state; one outcome
        per entry, in order. Never raises for a bad message: failures become deferred retries,
        then a held message with its error. Raises only when the spool cannot record a result
        (the entries stay claimed; handling them again changes nothing).

        Group commit: each message is parsed and authenticated and its raw mail and attachments
        written; then all those files are made durable in one round of fsyncs, and all the
        messages' rows commit in one database transaction — each message inside a savepoint, so
        one that fails is rolled back alone — and then the spool marks them all done in one
        update. A failure of the batch as a whole (the commit, the disk, the database gone)
        stores nothing of it: a shortage of the machine defers every entry without counting an
        attempt; anything else makes each entry go through on its own."""
        started = time.perf_counter()
        outcomes: dict[str, Outcome] = {}
        failed: list[tuple[SpoolEntry, BaseException]] = []
        staged: list[tuple[SpoolEntry, Prepared | None, Incoming | None]] = []
        settled: set[str] = set()  # handled on their own: their spool state is recorded
        batch = filestore.batch_for(self.db, self.data_dir)
        for entry, prepared in items:
            try:
                done = self._already_done(entry)
                if done is not None:
                    outcomes[entry.queue_id] = done
                else:
                    staged.append((entry, prepared, self._stage(entry, prepared, batch)))
            except Exception as exc:
                failed.append((entry, exc))
        if staged:
            try:
                self._commit(staged, batch, outcomes, failed)
            except Exception as exc:
                batch.discard()
                for entry, _, _ in staged:
                    outcomes.pop(entry.queue_id, None)
                staged_ids = {entry.queue_id for entry, _, _ in staged}
                failed = [(e, x) for e, x in failed if e.queue_id not in staged_ids]
                if temporary_cause(exc) is not None or len(staged) == 1:
                    failed += [(entry, exc) for entry, _, _ in staged]
                else:  # one message broke the batch: each on its own finds which
                    log.warning("a batch of %d messages failed to commit (%s: %s); processing"
                                " them one at a time", len(staged), type(exc).__name__, exc)
                    for entry, prepared, _ in staged:
                        outcomes[entry.queue_id] = self.handle(entry, prepared)
                        settled.add(entry.queue_id)
        done_ids = [q for q, o in outcomes.items()
                    if q not in settled and o.action not in ("deferred", "held")]
        if done_ids:
            self.spool.mark_done_many(done_ids)
        for entry, exc in failed:
            outcomes[entry.queue_id] = self._fail(entry, exc)
        each = (time.perf_counter() - started) / max(1, len(items))
        for entry, _ in items:
            outcome = outcomes[entry.queue_id]
            if outcome.queue_id not in settled and outcome.action not in ("deferred", "held"):
                metrics.PIPELINE_SECONDS.observe(each)
                log.info("queue_id=%s action=%s ticket=%s%s", outcome.queue_id, outcome.action,
                         outcome.ticket_id,
                         f" reason={outcome.reason!r}" if outcome.reason else "")
        return [outcomes[entry.queue_id] for entry, _ in items]

    def _fail(self, entry: SpoolEntry, exc: BaseException) -> Outcome:
        """Record why an entry was not processed: deferred (a shortage of the machine: not
        counted as an attempt; otherwise counted), or held after `max_attempts`."""
        qid = entry.queue_id
        temporary = temporary_cause(exc)
        if temporary is not None:  # the machine, not the message: never counts toward hold
            if isinstance(exc, DatabaseGone) and self.problem is None:
                self.problem = str(exc)
                log.error("%s", exc)
            delay = temporary_delay(entry.deferrals)
            log.warning("queue_id=%s deferred for %.0fs (not counted as an attempt): %s",
                        qid, delay, temporary)
            self.spool.defer(qid, temporary, delay, count_attempt=False)
            return Outcome(qid, "deferred", reason=temporary)
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, PermanentFailure) or entry.attempts >= self.max_attempts:
            log.error("queue_id=%s held after %d attempts: %s", qid, entry.attempts, reason,
                      exc_info=(type(exc), exc, exc.__traceback__)
                      if not isinstance(exc, PermanentFailure) else None)
            self._record_held(entry, reason)
            self.spool.hold(qid, reason)
            return Outcome(qid, "held", reason=reason)
        log.warning("queue_id=%s attempt %d failed, will retry: %s", qid, entry.attempts,
                    reason, exc_info=(type(exc), exc, exc.__traceback__))
        self.spool.defer(qid, reason, 1.0 * entry.attempts)
        return Outcome(qid, "deferred", reason=reason)

    def _already_done(self, entry: SpoolEntry) -> Outcome | None:
        """An entry tried before may have committed already (a crash after the commit)."""
        if entry.kind != KIND_REJECTION and (entry.attempts > 1 or entry.deferrals):
            with transaction(self.db) as conn:
                if audited(conn, entry.queue_id):
                    return Outcome(entry.queue_id, "already_done")
        return None

    def _stage(self, entry: SpoolEntry, prepared: Prepared | None, batch: filestore.FileBatch
               ) -> Incoming | None:
        """Everything before the database: parse, classify, reply text, authenticate, and the
        raw mail and attachments written into `batch`. None for a refusal record."""
        env = entry.envelope
        if entry.kind == KIND_REJECTION:
            return None
        if entry.content is None and not entry.content_path:
            raise PermanentFailure("spool entry has no message content")
        try:
            content = self.spool.read_content(entry)
        except FileNotFoundError:
            raise PermanentFailure(f"the spool file {entry.content_path} is missing") from None
        parsed = prepared.parsed if prepared else parse(content)
        classification = classify(parsed, content, env.mail_from)
        reply = reply_text(parsed.text, parsed.html)
        auth = prepared.auth if prepared else self._authenticate(entry, content, parsed)
        if auth is not None and auth.verdict == "fail" and self.hold_unauthenticated:
            raise PermanentFailure(f"unauthenticated sender ([auth] unauthenticated = \"hold\"):"
                                   f" {auth.reason}")
        stored = content
        if auth is not None:  # our verdict on top; forged results claiming our name removed
            stored = auth.header_bytes() + strip_forged_results(
                content, self.auth.settings.authserv_id if self.auth else "")
        raw_path = files.raw_relpath(env.queue_id, env.received_at)
        batch.add(raw_path, stored)
        blobs = [batch.add_blob(a.payload) for a in parsed.attachments]
        return Incoming(entry, parsed, content, raw_path, blobs, classification, reply,
                        auth.as_dict() if auth is not None else None)

    def _commit(self, staged: list[tuple[SpoolEntry, Prepared | None, Incoming | None]],
                batch: filestore.FileBatch, outcomes: dict[str, Outcome],
                failed: list[tuple[SpoolEntry, BaseException]]) -> None:
        """The files made durable, then every staged message's rows in one transaction, each
        in a savepoint: a message that raises is rolled back alone and joins `failed`. A
        shortage of the machine inside any message aborts the whole transaction (raised)."""
        batch.commit()
        with transaction(self.db) as conn:
            # several nodes on one database: one at a time per conversation (store.locks)
            lock_keys(conn, {key for _, _, inc in staged if inc is not None
                             for key in conversation_keys(inc.parsed, inc.parsed.from_.email)})
            batch.write(conn)
            for entry, _, incoming in staged:
                conn.execute("SAVEPOINT message")
                try:
                    outcome = self._store(conn, entry, incoming)
                except Exception as exc:
                    if temporary_cause(exc) is not None or not conn.in_transaction:
                        raise
                    conn.execute("ROLLBACK TO message")
                    conn.execute("RELEASE message")
                    failed.append((entry, exc))
                    continue
                conn.execute("RELEASE message")
                outcomes[entry.queue_id] = outcome

    def _store(self, conn: sqlite3.Connection, entry: SpoolEntry, incoming: Incoming | None
               ) -> Outcome:
        """One message's rows, inside the batch's transaction."""
        env = entry.envelope
        if incoming is None:  # refused at DATA: the record of the refusal
            if not audited(conn, env.queue_id):
                record_incoming(conn, IncomingAudit(
                    env, "rejected", reason=entry.reason or "refused at DATA",
                    details=spam_details(env)))
                quarantine.record_verdict(conn, env)
            return Outcome(env.queue_id, "rejected", reason=entry.reason or "")
        if audited(conn, env.queue_id):  # committed before a crash: nothing more to do
            return Outcome(env.queue_id, "already_done")
        conn.execute("DELETE FROM audit_incoming WHERE queue_id=? AND action='held'",
                     (env.queue_id,))
        outcome = Deliverer(self.policy, self.mail, self.tokens, self.automation).deliver(
            conn, incoming)
        quarantine.record_verdict(conn, env)
        return outcome

    def _authenticate(self, entry: SpoolEntry, content: bytes, parsed: ParsedMail
                      ) -> AuthResult | None:
        if self.auth is None:
            return None
        env = entry.envelope
        result = self.auth.authenticate_sync(content, env.client_ip, env.helo,
                                             env.mail_from, parsed.from_.email.rpartition("@")[2])
        log.info("queue_id=%s auth verdict=%s: %s", env.queue_id, result.verdict, result.reason)
        return result

    def _record_held(self, entry: SpoolEntry, reason: str) -> None:
        try:
            with transaction(self.db) as conn:
                if not audited(conn, entry.queue_id):
                    conn.execute("DELETE FROM audit_incoming WHERE queue_id=? AND action='held'",
                                 (entry.queue_id,))
                    record_incoming(conn, IncomingAudit(entry.envelope, "held", reason=reason))
        except Exception:  # the spool still holds the message and its reason
            log.exception("queue_id=%s could not write the held audit row", entry.queue_id)

    # --- the worker ---------------------------------------------------------------------------

    def run_once(self, limit: int = 32) -> list[Outcome]:
        return self.handle_batch([(entry, None) for entry in self.spool.claim(limit)])


def sender_domain(entry: SpoolEntry) -> str:
    """The envelope sender's domain: the key that keeps one domain's DNS trouble its own."""
    return entry.envelope.mail_from.rpartition("@")[2].lower().rstrip(".")


class PipelineWorker:
    """Feeds the pipeline from the spool. Claimed messages are prepared concurrently
    (authentication waits on DNS) and processed in a thread in the order they arrived, the
    prepared ones at the head of the queue together as one batch (`handle_batch`) — except
    that a message still preparing `HEAD_WAIT` seconds after it was claimed (a slow
    resolver) lets the ready ones behind it go first. Messages from one sender domain
    are prepared one at a time, so a domain whose DNS never answers takes one preparing
    thread, never all of them: it delays its own mail only. On stop, everything already
    claimed is finished first."""

    MAX_IN_FLIGHT = 64
    BATCH_MAX = 32  # messages committed together (one round of fsyncs, one transaction)
    PREPARE_THREADS = 4
    HEAD_WAIT = 1.0
    MAINTAIN_SECONDS = 60.0  # spool upkeep (WAL checkpoint, vacuum) when idle, this often ...
    MAINTAIN_BYTES = 32 * 1024 * 1024  # ... or sooner once this much mail went through
    RETRY_MAX = 30.0  # the longest wait before trying the spool again after it failed

    def __init__(self, pipeline: Pipeline, idle_poll: float = 1.0,
                 on_processed: Callable[[], None] | None = None) -> None:
        self.pipeline = pipeline
        self.on_processed = on_processed
        self.idle_poll = idle_poll
        self._wake = asyncio.Event()
        self._more = asyncio.Event()
        # claimed entries: (entry, its preparation, when it was claimed)
        self._pending: list[tuple[SpoolEntry, asyncio.Future[Prepared | None], float]] = []
        self._domains: dict[str, tuple[asyncio.Lock, int]] = {}  # sender domain → (lock, users)
        self._stopping = False
        self.processed = 0
        self._maintained = time.monotonic()
        self._since_maintained = 0  # bytes of mail processed since the last upkeep
        self._busy = False  # a thread is handling an entry right now

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(self.PREPARE_THREADS, thread_name_prefix="mailgate-prepare")
        processor = asyncio.create_task(self._process(), name="pipeline-process")
        failures = 0
        try:
            while not self._stopping:
                self._wake.clear()
                room = self.MAX_IN_FLIGHT - len(self._pending)
                entries: list[SpoolEntry] = []
                if room > 0:
                    try:
                        entries = await loop.run_in_executor(None, self.pipeline.spool.claim,
                                                             room)
                        failures = 0
                    except Exception as exc:
                        failures += 1
                        wait = min(self.RETRY_MAX, 2.0 ** failures)
                        log.error("pipeline worker: spool access failed (%s); retrying in"
                                  " %.0fs", exc, wait)
                        await asyncio.sleep(wait)
                        continue
                for entry in entries:
                    if self.pipeline.auth is None or entry.kind == KIND_REJECTION:
                        fut: asyncio.Future[Prepared | None] = loop.create_future()
                        fut.set_result(None)
                    else:
                        fut = asyncio.ensure_future(self._prepare(loop, pool, entry))
                    self._pending.append((entry, fut, time.monotonic()))
                    self._more.set()
                if entries:
                    continue
                await self._maintain(loop)
                due = await loop.run_in_executor(None, self.pipeline.spool.next_due_in)
                timeout = self.idle_poll if due is None else min(self.idle_poll, due)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:  # finish what was claimed: nothing is left `active` by an orderly stop,
            # and no thread still uses the spool or the database once this returns
            while (self._pending or self._busy) and not processor.done():
                await asyncio.sleep(0.05)
            processor.cancel()
            pool.shutdown(wait=False)
            self._since_maintained = self.MAINTAIN_BYTES  # leave the spool small
            await self._maintain(loop)

    async def _prepare(self, loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor,
                       entry: SpoolEntry) -> Prepared | None:
        """prepare() in the pool, one message of a sender domain at a time."""
        key = sender_domain(entry)
        lock, users = self._domains.get(key, (asyncio.Lock(), 0))
        self._domains[key] = (lock, users + 1)
        try:
            async with lock:
                return await loop.run_in_executor(pool, self.pipeline.prepare, entry)
        finally:
            lock, users = self._domains[key]
            if users <= 1:
                del self._domains[key]
            else:
                self._domains[key] = (lock, users - 1)

    async def _next(self) -> tuple[SpoolEntry, Prepared | None]:
        """The oldest claimed message, or — when it is slow to prepare — the oldest ready one.
        The oldest is waited for until `HEAD_WAIT` seconds after it was claimed, once."""
        while True:
            while not self._pending:
                self._more.clear()
                await self._more.wait()
            entry, fut, claimed = self._pending[0]
            wait = self.HEAD_WAIT - (time.monotonic() - claimed)
            done = fut.done()
            if not done and wait > 0:
                done = bool((await asyncio.wait({fut}, timeout=wait))[0])
            ready = 0 if done else next(
                (i for i, (_, f, _) in enumerate(self._pending) if f.done()), None)
            if ready is None:
                await asyncio.wait({f for _, f, _ in self._pending},
                                   return_when=asyncio.FIRST_COMPLETED)
                continue
            entry, fut, _ = self._pending.pop(ready)
            try:
                return entry, fut.result()
            except Exception:  # prepare() never raises; a broken pool means: do it in handle()
                return entry, None

    async def _maintain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Spool upkeep while idle, at most every MAINTAIN_SECONDS."""
        if (time.monotonic() - self._maintained < self.MAINTAIN_SECONDS
                and self._since_maintained < self.MAINTAIN_BYTES):
            return
        self._maintained = time.monotonic()
        self._since_maintained = 0
        try:
            await loop.run_in_executor(None, self.pipeline.spool.maintain)
        except Exception as exc:
            log.warning("spool maintenance failed (%s); trying again later", exc)

    def _ready_behind(self) -> list[tuple[SpoolEntry, Prepared | None]]:
        """The claimed entries at the head of the queue that are prepared already, oldest first,
        up to BATCH_MAX - 1: they join the batch of the entry `_next` returned."""
        batch: list[tuple[SpoolEntry, Prepared | None]] = []
        while self._pending and len(batch) < self.BATCH_MAX - 1:
            entry, fut, _ = self._pending[0]
            if not fut.done():
                break
            self._pending.pop(0)
            try:
                batch.append((entry, fut.result()))
            except Exception:  # prepare() never raises; a broken pool: handle() does it
                batch.append((entry, None))
        return batch

    async def _process(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next()
            batch = [first, *self._ready_behind()]
            await self._handle_until_recorded(loop, batch)
            self._wake.set()

    async def _handle_until_recorded(self, loop: asyncio.AbstractEventLoop,
                                     batch: list[tuple[SpoolEntry, Prepared | None]]) -> None:
        """handle_batch() never raises for a message; when it raises, the spool itself could
        not record the result (disk full, database locked). Try again with backoff until it
        can — handling an entry twice changes nothing (the audit's unique queue id) — so no
        acknowledged message stays `active` once the machine recovers. Stopping leaves the
        entries `active`, and the next start requeues them."""
        wait = 1.0
        while True:
            self._busy = True
            try:
                await loop.run_in_executor(None, self.pipeline.handle_batch, batch)
            except Exception as exc:
                self._busy = False
                ids = " ".join(entry.queue_id for entry, _ in batch)
                if self._stopping:
                    log.error("queue_id=%s could not be recorded in the spool (%s); requeued at"
                              " the next start", ids, exc)
                    return
                log.error("queue_id=%s could not be recorded in the spool (%s); trying again"
                          " in %.0fs", ids, exc, wait)
                await asyncio.sleep(wait)
                wait = min(self.RETRY_MAX, wait * 2)
                # and the results may be committed already: handle_batch() looks
                batch = [(dataclasses.replace(entry, deferrals=entry.deferrals + 1), None)
                         for entry, _ in batch]
                continue
            self._busy = False
            for entry, _ in batch:
                self.processed += 1
                self._since_maintained += entry.envelope.size
                if self.on_processed is not None:
                    self.on_processed()
            return
