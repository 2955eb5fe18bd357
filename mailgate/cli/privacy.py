"""`mailgate retention [--dry-run]`: apply `[retention]` now, without the daemon.

Input: the config's `[retention]` (checked by the config loader) and the flags typed by an
administrator. Output: what was removed (or with `--dry-run`, what would be: counts and the
ticket ids), as lines or JSON; the run is recorded in `mailgate audit data` unless it is a dry
run or removed nothing. The work itself is `mailgate.store.retention`.
"""

from __future__ import annotations

import click

from mailgate.cli.base import State, emit, json_option, pass_state
from mailgate.errors import UserError
from mailgate.store import retention as retention_store


@click.command("retention")
@click.option("--dry-run", is_flag=True, help="Change nothing: say what would be removed.")
@json_option
@pass_state
def retention(state: State, dry_run: bool, as_json: bool) -> None:
    """Remove what [retention] keeps no longer (closed tickets' files, old audit rows)."""
    settings = state.config.retention
    if not settings.enabled:
        raise UserError(f"[retention] in {state.config.path} keeps everything (closed_days and"
                        " audit_days are 0 or unset): nothing to do")
    db = state.db()
    try:
        report = retention_store.run_retention(db, state.config.data_dir, settings,
                                               dry_run=dry_run, actor="cli")
    finally:
        db.close()
    if as_json:
        emit(report.as_dict(), True)
        return
    verb = "would remove" if dry_run else "removed"
    if report.closed_before:
        what = "whole" if report.remove == "tickets" else "raw mail and attachments of"
        ids = ", ".join(f"#{i}" for i in report.tickets[:50]) or "none"
        more = f" (and {len(report.tickets) - 50} more)" if len(report.tickets) > 50 else ""
        click.echo(f"tickets closed before {report.closed_before}: {verb} {what}"
                   f" {len(report.tickets)} ticket(s): {ids}{more}")
    counts = ", ".join(f"{n} {what}" for what, n in report.counts.items() if n) or "nothing"
    click.echo(f"{verb}: {counts}")
