"""The admin token: one secret in `data_dir/admin.token` (mode 0600) that opens the admin API
and the web panels.

Input: the data directory (trusted: from the config). Output: the token text, created on first
use (`load_or_create`) or replaced (`rotate`) atomically, so a running daemon that reads the
file again sees either the old token or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

TOKEN_FILE = "admin.token"


def token_path(data_dir: Path) -> Path:
    return data_dir / TOKEN_FILE


def _new_token() -> str:
    return secrets.token_urlsafe(32)


def _write(path: Path, token: str) -> None:
    """Write `token` to `path` through a 0600 temporary file, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read(data_dir: Path) -> str | None:
    """The current token, or None when there is none yet (or the file is empty)."""
    try:
        token = token_path(data_dir).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    return token or None


def load_or_create(data_dir: Path) -> str:
    token = read(data_dir)
    if token is None:
        token = _new_token()
        _write(token_path(data_dir), token)
    return token


def rotate(data_dir: Path) -> str:
    """A new token replaces the old one: sessions and clients using the old one stop working."""
    token = _new_token()
    _write(token_path(data_dir), token)
    return token
