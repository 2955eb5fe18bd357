"""The durable spool between the SMTP side and the pipeline.

Input: envelopes and message bytes from the SMTP handler (untrusted bytes, stored as received);
state changes from the pipeline worker. Output: spool entries in states
incoming → active → done / deferred / hold, kept in a SQLite file (WAL, synchronous=FULL).

Durability: `SpoolWriter.submit` returns only once the entry's transaction has been committed,
which in WAL mode with synchronous=FULL means the WAL was fsynced. Concurrent SMTP sessions are
batched into one transaction by a single writer thread (group commit): one fsync serves every
session that was waiting at the time. State changes are transactions too, so a crash leaves each
entry in exactly one state. Content is deleted only when the entry is marked done, which the
pipeline does after its own database commit.

Bounded in memory: a message is kept in memory while it is received only up to `SPILL_BYTES`;
past that it goes to a file `spool/<queue id>.eml` next to spool.db, fsynced (with the
directory) in the writer's batch before the commit that names it. The pipeline reads such a
file only when it processes the entry.

Bounded on disk: the WAL is truncated back to `WAL_LIMIT` after each checkpoint, the space of
processed messages is given back to the file system (incremental vacuum), and the records of
done entries are kept for `DONE_KEEP_SECONDS`. A spool file deleted or replaced while open is
noticed before the next commit: the writer then fails every submit (the SMTP side answers 451)
rather than acknowledge mail into a file nobody will read.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mailgate.model import (
    ACTIVE,
    DEFERRED,
    DONE,
    HOLD,
    INCOMING,
    KIND_MESSAGE,
    SPOOL_STATES,
    Envelope,
    SpoolEntry,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    queue_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    received_at REAL NOT NULL,
    envelope TEXT NOT NULL,
    content BLOB,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    reason TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS spool_state ON spool (state, next_attempt);
"""

log = logging.getLogger("mailgate.spool")

