"""`mailgate import PATH...`: a mail archive (mbox, Gmail Takeout, Maildir, .eml) made into
tickets in archive mode.

Input: paths and options typed by an administrator (the mail in the files is untrusted; see
`pipeline.archive`). Output: a progress bar with the time left on a terminal (plain lines every
few seconds otherwise, on stderr), then the tally — imported, duplicate, skipped with each
reason — as lines or `--json`. Exit status 0 when every message was accounted for (skipped ones
included: they are reported, not lost), 1 for a user mistake (a path that does not exist, a
mailbox that is not ours).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

from mailgate.cli.base import State, emit, json_option, pass_state
from mailgate.errors import UserError
from mailgate.ops import app
from mailgate.parsing.mailboxes import open_archive
from mailgate.pipeline.archive import ImportCounts, Importer, ImportOptions

PLAIN_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


class _Progress:
    """A click progress bar (with ETA) on a terminal; plain lines on stderr otherwise."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total = total
        self.shown = 0
        self.quiet = quiet or total == 0
        self.bar: Any = None
        self.last = time.monotonic()
        if not self.quiet and sys.stderr.isatty():
            self.bar = click.progressbar(length=total, label="importing", show_eta=True,
                                         show_percent=True, show_pos=True, file=sys.stderr)
            self.bar.__enter__()

    def __call__(self, counts: ImportCounts) -> None:
        if self.quiet:
            return
        done = counts.done
        if self.bar is not None:
            self.bar.update(done - self.shown)
        elif time.monotonic() - self.last >= PLAIN_EVERY or done == self.total:
            self.last = time.monotonic()
            click.echo(f"import: {done}/{self.total} messages ({100 * done // self.total}%):"
                       f" {counts.imported} imported, {counts.duplicate} duplicate,"
                       f" {counts.skipped_total} skipped", err=True)
        self.shown = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@click.command("import")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--mailbox", "mailbox", metavar="ADDRESS",
              help="The support mailbox the archive belongs to (default: each message's, from"
                   " its recipients, else the default mailbox).")
@click.option("--open-since", "open_since", type=click.FloatRange(min=0), metavar="DAYS",
              help="Leave open the conversations whose last message is newer than DAYS days"
                   " (default: every imported conversation is closed).")
@click.option("--dry-run", is_flag=True,
              help="Do everything and report, then roll it back: nothing is stored.")
@click.option("--batch", "batch_size", type=click.IntRange(min=1, max=10000), default=200,
              show_default=True, help="Messages per transaction.")
@click.option("--jobs", type=click.IntRange(min=1, max=64), default=None, metavar="N",
              help="Processes that parse and classify messages beside the one storing them"
                   " (default: one per CPU).")
@click.option("--quiet", is_flag=True, help="No progress bar or progress lines.")
@json_option
@pass_state
def import_command(state: State, paths: tuple[str, ...], mailbox: str | None,
                   open_since: float | None, dry_run: bool, batch_size: int,
                   jobs: int | None, quiet: bool, as_json: bool) -> None:
    """Import mail history (mbox incl. Gmail Takeout, Maildir, .eml) as closed tickets.

    Archive mode: original dates kept; no rules, acknowledgements, notifications or SLA
    clocks; mail from our agents and mailboxes becomes outgoing agent messages, so later
    replies thread onto it. Safe to run again (an interrupted run resumes; messages stored
    already are counted as duplicates)."""
    config = state.config
    if mailbox is not None:
        wanted = mailbox.strip().lower()
        box = next((m for m in config.support_mailboxes if wanted in m.addresses()), None)
        if box is None and wanted in config.mailboxes:  # [mail] mailboxes: the implicit one's
            box = config.support_mailboxes[0]
        if box is None:
            known = ", ".join(dict.fromkeys(
                [*config.mailboxes, *(a for m in config.support_mailboxes for a in m.addresses())]))
            raise UserError(f"--mailbox {mailbox}: not one of our mailboxes ({known})")
        mailbox = box.address
    archive = open_archive(list(paths))
    db = state.db()
    importer = Importer(db, config.data_dir, app.policy(config), app.signer(config),
                        ImportOptions(mailbox=mailbox, open_since_days=open_since,
                                      dry_run=dry_run, batch_size=batch_size,
                                      jobs=jobs or os.cpu_count() or 1))
    progress = _Progress(len(archive), quiet or as_json)
    started = time.monotonic()
    try:
        counts = importer.run(archive, progress)
    finally:
        progress.close()
    seconds = time.monotonic() - started
    data = counts.as_dict()
    data.update(messages=len(archive), seconds=round(seconds, 2), dry_run=dry_run,
                unreadable=[{"path": p, "reason": r} for p, r in archive.unreadable])
    if as_json:
        emit(data, True)
        return
    verb = "would import" if dry_run else "imported"
    click.echo(f"{verb} {counts.imported} of {len(archive)} messages into {len(counts.tickets)}"
               f" tickets ({counts.created} new) in {seconds:.1f} s;"
               f" {counts.duplicate} duplicate; {counts.skipped_total} skipped")
    for reason, n in sorted(counts.skipped.items(), key=lambda kv: -kv[1]):
        click.echo(f"  skipped {n}: {reason}")
    for path, reason in archive.unreadable:
        click.echo(f"  not read: {path}: {reason}")
    if dry_run:
        click.echo("dry run: nothing was stored")
