"""Building the long-lived pieces from a config, for the daemon and the CLI alike.

Input: a validated `Config`. Output: the mail context (renderer, token signer, addresses, and
each mailbox's voice: From, brand, templates, Reply-To), the agent-action desk, the DKIM signer
(the key of each mail's From domain), the relay and envelope sender of each outgoing mail.
Reads the server secret from `data_dir` (creating it once), or on PostgreSQL the one every node
shares in the database (`store.shared`).
"""

from __future__ import annotations

import email.policy
from collections.abc import Callable, Mapping
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import sqlite_utils

from mailgate import builtin
from mailgate.auth import Authenticator, AuthSettings
from mailgate.config import Config, Mailbox, Relay
from mailgate.errors import ConfigError, UserError
from mailgate.outbound.dkim_sign import sign as dkim_sign
from mailgate.outbound.mailer import MailContext, Voice
from mailgate.outbound.render import BUILTIN_DIR, Renderer
from mailgate.outbound.suppress import RateLimits
from mailgate.pipeline.agent_actions import Desk
from mailgate.pipeline.automation import Automation, RuleSet
from mailgate.pipeline.deliver import Policy
from mailgate.pipeline.process import Pipeline
from mailgate.rules import load_business_hours, load_rules, load_slas
from mailgate.spool import Spool
from mailgate.store.db import transaction
from mailgate.store.files import load_or_create_secret
from mailgate.store.orgs import sync_configured
from mailgate.store.outbound import OutboundMail
from mailgate.threading.token import Signer


def renderer(config: Config, mailbox: Mailbox | None = None) -> Renderer:
    """The templates of `mailbox` (its `templates` dir, then `[templates] dir`, then the
    built-ins) in its brand; without one, the default mailbox's."""
    box = mailbox or config.support_mailboxes[0]
    return Renderer(BUILTIN_DIR, box.templates_dir or config.templates_dir,
                    config.brand(box.brand), dict(config.templates), config.path.parent)


def voices(config: Config) -> dict[str, Voice]:
    """How each mailbox speaks: From `name <public_address or address>`, its brand."""
    out = {}
    for box in config.support_mailboxes:
        brand = config.brand(box.brand)
        out[box.address] = Voice(renderer=renderer(config, box), from_addr=box.from_address,
                                 from_name=box.name or brand.company_name, mailbox=box.address,
                                 reply_to=box.reply_to)
    return out


def describe_mailbox(config: Config, ticket: dict[str, Any]) -> dict[str, Any]:
    """Fill in a ticket's `mailbox` (the default one for a ticket older than mailboxes) and
    `mailbox_from`, the address its mail goes out From."""
    box = config.mailbox(ticket.get("mailbox"))
    ticket["mailbox"] = ticket.get("mailbox") or box.address
    ticket["mailbox_from"] = box.from_address
    return ticket


def policy(config: Config) -> Policy:
    """The workflow settings the pipeline applies to each message."""
    return Policy(
        domains=frozenset(config.domains),
        agents=frozenset(a.email for a in config.agents),
        strangers=config.strangers,
        reopen_closed_days=config.reopen_closed_days,
        auto_create_organizations=config.auto_create_organizations,
        free_mail_domains=frozenset(config.free_mail_domains),
        agent_reply_auth=tuple((a.email, a.reply_auth) for a in config.agents),
        agent_replies_by_email_per_hour=config.agent_replies_by_email_per_hour,
        mailboxes=config.support_mailboxes,
        team_mailboxes=tuple((box, t.name) for t in config.teams for box in t.mailboxes) + tuple(
            (m.address, team.name) for m in config.support_mailboxes
            if m.team and (team := config.team(m.team)) is not None),
    )


def sync_organizations(config: Config, db: sqlite_utils.Database) -> None:
    """The `[[organizations]]` of the config, created or updated in the database."""
    if not config.organizations:
        return
    try:
        with transaction(db) as conn:
            sync_configured(conn, list(config.organizations))
    except UserError as exc:
        raise ConfigError(f"{config.path}: [[organizations]]: {exc}") from None


