"""Files under `data_dir`: raw messages and content-addressed attachments.

Input: bytes to keep (untrusted content; names are never taken from it). Output: durable files,
written to a temporary name, fsynced, renamed into place and the directory fsynced — one at a
time (`write_durable`), or many together (`DurableBatch`: every file written first, then all
fsynced at once, renamed, and each directory fsynced once), so a batch of messages pays about
one round of disk flushes instead of one per file. Attachments
live at `attachments/ab/cd/<sha256>` so the same file is stored once and no filename from mail
ever reaches the file system; raw mail at `raw/YYYY/MM/DD/<queue id>.eml`.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

SYNC_THREADS = 8  # fsyncs in flight at once: the file system merges them into fewer flushes
_sync_pool: ThreadPoolExecutor | None = None


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write(path: Path, data: bytes, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    _write(tmp, data, sync=True)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_all(paths: list[Path]) -> None:
    """fsync every path, several at once; the first failure is raised after all were tried."""
    global _sync_pool
    if len(paths) <= 1:
        for path in paths:
            _fsync_path(path)
        return
    if _sync_pool is None:
        _sync_pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="mailgate-fsync")
    futures = [_sync_pool.submit(_fsync_path, path) for path in paths]
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


class DurableBatch:
    """Files that become durable together. `add` writes each to a temporary name (no flush);
    `commit` fsyncs all of them at once, renames each into place and fsyncs each directory
    once — after `commit` returns, every file survives a power cut. `discard` removes what a
    failed batch wrote. Content-addressed blobs are written once per batch."""

    def __init__(self) -> None:
        self._files: dict[Path, Path] = {}  # final path → temporary path

    def add(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary(path)
        _write(tmp, data, sync=False)
        self._files[path] = tmp

    def add_blob(self, data_dir: Path, payload: bytes) -> str:
        """Store `payload` once by content (see `store_blob`); return its sha256."""
        digest = hashlib.sha256(payload).hexdigest()
        path = data_dir / blob_relpath(digest)
        if path not in self._files and not touch(path):
            self.add(path, payload)
        return digest

    def commit(self) -> None:
        _sync_all(list(self._files.values()))
        for path, tmp in self._files.items():
            os.replace(tmp, path)
        _sync_all(list(dict.fromkeys(path.parent for path in self._files)))
        self._files.clear()

    def discard(self) -> None:
        for tmp in self._files.values():
            with suppress(OSError):
                tmp.unlink()
        self._files.clear()


def fsync_dir(directory: Path) -> None:
    _fsync_path(directory)


def load_or_create_secret(data_dir: Path, name: str = "secret.key") -> bytes:
    """The server's HMAC secret: 32 random bytes made once (mode 0600) and reused after."""
    path = data_dir / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data_dir.mkdir(parents=True, exist_ok=True)
        data = os.urandom(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return path.read_bytes()
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(data_dir)
    if len(data) < 16:
        raise OSError(f"{path}: secret file is truncated; restore it from backup")
    return data


def raw_relpath(queue_id: str, received_at: float) -> str:
    day = time.strftime("%Y/%m/%d", time.gmtime(received_at))
    return f"raw/{day}/{queue_id}.eml"


def blob_relpath(sha256: str) -> str:
    return f"attachments/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def store_blob(data_dir: Path, payload: bytes) -> str:
    """Store `payload` once by content; return its sha256."""
    digest = hashlib.sha256(payload).hexdigest()
    path = data_dir / blob_relpath(digest)
    if not touch(path):
        write_durable(path, payload)
    return digest


def touch(path: Path) -> bool:
    """Whether a stored blob is at `path`; its modification time is set to now when it is, so
    that retention (which leaves blobs touched within its grace time) never removes a blob a
    message being stored now is about to refer to."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except OSError:
        return path.exists()
    return True
