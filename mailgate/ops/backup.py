"""`mailgate backup DEST` and `mailgate restore SRC`: a consistent copy of an installation
taken while the daemon runs, and an installation made again from one.

Input: the validated config (where data_dir, the database and the key files are) and a
directory named by the administrator (trusted intent; a backup read back is checked against
its own manifest before anything is written). Output: `backup` fills DEST (which must not exist
or be empty) with

- `data/`: the data directory — every SQLite database in it (the store, `mailgate.db`, and
  each spool) copied with SQLite's online backup API (a snapshot of one moment, taken while
  the daemon keeps writing), then every other file: raw mail, attachments, the reply-token
  secret, the admin token, DKIM keys, templates kept there;
- `config/`: the config file, and `outside/`: the key and certificate files the config names
  outside data_dir (DKIM keys, TLS);
- `MANIFEST.json`: what it holds, each file's size and SHA-256, the schema revision.

Consistency: the spools are copied first, then the store, then the files. Mail is acknowledged
only once it is in a spool, a message's raw file is written before the rows that name it, and
files are only ever added: so every message acknowledged before the backup began is in the
copy — stored in the store with its files, or still in the copied spool — and every file the
copied store names is there. A spool entry the copied store has already stored is marked done
in the copy, so the restored daemon does not take it again. On PostgreSQL the store (and the
raw mail and attachments in it) is not in data_dir: the backup says to use pg_dump for it and
saves the rest of the node (its spool, secrets, keys, config).

`restore` checks every file of SRC against the manifest, copies the data directory into place
through a temporary directory renamed at the end (all or nothing), puts back an outside key file
only where none exists, and runs `db check` on the restored store. The target data_dir must not
exist or be empty: a restore never mixes two installations.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailgate.config import Config
from mailgate.errors import UserError
from mailgate.ops.lockfile import LOCK_FILE

MANIFEST = "MANIFEST.json"
FORMAT = 1
SQLITE_HEADER = b"SQLite format 3\x00"
SIDECARS = ("-wal", "-shm", "-journal")
CHUNK = 1 << 20


@dataclass
class BackupReport:
    dest: Path
    databases: list[dict[str, Any]] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    outside: list[dict[str, Any]] = field(default_factory=list)
    postgresql: str | None = None  # the store's URL (password hidden) when it is PostgreSQL
    spool_entries_done: int = 0  # spool entries the copied store had already stored
    seconds: float = 0.0


@dataclass
class RestoreReport:
    data_dir: Path
    files: int = 0
    databases: int = 0
    outside_restored: list[str] = field(default_factory=list)
    outside_kept: list[str] = field(default_factory=list)
    postgresql: str | None = None
    config_copy: str = ""


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(16) == SQLITE_HEADER
    except OSError:
        return False


def _skipped(rel: Path) -> bool:
    """A file a backup never holds: a database's journal, the data-dir lock, a file being
    written (`.name.pid.tmp`)."""
    name = rel.name
    return (name.endswith(SIDECARS) or name == LOCK_FILE
            or (name.startswith(".") and name.endswith(".tmp")))


def _hash(path: Path, copy_to: Path | None = None) -> tuple[int, str]:
    """A file's size and SHA-256, read once; with `copy_to`, written there on the way."""
    digest = hashlib.sha256()
    size = 0
    with contextlib.ExitStack() as files:
        src = files.enter_context(open(path, "rb"))
        dst = files.enter_context(open(copy_to, "wb")) if copy_to is not None else None
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if dst is not None:
                dst.write(chunk)
    return size, digest.hexdigest()


def _copy(source: Path, target: Path) -> tuple[int, str]:
    """Copy a file (with its times and mode), returning its size and SHA-256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    found = _hash(source, target)
    shutil.copystat(source, target)
    return found


def _snapshot(source: Path, target: Path) -> None:
    """The database at `source` as of one moment, into `target` (SQLite's online backup: the
    daemon's writers go on meanwhile)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(source, timeout=30.0)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file in the backup
        finally:
            dst.close()
    finally:
        src.close()


def _empty_target(dest: Path, what: str) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest}: exists and is not an empty directory: {what}")


def _outside_files(config: Config) -> list[Path]:
    """Key and certificate files the config names outside data_dir."""
    found = [k.key_file for k in config.dkim_keys]
    found += [p for p in (config.tls_cert, config.tls_key, config.admin_tls_cert,
                          config.admin_tls_key) if p is not None]
    data = config.data_dir.resolve()
    out = []
    for path in found:
        full = (config.path.parent / path).resolve() if not path.is_absolute() else path
        if data not in full.parents and full.is_file() and full not in out:
            out.append(full)
    return out


