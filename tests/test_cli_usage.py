"""The command line's own promises: `--config PATH` works after the command name as well as
before it, for every command; a usage mistake (unknown option or command, bad value, missing
argument or command) is one line on stderr and exit status 1, like every other mistake.
Real daemon and real files; `python -m mailgate` as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import Daemon, free_port, queue_id_of, send, write_config

from mailgate.cli import cli


def mailgate(*args: str, cwd: Path, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailgate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def all_commands(group: click.Group = cli, path: tuple[str, ...] = ()
                 ) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in group.commands.items():
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from all_commands(command, (*path, name))


def test_every_command_takes_config_after_its_name() -> None:
    found = dict(all_commands())
    assert {("serve",), ("tickets", "list"), ("doctor",), ("init",), ("orgs", "list"),
            ("rules", "check"), ("spool", "retry")} <= set(found)
    for path, _command in found.items():
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "--config PATH" in result.output, path


def test_serve_and_tickets_with_config_after_the_command(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "etc", port)
    elsewhere = tmp_path / "elsewhere"  # no ./mailgate.toml here
    elsewhere.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "mailgate", "serve", "--config", str(config)],
                            cwd=elsewhere, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon = Daemon(config, port)
    daemon.proc = proc
    try:
        daemon.wait_listening(20)
        queue_id = queue_id_of(send(port, b"From: jane@customer.test\r\nTo: support@example.com"
                                          b"\r\nSubject: late config\r\n\r\nHi\r\n")[1])
        daemon.audit_for(queue_id)
        listed = mailgate("tickets", "list", "--config", str(config), "--json", cwd=elsewhere)
        assert listed.returncode == 0, listed.stderr
        assert '"subject": "late config"' in listed.stdout
        # On a group too, and the same file given both ways.
        both = mailgate("--config", str(config), "tickets", "--config", str(config), "list",
                        cwd=elsewhere)
        assert both.returncode == 0 and "late config" in both.stdout, both.stderr
        # After the command, it wins over $MAILGATE_CONFIG like before it.
        env = {"PATH": "/usr/bin:/bin", "MAILGATE_CONFIG": str(tmp_path / "nope.toml")}
        stats = mailgate("stats", "--config", str(config), cwd=elsewhere, env=env)
        assert stats.returncode == 0 and "tickets: 1" in stats.stdout, stats.stderr
    finally:
        assert daemon.stop() == 0


def test_config_after_the_command_is_the_file_used(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[server]\nlisten = "nowhere"\n')
    result = mailgate("check-config", "--config", str(broken), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"mailgate: {broken}: [server] listen: expected host:port, got 'nowhere'")


@pytest.mark.parametrize("args, says", [
    (["tickets", "list", "--bogus"], "No such option '--bogus'"),
    (["--bogus", "stats"], "No such option '--bogus'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["tickets", "status", "1", "nonsense"], "'nonsense' is not one of"),
    (["tickets", "show", "one"], "'one' is not a valid integer"),
    (["tickets", "show"], "Missing argument 'TICKET_ID'"),
    (["tickets", "list", "--limit"], "Option '--limit' requires an argument"),
    (["tickets"], "Missing command"),
    ([], "Missing command"),
    (["--config", "a.toml", "stats", "--config", "b.toml"], "--config given twice"),
])
def test_usage_mistakes_are_one_line_and_exit_1(args: list[str], says: str) -> None:
    result = CliRunner().invoke(cli, args, prog_name="mailgate")
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mailgate: ") and says in lines[0], lines[0]
    assert "--help" in lines[0]  # where to look next


def test_a_file_option_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["tickets", "reply", "1", "--agent", "a@example.com",
                                      "--body-file", str(tmp_path / "missing.txt")])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("mailgate: Invalid value for '--body-file'")
    assert "missing.txt': No such file or directory" in result.stderr


def test_usage_mistake_from_the_real_program(tmp_path: Path) -> None:
    result = mailgate("audit", "incoming", "--action", "nonsense", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("mailgate: Invalid value for '--action'")
    assert "(see 'mailgate audit incoming --help')" in result.stderr


def test_output_cut_short_by_its_reader_is_no_error(tmp_path: Path) -> None:
    """`mailgate tickets show 1 | head`: the reader closes the pipe early; mailgate stops
    quietly (no traceback, no error line), as Unix tools do."""
    from mailgate.config import load_config
    from mailgate.model import Address
    from mailgate.store.db import open_db, transaction
    from mailgate.store.tickets import (
        add_outgoing_message,
        create_ticket,
        get_or_create_customer,
    )

    config = write_config(tmp_path / "c", free_port())
    db = open_db(load_config(config).db_path)
    with transaction(db) as conn:
        customer = get_or_create_customer(conn, Address("jane@client.test"), "2026-01-01T00:00Z")
        ticket = create_ticket(conn, "printer on fire", customer, "2026-01-01T00:00Z")
        for n in range(400):  # far more than a pipe holds, printed message by message
            add_outgoing_message(
                conn, ticket, from_addr="bob@example.com", from_name="Bob",
                to_addr="jane@client.test", subject="Re: printer on fire",
                text="We are on it. " * 40, message_id=f"m{n}@example.com", in_reply_to="",
                now="2026-01-01T00:00Z")
    db.close()
    proc = subprocess.Popen([sys.executable, "-m", "mailgate", "--config", str(config),
                             "tickets", "show", str(ticket)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"#")
    proc.stdout.close()
    assert proc.wait(60) in (0, 1)
    assert proc.stderr.read() == b""
