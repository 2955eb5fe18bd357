"""`mailgate agents list|passwd|token`: the agents' own credentials for the admin endpoint.

Input: an agent's e-mail (must be a configured `[[agents]]` entry, else one line and exit 1)
and a password typed twice with hidden input, or read from stdin (`--password-stdin`, one
line). Output: the Argon2 hash of the password and the SHA-256 of a personal API token in the
database (`mailgate.ops.accounts`), never either in clear nor in the config; a new token is
printed once, when made. Setting a password ends every session of that agent.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

import click

from mailgate.cli.base import State, emit, json_option, pass_state
from mailgate.errors import UserError
from mailgate.ops import accounts


@click.group("agents")
def agents_group() -> None:
    """The agents' passwords and API tokens for the admin endpoint ([[agents]])."""


@agents_group.command("list")
@json_option
@pass_state
def agents_list(state: State, as_json: bool) -> None:
    """Each configured agent: role, whether a password and a token are set, sessions open."""
    rows = [asdict(a) for a in accounts.list_accounts(state.db(), state.config)]
    if not as_json:
        for row in rows:
            row["password"] = "set" if row["password"] else "-"
            row["token"] = "set" if row["token"] else "-"
    emit(rows, as_json, ["email", "name", "role", "password", "token", "sessions"])


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise UserError("--password-stdin: nothing on stdin")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise UserError("no terminal to ask for the password: use --password-stdin")
    first = click.prompt("New password", hide_input=True, default="", show_default=False)
    again = click.prompt("Again", hide_input=True, default="", show_default=False)
    if first != again:
        raise UserError("the two passwords differ; nothing changed")
    return str(first)


@agents_group.command("passwd")
@click.argument("email")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of stdin instead of asking twice.")
@pass_state
def agents_passwd(state: State, email: str, password_stdin: bool) -> None:
    """Set EMAIL's password for the admin panels (Argon2 hash in the database); every session
    of the agent ends (sign-out everywhere)."""
    config = state.config
    agent = accounts.configured(config, email)  # before asking: an unknown e-mail fails first
    password = _read_password(password_stdin)
    ended = accounts.set_password(state.db(), config, agent.email, password)
    click.echo(f"password set for {agent.email}; {ended} session(s) ended")


@agents_group.command("token")
@click.argument("email")
@click.option("--rotate", is_flag=True, help="Replace the agent's token (the old one stops"
              " working at once).")
@pass_state
def agents_token(state: State, email: str, rotate: bool) -> None:
    """Make EMAIL's personal API token (`Authorization: Bearer …`) and print it, once: only
    its hash is kept."""
    click.echo(accounts.new_token(state.db(), state.config, email, rotate))
