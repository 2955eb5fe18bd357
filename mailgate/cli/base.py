"""What every command shares: the root group, the state, `--json`, tables and one-line errors.

Input: arguments typed by an administrator (trusted intent, untrusted form). Output: tables for
people or JSON (`--json`) for scripts on stdout; a user mistake — a usage error click finds (an
unknown option or command, a bad value) as much as one of ours — prints one line on stderr and
exits 1, never a traceback. `--config PATH` is taken before the command name and after it
(`finish_commands`). Listing values come from mail and are printed as data (`cell`). The
command modules import this one; it imports none of them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click

from mailgate.config import Config, load_config
from mailgate.errors import UserError
from mailgate.spool import Spool
from mailgate.store.connect import open_store


def _usage_line(exc: click.UsageError) -> None:
    """A usage error as one line on stderr: what is wrong and where the help is."""
    where = exc.ctx.command_path if exc.ctx is not None else "mailgate"
    message = " ".join(exc.format_message().split())
    click.echo(f"mailgate: {message} (see '{where} --help')", err=True)


class _Cli(click.Group):
    """Turns our own errors, usage errors and environment errors into one line and exit
    status 1."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:  # the options before the command name
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            _usage_line(exc)
            raise click.exceptions.Exit(1) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"mailgate: {exc}", err=True)
            ctx.exit(1)
        except click.UsageError as exc:  # the command, its options and arguments
            _usage_line(exc)
            ctx.exit(1)
        except BrokenPipeError:  # `mailgate … | head`: the reader has all it wanted
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # nothing more to flush at exit
            ctx.exit(1)
        except (OSError, sqlite3.Error) as exc:
            click.echo(f"mailgate: {type(exc).__name__}: {exc}", err=True)
            ctx.exit(1)


class State:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    def db(self) -> Any:
        return open_store(self.config.database)

    def spool(self) -> Spool:
        """The spool new mail goes into (a running worker's under `serve --workers`)."""
        from mailgate.ops.spools import live_spool_path

        return Spool(live_spool_path(self.config))


pass_state = click.make_pass_decorator(State)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def emit(data: Any, as_json: bool, columns: Sequence[str] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    elif columns is not None:
        click.echo(format_table(data, columns))
    else:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def say_more(total: int, offset: int, shown: int, what: str) -> None:
    """On stderr, when a list goes on past what was shown: how many match and how to see the
    rest (a list never stops silently at its --limit)."""
    more = total - offset - shown
    if more > 0:
        click.echo(f"{total} {what} match; {more} more after these: use --limit or --offset"
                   f" {offset + shown}", err=True)


def cell(value: Any, width: int = 48) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    text = " ".join(str(value).split())  # no control characters or newlines from mail
    if len(text) <= width:
        return text
    if text.startswith("/"):  # a path: its end says more than its start
        return "…" + text[-(width - 1):]
    return text[: width - 1] + "…"


def spam_line(verdict: dict[str, Any]) -> str:
    """A stored spam verdict in one line: `score 2.1 (accept)`, and why, for `tickets show`."""
    score = verdict.get("score")
    text = "not scanned" if score is None else f"score {score:g}"
    text += f" ({verdict.get('action')})"
    for key in ("note", "reason"):
        if verdict.get(key):
            text += f"; {verdict[key]}"
    return cell(text, 300)


def format_table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    rows = list(rows)
    if not rows:
        return "(none)"
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


@click.group(cls=_Cli)
@click.option("--config", "config_path", metavar="PATH", envvar=None,
              help="Config file (default: $MAILGATE_CONFIG, then ./mailgate.toml).")
@click.version_option(package_name="mailgate")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """mailgate: inbound mail server for a customer-support helpdesk."""
    ctx.obj = State(config_path)


def _config_after_command(ctx: click.Context, _param: click.Parameter,
                          value: str | None) -> None:
    """`mailgate COMMAND --config PATH`: the same as `mailgate --config PATH COMMAND`."""
    if value is None or ctx.resilient_parsing:
        return
    state = ctx.find_object(State)
    if state is None:  # pragma: no cover - the root group always makes one
        return
    if state.config_path is not None and state.config_path != value:
        raise click.UsageError(f"--config given twice ({state.config_path!r} and {value!r})",
                               ctx=ctx)
    state.config_path = value


def finish_commands(group: click.Group) -> None:
    """Give every command and group under `group` its own `--config PATH` option, and make a
    group given no command a usage error like any other (click's default prints the help, with
    an exit status that depends on click's version)."""
    group.no_args_is_help = False
    for command in group.commands.values():
        if not any(p.name == "late_config" for p in command.params):
            command.params.append(click.Option(
                ["--config", "late_config"], metavar="PATH", expose_value=False,
                callback=_config_after_command,
                help="Config file (also accepted before the command name)."))
        if isinstance(command, click.Group):
            finish_commands(command)


