"""The daemon: one asyncio process wiring the SMTP server, the spool writer, the pipeline
worker and the relay worker together, with an orderly stop on SIGTERM/SIGINT.

Input: a validated `Config`. Output: a running server until a stop signal. On start-up, work
that a crash left `active` in the spool goes back to `incoming` (or to `hold` once it has been
tried `[pipeline] max_attempts` times). On stop, the listener closes first, sessions get up to
`[server] shutdown_seconds` to finish, then the worker stops between messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from mailgate import app
from mailgate.config import Config
from mailgate.errors import UserError
from mailgate.outbound.relay import RelayWorker
from mailgate.pipeline import Pipeline, PipelineWorker
from mailgate.smtp.handler import MailgateHandler
from mailgate.smtp.recipients import RecipientPolicy
from mailgate.smtp.server import start_server
from mailgate.spool import Spool, SpoolWriter
from mailgate.store.db import open_db

log = logging.getLogger("mailgate.daemon")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter


async def serve(config: Config) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    db = open_db(config.db_path)
    spool = Spool(config.spool_path)
    requeued, held = spool.recover(config.pipeline_max_attempts)
    if requeued or held:
        log.warning("recovered spool: %d entries requeued, %d held after repeated crashes",
                    requeued, held)
    mail = app.mail_context(config)
    tokens = app.signer(config)
    relay = RelayWorker(
        config.db_path, config.relay, envelope_from=lambda m: mail.bounce_address(m.id),
        signer=app.dkim_signer(config), hostname=config.hostname,
    )
    writer = SpoolWriter(config.spool_path)
    pipeline = Pipeline(db, spool, config.data_dir, config.pipeline_max_attempts, mail=mail,
                        verify_bounce=tokens.outbound_from_address)
    worker = PipelineWorker(pipeline, on_processed=relay.wake)
    handler = MailgateHandler(
        RecipientPolicy.for_config(config),
        writer,
        max_recipients=config.max_recipients,
        data_dir=config.data_dir,
        min_free_bytes=config.min_free_bytes,
        notify=worker.wake,
    )
    try:
        server = await start_server(config, handler)
    except OSError as exc:
        writer.close()
        raise UserError(
            f"cannot listen on {config.listen_host}:{config.listen_port} ([server] listen in"
            f" {config.path}): {exc.strerror or exc}"
        ) from None
    worker_task = asyncio.create_task(worker.run(), name="pipeline-worker")
    relay_task = asyncio.create_task(relay.run(), name="relay-worker")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("mailgate listening on %s:%d (SMTP), data in %s",
             config.listen_host, config.listen_port, config.data_dir)
    try:
        await stop.wait()
    finally:
        log.info("stopping: closing the SMTP listener")
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), config.shutdown_seconds)
        worker.stop()
        await worker_task
        relay.stop()
        try:
            await asyncio.wait_for(relay_task, config.shutdown_seconds)
        except TimeoutError:  # an attempt cut short stays `sending`: deferred at next start
            log.warning("relay attempts still in flight after %.0fs; stopping anyway",
                        config.shutdown_seconds)
        relay.close()
        writer.close()
        spool.close()
        db.close()
        log.info("stopped")
