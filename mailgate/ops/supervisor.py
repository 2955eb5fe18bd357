"""`mailgate serve --workers N`: a supervisor process and N worker daemons on one SMTP port, so
one host uses all its cores (the store must be PostgreSQL: SQLite is one process's).

Input: the validated config (trusted), the signals, systemd's environment (`mailgate.ops.
sdnotify`), and from each worker the datagrams it sends to its own notify socket (our own
child's, checked for form: `READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=…`, and
`MAILGATE_ERROR=…`, the one line a worker that cannot start would have printed).
Output: N running workers until SIGTERM/SIGINT; `READY=1` to systemd once every worker has
said it is ready; the exit status (one line and status 1 when the service cannot start).

What runs where. The supervisor holds `data_dir/mailgate.lock` (so a plain `serve` on the same
data_dir is refused), checks the database once (reachable, schema), binds N listening sockets
on `[server] listen` with SO_REUSEPORT (the kernel spreads new connections over them; a port
someone else holds is found here, before any worker starts: one line), moves mail left in
spools nobody will run (`mailgate.ops.spools.adopt`) into worker 0's, then starts the workers
one after the other. Worker i is a whole daemon (`mailgate.ops.daemon.serve` with
`Config.for_worker(i)`): node id `<node_id>-<i>`, its own spool and lock under
`data_dir/workers/<i>/`, its own SMTP server on socket i, pipeline, relay and scheduler; the
admin endpoint runs in worker 0 only. Everything else under data_dir (raw mail, attachments,
the secret, DKIM keys, the admin token) is shared, as it is between the nodes of one host.

A worker that dies is started again (1 s, doubling to 30 s while it keeps dying), on the same
socket: connections the kernel queued to it meanwhile wait in that socket's backlog; its spool
is recovered by the new worker at start (what it had `active` goes back to `incoming`), so mail
it acknowledged is processed by it, once. The workers die with the supervisor
(`PR_SET_PDEATHSIG`). SIGTERM/SIGINT go to every worker (each drains as a single daemon does);
SIGHUP too (each reloads; `READY=1` again once all have answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import socket
import sys
import time

from mailgate.config import Config
from mailgate.errors import UserError
from mailgate.ops import sdnotify, spools
from mailgate.ops.lockfile import DataDirLock

log = logging.getLogger("mailgate.supervisor")

ERROR_FIELD = "MAILGATE_ERROR"  # a worker's start-up error, sent instead of printed
SUPERVISOR_ENV = "MAILGATE_SUPERVISOR_PID"
RESTART_BACKOFF_MAX = 30.0
START_TIMEOUT = 60.0  # seconds one worker may take to say READY at start
RELOAD_TIMEOUT = 30.0
KILL_MARGIN = 15.0  # after shutdown_seconds, before SIGKILL


@dataclasses.dataclass
class _Worker:
    index: int
    sock: socket.socket  # its listening SMTP socket, held here across its restarts
    notify: socket.socket  # where it sends sd_notify datagrams
    address: str
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    status: str = "starting"
    error: str | None = None
    started: float = 0.0


def listening_sockets(config: Config, count: int) -> list[socket.socket]:
    """`count` sockets listening on `[server] listen` with SO_REUSEPORT, or with socket
    activation the one systemd passed, `count` times. A port in use: UserError, one line."""
    from mailgate.ops.daemon import inherited_smtp_socket

    inherited = inherited_smtp_socket()
    if inherited is not None:  # all workers accept on systemd's socket
        return [inherited] * count
    where = f"{config.listen_host}:{config.listen_port} ([server] listen in {config.path})"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            config.listen_host or None, config.listen_port, type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE)[0]
    except OSError as exc:
        raise UserError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    made: list[socket.socket] = []
    try:
        # Without SO_REUSEPORT first: a port held by anyone (another mailgate, another server)
        # is refused here rather than silently shared.
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            made.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(511)
    except OSError as exc:
        for sock in made:
            sock.close()
        raise UserError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return made


def check_database(config: Config) -> None:
    """The database once, before any worker: reachable, at the schema this mailgate needs (an
    empty one gets it here, not N times at once). UserError: one line."""
    from mailgate.store.connect import open_store

    open_store(config.database).close()


def adopt_orphans(config: Config, workers: int) -> None:
    """Unfinished mail in the single daemon's spool or in the spool of a worker index this run
    does not start goes to worker 0's spool (each source locked meanwhile)."""
    target = config.for_worker(0).spool_path
    sources = [config.data_dir / "spool.db"]  # locked by us: data_dir/mailgate.lock
    locks: list[DataDirLock] = []
    try:
        for spool in spools.worker_spools(config.data_dir):
            if spool.worker is not None and spool.worker >= workers:
                locks.append(DataDirLock(spool.path.parent).acquire())
                sources.append(spool.path)
        if not any(s.is_file() for s in sources):
            return
        target_lock = DataDirLock(target.parent).acquire()
        try:
            for source in sources:
                spools.adopt(target, source)
        finally:
            target_lock.release()
    finally:
        for lock in locks:
            lock.release()


