"""Where raw mail and attachments live: files under `data_dir` (SQLite), or the database's
`stored_files` table (PostgreSQL).

Input: the store's database object or connection (trusted; which engine it is decides), the
node's `data_dir`, a path relative to it made by `files.raw_relpath` / `files.blob_relpath`
(never a name from mail) and bytes to keep (untrusted content). Output: the same bytes read
back by any node.

Why the database on PostgreSQL: every node of an installation already shares it, so the admin
on node B opens the mail node A received with nothing more to set up (no shared file system,
no object store to run and back up); the bytes commit in the same transaction as the rows that
refer to them, so a row never names a file that is not there; and a backup of the database is
a backup of everything. The cost is database size (the raw mail is kept once per message,
attachments once per content) — which is what a shared file system or object store would hold
too. On the embedded SQLite default they stay files: one node, and the file system's fsyncs
batched per group commit (`files.DurableBatch`) are cheaper than BLOBs in the one database file.

The same interface on both: `batch_for(db, data_dir)` gives a `FileBatch` — `add(relpath,
bytes)`, `add_blob(bytes) → sha256`, `commit()` before the rows' transaction (the files made
durable), `write(conn)` inside it (the database's rows), `discard()` when the batch failed —
and `read(db, data_dir, relpath)` gives the bytes or raises FileNotFoundError.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from mailgate.store import files
from mailgate.store.db import now_iso, on_postgres


class FileBatch:
    """Files that become durable together under `data_dir` (`files.DurableBatch`)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._batch = files.DurableBatch()

    def add(self, relpath: str, data: bytes) -> None:
        self._batch.add(self.data_dir / relpath, data)

    def add_blob(self, payload: bytes) -> str:
        return self._batch.add_blob(self.data_dir, payload)

    def commit(self) -> None:
        self._batch.commit()

    def write(self, conn: Any) -> None:
        """Nothing: the files are durable since `commit`."""

    def discard(self) -> None:
        self._batch.discard()


class DatabaseFileBatch(FileBatch):
    """Files that become rows of `stored_files` in the transaction of the rows that refer to
    them: `write(conn)` inserts them (a raw message tried again replaces its earlier bytes,
    which carried an older authentication verdict; an attachment is stored once by content)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._raw: dict[str, bytes] = {}
        self._blobs: dict[str, bytes] = {}

    def add(self, relpath: str, data: bytes) -> None:
        self._raw[relpath] = data

    def add_blob(self, payload: bytes) -> str:
        digest = hashlib.sha256(payload).hexdigest()
        self._blobs.setdefault(files.blob_relpath(digest), payload)
        return digest

    def commit(self) -> None:
        """Nothing yet: the bytes commit with the rows."""

    def write(self, conn: Any) -> None:
        now = now_iso()
        if self._raw:
            conn.executemany(
                "INSERT INTO stored_files (path, data, size, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (path) DO UPDATE SET data = excluded.data, size = excluded.size",
                [(path, data, len(data), now) for path, data in self._raw.items()])
        if self._blobs:  # stored once; created_at touched (retention's grace time)
            conn.executemany(
                "INSERT INTO stored_files (path, data, size, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (path) DO UPDATE SET created_at = excluded.created_at",
                [(path, data, len(data), now) for path, data in self._blobs.items()])

    def discard(self) -> None:
        self._raw.clear()
        self._blobs.clear()


def batch_for(db: Any, data_dir: Path) -> FileBatch:
    return DatabaseFileBatch(data_dir) if on_postgres(db) else FileBatch(data_dir)


def read(db: Any, data_dir: Path, relpath: str) -> bytes:
    """The bytes stored at `relpath`; FileNotFoundError (naming where it looked) when none."""
    if not on_postgres(db):
        return (data_dir / relpath).read_bytes()
    row = db.execute("SELECT data FROM stored_files WHERE path = ?", (relpath,)).fetchone()
    if row is None:
        raise FileNotFoundError(f"no stored file {relpath} in the database")
    return bytes(row[0])


def removable_blob(conn: Any, data_dir: Path, sha256: str, touched_before: float) -> bool:
    """Whether the blob `sha256` may go (inside the caller's transaction): no attachment row
    refers to it and it was stored or reused (touched) before `touched_before` (a Unix time)."""
    if conn.execute("SELECT 1 FROM attachments WHERE sha256 = ? LIMIT 1",
                    (sha256,)).fetchone():
        return False
    relpath = files.blob_relpath(sha256)
    if on_postgres(conn):
        row = conn.execute("SELECT created_at FROM stored_files WHERE path = ?",
                           (relpath,)).fetchone()
        return row is not None and (row[0] or "") < now_iso(touched_before)
    try:
        return (data_dir / relpath).stat().st_mtime < touched_before
    except FileNotFoundError:
        return False


def raw_kept_by_spam(conn: Any, relpath: str) -> bool:
    """Whether a quarantine row still refers to the raw file `relpath` (a message released
    from quarantine shares its raw file with it): by the queue id the file is named after."""
    queue_id = relpath.rsplit("/", 1)[-1].removesuffix(".eml")
    return conn.execute("SELECT 1 FROM spam WHERE queue_id = ? AND raw_path = ?",
                        (queue_id, relpath)).fetchone() is not None


def remove_rows(conn: Any, relpaths: list[str]) -> None:
    """On PostgreSQL, delete the stored files at `relpaths` in the caller's transaction (on
    SQLite the files go after the commit: `remove_files`)."""
    if on_postgres(conn) and relpaths:
        conn.executemany("DELETE FROM stored_files WHERE path = ?", [(p,) for p in relpaths])


def remove_files(db: Any, data_dir: Path, relpaths: list[str]) -> int:
    """On SQLite, unlink the files at `relpaths` after the transaction that stopped referring
    to them committed (one already gone is fine); how many were there."""
    if on_postgres(db):
        return len(relpaths)
    gone = 0
    for relpath in relpaths:
        try:
            (data_dir / relpath).unlink()
            gone += 1
        except FileNotFoundError:
            pass
    return gone


def where(db: Any, data_dir: Path, relpath: str) -> str:
    """Where `read` looks for `relpath`, for a message naming it."""
    return f"{relpath} (in the database)" if on_postgres(db) else str(data_dir / relpath)