# The default workflow: package data (mailgate/builtin/automations.toml).
BUILTIN_RULES = builtin.automations_file()


def rules_file(config: Config) -> Path:
    """`[rules] file`, else the config directory's config/automations.toml, else the built-in
    default workflow shipped with mailgate (a ConfigError if the installation lost it: without
    it no acknowledgement is ever sent)."""
    path = config.rules_file
    if config.rules_file_explicit or (path is not None and path.exists()):
        return path
    if not BUILTIN_RULES.is_file():
        raise ConfigError(f"{BUILTIN_RULES}: the built-in default workflow is missing from the"
                          " installed mailgate package: reinstall mailgate, or set [rules] file"
                          f" in {config.path}")
    return BUILTIN_RULES


def ruleset(config: Config) -> RuleSet:
    """The automations and SLAs, validated (ConfigError naming file, rule and key)."""
    hours = load_business_hours(config.business_hours, str(config.path))
    agents = frozenset(a.email for a in config.agents)
    kinds = frozenset(k["kind"] for box in config.support_mailboxes  # any mailbox's kinds
                      for k in renderer(config, box).kinds())
    source = rules_file(config)
    rules = load_rules(list(config.automations), str(config.path), source,
                       file_required=config.rules_file_explicit or source == BUILTIN_RULES,
                       agents=agents,
                       template_kinds=kinds, hours=hours, mailboxes=frozenset(config.mailboxes),
                       teams=frozenset(t.name for t in config.teams))
    slas = load_slas(list(config.slas), str(config.path), hours, agents=agents,
                     mailboxes=frozenset(config.mailboxes))
    return RuleSet(rules=rules, hours=hours, agents=agents, slas=slas,
                   teams=tuple((t.name, t.members) for t in config.teams))


def automation(config: Config, mail: MailContext | None) -> Automation:
    return Automation(ruleset(config), mail, config.webhooks)


def sla_breached(config: Config) -> Callable[[Mapping[str, Any]], bool]:
    """Whether a ticket row's SLA is breached now (its policy, with business hours)."""
    rules = automation(config, None)
    return lambda row: bool((rules.sla(row) or {}).get("breached"))


def authenticator(config: Config) -> Authenticator:
    """The authentication stage. Our own domains: where mail must carry our DKIM signature."""
    public = {m.public_address.rpartition("@")[2] for m in config.support_mailboxes
              if m.public_address}
    # Our own domains, and the domains we sign for — but not a company's domain we only speak
    # for (a public address's): its people write to us, signed by their own server.
    ours = set(config.domains) | {k.domain for k in config.dkim_keys if k.domain not in public}
    settings = AuthSettings(
        authserv_id=config.hostname,
        nameservers=config.nameservers,
        dns_timeout=config.dns_timeout,
        forwarders=config.forwarders,
        our_domains=tuple(sorted(ours)),
        **({"trusted_arc_sealers": config.trusted_arc_sealers}
           if config.trusted_arc_sealers is not None else {}),
    )
    return Authenticator(settings)


def pipeline(config: Config, db: sqlite_utils.Database, spool: Spool,
             mail: MailContext) -> Pipeline:
    """The pipeline as the daemon runs it (in its own process or inline)."""
    built = Pipeline(db, spool, config.data_dir, config.pipeline_max_attempts, mail=mail,
                     tokens=signer(config))
    reconfigure(built, config, mail)
    return built


def reconfigure(running: Pipeline, config: Config, mail: MailContext) -> None:
    """What a reload changes in a running pipeline: mail context, workflow policy, rules,
    authentication (the old authenticator is closed), attempts before hold."""
    running.mail, running.policy = mail, policy(config)
    running.automation = automation(config, mail)
    old_auth, running.auth = running.auth, authenticator(config)
    running.hold_unauthenticated = config.unauthenticated == "hold"
    running.max_attempts = config.pipeline_max_attempts
    if old_auth is not None:
        old_auth.close()


_shared_secrets: dict[str, bytes] = {}  # database URL → its reply-token secret (never changes)


