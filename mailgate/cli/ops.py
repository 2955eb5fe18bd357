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
@pass_state
def serve(state: State) -> None:
    """Run the daemon: SMTP listener, spool, pipeline, relay, scheduler, admin endpoint."""
    from mailgate.ops.daemon import serve as run_daemon
    from mailgate.ops.logsetup import setup_logging

    cfg = state.config
    setup_logging(cfg.log_level, cfg.log_format)
    asyncio.run(run_daemon(cfg))

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
