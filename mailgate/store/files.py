"""Files under `data_dir`: raw messages and content-addressed attachments.

Input: bytes to keep (untrusted content; names are never taken from it). Output: durable files,
written to a temporary name, fsynced, renamed into place and the directory fsynced. Attachments
live at `attachments/ab/cd/<sha256>` so the same file is stored once and no filename from mail
ever reaches the file system; raw mail at `raw/YYYY/MM/DD/<queue id>.eml`.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path


def write_durable(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    if not path.exists():
        write_durable(path, payload)
    return digest
