"""One daemon per data directory: a lock file held with `fcntl.flock` for the daemon's life.

Input: the data directory (from the config: trusted) and the lock file in it, whose content —
the PID of the daemon holding it — is only ever shown, never acted on. Output: `DataDirLock`,
held from `acquire` until `release` (or until the process ends: the kernel drops a flock with
the last descriptor, so a crashed daemon never leaves a stale lock behind); or, when another
process holds it, a `UserError` of one line naming the directory and that process's PID.

Why: two daemons on one data_dir would each take the other's in-flight spool entries for
crash leftovers and requeue them. The lock file is never deleted (deleting it would let a third
process lock a new file while the second still holds the old one). Commands that only read
(`tickets list`, `stats`, `audit`, ...) never take it.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from mailgate.errors import UserError

LOCK_FILE = "mailgate.lock"


def _holder(fd: int) -> str:
    """The PID the holder wrote, read through our own descriptor; it writes it right after it
    locks, so an empty file is given a moment."""
    for _ in range(20):
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        if text:
            return text if text.isdigit() else f"unknown ({text[:20]!r} in the lock file)"
        time.sleep(0.025)
    return "unknown"


class DataDirLock:
    """The exclusive lock on `data_dir/mailgate.lock`; a context manager."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(f"cannot open the lock file {self.path}:"
                            f" {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise UserError(f"{self.data_dir} is in use by another mailgate daemon (PID {pid});"
                            " stop it first, or give this one its own [storage] data_dir"
                            ) from None
        except OSError as exc:
            os.close(fd)
            raise UserError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Unlock (the file stays, emptied: no PID is left pointing at a stopped daemon)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
