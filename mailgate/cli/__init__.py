"""The command line (`mailgate …`): a thin click layer over the library.

`base` holds the root group and what every command shares (the state with the config, `--json`,
tables, one-line errors); each other module holds the commands of one subject and imports only
`base` and the library. This module puts them together: it is the only one that imports them
all, so no command module imports another.
"""

from __future__ import annotations

from mailgate.cli import (
    agents,
    archive,
    audit,
    backup,
    db,
    ops,
    orgs,
    outbound,
    privacy,
    rules,
    spam,
    spool,
    tickets,
)
from mailgate.cli.base import cli, finish_commands
from mailgate.ops.doctor import doctor_command
from mailgate.ops.setup_wizard import init_command

for command in (
    init_command, doctor_command,  # the setup wizard and the checks (mailgate/ops/)
    ops.check_config, ops.serve, db.db_group, ops.systemd_unit, ops.admin_group,
    agents.agents_group,
    tickets.tickets_group, outbound.templates_group, outbound.dkim_group,
    audit.audit_group, audit.forwarding_group, spool.stats, spool.spool_group,
    rules.rules_group, spam.spam_group, orgs.orgs_group, orgs.customers_group,
    orgs.teams_group, archive.import_command, backup.backup_command, backup.restore_command,
    privacy.retention,
):
    cli.add_command(command)
finish_commands(cli)


def main() -> None:
    cli(prog_name="mailgate")


__all__ = ["cli", "main"]