class Supervisor:
    def __init__(self, config: Config, count: int, sockets: list[socket.socket]) -> None:
        self.config = config
        self.count = count
        self.notifier = sdnotify.Notifier.from_env()
        self.workers = [self._worker(i, s) for i, s in enumerate(sockets)]
        self.stopping = False
        self.stop_event = asyncio.Event()
        self.killed = 0

    def _worker(self, index: int, sock: socket.socket) -> _Worker:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        name = f"mailgate-{os.getpid()}-{index}-{secrets.token_hex(4)}"
        notify.bind("\0" + name)  # the abstract namespace: no file to clean up
        notify.setblocking(False)
        return _Worker(index, sock, notify, "@" + name)

    # --- a worker's process ---------------------------------------------------------------

    async def _spawn(self, w: _Worker) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS",
                            "LISTEN_FDNAMES")}
        env["NOTIFY_SOCKET"] = w.address
        env[SUPERVISOR_ENV] = str(os.getpid())
        fd = w.sock.fileno()
        w.ready.clear()
        w.error, w.status, w.started = None, "starting", time.monotonic()
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailgate", "--config", str(self.config.path), "serve",
            "--worker-index", str(w.index), "--listen-fd", str(fd),
            pass_fds=(fd,), env=env, stdin=asyncio.subprocess.DEVNULL)
        log.info("worker %d started (pid %d, node %s-%d)", w.index, w.proc.pid,
                 self.config.node_id, w.index)

    def _datagram(self, w: _Worker) -> None:
        while True:
            try:
                data = w.notify.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            for line in data.decode("utf-8", "replace").splitlines():
                key, _, value = line.partition("=")
                if key == "READY" and value == "1":
                    w.ready.set()
                elif key == "STATUS":
                    w.status = value
                elif key == ERROR_FIELD:
                    w.error = value

    def _exit_text(self, w: _Worker) -> str:
        code = w.proc.returncode if w.proc is not None else None
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"

    async def _first_start(self, w: _Worker) -> None:
        """Start worker `w` and wait until it is READY; UserError when it cannot start."""
        assert w.proc is None or w.proc.returncode is not None
        await self._spawn(w)
        assert w.proc is not None
        ready = asyncio.ensure_future(w.ready.wait())
        exited = asyncio.ensure_future(w.proc.wait())
        stop = asyncio.ensure_future(self.stop_event.wait())
        try:
            await asyncio.wait({ready, exited, stop}, timeout=START_TIMEOUT,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (ready, exited, stop):
                task.cancel()
        if w.ready.is_set() or self.stop_event.is_set():
            return
        if w.proc.returncode is None:
            raise UserError(f"worker {w.index} did not start within {START_TIMEOUT:.0f}s")
        self._datagram(w)  # an error datagram sent just before the exit
        if w.error:
            raise UserError(w.error)
        raise UserError(f"worker {w.index} could not start ({self._exit_text(w)}; its log"
                        " says why)")

    async def _keep(self, w: _Worker) -> None:
        """Start `w` again whenever it ends, until the supervisor stops."""
        backoff = 1.0
        while True:
            if w.proc is not None:
                await w.proc.wait()
                self._datagram(w)
                if self.stopping:
                    return
                why = f": {w.error}" if w.error else ""
                log.error("worker %d (pid %d) ended unexpectedly (%s%s); what it had claimed"
                          " goes back to its spool and a new one starts in %.0fs", w.index,
                          w.proc.pid, self._exit_text(w), why, backoff)
                w.status = "restarting"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), backoff)
            if self.stopping:
                return
            ran = time.monotonic() - w.started
            backoff = 1.0 if ran > 60 else min(RESTART_BACKOFF_MAX, backoff * 2)
            try:
                await self._spawn(w)
            except OSError as exc:  # e.g. out of processes: try again after the backoff
                log.error("worker %d could not be started: %s", w.index, exc)
                w.proc = None

    # --- signals ------------------------------------------------------------------------

    def _signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    async def _reload(self) -> None:
        self.notifier.reloading()
        live = [w for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for w in live:
            w.ready.clear()
        self._signal_all(signal.SIGHUP)
        waits = [asyncio.ensure_future(w.ready.wait()) for w in live]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=RELOAD_TIMEOUT)
            for task in pending:
                task.cancel()
        for w in live:
            w.ready.set()
        self.notifier.ready(f"configuration reloaded by {len(live)} worker(s)")

    async def _stop_workers(self) -> None:
        self.stopping = True
        self.notifier.stopping(f"stopping {self.count} worker(s)")
        self._signal_all(signal.SIGTERM)
        waits = [w.proc.wait() for w in self.workers if w.proc is not None]
        deadline = self.config.shutdown_seconds + KILL_MARGIN
        try:
            await asyncio.wait_for(asyncio.gather(*waits), deadline)
        except TimeoutError:
            for w in self.workers:
                if w.proc is not None and w.proc.returncode is None:
                    log.error("worker %d still running %.0fs after SIGTERM; killing it",
                              w.index, deadline)
                    self.killed += 1
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.kill()
            await asyncio.gather(*(w.proc.wait() for w in self.workers if w.proc is not None))

    # --- the whole life -----------------------------------------------------------------

    def status(self) -> str:
        return "; ".join(f"worker {w.index}: {w.status}" for w in self.workers)

    async def run(self) -> bool:
        """Until SIGTERM/SIGINT; True when every worker stopped by itself."""
        loop = asyncio.get_running_loop()
        for w in self.workers:
            loop.add_reader(w.notify.fileno(), self._datagram, w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        keepers: list[asyncio.Task[None]] = []
        beat = None
        try:
            try:
                for w in self.workers:  # one after the other: no start-up races between them
                    await self._first_start(w)
                    if self.stop_event.is_set():
                        break
            except UserError:
                await self._stop_workers()
                raise
            keepers = [asyncio.create_task(self._keep(w), name=f"worker-{w.index}")
                       for w in self.workers if w.proc is not None]
            if not self.stop_event.is_set():
                where = f"{self.config.listen_host}:{self.config.listen_port}"
                log.info("mailgate supervisor: %d workers accepting mail on %s", self.count,
                         where)
                self.notifier.ready(f"accepting mail on {where} with {self.count} workers")
                loop.add_signal_handler(signal.SIGHUP,
                                        lambda: asyncio.ensure_future(self._reload()))
                if self.notifier.enabled:
                    beat = asyncio.create_task(sdnotify.heartbeat(
                        self.notifier, self.status, sdnotify.watchdog_interval()))
                await self.stop_event.wait()
            loop.remove_signal_handler(signal.SIGHUP)
            log.info("stopping: SIGTERM to %d worker(s)", self.count)
            await self._stop_workers()
            for task in keepers:
                await task
        finally:
            if beat is not None:
                beat.cancel()
            for w in self.workers:
                loop.remove_reader(w.notify.fileno())
                w.notify.close()
            for sock in {id(w.sock): w.sock for w in self.workers}.values():
                sock.close()
        log.info("stopped")
        return self.killed == 0


async def supervise(config: Config, count: int) -> bool:
    """`serve --workers count`; True on a clean stop."""
    if config.database_url is None:
        raise UserError(f"serve --workers {count} needs [storage] database on PostgreSQL in"
                        f" {config.path} (the embedded SQLite store is one process's)")
    with DataDirLock(config.data_dir):
        check_database(config)
        sockets = listening_sockets(config, count)
        try:
            adopt_orphans(config, count)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return await Supervisor(config, count, sockets).run()


def become_worker() -> None:
    """In a worker, first thing: die with the supervisor (Linux), and stop at once when it is
    already gone."""
    from mailgate.ops.pipeline_process import _die_with_parent

    _die_with_parent()
    expected = os.environ.get(SUPERVISOR_ENV, "")
    if expected.isdigit() and os.getppid() != int(expected):
        raise SystemExit(1)


def send_error(message: str) -> bool:
    """A worker that cannot start tells the supervisor, which prints the one line."""
    return sdnotify.Notifier.from_env().notify(f"{ERROR_FIELD}={message}")
