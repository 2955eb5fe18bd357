"""The README documents every command and option of the CLI (as sqlite-utils's docs test does).

Walks the click tree: every command has its own row in the README's "Command line" table, whose
first cell starts with the command's full path, and every option it takes appears in that row or
in the section that row links to (`--help`, the `--config` every command takes and the `--json`
every listing takes are documented once, above the table). Fails naming what is missing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click

from mailgate.cli import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
DOCUMENTED_ONCE = {"--help", "--config", "--json"}


def _commands(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[str, click.Command]]:
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), command


def _sections() -> dict[str, str]:
    """Each `## ` section of the README by its GitHub anchor."""
    found = {}
    for block in re.split(r"^(?=## )", README, flags=re.M):
        title = block.splitlines()[0].lstrip("# ").strip() if block.startswith("## ") else ""
        anchor = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        found[anchor] = block
    return found


def _rows() -> list[str]:
    start = README.index("## Command line")
    table = README[start:README.index("\n## ", start + 1)]
    return [line for line in table.splitlines() if line.startswith("| `mailgate ")]


def test_every_command_and_option_is_in_the_readme() -> None:
    rows, sections = _rows(), _sections()
    problems = []
    for path, command in _commands(cli, ("mailgate",)):
        mine = [r for r in rows if re.match(rf"\| `{re.escape(path)}(?![\w-])", r)]
        if not mine:
            problems.append(f"{path}: no row in the README's Command line table")
            continue
        text = " ".join(mine)
        text += " ".join(sections.get(a, "") for a in re.findall(r"\]\(#([\w-]+)\)", text))
        for param in command.params:
            for opt in getattr(param, "opts", []) + getattr(param, "secondary_opts", []):
                if opt.startswith("--") and opt not in DOCUMENTED_ONCE \
                        and not re.search(rf"{re.escape(opt)}(?![\w-])", text):
                    problems.append(f"{path}: option {opt} not in its README row")
    assert not problems, "\n".join(problems)


def test_the_check_would_see_a_missing_command() -> None:
    @click.command("frobnicate")
    @click.option("--wobble")
    def frobnicate(wobble: str) -> None:  # pragma: no cover - never run
        """Not a real command."""

    cli.add_command(frobnicate)
    try:
        try:
            test_every_command_and_option_is_in_the_readme()
        except AssertionError as exc:
            assert "mailgate frobnicate: no row" in str(exc)
        else:  # pragma: no cover
            raise AssertionError("an undocumented command passed the check")
    finally:
        cli.commands.pop("frobnicate")
