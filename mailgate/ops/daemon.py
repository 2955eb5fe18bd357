"""The daemon: one asyncio process wiring the SMTP server, the spool writer, the pipeline
worker (with `[pipeline] process = "separate"` in a child process of its own:
`mailgate.ops.pipeline_process`), the relay worker and the webhook worker
(`mailgate.outbound.webhooks`) together, with an orderly stop on SIGTERM/SIGINT and a reload
of the configuration on SIGHUP.

Input: a validated `Config`, the signals, and systemd's environment (see `mailgate.ops.sdnotify`);
in a worker of `serve --workers N` (`Config.worker` set), the listening socket its supervisor
binds (`mailgate.ops.supervisor`) and the supervisor's notify socket in place of systemd's.
Output: a running server until a stop signal. On start-up, work that a crash left `active` in
the spool goes back to `incoming` (or to `hold` once it has been tried `[pipeline] max_attempts`
times); the SMTP socket is the one systemd passes (socket activation) or `[server] listen`;
`READY=1` goes to systemd once everything is up. On PostgreSQL the node registers in the
`nodes` table under `[storage] node_id` (refused in one line when another node uses that name)
and says it is alive every 30 s.

SIGTERM/SIGINT: `STOPPING=1`; new sessions and new transactions get `421 4.3.2`, transactions
under way run to their reply (a 250 only ever follows the spool commit, so nothing acknowledged
is lost); then the pipeline worker stops after its batch, the relay after the mails in flight,
all within `[server] shutdown_seconds` as far as the mail in hand allows.

SIGHUP: the config file is read again. When it is valid (and its templates render), the new
recipient policy, templates, branding, workflow policy, relay settings, DKIM key, `[spam]`,
`[[webhooks]]` and log settings apply to the next message, without dropping a connection; settings
that only a restart can change (listen addresses, hostname, TLS, data_dir, message size) keep
their running values and are logged as such. When it is not, one line names the file and key,
and the running configuration stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from mailgate import __version__
from mailgate.config import Config, Relay, load_config
from mailgate.errors import UserError
from mailgate.ops import app, sdnotify, spools
from mailgate.ops.lockfile import DataDirLock
from mailgate.ops.logsetup import setup_logging
from mailgate.ops.pipeline_process import PipelineProcess
from mailgate.outbound.mailer import MailContext
from mailgate.outbound.relay import RelayWorker
from mailgate.outbound.webhooks import WebhookWorker
from mailgate.pipeline.process import Pipeline, PipelineWorker
from mailgate.pipeline.scheduler import Scheduler
from mailgate.smtp.handler import MailgateHandler
from mailgate.smtp.recipients import RecipientPolicy
from mailgate.smtp.server import Sessions, start_server
from mailgate.smtp.spamscan import Scanner
from mailgate.spool import Spool, SpoolWriter
from mailgate.store import nodes
from mailgate.store.connect import is_postgres, open_store
from mailgate.store.outbound import OutboundMail

log = logging.getLogger("mailgate.daemon")


# Settings read once at start: a reload logs a change to them and keeps the running value.
RESTART_ONLY = {
    "listen_host": "[server] listen", "listen_port": "[server] listen",
    "hostname": "[server] hostname", "max_message_size": "[server] max_message_size",
    "tls_cert": "[server] tls_cert", "tls_key": "[server] tls_key",
    "data_dir": "[storage] data_dir", "admin_host": "[admin] listen",
    "pipeline_process": "[pipeline] process",
    "node_id": "[storage] node_id", "workers": "[server] workers",
    "admin_port": "[admin] listen", "admin_tls_cert": "[admin] tls_cert",
    "admin_tls_key": "[admin] tls_key",
    **{key: f"[server] {key}" for key in (
        "bare_newline", "max_sessions", "max_sessions_per_client", "idle_timeout",
        "min_data_rate", "junk_command_limit", "proxy_protocol", "hard_error_limit",
        "unknown_recipient_limit")},
}


def load_worker_config(path: Path, worker: int | None) -> Config:
    """The config file, as worker `worker` of `serve --workers` sees it (None: the daemon)."""
    config = load_config(path)
    return config if worker is None else config.for_worker(worker)


def reloadable(old: Config, new: Config) -> tuple[Config, list[str]]:
    """`new` with the restart-only settings of `old`, and the names of those that differ."""
    differ = sorted({key for field, key in RESTART_ONLY.items()
                     if getattr(old, field) != getattr(new, field)})
    keep = {field: getattr(old, field) for field in RESTART_ONLY}
    return dataclasses.replace(new, **keep), differ


def inherited_smtp_socket() -> socket.socket | None:
    """The SMTP socket from socket activation: the one named `smtp`, else the first."""
    found = sdnotify.listen_sockets()
    if not found:
        return None
    name = "smtp" if "smtp" in found else next(iter(found))
    sock = found.pop(name)
    for other, extra in found.items():
        log.warning("socket activation: socket %r is not used by mailgate; closing it", other)
        extra.close()
    return sock


@dataclasses.dataclass
class _Live:
    """What a reload replaces: the running config and mail context."""

    config: Config
    mail: MailContext
    reloaders: list[Callable[[Config], None]] = dataclasses.field(default_factory=list)
    # (the relay of an outgoing mail, its envelope sender): app.relay_route
    routes: tuple[Callable[[OutboundMail], Relay], Callable[[OutboundMail], str]] | None = None

    def route(self) -> tuple[Callable[[OutboundMail], Relay], Callable[[OutboundMail], str]]:
        if self.routes is None:
            self.routes = app.relay_route(self.config, lambda m: self.mail.bounce_address(m.id))
        return self.routes


async def serve(config: Config, sock: socket.socket | None = None) -> None:
    """Run until SIGTERM/SIGINT. `sock`: the listening SMTP socket handed over by the
    supervisor of `serve --workers N` (mailgate.ops.supervisor), to a worker (`config.worker`
    set), which then owns only its own spool under data_dir/workers/<i>."""
    # One daemon per data_dir (a worker: per its own directory), locked before the spool
    # recovery, which would requeue the in-flight mail of a daemon already running there.
    with DataDirLock(config.state_dir):
        if config.worker is None:  # what workers of an earlier `--workers N` run left
            _adopt_worker_spools(config)
        await _serve(config, sock)


def _adopt_worker_spools(config: Config) -> None:
    """The single daemon takes over the unfinished mail of the spools of `serve --workers`
    (each locked while it is moved: a worker still running there is never robbed)."""
    for spool in spools.worker_spools(config.data_dir):
        try:
            with DataDirLock(spool.path.parent):
                spools.adopt(config.spool_path, spool.path)
        except UserError as exc:
            log.error("%s: its mail stays there until that process stops", exc)


async def _serve(config: Config, given: socket.socket | None = None) -> None:
    notifier = sdnotify.Notifier.from_env()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    db = open_store(config.database)
    several = is_postgres(config.database)  # other nodes may share this database
    if several:
        nodes.register(db, config.node_id, node_where(config), __version__)
    app.sync_organizations(config, db)
    spool = Spool(config.spool_path)
    requeued, held = spool.recover(config.pipeline_max_attempts)
    if requeued or held:
        log.warning("recovered spool: %d entries requeued, %d held after repeated crashes",
                    requeued, held)
    mail = app.mail_context(config)
    live = _Live(config, mail)
    relay = RelayWorker(
        config.database, config.relay, envelope_from=lambda m: live.route()[1](m),
        signer=app.dkim_signer(config), hostname=config.hostname,
        relay_for=lambda m: live.route()[0](m), node_id=config.node_id,
        webhooks=config.webhooks,
    )
    webhooks = WebhookWorker(config.database, config.webhooks, node_id=config.node_id)

    def processed() -> None:  # the pipeline committed: mail and events may be due
        relay.wake()
        webhooks.wake()

    admin = None
    if config.admin_host is not None:  # an unsafe [admin] listen is refused here, before binding
        from mailgate.admin.server import AdminServer

        admin = AdminServer(config, relay)
    writer = SpoolWriter(config.spool_path)
    pipeline: Pipeline | None = None
    worker: PipelineWorker | PipelineProcess
    if config.pipeline_process == "separate":  # its own core: see mailgate.ops.pipeline_process
        worker = PipelineProcess(
            config, db, recover=lambda: _recover(spool, live.config.pipeline_max_attempts),
            on_processed=processed)
        database_problem = worker.database_problem
    else:
        pipeline = app.pipeline(config, db, spool, mail)
        worker = PipelineWorker(pipeline, on_processed=processed)
        database_problem = pipeline.database_problem
    automation = [pipeline.automation if pipeline else app.automation(config, mail)]
    scanner = Scanner(config.spam, config.hostname)
    handler = MailgateHandler(
        RecipientPolicy.for_config(config),
        writer,
        max_recipients=config.max_recipients,
        data_dir=config.data_dir,
        min_free_bytes=config.min_free_bytes,
        notify=worker.wake,
        refusal=lambda: writer.problem or database_problem(),
        scanner=scanner,
    )
    sessions = Sessions()
    sock = given if given is not None else inherited_smtp_socket()
    try:
        server = await start_server(config, handler, sock=sock, sessions=sessions)
    except OSError as exc:
        writer.close()
        raise UserError(
            f"cannot listen on {config.listen_host}:{config.listen_port} ([server] listen in"
            f" {config.path}): {exc.strerror or exc}"
        ) from None
    if admin is not None:
        try:
            await admin.start()
        except UserError:
            server.close()
            writer.close()
            raise
    where = f"{config.listen_host}:{config.listen_port}"
    if given is not None:
        where = f"{_address(sock)} (worker {config.worker}, node {config.node_id})"
    elif sock is not None:
        where = f"{_address(sock)} (socket from systemd; [server] listen not used)"
    worker_task = asyncio.create_task(worker.run(), name="pipeline-worker")
    relay_task = asyncio.create_task(relay.run(), name="relay-worker")
    webhooks_task = asyncio.create_task(webhooks.run(), name="webhook-worker")
    scheduler = Scheduler(config.database, lambda: automation[0], config.tick_seconds,
                          node_id=config.node_id,
                          retention=lambda: (live.config.retention, live.config.data_dir))
    scheduler_task = asyncio.create_task(scheduler.run(), name="scheduler")
    node_beat = (asyncio.create_task(_node_beat(config), name="node-beat") if several
                 else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def apply(new: Config, mail: MailContext) -> None:
        live.config, live.mail = new, mail
        if pipeline is not None:  # the scheduler shares the pipeline's rules
            app.reconfigure(pipeline, new, mail)
            automation[0] = pipeline.automation
        else:
            automation[0] = app.automation(new, mail)
        own = open_store(new.database)  # not `db`: the pipeline thread may be in a transaction
        try:
            app.sync_organizations(new, own)
        finally:
            own.close()
        if isinstance(worker, PipelineProcess):
            worker.reload(new)
        handler.policy = RecipientPolicy.for_config(new)
        handler.max_recipients, handler.min_free_bytes = new.max_recipients, new.min_free_bytes
        scanner.settings = new.spam
        relay.relay, relay.signer = new.relay, app.dkim_signer(new)
        relay.webhooks = webhooks.webhooks = new.webhooks
        live.routes = None  # made again from the new config
        setup_logging(new.log_level, new.log_format)
        for reload_hook in live.reloaders:  # e.g. the admin endpoint's
            reload_hook(new)

    if admin is not None:
        live.reloaders.append(admin.reload)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload(live, apply, notifier))
    log.info("mailgate listening on %s (SMTP), data in %s", where, config.data_dir)
    if config.spam.enabled:
        log.info("spam: rspamd at %s asked before each 250 (reject at %g, quarantine at %g,"
                 " no automatic mail at %g; on error: %s)", config.spam.rspamd,
                 config.spam.reject_score, config.spam.quarantine_score,
                 config.spam.no_autoreply_score, config.spam.on_error)
    # Everything is up (SMTP, workers, the admin endpoint when configured): tell systemd.
    notifier.ready(f"accepting mail on {where}")
    beat = None
    if notifier.enabled:
        def status() -> str:
            return (f"{handler.accepted} accepted, {worker.processed} processed,"
                    f" {relay.sent} sent")
        beat = asyncio.create_task(
            sdnotify.heartbeat(notifier, status, sdnotify.watchdog_interval()), name="heartbeat")
    try:
        await stop.wait()
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        grace = live.config.shutdown_seconds
        deadline = loop.time() + grace
        busy = sessions.begin_drain()
        notifier.stopping(f"stopping: {busy} SMTP transaction(s) to finish")
        log.info("stopping: new SMTP sessions get 421 4.3.2; waiting up to %.0fs for %d"
                 " transaction(s) under way", grace, busy)
        cut = await sessions.drain(max(0.0, deadline - loop.time() - 0.5))
        if cut:
            log.warning("%d SMTP transaction(s) cut short at the deadline (never acknowledged:"
                        " the clients retry)", cut)
        server.close()
        scheduler.stop()
        await scheduler_task
        worker.stop()
        if isinstance(worker, PipelineProcess):  # finishes what it claimed, within the grace
            try:
                await asyncio.wait_for(asyncio.shield(worker_task),
                                       max(5.0, deadline - loop.time()))
            except TimeoutError:  # what it still had claimed is requeued at the next start
                log.warning("pipeline process still busy after %.0fs; stopping it", grace)
                worker.kill()
                await worker_task
        else:
            await worker_task  # finishes the batch in hand: claimed entries are never left

        relay.stop()
        webhooks.stop()
        try:
            await asyncio.wait_for(relay_task, max(1.0, deadline - loop.time()))
        except TimeoutError:  # an attempt cut short stays `sending`: deferred at next start
            log.warning("relay attempts still in flight after %.0fs; stopping anyway", grace)
        try:
            await asyncio.wait_for(webhooks_task, max(1.0, deadline - loop.time()))
        except TimeoutError:  # a POST cut short keeps its claim: retried at the next start
            log.warning("webhook POSTs still in flight after %.0fs; stopping anyway", grace)
        if beat is not None:
            beat.cancel()
        if node_beat is not None:
            node_beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await node_beat
        if admin is not None:
            await admin.stop()
        relay.close()
        webhooks.close()
        await scanner.close()
        if pipeline is not None and pipeline.auth is not None:
            pipeline.auth.close()
        writer.close()
        spool.close()
        if several:
            try:
                nodes.leave(db, config.node_id, node_where(config))
            except Exception as exc:  # the database down: the row goes stale by itself
                log.warning("could not take this node out of the nodes table: %s", exc)
        db.close()
        log.info("stopped")


def node_where(config: Config) -> str:
    """Where this node runs, as the nodes table shows it: host and spool."""
    return f"{socket.gethostname()} {config.spool_path}"


async def _node_beat(config: Config) -> None:
    """Tell the other nodes this one is alive, every `nodes.BEAT_SECONDS`, on a connection of
    its own (the pipeline's may be inside a transaction)."""
    loop = asyncio.get_running_loop()
    own = None
    down = False
    while True:
        await asyncio.sleep(nodes.BEAT_SECONDS)
        try:
            if own is None:
                own = await loop.run_in_executor(None, open_store, config.database)
            await loop.run_in_executor(None, nodes.beat, own, config.node_id)
            if down:
                log.info("the database answers again")
            down = False
        except asyncio.CancelledError:
            break
        except Exception as exc:
            if not down:
                log.warning("the database is down (node heartbeat): %s", exc)
            down = True
    if own is not None:
        own.close()


def _recover(spool: Spool, max_attempts: int) -> None:
    """What a pipeline process that died had claimed goes back to `incoming` (or to `hold`
    after `max_attempts` crashes: a message that kills the pipeline every time)."""
    requeued, held = spool.recover(max_attempts)
    if requeued or held:
        log.warning("recovered spool: %d entries requeued, %d held after repeated crashes",
                    requeued, held)


def _address(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return "?"
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)


def reload(live: _Live, apply: Callable[[Config, MailContext], None],
           notifier: sdnotify.Notifier) -> bool:
    """SIGHUP: read the config file again and apply it, or keep the running one (one line)."""
    notifier.reloading()
    old = live.config
    try:
        new, restart = reloadable(old, load_worker_config(old.path, old.worker))
        mail = app.mail_context(new)
        app.ruleset(new)  # a bad rule keeps the running configuration
        problems = mail.renderer.check()
        if problems:
            raise UserError(f"{new.path}: templates: {problems[0]}")
    except UserError as exc:
        log.error("reload failed, keeping the running configuration: %s", exc)
        notifier.ready("reload failed; running on the previous configuration")
        return False
    except Exception as exc:  # e.g. the secret or a key file unreadable
        log.error("reload failed, keeping the running configuration: %s: %s: %s",
                  old.path, type(exc).__name__, exc)
        notifier.ready("reload failed; running on the previous configuration")
        return False
    changed = [f.name for f in dataclasses.fields(Config)
               if getattr(old, f.name) != getattr(new, f.name)]
    try:
        apply(new, mail)
    except Exception:
        log.exception("reload: applying %s failed part-way; restart mailgate", old.path)
        notifier.ready("reload failed part-way; restart mailgate")
        return False
    for key in restart:
        log.warning("reload: %s changed in %s; it takes effect at the next restart", key,
                    old.path)
    log.info("reloaded configuration from %s (changed: %s)", old.path,
             ", ".join(changed) or "nothing")
    notifier.ready("configuration reloaded")
    return True
