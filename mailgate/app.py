"""Building the long-lived pieces from a config, for the daemon and the CLI alike.

Input: a validated `Config`. Output: the mail context (renderer, token signer, addresses), the
agent-action desk, the DKIM signer. Reads the server secret from `data_dir` (creating it once).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlite_utils

from mailgate.config import Config
from mailgate.deliver import Policy
from mailgate.outbound.dkim_sign import sign as dkim_sign
from mailgate.outbound.mailer import MailContext
from mailgate.outbound.render import Renderer
from mailgate.service import Desk
from mailgate.store.files import load_or_create_secret
from mailgate.threading.token import Signer

BUILTIN_TEMPLATES = Path(__file__).resolve().parent.parent / "config" / "templates"


def renderer(config: Config) -> Renderer:
    return Renderer(BUILTIN_TEMPLATES, config.templates_dir, config.branding,
                    dict(config.templates), config.path.parent)


def policy(config: Config) -> Policy:
    """The workflow settings the pipeline applies to each message."""
    return Policy(
        domains=frozenset(config.domains),
        agents=frozenset(a.email for a in config.agents),
        strangers=config.strangers,
        reopen_closed_days=config.reopen_closed_days,
    )


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
        auto_limit=config.auto_replies_per_address_per_hour,
    )


def desk(config: Config, db: sqlite_utils.Database) -> Desk:
    return Desk(db, mail_context(config), config.agents, str(config.path))


def dkim_signer(config: Config) -> Callable[[bytes], bytes] | None:
    dkim = config.dkim
    if dkim is None:
        return None
    return lambda raw: dkim_sign(raw, dkim)
