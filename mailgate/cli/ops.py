"""`mailgate serve`, `check-config`, `systemd-unit` and `admin token`: running the daemon.

Input: the config file named by `--config` (validated; a bad one is one line naming the file
and key). Output: the running daemon, or one line / the unit text / the token on stdout.
"""

from __future__ import annotations

import asyncio

import click

from mailgate.cli.base import (
    State,
    pass_state,
)
from mailgate.config.load import MAX_WORKERS
from mailgate.errors import UserError
from mailgate.ops import app


@click.command("check-config")
@pass_state
def check_config(state: State) -> None:
    """Validate the configuration file and exit (0 when valid)."""
    cfg = state.config
    ruleset = app.ruleset(cfg)  # rules and SLAs are part of the configuration
    click.echo(f"{cfg.path}: ok ({len(cfg.domains)} domains, {len(cfg.mailboxes)} mailboxes,"
               f" {len(cfg.agents)} agents, {len(ruleset.rules)} rules)")


@click.command()
@click.option("--workers", type=click.IntRange(1, MAX_WORKERS), default=None, metavar="N",
              help="Processes, each with its own SMTP listener on the one port (SO_REUSEPORT),"
              " spool, pipeline and relay (default: [server] workers, 1). More than 1 needs"
              " [storage] database on PostgreSQL.")
@click.option("--worker-index", type=click.IntRange(0, MAX_WORKERS - 1), default=None,
              hidden=True)  # started by the supervisor of --workers N: mailgate.ops.supervisor
@click.option("--listen-fd", type=click.IntRange(3), default=None, hidden=True)
@click.pass_context
def serve(ctx: click.Context, workers: int | None, worker_index: int | None,
          listen_fd: int | None) -> None:
    """Run the daemon: SMTP listener, spool, pipeline, relay, scheduler, admin endpoint."""
    from mailgate.ops.logsetup import setup_logging

    state = ctx.find_object(State)
    assert state is not None
    if worker_index is not None:
        _serve_worker(state, worker_index, listen_fd)
        return
    cfg = state.config
    count = workers or cfg.workers
    if count > 1 and cfg.database_url is None:
        raise UserError(f"serve --workers {count} needs [storage] database on PostgreSQL in"
                        f" {cfg.path} (the embedded SQLite store is one process's)")
    setup_logging(cfg.log_level, cfg.log_format)
    if count == 1:
        from mailgate.ops.daemon import serve as run_daemon

        asyncio.run(run_daemon(cfg))
        return
    from mailgate.ops.supervisor import supervise

    if not asyncio.run(supervise(cfg, count)):
        ctx.exit(1)


def _serve_worker(state: State, index: int, listen_fd: int | None) -> None:
    """One worker of `serve --workers N`: a whole daemon on the socket the supervisor passed.
    An error that stops it at start goes to the supervisor, which prints it once."""
    import socket

    from mailgate.ops.daemon import serve as run_daemon
    from mailgate.ops.logsetup import setup_logging
    from mailgate.ops.supervisor import become_worker, send_error

    become_worker()
    try:
        cfg = state.config.for_worker(index)
        setup_logging(cfg.log_level, cfg.log_format)
        sock = None
        if listen_fd is not None:
            sock = socket.socket(fileno=listen_fd)
            sock.setblocking(False)
        asyncio.run(run_daemon(cfg, sock))
    except UserError as exc:
        if not send_error(str(exc)):
            raise
        raise SystemExit(1) from None

# --- admin endpoint -------------------------------------------------------------------------


@click.group("admin")
def admin_group() -> None:
    """The admin HTTP endpoint ([admin] listen)."""


@admin_group.command("token")
@click.option("--rotate", is_flag=True,
              help="Make a new token; the old one and every session stop working at once.")
@pass_state
def admin_token(state: State, rotate: bool) -> None:
    """Print the admin token (created on first use, in data_dir/admin.token, mode 0600)."""
    from mailgate.admin import token as admin_token_file

    data_dir = state.config.data_dir
    token = (admin_token_file.rotate if rotate else admin_token_file.load_or_create)(data_dir)
    click.echo(token)


@click.command("systemd-unit")
@click.argument("unit", type=click.Choice(["service", "socket"]), default="service")
def systemd_unit(unit: str) -> None:
    """Print the systemd unit shipped with mailgate (mailgate.service, or with `socket` the
    optional mailgate.socket), e.g. `mailgate systemd-unit > /etc/systemd/system/mailgate.service`.
    """
    from mailgate import builtin

    click.echo(builtin.systemd_unit(f"mailgate.{unit}"), nl=False)
