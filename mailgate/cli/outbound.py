"""`mailgate templates …` and `mailgate dkim keygen`: the mail we send and its signature.

Input: a template kind or ticket id to preview; a DKIM selector and domain. Output: the
rendered mail on stdout; a new key under data_dir and the DNS record to publish.
"""

from __future__ import annotations

import click

from mailgate.cli.base import (
    State,
    emit,
    json_option,
    pass_state,
)
from mailgate.errors import NotFound, UserError
from mailgate.ops import app
from mailgate.store import tickets

# --- templates and DKIM -----------------------------------------------------------------


@click.group("templates")
def templates_group() -> None:
    """Outgoing mail templates."""


@templates_group.command("list")
@json_option
@pass_state
def templates_list(state: State, as_json: bool) -> None:
    """Template kinds, whether each is enabled, and the files used."""
    emit(app.renderer(state.config).kinds(), as_json,
          ["kind", "enabled", "html_source", "text_source"])


@templates_group.command("preview")
@click.argument("kind")
@click.option("--ticket", "ticket_id", type=int, help="Render with this ticket's real data.")
@click.option("--html", "part", flag_value="html", help="Print only the HTML part.")
@click.option("--text", "part", flag_value="text", help="Print only the text part.")
@pass_state
def templates_preview(state: State, kind: str, ticket_id: int | None, part: str | None) -> None:
    """Render a template kind with sample data or a real ticket."""
    from mailgate.outbound.render import TemplateError

    cfg = state.config
    renderer = app.renderer(cfg)
    context = renderer.sample_context(kind)
    if ticket_id is not None:
        db = state.db()
        ticket = tickets.ticket_row(db.conn, ticket_id)
        if ticket is None:
            raise NotFound(f"no ticket #{ticket_id}")
        mail = app.mail_context(cfg).for_ticket(ticket)  # in the ticket's mailbox's brand
        renderer = mail.renderer
        context["branding"] = renderer.branding
        ticket["reply_address"] = mail.reply_address(ticket_id)
        context["ticket"] = ticket
        latest = tickets.latest_customer_message(db.conn, ticket_id)
        if latest is not None:
            context["customer_message"] = latest
        context["recipient"] = {"name": ticket["requester_name"] or "",
                                "email": ticket["requester"]}
    try:
        rendered = renderer.render(kind, context)
    except TemplateError as exc:
        raise UserError(f"template error: {exc}") from None
    if part != "html":
        click.echo(f"Subject: {rendered.subject}\n" if part is None else "", nl=False)
        click.echo(rendered.text)
    if part != "text":
        click.echo(rendered.html)


@click.group("dkim")
def dkim_group() -> None:
    """DKIM keys for signing outgoing mail."""


@dkim_group.command("keygen")
@click.option("--selector", required=True, help="DNS selector, e.g. mail2026.")
@click.option("--domain", help="Signing domain (default: the first of [mail] domains); one key"
              " per From domain, e.g. a mailbox's public_address domain.")
@click.option("--force", is_flag=True, help="Overwrite an existing key for this selector.")
@pass_state
def dkim_keygen(state: State, selector: str, domain: str | None, force: bool) -> None:
    """Write an RSA key under data_dir and print the DNS TXT record to publish."""
    from mailgate.outbound.dkim_sign import check_domain, keygen

    cfg = state.config
    first = cfg.domains[0] if cfg.domains else ""
    domain = check_domain(domain) if domain else first
    if not domain:
        raise UserError(f"no domain: pass --domain or set [mail] domains in {cfg.path}")
    several = domain != first or len(cfg.dkim_keys) > 1 or any(
        k.domain != domain for k in cfg.dkim_keys)
    path, record = keygen(cfg.data_dir, selector, domain, force=force, per_domain=domain != first)
    click.echo(f"key written to {path}")
    click.echo("publish this DNS record:")
    click.echo(record)
    table = "[[dkim]]" if several else "[dkim]"
    click.echo(f"then add to {cfg.path}:\n{table}\ndomain = \"{domain}\"\n"
               f"selector = \"{selector}\"\nkey_file = \"{path}\"")
    if several and len(cfg.dkim_keys) == 1:
        click.echo("(with keys for several domains, write each as a [[dkim]] entry, the"
                   " present [dkim] table too)")
