"""The pipeline in a process of its own (`[pipeline] process = "separate"`), so the SMTP side
and the pipeline each have a core.

Input: the config file's path (trusted: the daemon validated it) and, from the daemon, one
byte per event over a pipe: `w` (mail was spooled: look at the spool), `r` (the config file was
reloaded: read it again), `s` (stop: finish what was claimed, then exit). Output: the same work
as the in-process `PipelineWorker` — spool entries taken through the stages into the database —
and, back over the pipe, one line per processed message (`p <seconds>`, for the relay's wake-up
and the daemon's metrics) and `g <why>` when the database file is gone or replaced.

The spool stays the only hand-off (Postfix's design): the child claims entries from the same
SQLite spool file the SMTP side commits to, so nothing is lost or repeated whichever process
dies — an entry left `active` by a child that died is requeued when the daemon starts the next
one, and a result committed before a crash is found by its queue id. The child dies with the
daemon (Linux `PR_SET_PDEATHSIG`, and it stops at the pipe's end of file everywhere).
Trust: the pipe carries only our own bytes; the mail itself is only ever read from the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable

from mailgate.config import Config, load_config
from mailgate.errors import DatabaseGone
from mailgate.ops import metrics
from mailgate.pipeline.process import Pipeline
from mailgate.spool import Spool
from mailgate.store.db import check_same_file

log = logging.getLogger("mailgate.pipeline")

WAKE, RELOAD, STOP = b"w", b"r", b"s"
RESTART_BACKOFF_MAX = 30.0  # seconds between restarts of a child that keeps dying


# --- the child ---------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL when the daemon dies, however it dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def child_main(config_path: str, conn: multiprocessing.connection.Connection,
               worker: int | None = None) -> None:
    """The child's entry point (multiprocessing, spawn start method). `worker`: the index of
    the daemon in `serve --workers N` (its own spool), None for the single daemon."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    config = load_config(config_path)
    if worker is not None:
        config = config.for_worker(worker)
    from mailgate.ops.logsetup import setup_logging

    setup_logging(config.log_level, config.log_format)
    asyncio.run(_child(config, conn))


def _histogram_sum(histogram: object) -> float:
    """The running sum of a prometheus Histogram, read through its public `collect()`."""
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                return float(sample.value)
    return 0.0


def _build(config: Config) -> tuple[Pipeline, Spool]:
    from mailgate.ops import app
    from mailgate.store.connect import open_store

    spool = Spool(config.spool_path)
    return app.pipeline(config, open_store(config.database), spool, app.mail_context(config)), spool


async def _child(config: Config, conn: multiprocessing.connection.Connection) -> None:
    from mailgate.ops import app
    from mailgate.pipeline.process import PipelineWorker

    pipeline, spool = _build(config)
    loop = asyncio.get_running_loop()
    said_gone = False

    last_sum = 0.0

    def processed() -> None:
        nonlocal said_gone, last_sum
        total = _histogram_sum(metrics.PIPELINE_SECONDS)
        seconds, last_sum = max(0.0, total - last_sum), total
        with contextlib.suppress(OSError):
            conn.send_bytes(f"p {seconds:.6f}".encode())
            if pipeline.problem and not said_gone:
                said_gone = True
                conn.send_bytes(f"g {pipeline.problem}".encode())

    worker = PipelineWorker(pipeline, on_processed=processed)

    def reload() -> None:
        from mailgate.ops.daemon import load_worker_config, reloadable
        from mailgate.ops.logsetup import setup_logging

        nonlocal config
        try:
            new, _ = reloadable(config, load_worker_config(config.path, config.worker))
        except Exception as exc:  # the daemon checked the file; it changed again since
            log.error("pipeline process: reload failed, keeping the running configuration:"
                      " %s", exc)
            return
        app.reconfigure(pipeline, new, app.mail_context(new))
        setup_logging(new.log_level, new.log_format)
        config = new

    def readable() -> None:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):  # the daemon is gone: stop
            loop.remove_reader(conn.fileno())
            worker.stop()
            return
        for byte in data:
            command = bytes([byte])
            if command == WAKE:
                worker.wake()
            elif command == RELOAD:
                reload()
            elif command == STOP:
                worker.stop()

    loop.add_reader(conn.fileno(), readable)
    try:
        await worker.run()
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(conn.fileno())
        if pipeline.auth is not None:
            pipeline.auth.close()
        spool.close()
        pipeline.db.close()


# --- the daemon's side -------------------------------------------------------------------------


class PipelineProcess:
    """The daemon's handle on the pipeline child: starts it (again after a crash, with
    backoff, requeuing what it had claimed), passes wake-ups and reloads, and stops it."""

    def __init__(self, config: Config, db: object, recover: Callable[[], None],
                 on_processed: Callable[[], None] | None = None) -> None:
        self.config = config
        self.db = db  # the daemon's own connection, for the file check
        self.recover = recover  # requeue what a dead child left `active`
        self.on_processed = on_processed
        self.processed = 0
        self.problem: str | None = None
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._stopping = False
        self._exited = asyncio.Event()
        self._pending = bytearray()

    # the SMTP side's refusal hook
    def database_problem(self) -> str | None:
        if self.problem is None:
            try:
                check_same_file(self.db.conn)
            except DatabaseGone as exc:
                self.problem = str(exc)
                log.error("%s", exc)
        return self.problem

    def wake(self) -> None:
        self._send(WAKE)

    def reload(self, config: Config) -> None:
        self.config = config
        self._send(RELOAD)

    def stop(self) -> None:
        self._stopping = True
        self._send(STOP)

    def _send(self, command: bytes) -> None:
        if self._conn is None:
            return
        # the child gone: run() starts the next one, and it reads the spool anyway
        with contextlib.suppress(OSError):
            self._conn.send_bytes(command)

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=child_main, args=(str(self.config.path), child, self.config.worker),
            name="mailgate-pipeline", daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        loop = asyncio.get_running_loop()
        loop.add_reader(parent.fileno(), self._readable)
        log.info("pipeline process started (pid %s)", proc.pid)

    def _readable(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            self._exited.set()
            return
        kind, _, rest = data.decode("utf-8", "replace").partition(" ")
        if kind == "p":
            self.processed += 1
            with contextlib.suppress(ValueError):
                metrics.PIPELINE_SECONDS.observe(float(rest))
            if self.on_processed is not None:
                self.on_processed()
        elif kind == "g" and self.problem is None:
            self.problem = rest

    async def run(self) -> None:
        """Keep a child running until `stop`; then wait for it to finish its claimed work."""
        loop = asyncio.get_running_loop()
        backoff = 1.0
        while True:
            self._exited.clear()
            started = time.monotonic()
            self._start()
            proc = self._proc
            assert proc is not None
            await self._exited.wait()
            await loop.run_in_executor(None, proc.join)
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._stopping:
                return
            log.error("pipeline process %s ended unexpectedly (exit %s); its claimed mail goes"
                      " back to the spool and a new one starts in %.0fs", proc.pid,
                      proc.exitcode, backoff)
            await asyncio.sleep(backoff)
            backoff = 1.0 if time.monotonic() - started > 60 else min(
                RESTART_BACKOFF_MAX, backoff * 2)
            await loop.run_in_executor(None, self.recover)

    def kill(self) -> None:
        """The last resort at the stop deadline."""
        if self._proc is not None and self._proc.is_alive():
            with contextlib.suppress(OSError):
                os.kill(self._proc.pid or 0, signal.SIGKILL)

