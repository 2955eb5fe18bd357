"""Every spool of one data directory: the daemon's (`data_dir/spool.db`) and, after
`serve --workers N`, each worker's (`data_dir/workers/<i>/spool.db`).

Input: the validated config and the spool files found on disk (our own files: trusted for form,
but a directory name that is not a worker index is ignored). Output: the list of spools with
the node that owns each (`SpoolFile`), for the CLI's `stats` and `spool list|retry`; the spool
a command should put new mail into so that a running daemon processes it (`live_spool_path`);
and `adopt`, which moves the unfinished entries of a spool nobody runs any more (a worker index
beyond today's `--workers`, or the single daemon's spool when workers run, and back) into one
that will be processed.

Adoption never loses an entry: each one is committed in the target first (same queue id, same
bytes, kind and reason; a held entry stays held), and only then marked done in the source. A
crash in between leaves it in both; the next adoption finds it already in the target and only
marks the source, and the pipeline recognises a queue id it already stored in any case. The
caller holds the lock of every spool involved (the data-dir lock of the source's directory),
so no daemon works on them meanwhile.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from mailgate.config import Config
from mailgate.model import ACTIVE, DEFERRED, HOLD, INCOMING
from mailgate.ops.lockfile import LOCK_FILE
from mailgate.spool import Spool, SpoolWriter

log = logging.getLogger("mailgate.spools")

WORKERS_DIR = "workers"
UNFINISHED = (INCOMING, ACTIVE, DEFERRED, HOLD)


@dataclass(frozen=True)
class SpoolFile:
    """One spool file and the node whose mail it holds."""

    path: Path
    node: str
    worker: int | None  # None: the single daemon's spool (data_dir/spool.db)


def worker_spools(data_dir: Path) -> list[SpoolFile]:
    """The workers' spool files that exist, by index (node names filled in by `spool_files`)."""
    found = []
    root = data_dir / WORKERS_DIR
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.isdigit() and (entry / "spool.db").is_file():
                found.append(SpoolFile(entry / "spool.db", "", int(entry.name)))
    return sorted(found, key=lambda s: s.worker or 0)


def spool_files(config: Config) -> list[SpoolFile]:
    """data_dir/spool.db first (always: the CLI has always shown it), then each worker's."""
    main = SpoolFile(config.data_dir / "spool.db", config.node_id, None)
    return [main] + [SpoolFile(s.path, f"{config.node_id}-{s.worker}", s.worker)
                     for s in worker_spools(config.data_dir)]


def _lock_holder(directory: Path) -> int | None:
    """The PID written in a directory's lock file, when that process is alive. (Read only: a
    probing lock could make a starting worker believe its directory is taken.)"""
    try:
        text = (directory / LOCK_FILE).read_text("ascii", "replace").strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return int(text)


def live_spool_path(config: Config) -> Path:
    """Where a command puts new mail (a message let out of quarantine) so that the running
    daemon takes it: the first running worker's spool under `serve --workers`, else
    data_dir/spool.db (whatever is left in a spool nobody runs is adopted at the next start)."""
    for spool in worker_spools(config.data_dir):
        if _lock_holder(spool.path.parent) is not None:
            return spool.path
    return config.data_dir / "spool.db"


def adopt(target: Path, source: Path) -> int:
    """Move the unfinished entries of the spool `source` into the spool `target` (see the module
    docstring); returns how many. The caller holds both spools' locks."""
    if not source.is_file() or source == target:
        return 0
    old = Spool(source)
    try:
        entries = old.entries(UNFINISHED, limit=10**9)
        if not entries:
            return 0
        new = Spool(target)
        writer = SpoolWriter(target)
        moved: list[str] = []
        try:
            for listed in entries:
                qid = listed.envelope.queue_id
                if new.get(qid) is None:
                    full = old.get(qid)
                    if full is None:
                        continue
                    content = full.content
                    if content is None and full.content_path:
                        content = old.read_content(full)  # OSError: stays where it is
                    writer.submit(full.envelope, content, full.kind, full.reason).result()
                    if full.state == HOLD:
                        new.hold(qid, full.reason or "held before it was moved")
                moved.append(qid)
            old.mark_done_many(moved)
        finally:
            writer.close()
            new.close()
    finally:
        old.close()
    log.warning("moved %d unfinished spool entr%s from %s to %s (a spool no process of this"
                " configuration runs)", len(moved), "y" if len(moved) == 1 else "ies", source,
                target)
    return len(moved)
