"""The command line for organizations, customers and teams (`mailgate orgs …`, `mailgate
customers …`, `mailgate teams list`).

Input: names, domains and routing typed by an administrator. Output: changes made through the
store in one transaction each, and listings (tables, or JSON with `--json`). A mistake — a
domain owned by another organization, an unknown agent — prints one line and exits 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mailgate.cli.base import State, emit, json_option, pass_state, say_more
from mailgate.config import PRIORITIES
from mailgate.errors import UserError
from mailgate.store import customer_export, erasure, orgs
from mailgate.store.db import transaction
from mailgate.store.tickets import STATUSES, count_tickets


@click.group("orgs")
def orgs_group() -> None:
    """Customer organizations, by email domain."""


@orgs_group.command("list")
@json_option
@pass_state
def orgs_list(state: State, as_json: bool) -> None:
    """Organizations with their domains and counts."""
    emit(orgs.list_orgs(state.db()), as_json,
          ["name", "domains", "customers", "tickets", "auto_created", "on_new_ticket"])


@orgs_group.command("show")
@click.argument("name")
@json_option
@pass_state
def orgs_show(state: State, name: str, as_json: bool) -> None:
    """One organization: domains, notes, routing and customers."""
    org = orgs.show_org(state.db(), name)
    if as_json:
        emit(org, True)
        return
    click.echo(f"{org['name']}  domains: {', '.join(org['domains']) or '-'}")
    click.echo(f"  notes: {org['notes'] or '-'}\n  routing: {org['on_new_ticket'] or '-'}")
    click.echo(f"  tickets: {org['tickets']}  customers: {org['customers']}")
    for c in org["customer_list"]:
        click.echo(f"  - {c['email']} {c['name'] or ''}".rstrip())


@orgs_group.command("create")
@click.argument("name")
@click.option("--domain", "domains", multiple=True, help="An email domain (repeatable).")
@click.option("--notes", default="", help="Free text.")
@click.option("--join-existing", is_flag=True, help="Customers already at these domains join.")
@pass_state
def orgs_create(state: State, name: str, domains: tuple[str, ...], notes: str,
                join_existing: bool) -> None:
    """Create an organization."""
    db = state.db()
    with transaction(db) as conn:
        org_id = orgs.create_org(conn, name, list(domains), notes)
        joined = sum(orgs.join_existing(conn, org_id, d) for d in domains) if join_existing else 0
    click.echo(f"organization {name!r} created" + (f"; {joined} customers joined" if joined
                                                   else ""))


@orgs_group.command("add-domain")
@click.argument("name")
@click.argument("domain")
@click.option("--join-existing", is_flag=True,
              help="Customers already at this domain (and its subdomains) join too.")
@pass_state
def orgs_add_domain(state: State, name: str, domain: str, join_existing: bool) -> None:
    """Add an email domain to an organization."""
    db = state.db()
    with transaction(db) as conn:
        org_id = orgs.org_id_by_name(conn, name)
        d = orgs.add_domain(conn, org_id, domain)
        joined = orgs.join_existing(conn, org_id, d) if join_existing else 0
    click.echo(f"{d} added to {name!r}" + (f"; {joined} customers joined" if join_existing
                                           else ""))


@orgs_group.command("remove-domain")
@click.argument("name")
@click.argument("domain")
@pass_state
def orgs_remove_domain(state: State, name: str, domain: str) -> None:
    """Remove an email domain from an organization (its customers stay members)."""
    db = state.db()
    with transaction(db) as conn:
        orgs.remove_domain(conn, orgs.org_id_by_name(conn, name), domain)
    click.echo(f"{domain.lower()} removed from {name!r}")


@orgs_group.command("route")
@click.argument("name")
@click.option("--assign", metavar="EMAIL", help="Assign new tickets to this agent.")
@click.option("--round-robin", "round_robin", metavar="EMAIL", multiple=True,
              help="Assign new tickets in turn to these agents (repeatable).")
@click.option("--priority", type=click.Choice(PRIORITIES))
@click.option("--tag", "tags", multiple=True, help="Tag new tickets (repeatable).")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--template", metavar="KIND",
              help="Send this template kind instead of the default acknowledgement.")
@click.option("--team", metavar="NAME", help="New tickets belong to this team ([[teams]]).")
@click.option("--round-robin-team", "round_robin_team", metavar="NAME",
              help="New tickets belong to this team and go to its members in turn.")
@click.option("--notify-team", "notify_team", metavar="NAME",
              help="Each member of this team gets a team_notification.")
@click.option("--clear", is_flag=True, help="Remove all routing.")
@pass_state
def orgs_route(state: State, name: str, assign: str | None, round_robin: tuple[str, ...],
               priority: str | None, tags: tuple[str, ...], status: str | None,
               template: str | None, team: str | None, round_robin_team: str | None,
               notify_team: str | None, clear: bool) -> None:
    """What happens to new tickets from this organization."""
    cfg = state.config
    agents = {a.email for a in cfg.agents}
    for who in (assign, *round_robin):
        if who and who.lower() not in agents:
            raise UserError(f"{who} is not a configured agent ([[agents]] in {cfg.path})")
    teams: dict[str, str] = {}
    for key, given in (("assign_team", team), ("round_robin_team", round_robin_team),
                       ("notify_team", notify_team)):
        if given is not None:
            found = cfg.team(given)
            if found is None:
                raise UserError(f"no team {given!r} ([[teams]] in {cfg.path})")
            teams[key] = found.name
    if round_robin_team and (assign or round_robin):
        raise UserError("--round-robin-team cannot be combined with --assign or --round-robin")
    if template:
        from mailgate.ops import app

        kinds = {k["kind"] for k in app.renderer(cfg).kinds()}
        if template not in kinds:
            raise UserError(f"no template kind {template!r} (mailgate templates list)")
    route: dict[str, Any] = {}
    if assign:
        route["assign"] = assign.lower()
    if round_robin:
        route["round_robin"] = [a.lower() for a in round_robin]
    if priority:
        route["priority"] = priority
    if tags:
        route["add_tags"] = list(tags)
    if status:
        route["status"] = status
    if template:
        route["send_template"] = template
    route.update(teams)
    if not route and not clear:
        raise UserError("give at least one of --assign, --round-robin, --priority, --tag,"
                        " --status, --template, --team, --round-robin-team, --notify-team"
                        " (or --clear)")
    db = state.db()
    with transaction(db) as conn:
        orgs.set_route(conn, orgs.org_id_by_name(conn, name), route)
    click.echo(f"routing for {name!r}: {route or 'none'}")


@click.group("customers")
def customers_group() -> None:
    """Customers (people who wrote to us)."""


@customers_group.command("list")
@click.option("--org", help="Only customers of this organization.")
@click.option("--search", "q", metavar="TEXT", default="",
              help="Only customers whose name or address holds TEXT.")
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True,
              help="Skip this many (the next page: --offset 100).")
@json_option
@pass_state
def customers_list(state: State, org: str | None, q: str, limit: int, offset: int,
                   as_json: bool) -> None:
    """Customers by address, with their organization and tickets."""
    rows, total = orgs.find_customers(state.db(), q, org, limit, offset=offset)
    emit(rows, as_json, ["id", "email", "name", "organization", "tickets", "open_tickets",
                         "created_at"])
    say_more(total, offset, len(rows), "customers")


@customers_group.command("export")
@click.argument("email")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="The zip to write (default: customer-<id>.zip here).")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@pass_state
def customers_export(state: State, email: str, output: Path | None, force: bool) -> None:
    """Everything stored about a customer: customer.json and their raw mails, in a zip."""
    db = state.db()
    try:
        customer = customer_export.find_customer(db, email)
        output = output or Path(f"customer-{customer['id']}.zip")
        if output.exists() and not force:
            raise UserError(f"{output} exists: give another --output, or --force")
        key = erasure.key_for(db, state.config.data_dir)
        done = customer_export.export_customer(db, state.config.data_dir, email, key, output)
    finally:
        db.close()
    click.echo(f"{done.path}: {done.tickets} ticket(s), {done.messages} message(s),"
               f" {done.raw_files} raw mail(s), {done.attachments} attachment(s),"
               f" {done.audit_rows} audit row(s)")


@customers_group.command("erase")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def customers_erase(state: State, email: str, yes: bool) -> None:
    """Erase a customer: their tickets and messages, files no other ticket uses; the address
    in every audit replaced by a hash. Cannot be undone."""
    db = state.db()
    try:
        customer = customer_export.find_customer(db, email)
        if not yes:
            click.confirm(f"Erase customer #{customer['id']} {customer['email']}, their"
                          " tickets, messages and files? This cannot be undone", abort=True)
        key = erasure.key_for(db, state.config.data_dir)
        report = erasure.erase_customer(db, state.config.data_dir, email, key)
    finally:
        db.close()
    counts = ", ".join(f"{n} {what}" for what, n in report.counts.items() if n) or "nothing"
    click.echo(f"customer #{report.customer_id} erased as {report.subject}: {counts}")


@click.group("teams")
def teams_group() -> None:
    """Teams of agents ([[teams]] in the config)."""


@teams_group.command("list")
@json_option
@pass_state
def teams_list(state: State, as_json: bool) -> None:
    """Teams with their members, mailboxes, open tickets and open unassigned tickets."""
    db = state.db()
    open_statuses = ("open", "pending_customer", "pending_agent")
    rows = [{"name": t.name, "members": list(t.members), "mailboxes": list(t.mailboxes),
             "open": count_tickets(db, statuses=open_statuses, team=t.name),
             "unassigned": count_tickets(db, statuses=open_statuses, team=t.name,
                                         unassigned=True)}
            for t in state.config.teams]
    emit(rows, as_json, ["name", "members", "mailboxes", "open", "unassigned"])
