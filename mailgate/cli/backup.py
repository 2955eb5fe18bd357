"""`mailgate backup DEST` and `mailgate restore SRC`: the installation copied while it runs,
and made again from a copy.

Input: a directory typed by an administrator. Output: what was copied (databases, files, key
files, and for PostgreSQL the pg_dump command to run for the store), or `--json`; after a
restore the `db check` of the restored store. A mistake (a DEST that is not empty, a SRC that
is not a backup or is damaged, a data_dir that is not empty) is one line and exit status 1.
The work is in `mailgate.ops.backup`.
"""

from __future__ import annotations

from pathlib import Path

import click

from mailgate.cli.base import State, emit, json_option, pass_state
from mailgate.ops import backup as backups


@click.command("backup")
@click.argument("dest", type=click.Path(path_type=Path))
@json_option
@pass_state
def backup_command(state: State, dest: Path, as_json: bool) -> None:
    """Copy the installation into DEST (a new or empty directory) while the daemon runs:
    databases by SQLite's online backup, raw mail, attachments, keys, secrets, the config."""
    report = backups.backup(state.config, dest)
    data = {"dest": str(report.dest), "databases": report.databases, "files": report.files,
            "bytes": report.bytes, "outside": report.outside, "postgresql": report.postgresql,
            "spool_entries_done": report.spool_entries_done,
            "seconds": round(report.seconds, 2)}
    if as_json:
        emit(data, True)
        return
    for db in report.databases:
        click.echo(f"database  data/{db['path']}  {db['size']} bytes  (online backup)")
    click.echo(f"files     {report.files} files, {report.bytes} bytes (raw mail, attachments,"
               " keys, secrets)")
    for item in report.outside:
        click.echo(f"key file  {item['original']} -> {item['path']}")
    if report.postgresql:
        click.echo(f"the store is on PostgreSQL ({report.postgresql}): back it up with"
                   f" pg_dump --format=custom --file=mailgate.pgdump '{report.postgresql}'"
                   " (this backup holds the node's spool, secrets, keys and config)")
    click.echo(f"backup written to {report.dest} in {report.seconds:.1f} s")


@click.command("restore")
@click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
@json_option
@pass_state
def restore_command(state: State, src: Path, as_json: bool) -> None:
    """Make the configured data_dir (new or empty) again from the backup SRC, checked file by
    file against its manifest, then run `db check` on the restored database."""
    config = state.config
    report = backups.restore(config, src)
    findings: list[dict[str, object]] = []
    healthy = True
    if not report.postgresql:
        from mailgate.store.dbcheck import check_database
        from mailgate.store.engine import make_engine, sqlite_url

        engine = make_engine(sqlite_url(config.db_path))
        try:
            checked = check_database(engine)
        finally:
            engine.dispose()
        findings = [{"name": f.name, "ok": f.ok, "detail": f.detail}
                    for f in checked.findings]
        healthy = checked.ok
    data = {"data_dir": str(report.data_dir), "databases": report.databases,
            "files": report.files, "outside_restored": report.outside_restored,
            "outside_kept": report.outside_kept, "postgresql": report.postgresql,
            "config_copy": report.config_copy, "db_check": findings, "ok": healthy}
    if as_json:
        emit(data, True)
    else:
        click.echo(f"restored {report.databases} databases and {report.files} files into"
                   f" {report.data_dir}")
        for path in report.outside_restored:
            click.echo(f"key file  {path} restored")
        for path in report.outside_kept:
            click.echo(f"key file  {path} exists: kept (the backup's copy is not used)")
        if report.config_copy:
            click.echo(f"the backup's config is at {report.config_copy}")
        if report.postgresql:
            click.echo(f"the store is on PostgreSQL ({report.postgresql}): restore it with"
                       " pg_restore from your pg_dump file")
        for f in findings:
            click.echo(f"{'ok' if f['ok'] else 'FAIL':<4}  {f['name']:<11} {f['detail']}")
        click.echo("db check: ok" if healthy else "db check: FAILED")
    if not healthy:
        raise click.exceptions.Exit(1)
