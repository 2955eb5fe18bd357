"""Building the long-lived pieces from a config, for the daemon and the CLI alike.

Input: a validated `Config`. Output: the mail context (renderer, token signer, addresses), the
agent-action desk, the DKIM signer. Reads the server secret from `data_dir` (creating it once).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlite_utils

from mailgate import builtin
from mailgate.auth import Authenticator, AuthSettings
from mailgate.config import Config
from mailgate.errors import ConfigError, UserError
from mailgate.outbound.dkim_sign import sign as dkim_sign
from mailgate.outbound.mailer import MailContext
from mailgate.outbound.render import BUILTIN_DIR, Renderer
from mailgate.outbound.suppress import RateLimits
from mailgate.pipeline.agent_actions import Desk
from mailgate.pipeline.automation import Automation, RuleSet
from mailgate.pipeline.deliver import Policy
from mailgate.rules import load_business_hours, load_rules, load_slas
from mailgate.store.db import transaction
from mailgate.store.files import load_or_create_secret
from mailgate.store.orgs import sync_configured
from mailgate.threading.token import Signer


def renderer(config: Config) -> Renderer:
    return Renderer(BUILTIN_DIR, config.templates_dir, config.branding,
                    dict(config.templates), config.path.parent)


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
        team_mailboxes=tuple((box, t.name) for t in config.teams for box in t.mailboxes),
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
    kinds = frozenset(k["kind"] for k in renderer(config).kinds())
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
    return Automation(ruleset(config), mail)


def authenticator(config: Config) -> Authenticator:
    """The authentication stage. Our own domains: where mail must carry our DKIM signature."""
    ours = set(config.domains) | ({config.dkim.domain} if config.dkim else set())
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


def signer(config: Config) -> Signer:
    return Signer(load_or_create_secret(config.data_dir))


def mail_context(config: Config) -> MailContext:
    return MailContext(
        renderer=renderer(config),
        tokens=signer(config),
        from_addr=config.from_address,
        from_name=config.branding.company_name,
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
    return Desk(db, mail, config.agents, str(config.path), automation(config, mail))


def dkim_signer(config: Config) -> Callable[[bytes], bytes] | None:
    dkim = config.dkim
    if dkim is None:
        return None
    return lambda raw: dkim_sign(raw, dkim)
