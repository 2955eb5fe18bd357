"""Configuration: one TOML file → a validated, frozen `Config`.

Input: the path of a TOML file written by an administrator (trusted to mean what it says, not
trusted to be well-formed). Output: a `Config` whose every value has the right type, or a
`ConfigError` whose message is one line naming the file and the key at fault.

The file is found in this order: an explicit path (`--config`), `$MAILGATE_CONFIG`,
`./mailgate.toml`. Relative paths inside it are relative to the file's own directory.
Stdlib only: every other module may import this one.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mailgate.errors import ConfigError

DEFAULT_CONFIG_NAME = "mailgate.toml"
MiB = 1024 * 1024


REPLY_AUTH_METHODS = ("dkim", "token")


@dataclass(frozen=True)
class Agent:
    name: str
    email: str
    # How this agent's replies by email may prove they are the agent's: any one suffices.
    # "dkim": a passing DKIM signature aligned with the agent's domain; "token": the agent's
    # personal reply address (sent only to the agent). Empty: never by email.
    reply_auth: tuple[str, ...] = ("dkim",)


@dataclass(frozen=True)
class Relay:
    host: str = "127.0.0.1"
    port: int = 25
    starttls: bool = False
    username: str = ""
    password: str = ""
    # RFC 5321 §4.5.3.2 (minimum waits): greeting, MAIL and RCPT 5 min; the DATA command (its
    # 354 and the reply to the end of data, the transfer in between included) 10 min.
    timeout: float = 300.0
    data_timeout: float = 600.0
    retry_base_seconds: float = 300.0
    retry_max_seconds: float = 4000.0
    give_up_after_seconds: float = 5 * 86400.0


@dataclass(frozen=True)
class Dkim:
    domain: str
    selector: str
    key_file: Path


@dataclass(frozen=True)
class Branding:
    company_name: str = "Support"
    header: str = ""
    footer: str = ""
    signature: str = ""
    primary_color: str = "#2563eb"
    logo: str = ""  # a path (sent inline by Content-ID) or an http(s) URL
    show_powered_by: bool = True


@dataclass(frozen=True)
class TemplateSettings:
    enabled: bool = True
    subject: str | None = None  # a jinja2 template; None: the kind's built-in subject


TEMPLATE_KINDS = ("new_ticket_ack", "agent_reply", "assignee_notification")


@dataclass(frozen=True)
class Spam:
    """`[spam]`: rspamd asked after DATA, before the 250. `rspamd` None: no scanning.
    Defaults are rspamd's own action thresholds: reject at 15, "add header" (spam) at 6,
    greylist (doubtful) at 4."""

    rspamd: str | None = None  # the normal worker's URL, e.g. http://127.0.0.1:11333
    reject_score: float = 15.0  # at or above: 550 5.7.1 in the session
    quarantine_score: float = 6.0  # at or above (and below reject_score): quarantined
    no_autoreply_score: float = 4.0  # at or above: no automatic mail is sent about it
    timeout: float = 10.0  # seconds for one scan (rspamd's own task_timeout is 8 s)
    on_error: str = "accept"  # or "tempfail": 451 while the scanner cannot answer

    @property
    def enabled(self) -> bool:
        return self.rspamd is not None


@dataclass(frozen=True)
class Config:
    path: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 2525
    hostname: str = "localhost"
    max_message_size: int = 50 * MiB
    max_recipients: int = 50
    min_free_bytes: int = 100 * MiB
    tls_cert: Path | None = None
    tls_key: Path | None = None
    shutdown_seconds: float = 30.0
    hard_error_limit: int = 20
    unknown_recipient_limit: int = 10
    bare_newline: str = "normalize"
    max_sessions: int = 500
    max_sessions_per_client: int = 50
    idle_timeout: float = 300.0
    min_data_rate: float = 500.0
    junk_command_limit: int = 100
    proxy_protocol: bool = False
    data_dir: Path = Path("data")
    domains: tuple[str, ...] = ()
    mailboxes: tuple[str, ...] = ()
    relay: Relay = Relay()
    dkim: Dkim | None = None
    branding: Branding = Branding()
    templates_dir: Path | None = None
    templates: tuple[tuple[str, TemplateSettings], ...] = ()
    auto_replies_per_address_per_hour: int = 10  # per mailbox, plus-part removed
    auto_replies_per_domain_per_hour: int = 50
    auto_replies_per_hour: int = 500
    agent_replies_by_email_per_hour: int = 60  # per agent
    agents: tuple[Agent, ...] = ()
    organizations: tuple[dict[str, Any], ...] = ()  # validated [[organizations]] entries
    auto_create_organizations: bool = False
    free_mail_domains: tuple[str, ...] = ()
    automations: tuple[dict[str, Any], ...] = ()  # raw [[automations]]: the rules loader checks
    rules_file: Path | None = None
    rules_file_explicit: bool = False
    business_hours: dict[str, Any] | None = None
    slas: tuple[dict[str, Any], ...] = ()
    tick_seconds: float = 30.0
    dns_timeout: float = 5.0
    nameservers: tuple[str, ...] = ()  # empty: the system's resolver
    trusted_arc_sealers: tuple[str, ...] | None = None  # None: the built-in list
    unauthenticated: str = "flag"
    forwarders: tuple[str, ...] = ()
    pipeline_max_attempts: int = 3
    log_level: str = "INFO"
    log_format: str = "text"
    strangers: str = "internal"
    reopen_closed_days: float = 7.0
    status_labels: tuple[tuple[str, str], ...] = ()
    admin_host: str | None = None  # None: the admin endpoint is off
    admin_port: int = 8025
    admin_tls_cert: Path | None = None
    admin_tls_key: Path | None = None
    spam: Spam = Spam()

    def template(self, kind: str) -> TemplateSettings:
        return dict(self.templates).get(kind, TemplateSettings())

    def agent(self, email: str) -> Agent | None:
        email = email.lower()
        return next((a for a in self.agents if a.email == email), None)

    def status_label(self, status: str) -> str:
        """The name people see for a status ([statuses] in the config)."""
        return dict(self.status_labels).get(status, status.replace("_", " "))

    @property
    def from_address(self) -> str:
        """Our address for outgoing mail: the first configured mailbox."""
        return self.mailboxes[0] if self.mailboxes else f"support@{self.hostname}"

    @property
    def spool_path(self) -> Path:
        return self.data_dir / "spool.db"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mailgate.db"



# The schema: section → key → (expected python type(s), description for errors).
_SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], str]]] = {
    "server": {
        "listen": (str, "a string host:port"),
        "hostname": (str, "a string"),
        "max_message_size": (int, "an integer (bytes)"),
        "max_recipients": (int, "an integer"),
        "min_free_bytes": (int, "an integer (bytes)"),
        "tls_cert": (str, "a file path"),
        "tls_key": (str, "a file path"),
        "shutdown_seconds": ((int, float), "a number (seconds)"),
        "hard_error_limit": (int, "an integer"),
        "unknown_recipient_limit": (int, "an integer"),
        "bare_newline": (str, '"normalize" or "reject"'),
        "max_sessions": (int, "an integer"),
        "max_sessions_per_client": (int, "an integer"),
        "idle_timeout": ((int, float), "a number (seconds)"),
        "min_data_rate": ((int, float), "a number (bytes per second)"),
        "junk_command_limit": (int, "an integer"),
        "proxy_protocol": (bool, "true or false"),
    },
    "storage": {"data_dir": (str, "a directory path")},
    "mail": {
        "domains": (list, "a list of domain names"),
        "mailboxes": (list, "a list of email addresses"),
    },
    "relay": {
        "host": (str, "a host name"),
        "port": (int, "an integer port"),
        "starttls": (bool, "true or false"),
        "username": (str, "a string"),
        "password": (str, "a string"),
        "password_file": (str, "a file path"),
        "timeout": ((int, float), "a number (seconds)"),
        "data_timeout": ((int, float), "a number (seconds)"),
        "retry_base_seconds": ((int, float), "a number (seconds)"),
        "retry_max_seconds": ((int, float), "a number (seconds)"),
        "give_up_after_seconds": ((int, float), "a number (seconds)"),
    },
    "dkim": {
        "domain": (str, "a domain name"),
        "selector": (str, "a DNS label"),
        "key_file": (str, "a file path"),
    },
    "branding": {
        "company_name": (str, "a string"),
        "header": (str, "a string"),
        "footer": (str, "a string"),
        "signature": (str, "a string"),
        "primary_color": (str, "a CSS colour like #2563eb"),
        "logo": (str, "a file path or an http(s) URL"),
        "show_powered_by": (bool, "true or false"),
    },
    "templates": {"dir": (str, "a directory path")},  # plus [templates.<kind>] tables
    "limits": {
        "auto_replies_per_address_per_hour": (int, "an integer"),
        "auto_replies_per_domain_per_hour": (int, "an integer"),
        "auto_replies_per_hour": (int, "an integer"),
        "agent_replies_by_email_per_hour": (int, "an integer"),
    },
    "pipeline": {"max_attempts": (int, "an integer")},
    "threading": {
        "strangers": (str, "\"internal\" or \"new_ticket\""),
        "reopen_closed_days": ((int, float), "a number of days"),
    },
    "statuses": {s: (str, "a display name") for s in (
        "open", "pending_customer", "pending_agent", "resolved", "closed")},
    "customers": {
        "auto_create_organizations": (bool, "true or false"),
        "free_mail_domains": (list, "a list of domain names"),
    },
    "rules": {"file": (str, "a file path")},
    "auth": {
        "dns_timeout": ((int, float), "a number (seconds)"),
        "nameservers": (list, "a list of \"host:port\" strings"),
        "trusted_arc_sealers": (list, "a list of domain names"),
        "unauthenticated": (str, "\"flag\" or \"hold\""),
    },
    "scheduler": {"tick_seconds": ((int, float), "a number (seconds)")},
    "business_hours": {
        "timezone": (str, "a time zone name like Europe/Berlin"),
        "days": (list, "a list of days like [\"mon\", \"tue\"]"),
        "start": (str, "a time like \"09:00\""),
        "end": (str, "a time like \"17:00\""),
    },
    "log": {
        "level": (str, "one of DEBUG, INFO, WARNING, ERROR"),
        "format": (str, "\"text\" or \"json\""),
    },
    "admin": {
        "listen": (str, "a string host:port"),
        "tls_cert": (str, "a file path"),
        "tls_key": (str, "a file path"),
    },
    "spam": {
        "rspamd": (str, "an http:// URL like \"http://127.0.0.1:11333\""),
        "reject_score": ((int, float), "a number (rspamd score)"),
        "quarantine_score": ((int, float), "a number (rspamd score)"),
        "no_autoreply_score": ((int, float), "a number (rspamd score)"),
        "timeout": ((int, float), "a number (seconds)"),
        "on_error": (str, '"accept" or "tempfail"'),
    },
}
_AGENT_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str, "email": str, "reply_auth": (str, list)}
_ARRAYS = ("agents", "organizations", "automations", "sla", "forwarders")  # arrays of tables
_ORG_KEYS = {"name": str, "domains": list, "notes": str, "on_new_ticket": dict}
ROUTE_KEYS = {"assign": str, "round_robin": list, "priority": str, "add_tags": list,
              "status": str, "send_template": str}
PRIORITIES = ("low", "normal", "high", "urgent")


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1: an address nothing outside this machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def find_config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The config file to use: explicit path, then $MAILGATE_CONFIG, then ./mailgate.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("MAILGATE_CONFIG")
    if env:
        return Path(env)
    return Path.cwd() / DEFAULT_CONFIG_NAME


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    path = find_config_path(explicit)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_config(doc, path)


def _is_type(value: Any, expected: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # bool is an int subclass; never accept it for numbers
        exp = expected if isinstance(expected, tuple) else (expected,)
        return bool in exp
    return isinstance(value, expected)


def parse_config(doc: dict[str, Any], path: Path) -> Config:
    """Validate a parsed TOML document; raise ConfigError naming file and key on the first fault."""

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{path}: {key}: {message}")

    values: dict[str, dict[str, Any]] = {}
    for section, body in doc.items():
        if section in _ARRAYS:
            if not isinstance(body, list):
                raise fail(f"[[{section}]]", "must be an array of tables ([[...]])")
            continue
        if section not in _SCHEMA:
            raise fail(f"[{section}]", "unknown section")
        if not isinstance(body, dict):
            raise fail(f"[{section}]", "must be a table")
        schema = _SCHEMA[section]
        for key, value in body.items():
            if section == "templates" and key != "dir":
                if not isinstance(value, dict) or not re.fullmatch(r"[a-z][a-z0-9_]*", key):
                    raise fail(f"[templates] {key}", "expected a [templates.<kind>] table")
                continue
            if key not in schema:
                raise fail(f"[{section}] {key}", "unknown key")
            expected, description = schema[key]
            if not _is_type(value, expected):
                raise fail(f"[{section}] {key}", f"expected {description}, got {value!r}")
        values[section] = body

    server = values.get("server", {})
    host, port = "127.0.0.1", 2525
    if "listen" in server:
        host, port = _parse_hostport(server["listen"], lambda m: fail("[server] listen", m))
    base = path.parent

    def opt_path(section: str, key: str) -> Path | None:
        v = values.get(section, {}).get(key)
        if v in (None, ""):
            return None
        return (base / v).resolve()

    for key in ("max_message_size", "max_recipients", "hard_error_limit",
                "unknown_recipient_limit", "junk_command_limit", "idle_timeout"):
        if key in server and server[key] < 1:
            raise fail(f"[server] {key}", "must be at least 1")
    for key in ("max_sessions", "max_sessions_per_client", "min_data_rate"):
        if key in server and server[key] < 0:
            raise fail(f"[server] {key}", "must not be negative (0: no limit)")
    bare_newline = server.get("bare_newline", "normalize")
    if bare_newline not in ("normalize", "reject"):
        raise fail("[server] bare_newline",
                   f'expected "normalize" or "reject", got {bare_newline!r}')
    if "min_free_bytes" in server and server["min_free_bytes"] < 0:
        raise fail("[server] min_free_bytes", "must not be negative")
    tls_cert, tls_key = opt_path("server", "tls_cert"), opt_path("server", "tls_key")
    if (tls_cert is None) != (tls_key is None):
        raise fail("[server] tls_cert", "tls_cert and tls_key must be set together")
    for key, p in (("tls_cert", tls_cert), ("tls_key", tls_key)):
        if p is not None and not p.is_file():
            raise fail(f"[server] {key}", f"file not found: {p}")

    mail = values.get("mail", {})
    domains = tuple(_strings(mail.get("domains", []), lambda m: fail("[mail] domains", m)))
    domains = tuple(d.lower().strip(".") for d in domains)
    for d in domains:
        if "@" in d or ("." not in d and d != "localhost") or any(c.isspace() for c in d):
            raise fail("[mail] domains", f"not a domain name: {d!r}")
    mailboxes = []
    for box in _strings(mail.get("mailboxes", []), lambda m: fail("[mail] mailboxes", m)):
        local, at, domain = box.lower().rpartition("@")
        if not at or not local or "+" in local:
            raise fail("[mail] mailboxes", f"not a plain address (local@domain): {box!r}")
        if domain not in domains:
            raise fail("[mail] mailboxes", f"{box!r} is not in one of [mail] domains")
        mailboxes.append(f"{local}@{domain}")

    agents = []
    raw_agents = doc.get("agents", [])
    if not isinstance(raw_agents, list):
        raise fail("[[agents]]", "must be an array of tables")
    for i, entry in enumerate(raw_agents):
        where = f"[[agents]] #{i + 1}"
        if not isinstance(entry, dict):
            raise fail(where, "must be a table")
        for key, value in entry.items():
            if key not in _AGENT_KEYS:
                raise fail(f"{where} {key}", "unknown key")
            if not isinstance(value, _AGENT_KEYS[key]):
                wanted = "a string or a list of strings" if key == "reply_auth" else "a string"
                raise fail(f"{where} {key}", f"expected {wanted}, got {value!r}")
        if "email" not in entry or "@" not in entry["email"]:
            raise fail(f"{where} email", "an agent needs an email address")
        agents.append(Agent(name=entry.get("name", entry["email"]), email=entry["email"].lower(),
                            reply_auth=_reply_auth(entry.get("reply_auth", ["dkim"]),
                                                   lambda m, w=where: fail(f"{w} reply_auth", m))))

    log_format = values.get("log", {}).get("format", "text")
    if log_format not in ("text", "json"):
        raise fail("[log] format", f'expected "text" or "json", got {log_format!r}')
    admin = values.get("admin", {})
    admin_host: str | None = None
    admin_port = 8025
    if admin.get("listen"):
        admin_host, admin_port = _parse_hostport(
            admin["listen"], lambda m: fail("[admin] listen", m))
    admin_cert, admin_key = opt_path("admin", "tls_cert"), opt_path("admin", "tls_key")
    if (admin_cert is None) != (admin_key is None):
        raise fail("[admin] tls_cert", "tls_cert and tls_key must be set together")
    for key, p in (("tls_cert", admin_cert), ("tls_key", admin_key)):
        if p is not None and not p.is_file():
            raise fail(f"[admin] {key}", f"file not found: {p}")
    threading_cfg = values.get("threading", {})
    strangers = threading_cfg.get("strangers", "internal")
    if strangers not in ("internal", "new_ticket"):
        raise fail("[threading] strangers",
                   f'expected "internal" or "new_ticket", got {strangers!r}')
    reopen_days = float(threading_cfg.get("reopen_closed_days", 7))
    if reopen_days < 0:
        raise fail("[threading] reopen_closed_days", "must not be negative")
    labels = tuple((k, v) for k, v in values.get("statuses", {}).items())
    level = values.get("log", {}).get("level", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise fail("[log] level", f"expected one of DEBUG, INFO, WARNING, ERROR, got {level!r}")
    attempts = values.get("pipeline", {}).get("max_attempts", 3)
    if attempts < 1:
        raise fail("[pipeline] max_attempts", "must be at least 1")

    relay_cfg = _relay(values.get("relay", {}), base, fail)
    dkim = _dkim(values.get("dkim", {}), base, fail)
    branding = _branding(values.get("branding", {}), fail)
    tmpl = values.get("templates", {})
    templates_dir = opt_path("templates", "dir")
    if templates_dir is not None and not templates_dir.is_dir():
        raise fail("[templates] dir", f"not a directory: {templates_dir}")
    template_settings = []
    for kind in dict.fromkeys([*TEMPLATE_KINDS, *(k for k in tmpl if k != "dir")]):
        body = tmpl.get(kind, {})
        for key, value in body.items():
            where = f"[templates.{kind}] {key}"
            if key == "enabled" and not isinstance(value, bool):
                raise fail(where, f"expected true or false, got {value!r}")
            if key == "subject" and not isinstance(value, str):
                raise fail(where, f"expected a string, got {value!r}")
            if key not in ("enabled", "subject"):
                raise fail(where, "unknown key")
        template_settings.append(
            (kind, TemplateSettings(body.get("enabled", True), body.get("subject")))
        )
    organizations = _organizations(doc.get("organizations", []), agents, fail)
    customers = values.get("customers", {})
    free_mail = tuple(d.lower() for d in _strings(
        customers.get("free_mail_domains", []), lambda m: fail("[customers] free_mail_domains", m)))
    rules_file = opt_path("rules", "file")
    explicit = rules_file is not None
    if rules_file is None:
        rules_file = (base / "config" / "automations.toml").resolve()
    tick = float(values.get("scheduler", {}).get("tick_seconds", 30))
    if tick <= 0:
        raise fail("[scheduler] tick_seconds", "must be positive")
    for array in ("automations", "sla"):
        for i, entry in enumerate(doc.get(array, [])):
            if not isinstance(entry, dict):
                raise fail(f"[[{array}]] #{i + 1}", "must be a table")
    auth = values.get("auth", {})
    dns_timeout = float(auth.get("dns_timeout", 5.0))
    if not 0 < dns_timeout <= 60:
        raise fail("[auth] dns_timeout", "must be between 0 and 60 seconds")
    nameservers = tuple(_strings(auth.get("nameservers", []),
                                 lambda m: fail("[auth] nameservers", m)))
    for ns in nameservers:
        ns_host, sep, ns_port = ns.rpartition(":")
        if not ns or (sep and (not ns_host or not ns_port.isdigit()
                               or not 0 < int(ns_port) < 65536)):
            raise fail("[auth] nameservers", f'expected "host:port" or "host", got {ns!r}')
    sealers = auth.get("trusted_arc_sealers")
    if sealers is not None:
        sealers = tuple(s.lower() for s in _strings(
            sealers, lambda m: fail("[auth] trusted_arc_sealers", m)))
    unauth = auth.get("unauthenticated", "flag")
    if unauth not in ("flag", "hold"):
        raise fail("[auth] unauthenticated", f'expected "flag" or "hold", got {unauth!r}')
    forwarders = []
    for i, entry in enumerate(doc.get("forwarders", [])):
        where = f"[[forwarders]] #{i + 1}"
        if not isinstance(entry, dict) or set(entry) - {"address"} or \
                not isinstance(entry.get("address"), str) or "@" not in entry["address"]:
            raise fail(where, 'expected a table with address = "mailbox@provider"')
        forwarders.append(entry["address"].lower())
    spam = _spam(values.get("spam", {}), fail)
    limits = {key: values.get("limits", {}).get(key, default) for key, default in (
        ("auto_replies_per_address_per_hour", 10), ("auto_replies_per_domain_per_hour", 50),
        ("auto_replies_per_hour", 500), ("agent_replies_by_email_per_hour", 60))}
    for key, value in limits.items():
        if value < 0:
            raise fail(f"[limits] {key}", "must not be negative")

    return Config(
        path=path.resolve(),
        listen_host=host,
        listen_port=port,
        hostname=server.get("hostname", "localhost"),
        max_message_size=server.get("max_message_size", 50 * MiB),
        max_recipients=server.get("max_recipients", 50),
        min_free_bytes=server.get("min_free_bytes", 100 * MiB),
        tls_cert=tls_cert,
        tls_key=tls_key,
        shutdown_seconds=float(server.get("shutdown_seconds", 30.0)),
        hard_error_limit=server.get("hard_error_limit", 20),
        unknown_recipient_limit=server.get("unknown_recipient_limit", 10),
        bare_newline=bare_newline,
        max_sessions=server.get("max_sessions", 500),
        max_sessions_per_client=server.get("max_sessions_per_client", 50),
        idle_timeout=float(server.get("idle_timeout", 300.0)),
        min_data_rate=float(server.get("min_data_rate", 500.0)),
        junk_command_limit=server.get("junk_command_limit", 100),
        proxy_protocol=server.get("proxy_protocol", False),
        data_dir=(base / values.get("storage", {}).get("data_dir", "data")).resolve(),
        domains=domains,
        mailboxes=tuple(mailboxes),
        relay=relay_cfg,
        dkim=dkim,
        branding=branding,
        templates_dir=templates_dir,
        templates=tuple(template_settings),
        auto_replies_per_address_per_hour=limits["auto_replies_per_address_per_hour"],
        auto_replies_per_domain_per_hour=limits["auto_replies_per_domain_per_hour"],
        auto_replies_per_hour=limits["auto_replies_per_hour"],
        agent_replies_by_email_per_hour=limits["agent_replies_by_email_per_hour"],
        agents=tuple(agents),
        organizations=organizations,
        auto_create_organizations=customers.get("auto_create_organizations", False),
        free_mail_domains=free_mail,
        automations=tuple(doc.get("automations", [])),
        rules_file=rules_file,
        rules_file_explicit=explicit,
        business_hours=values.get("business_hours"),
        slas=tuple(doc.get("sla", [])),
        tick_seconds=tick,
        dns_timeout=dns_timeout,
        nameservers=nameservers,
        trusted_arc_sealers=sealers,
        unauthenticated=unauth,
        forwarders=tuple(forwarders),
        pipeline_max_attempts=attempts,
        log_level=level,
        log_format=log_format,
        strangers=strangers,
        reopen_closed_days=reopen_days,
        status_labels=labels,
        admin_host=admin_host,
        admin_port=admin_port,
        admin_tls_cert=admin_cert,
        admin_tls_key=admin_key,
        spam=spam,
    )


def _organizations(entries: list[Any], agents: list[Agent], fail: Any
                   ) -> tuple[dict[str, Any], ...]:
    seen_names: set[str] = set()
    owner: dict[str, str] = {}
    agent_emails = {a.email for a in agents}
    out = []
    for i, entry in enumerate(entries):
        where = f"[[organizations]] #{i + 1}"
        if not isinstance(entry, dict):
            raise fail(where, "must be a table")
        for key, value in entry.items():
            if key not in _ORG_KEYS:
                raise fail(f"{where} {key}", "unknown key")
            if not isinstance(value, _ORG_KEYS[key]):
                raise fail(f"{where} {key}", f"expected {_ORG_KEYS[key].__name__}, got {value!r}")
        name = entry.get("name", "").strip()
        if not name:
            raise fail(f"{where} name", "an organization needs a name")
        where = f"[[organizations]] {name!r}"
        if name.lower() in seen_names:
            raise fail(f"{where} name", "two organizations with this name")
        seen_names.add(name.lower())
        domains = [d.lower().strip().rstrip(".") for d in _strings(
            entry.get("domains", []), lambda m, w=where: fail(f"{w} domains", m))]
        for d in domains:
            if "." not in d or "@" in d:
                raise fail(f"{where} domains", f"not a domain name: {d!r}")
            if d in owner:
                raise fail(f"{where} domains", f"{d} already belongs to {owner[d]!r}")
            owner[d] = name
        route = entry.get("on_new_ticket", {})
        for key, value in route.items():
            rwhere = f"{where} on_new_ticket.{key}"
            if key not in ROUTE_KEYS:
                raise fail(rwhere, "unknown action")
            if not isinstance(value, ROUTE_KEYS[key]):
                raise fail(rwhere, f"expected {ROUTE_KEYS[key].__name__}, got {value!r}")
        for key in ("assign",):
            if key in route and route[key].lower() not in agent_emails:
                raise fail(f"{where} on_new_ticket.assign", f"{route[key]} is not an agent")
        for a in route.get("round_robin", []):
            if not isinstance(a, str) or a.lower() not in agent_emails:
                raise fail(f"{where} on_new_ticket.round_robin", f"{a!r} is not an agent")
        if "priority" in route and route["priority"] not in PRIORITIES:
            raise fail(f"{where} on_new_ticket.priority", f"one of {', '.join(PRIORITIES)}")
        statuses = ("open", "pending_customer", "pending_agent", "resolved", "closed")
        if "status" in route and route["status"] not in statuses:
            raise fail(f"{where} on_new_ticket.status", f"one of {', '.join(statuses)}")
        out.append({"name": name, "domains": domains, "notes": entry.get("notes", ""),
                    "on_new_ticket": route})
    return tuple(out)


def _relay(body: dict[str, Any], base: Path, fail: Any) -> Relay:
    if not 0 < body.get("port", 25) < 65536:
        raise fail("[relay] port", "must be between 1 and 65535")
    password = body.get("password", "")
    if "password_file" in body:
        if password:
            raise fail("[relay] password_file", "set either password or password_file, not both")
        pw_path = (base / body["password_file"]).resolve()
        try:
            password = pw_path.read_text().strip()
        except OSError as exc:
            raise fail("[relay] password_file", f"cannot read {pw_path}: {exc.strerror}") from None
    for key in ("timeout", "data_timeout", "retry_base_seconds", "retry_max_seconds",
                "give_up_after_seconds"):
        if key in body and body[key] <= 0:
            raise fail(f"[relay] {key}", "must be positive")
    if bool(body.get("username")) != bool(password):
        raise fail("[relay] username", "username and password must be set together")
    return Relay(
        host=body.get("host", "127.0.0.1"),
        port=body.get("port", 25),
        starttls=body.get("starttls", False),
        username=body.get("username", ""),
        password=password,
        timeout=float(body.get("timeout", 300.0)),
        data_timeout=float(body.get("data_timeout", 600.0)),
        retry_base_seconds=float(body.get("retry_base_seconds", 300.0)),
        retry_max_seconds=float(body.get("retry_max_seconds", 4000.0)),
        give_up_after_seconds=float(body.get("give_up_after_seconds", 5 * 86400.0)),
    )


def _spam(body: dict[str, Any], fail: Any) -> Spam:
    url = body.get("rspamd")
    if url is not None:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1 \
                or parts.query or parts.fragment or parts.path not in ("", "/"):
            raise fail("[spam] rspamd", 'expected the URL of rspamd\'s normal worker like'
                                        f' "http://127.0.0.1:11333", got {url!r}')
        url = f"{parts.scheme}://{parts.netloc}"
    defaults = Spam()
    scores = {key: float(body.get(key, getattr(defaults, key)))
              for key in ("reject_score", "quarantine_score", "no_autoreply_score")}
    if scores["quarantine_score"] > scores["reject_score"]:
        raise fail("[spam] quarantine_score",
                   f"must not be above reject_score ({scores['reject_score']:g})")
    timeout = float(body.get("timeout", defaults.timeout))
    if not 0 < timeout <= 600:
        raise fail("[spam] timeout", "must be between 0 and 600 seconds")
    on_error = body.get("on_error", defaults.on_error)
    if on_error not in ("accept", "tempfail"):
        raise fail("[spam] on_error", f'expected "accept" or "tempfail", got {on_error!r}')
    return Spam(rspamd=url, timeout=timeout, on_error=on_error, **scores)


def _dkim(body: dict[str, Any], base: Path, fail: Any) -> Dkim | None:
    if not body:
        return None
    for key in ("domain", "selector", "key_file"):
        if not body.get(key):
            raise fail(f"[dkim] {key}", "domain, selector and key_file must all be set")
    key_file = (base / body["key_file"]).resolve()
    if not key_file.is_file():
        raise fail("[dkim] key_file", f"file not found: {key_file} (`mailgate dkim keygen`)")
    return Dkim(body["domain"].lower(), body["selector"], key_file)


def _branding(body: dict[str, Any], fail: Any) -> Branding:
    color = body.get("primary_color", "#2563eb")
    if not re.fullmatch(r"#[0-9a-fA-F]{3}|#[0-9a-fA-F]{6}|[a-zA-Z]{3,20}", color):
        raise fail("[branding] primary_color", f"expected a CSS colour like #2563eb, got {color!r}")
    defaults = Branding()
    return Branding(**{k: body.get(k, getattr(defaults, k)) for k in _SCHEMA["branding"]})


def _reply_auth(value: str | list[Any], fail: Any) -> tuple[str, ...]:
    methods = [value] if isinstance(value, str) else _strings(value, fail)
    for method in methods:
        if method not in REPLY_AUTH_METHODS:
            raise fail(f"expected any of {', '.join(map(repr, REPLY_AUTH_METHODS))}, got"
                       f" {method!r}")
    return tuple(dict.fromkeys(methods))


def _strings(value: list[Any], fail: Any) -> list[str]:
    for item in value:
        if not isinstance(item, str):
            raise fail(f"expected strings, got {item!r}")
    return value


def _parse_hostport(value: str, fail: Any) -> tuple[str, int]:
    host, sep, port_s = value.rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise fail(f"expected host:port, got {value!r}")
    port = int(port_s)
    if not 0 <= port < 65536:
        raise fail(f"port out of range: {port}")
    return host.strip("[]"), port