def signer(config: Config) -> Signer:
    """The reply-token signer: the secret file in data_dir (SQLite, one node), or the secret
    every node shares in the database (PostgreSQL; read once per process)."""
    url = config.database_url
    if url is None:
        return Signer(load_or_create_secret(config.data_dir))
    if url not in _shared_secrets:
        from mailgate.store import shared
        from mailgate.store.connect import open_store

        db = open_store(url)
        try:
            _shared_secrets[url] = shared.reply_secret(db, config.data_dir)
        finally:
            db.close()
    return Signer(_shared_secrets[url])


def mail_context(config: Config) -> MailContext:
    """The default mailbox's context; `for_ticket` turns it into any ticket's mailbox."""
    return MailContext(
        renderer=renderer(config),
        tokens=signer(config),
        from_addr=config.from_address,
        from_name=config.branding.company_name,
        voices=voices(config),
        domains=frozenset(config.domains),
        agents=frozenset(a.email for a in config.agents),
        limits=RateLimits(per_mailbox=config.auto_replies_per_address_per_hour,
                          per_domain=config.auto_replies_per_domain_per_hour,
                          total=config.auto_replies_per_hour),
        agent_names=tuple((a.email, a.name) for a in config.agents),
        status_labels=config.status_labels,
    )


def desk(config: Config, db: sqlite_utils.Database) -> Desk:
    mail = mail_context(config)
    return Desk(db, mail, config.agents, str(config.path), automation(config, mail),
                data_dir=config.data_dir, max_upload=config.admin_max_upload_bytes)


def dkim_signer(config: Config) -> Callable[[bytes], bytes] | None:
    """Signs each mail with the key of its From domain (`[[dkim]]`; `[dkim]` is one key). A
    From domain without a key gets the first key's signature, which does not align with it
    (`doctor` warns that DMARC will fail there)."""
    keys = config.dkim_keys
    if not keys:
        return None
    if len(keys) == 1 and not config.mailbox_settings:
        only = keys[0]
        return lambda raw: dkim_sign(raw, only)

    def sign(raw: bytes) -> bytes:
        # a From domain without its own key: the first key's signature (not aligned, so
        # DMARC fails — doctor says so — but receivers still see who sent it)
        return dkim_sign(raw, config.dkim_for(from_domain(raw)) or keys[0])

    return sign


def from_address(raw: bytes) -> str:
    """A rendered mail's From address, lower-cased ("" when it has none)."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    message = BytesHeaderParser(policy=email.policy.default).parsebytes(head + b"\r\n\r\n")
    try:
        addresses = getattr(message["From"], "addresses", ())
    except (IndexError, ValueError, TypeError):
        return ""
    return addresses[0].addr_spec.lower() if addresses else ""


def from_domain(raw: bytes) -> str:
    return from_address(raw).rpartition("@")[2]


def mailbox_of_mail(config: Config, raw: bytes) -> Mailbox | None:
    """The mailbox a rendered mail speaks as (by its From), None when none does."""
    sender = from_address(raw)
    return next((m for m in config.support_mailboxes if m.from_address == sender), None)


def relay_route(config: Config, default_envelope: Callable[[OutboundMail], str]
                ) -> tuple[Callable[[OutboundMail], Relay], Callable[[OutboundMail], str]]:
    """(the relay of a mail, its envelope sender): a mailbox with its own relay
    (`[mailboxes.relay]`) sends through it with its From address as the envelope sender (so
    SPF passes for that domain; bounces come back through the company's mailbox); any other
    mail through `[relay]` with our VERP address."""
    def own(mail: OutboundMail) -> Mailbox | None:
        box = mailbox_of_mail(config, mail.raw or b"")
        return box if box is not None and box.relay is not None else None

    def relay_of(mail: OutboundMail) -> Relay:
        box = own(mail)
        return box.relay if box is not None and box.relay is not None else config.relay

    def envelope_of(mail: OutboundMail) -> str:
        box = own(mail)
        return box.from_address if box is not None else default_envelope(mail)

    return relay_of, envelope_of