def backup(config: Config, dest: Path) -> BackupReport:
    """Fill `dest` with a consistent copy of the installation (see the module docstring)."""
    from mailgate.store.engine import shown

    started = time.monotonic()
    data_dir = config.data_dir.resolve()
    dest = dest.resolve()
    if dest == data_dir or data_dir in dest.parents:
        raise UserError(f"{dest}: inside data_dir {data_dir}: back up to another place")
    _empty_target(dest, "back up into a new or empty directory")
    if not data_dir.is_dir():
        raise UserError(f"data_dir {data_dir} does not exist: nothing to back up")
    report = BackupReport(dest)
    if config.database_url:
        report.postgresql = shown(config.database_url)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "data"
    everything = sorted(p for p in data_dir.rglob("*") if p.is_file() or p.is_symlink())
    databases = [p for p in everything if not _skipped(p.relative_to(data_dir))
                 and _is_sqlite(p)]
    # the spools first, then the store: whatever a spool held is in the store or the spool
    databases.sort(key=lambda p: (p.name != "spool.db", str(p)))
    for path in databases:
        rel = path.relative_to(data_dir)
        _snapshot(path, out / rel)
        size, digest = _hash(out / rel)
        report.databases.append({"path": str(rel), "size": size, "sha256": digest})
    store = out / "mailgate.db"
    if store.is_file():
        for entry in report.databases:
            if Path(entry["path"]).name == "spool.db":
                report.spool_entries_done += _settle_spool(out / entry["path"], store)
                entry["size"], entry["sha256"] = _hash(out / entry["path"])
    files = []
    snapshot = {data_dir / e["path"] for e in report.databases}
    for path in everything:
        rel = path.relative_to(data_dir)
        if path in snapshot or _skipped(rel) or path.is_symlink():
            continue
        try:
            size, digest = _copy(path, out / rel)
        except FileNotFoundError:  # removed meanwhile (retention): the store no longer names it
            continue
        files.append({"path": str(rel), "size": size, "sha256": digest})
        report.bytes += size
    report.files = len(files)
    outside = []
    for i, path in enumerate(_outside_files(config)):
        rel = Path("outside") / f"{i}-{path.name}"
        size, digest = _copy(path, dest / rel)
        outside.append({"original": str(path), "path": str(rel), "size": size,
                        "sha256": digest})
    report.outside = outside
    config_copy = None
    if config.path.is_file():
        config_copy = Path("config") / config.path.name
        size, digest = _copy(config.path, dest / config_copy)
    manifest = {
        "format": FORMAT, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mailgate": _version(), "data_dir": str(data_dir),
        "engine": "postgresql" if config.database_url else "sqlite",
        "postgresql": report.postgresql, "revision": _revision(store),
        "config": str(config_copy) if config_copy else None,
        "databases": report.databases, "files": files, "outside": outside,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
    os.sync()
    report.seconds = time.monotonic() - started
    return report


def _settle_spool(spool: Path, store: Path) -> int:
    """In the copied spool, mark done what the copied store has stored already."""
    conn = sqlite3.connect(spool)
    try:
        conn.execute("ATTACH DATABASE ? AS store", (str(store),))
        done = conn.execute(
            "UPDATE spool SET state='done', content=NULL, content_path=NULL"
            " WHERE state != 'done' AND queue_id IN (SELECT queue_id FROM store.audit_incoming"
            " WHERE action != 'held')").rowcount
        conn.commit()
        conn.execute("DETACH DATABASE store")
        return done
    finally:
        conn.close()


def _revision(store: Path) -> str | None:
    if not store.is_file():
        return None
    conn = sqlite3.connect(store)
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return str(row[0]) if row else None
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mailgate")
    except PackageNotFoundError:
        return "unknown"


def read_manifest(src: Path) -> dict[str, Any]:
    path = src / MANIFEST
    if not path.is_file():
        raise UserError(f"{src}: not a mailgate backup (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: cannot be read: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: backup format {manifest.get('format')!r}, this mailgate"
                        f" reads format {FORMAT}")
    return manifest


def verify(src: Path, manifest: dict[str, Any]) -> list[str]:
    """Every file of the manifest, there with its size and SHA-256; the problems found."""
    problems = []
    listed = [(src / "data" / e["path"], e) for e in (*manifest["databases"], *manifest["files"])]
    listed += [(src / e["path"], e) for e in manifest.get("outside", [])]
    for path, entry in listed:
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        size, digest = _hash(path)
        if (size, digest) != (entry["size"], entry["sha256"]):
            problems.append(f"{path}: changed since the backup (size {size}, was"
                            f" {entry['size']})")
    return problems


def restore(config: Config, src: Path) -> RestoreReport:
    """Make data_dir again from the backup at `src` (see the module docstring)."""
    src = src.resolve()
    manifest = read_manifest(src)
    data_dir = config.data_dir.resolve()
    _empty_target(data_dir, "restore only into a new or empty data_dir")
    problems = verify(src, manifest)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"{src}: the backup is damaged, nothing restored: "
                        f"{'; '.join(problems[:3])}{more}")
    report = RestoreReport(data_dir, postgresql=manifest.get("postgresql"),
                           config_copy=str(src / manifest["config"]) if manifest.get("config")
                           else "")
    staging = data_dir.parent / f".{data_dir.name}.restoring-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        for entry in (*manifest["databases"], *manifest["files"]):
            rel = Path(entry["path"])
            if rel.is_absolute() or ".." in rel.parts:
                raise UserError(f"{src / MANIFEST}: names a path outside data/: {rel}")
            _copy(src / "data" / rel, staging / rel)
        report.databases = len(manifest["databases"])
        report.files = len(manifest["files"])
        os.sync()
        if data_dir.exists():
            data_dir.rmdir()  # empty: checked above
        staging.rename(data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for entry in manifest.get("outside", []):
        original = Path(entry["original"])
        if original.exists():
            report.outside_kept.append(str(original))
        else:
            _copy(src / entry["path"], original)
            report.outside_restored.append(str(original))
    return report