SPILL_BYTES = 512 * 1024  # a message bigger than this is received into a file, not memory
WAL_LIMIT = 64 * 1024 * 1024  # bytes the WAL is cut back to after a checkpoint
DONE_KEEP_SECONDS = 7 * 86400  # how long the record of a processed entry stays
VACUUM_PAGES = 2048  # free pages given back to the file system per maintenance run


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file only
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
    conn.executescript(_SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(spool)")}
    for column, decl in (("deferrals", "INTEGER NOT NULL DEFAULT 0"), ("content_path", "TEXT")):
        if column not in columns:  # a spool file made by an earlier version
            with suppress(sqlite3.OperationalError):  # another connection added it first
                conn.execute(f"ALTER TABLE spool ADD COLUMN {column} {decl}")
    return conn


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MessageBody:
    """A message being received: in memory while small, in a file of the spool directory once
    it passes `spill` bytes. Written from the SMTP side's thread; made durable by the writer."""

    def __init__(self, directory: Path, queue_id: str, spill: int = SPILL_BYTES) -> None:
        self.directory = directory
        self.queue_id = queue_id
        self.spill = spill
        self.size = 0
        self.path: Path | None = None
        self._buffer = bytearray()
        self._file: Any = None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._buffer += data
        if len(self._buffer) > self.spill:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.path = self.directory / f"{self.queue_id}.eml"
            self._file = self.path.open("wb", buffering=1024 * 1024)
            self._file.write(self._buffer)
            self._buffer = bytearray()

    @property
    def content(self) -> bytes | None:
        """The bytes, when they are in memory (None once they went to a file)."""
        return bytes(self._buffer) if self.path is None else None

    def readable(self) -> bytes | Path:
        """The whole message, for the spam scanner to read before the spool commit: its bytes
        while they are in memory, else its file (flushed first, so a reader sees every byte)."""
        if self._file is None:
            return bytes(self._buffer)
        self._file.flush()
        assert self.path is not None
        return self.path

    def finish(self) -> None:
        """Flush and fsync the file, if there is one (the writer thread calls this)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def discard(self) -> None:
        """The message was refused or cut off: forget it, file included."""
        self._buffer = bytearray()
        if self._file is not None:
            with suppress(OSError):
                self._file.close()
            self._file = None
        if self.path is not None:
            with suppress(OSError):
                self.path.unlink()
            self.path = None


def file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class _Pending:
    envelope: Envelope
    kind: str
    content: bytes | MessageBody | None
    reason: str | None
    future: Future[None]


class SpoolWriter:
    """One thread that commits new entries in batches (group commit)."""

    def __init__(self, path: Path, max_batch: int = 256) -> None:
        self.path = path
        self.directory = path.parent / "spool"
        self._conn = connect(path)
        self._identity = file_identity(path)
        self.problem: str | None = None  # set once the spool file is found gone or replaced
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._max_batch = max_batch
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self._thread.start()

    def new_body(self, queue_id: str) -> MessageBody:
        """Where the SMTP side writes a message while it is received."""
        return MessageBody(self.directory, queue_id)

    def submit(
        self,
        envelope: Envelope,
        content: bytes | MessageBody | None,
        kind: str = KIND_MESSAGE,
        reason: str | None = None,
    ) -> Future[None]:
        fut: Future[None] = Future()
        self._queue.put(_Pending(envelope, kind, content, reason, fut))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        now = time.time()
        rows = []
        try:
            self._check_file()
            files = [p.content for p in batch
                     if isinstance(p.content, MessageBody) and p.content.path is not None]
            for body in files:  # big messages: their files durable before the rows
                body.finish()
            if files:
                fsync_directory(self.directory)
            for p in batch:
                blob, name = p.content, None
                if isinstance(blob, MessageBody):
                    name = blob.path.name if blob.path is not None else None
                    blob = blob.content
                rows.append((p.envelope.queue_id, p.kind, INCOMING, p.envelope.received_at,
                             p.envelope.to_json(), blob, name, p.reason, now))
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT INTO spool (queue_id, kind, state, received_at, envelope, content,"
                " content_path, reason, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._conn.execute("COMMIT")
        except Exception as exc:  # every waiter must learn that its mail is not safe
            if self._conn.in_transaction:
                with suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            for p in batch:
                p.future.set_exception(exc)
            return
        for p in batch:
            p.future.set_result(None)

    def _check_file(self) -> None:
        if self.problem is None and file_identity(self.path) != self._identity:
            self.problem = (f"the spool {self.path} was deleted or replaced while mailgate had"
                            " it open; mail is refused until mailgate is restarted")
            log.error("%s", self.problem)
        if self.problem is not None:
            raise OSError(self.problem)


class Spool:
    """State changes and queries, used by the pipeline worker and the CLI (one thread at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # State changes need no fsync of their own: losing the last ones in a crash only
        # sends an entry through the pipeline again, which recognises it as already done (the
        # audit's unique queue id); and the writer's next commit fsyncs the shared WAL anyway.
        # So they never queue behind the SMTP side's group commits for the disk.
        self._conn = connect(path, synchronous="NORMAL")
        self._lock = threading.Lock()
        self.directory = path.parent / "spool"

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (a full disk does that): keep the
                # original error, and never leave the connection inside a transaction.
                if self._conn.in_transaction:
                    with suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise

    def recover(self, max_attempts: int) -> tuple[int, int]:
        """At start-up: entries left `active` by a crash go back to `incoming`, or to `hold` when
        they have already been tried `max_attempts` times. Returns (requeued, held)."""
        self._vacuum_mode()
        self._remove_orphans()
        now = time.time()
        with self._tx() as c:
            held = c.execute(
                "UPDATE spool SET state=?, updated_at=?, reason=COALESCE(reason, '') ||"
                " 'processing was interrupted ' || attempts || ' times (worker crashed)'"
                " WHERE state=? AND attempts>=?",
                (HOLD, now, ACTIVE, max_attempts),
            ).rowcount
            requeued = c.execute(
                "UPDATE spool SET state=?, updated_at=? WHERE state=?", (INCOMING, now, ACTIVE)
            ).rowcount
        return requeued, held

    def _vacuum_mode(self) -> None:
        """A spool file made before the spool gave space back: convert it once (at start-up,
        before the SMTP side writes)."""
        with self._lock:
            if self._conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                return
            try:
                self._conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                self._conn.execute("VACUUM")
            except sqlite3.Error as exc:
                log.warning("could not convert %s to incremental vacuum (%s); it will not"
                            " shrink until this succeeds at a later start", self.path, exc)

    def claim(self, limit: int = 16) -> list[SpoolEntry]:
        """Move up to `limit` due entries (incoming, or deferred whose time came) to `active`,
        counting the attempt, and return them oldest first."""
        now = time.time()
        with self._tx() as c:
            rows = c.execute(
                "SELECT queue_id FROM spool WHERE (state=? OR (state=? AND next_attempt<=?))"
                " ORDER BY received_at LIMIT ?",
                (INCOMING, DEFERRED, now, limit),
            ).fetchall()
            ids = [r[0] for r in rows]
            c.executemany(
                "UPDATE spool SET state=?, attempts=attempts+1, updated_at=? WHERE queue_id=?",
                [(ACTIVE, now, q) for q in ids],
            )
            entries = [self._get(c, q, read_file=False) for q in ids]
        return [e for e in entries if e is not None]

    def mark_done(self, queue_id: str) -> None:
        """The result is committed elsewhere: drop the bytes, keep the row as a record."""
        self.mark_done_many([queue_id])

    def mark_done_many(self, queue_ids: list[str]) -> None:
        """`mark_done` for several entries in one transaction."""
        now = time.time()
        with self._tx() as c:
            paths = [row[0] for q in queue_ids for row in c.execute(
                "SELECT content_path FROM spool WHERE queue_id=? AND content_path IS NOT NULL",
                (q,))]
            c.executemany(
                "UPDATE spool SET state=?, content=NULL, content_path=NULL, updated_at=?"
                " WHERE queue_id=?",
                [(DONE, now, q) for q in queue_ids],
            )
        for name in paths:
            with suppress(FileNotFoundError):
                (self.directory / name).unlink()

    def read_content(self, entry: SpoolEntry) -> bytes:
        """The bytes of an entry whose message was received into a file."""
        if entry.content is not None or not entry.content_path:
            return entry.content or b""
        return (self.directory / entry.content_path).read_bytes()

    def _remove_orphans(self) -> None:
        """Files of messages whose spool row never committed (the client got no 250) or whose
        entry is done: left behind by a crash; nothing refers to them."""
        if not self.directory.is_dir():
            return
        with self._lock:
            wanted = {r[0] for r in self._conn.execute(
                "SELECT content_path FROM spool WHERE content_path IS NOT NULL")}
        for path in self.directory.iterdir():
            if path.name not in wanted:
                with suppress(OSError):
                    path.unlink()

    def defer(self, queue_id: str, reason: str, delay: float, count_attempt: bool = True
              ) -> None:
        """Try again in `delay` seconds. `count_attempt=False` for a shortage of the machine
        (disk, descriptors, a busy database): the attempt `claim` counted is given back, so
        such failures never bring a message closer to `hold`."""
        uncount = 0 if count_attempt else 1
        with self._tx() as c:
            c.execute(
                "UPDATE spool SET state=?, reason=?, next_attempt=?, updated_at=?,"
                " attempts=MAX(0, attempts-?), deferrals=deferrals+? WHERE queue_id=?",
                (DEFERRED, reason, time.time() + delay, time.time(), uncount, uncount,
                 queue_id),
            )

    def maintain(self) -> None:
        """Keep the spool small: forget old done entries, give free pages back to the file
        system and checkpoint the WAL, truncating it."""
        with self._tx() as c:
            c.execute("DELETE FROM spool WHERE state=? AND updated_at<?",
                      (DONE, time.time() - DONE_KEEP_SECONDS))
        with self._lock:
            free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            if free:
                # run to completion (a plain execute() steps once: one page)
                self._conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
            # Copy the WAL into the file and cut it to nothing; when a reader or the SMTP
            # side's commit is in the way it simply does less (SQLite waits busy_timeout at
            # most), and the WAL stays under WAL_LIMIT anyway.
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def hold(self, queue_id: str, reason: str) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE spool SET state=?, reason=?, updated_at=? WHERE queue_id=?",
                (HOLD, reason, time.time(), queue_id),
            )

    def retry(self, queue_id: str) -> None:
        """held → incoming, with a fresh attempt count. Raises KeyError / ValueError."""
        with self._tx() as c:
            row = c.execute("SELECT state FROM spool WHERE queue_id=?", (queue_id,)).fetchone()
            if row is None:
                raise KeyError(queue_id)
            if row[0] not in (HOLD, DEFERRED):
                raise ValueError(row[0])
            c.execute(
                "UPDATE spool SET state=?, attempts=0, next_attempt=0, updated_at=?"
                " WHERE queue_id=?",
                (INCOMING, time.time(), queue_id),
            )

    def resubmit(self, envelope: Envelope, content: bytes) -> None:
        """A new `incoming` entry made outside an SMTP session (a message let out of
        quarantine), durable when this returns: a big message goes to its own file, fsynced
        with the directory before the row names it, and the row's transaction is fsynced too."""
        name = None
        blob: bytes | None = content
        if len(content) > SPILL_BYTES:
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{envelope.queue_id}.eml"
            path = self.directory / name
            with path.open("wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            fsync_directory(self.directory)
            blob = None
        now = time.time()
        with self._lock:
            self._conn.execute("PRAGMA synchronous=FULL")
        try:
            with self._tx() as c:
                c.execute(
                    "INSERT INTO spool (queue_id, kind, state, received_at, envelope, content,"
                    " content_path, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (envelope.queue_id, KIND_MESSAGE, INCOMING, envelope.received_at,
                     envelope.to_json(), blob, name, now))
        except BaseException:
            if name is not None:
                with suppress(OSError):
                    (self.directory / name).unlink()
            raise
        finally:
            with self._lock:
                self._conn.execute("PRAGMA synchronous=NORMAL")

    def get(self, queue_id: str) -> SpoolEntry | None:
        with self._lock:
            return self._get(self._conn, queue_id)

    def _get(
        self, c: sqlite3.Connection, queue_id: str, with_content: bool = True,
        read_file: bool = True,
    ) -> SpoolEntry | None:
        """One entry; its bytes when `with_content`, from its file too when `read_file` (the
        worker claims without: a big message is read only when it is processed)."""
        column = "content" if with_content else "NULL"
        row = c.execute(
            f"SELECT envelope, kind, state, attempts, {column}, reason, updated_at, deferrals,"
            " content_path FROM spool"
            " WHERE queue_id=?",
            (queue_id,),
        ).fetchone()
        if row is None:
            return None
        entry = SpoolEntry(
            envelope=Envelope.from_json(row[0]),
            kind=row[1],
            state=row[2],
            attempts=row[3],
            content=row[4],
            reason=row[5],
            updated_at=row[6],
            deferrals=row[7],
            content_path=row[8],
        )
        if with_content and read_file and entry.content_path:
            with suppress(OSError):  # a missing file is reported when the entry is processed
                entry = replace(entry, content=self.read_content(entry))
        return entry

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT state, COUNT(*) FROM spool GROUP BY state").fetchall()
        counts = dict.fromkeys(SPOOL_STATES, 0)
        counts.update({state: n for state, n in rows})
        return counts

    def entries(
        self, states: tuple[str, ...] = (INCOMING, ACTIVE, DEFERRED, HOLD), limit: int = 100
    ) -> list[SpoolEntry]:
        """Entries in the given states, newest first, without their bytes."""
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT queue_id FROM spool WHERE state IN ({marks})"
                " ORDER BY received_at DESC LIMIT ?",
                (*states, limit),
            ).fetchall()
            found = [self._get(self._conn, r[0], with_content=False) for r in rows]
        return [e for e in found if e is not None]

    def next_due_in(self) -> float | None:
        """Seconds until the earliest deferred entry is due (None when there is none)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT MIN(next_attempt) FROM spool WHERE state=?", (DEFERRED,)
            ).fetchone()
        if row is None or row[0] is None:
            return None
        return max(0.0, row[0] - time.time())
