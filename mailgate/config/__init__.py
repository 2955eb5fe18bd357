"""Configuration: one TOML file → a validated, frozen `Config`.

`load` finds and reads the file and checks it against `schema` (every key of every section),
`sections` reads the sections with structure, `settings` holds the frozen result. Stdlib only:
every other module may import this package.
"""

from mailgate.config.load import find_config_path, is_loopback, load_config, parse_config
from mailgate.config.schema import PRIORITIES, ROUTE_KEYS
from mailgate.config.settings import (
    DEFAULT_CONFIG_NAME,
    NOTIFICATION_KINDS,
    REPLY_AUTH_METHODS,
    ROLES,
    TEMPLATE_KINDS,
    WEBHOOK_EVENTS,
    Agent,
    Branding,
    Config,
    Dkim,
    Mailbox,
    Relay,
    Retention,
    Spam,
    Team,
    TemplateSettings,
    Webhook,
)

__all__ = [
    "DEFAULT_CONFIG_NAME", "NOTIFICATION_KINDS", "PRIORITIES", "REPLY_AUTH_METHODS", "ROLES",
    "ROUTE_KEYS", "TEMPLATE_KINDS", "WEBHOOK_EVENTS",
    "Agent", "Branding", "Config", "Dkim", "Mailbox", "Relay", "Retention",
    "Spam", "Team", "TemplateSettings", "Webhook",
    "find_config_path", "is_loopback", "load_config", "parse_config",
]
