"""Configuration: one TOML file → a validated, frozen `Config`.

Input: the path of a TOML file written by an administrator (trusted to mean what it says, not
trusted to be well-formed). Output: a `Config` whose every value has the right type, or a
`ConfigError` whose message is one line naming the file and the key at fault.

The file is found in this order: an explicit path (`--config`), `$MAILGATE_CONFIG`,
`./mailgate.toml`. Relative paths inside it are relative to the file's own directory.
Stdlib only.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any

from mailgate.config.schema import AGENT_KEYS, ARRAYS, SCHEMA
from mailgate.config.sections import (
    check_table,
    parse_hostport,
    read_branding,
    read_brands,
    read_dkim_keys,
    read_mailboxes,
    read_organizations,
    read_relay,
    read_reply_auth,
    read_retention,
    read_spam,
    read_strings,
    read_teams,
    read_webhooks,
)
from mailgate.config.settings import (
    DEFAULT_CONFIG_NAME,
    DEFAULT_MAX_UPLOAD,
    ROLES,
    TEMPLATE_KINDS,
    Agent,
    Config,
    Mailbox,
    MiB,
    TemplateSettings,
)
from mailgate.errors import ConfigError


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


def check_teams(mailboxes: tuple[Mailbox, ...], teams: Any, fail: Any) -> None:
    """A mailbox's `team` must name one of `[[teams]]` (the teams themselves are read
    elsewhere; names match whatever their case)."""
    names = {str(t.get("name", "")).strip().lower()
             for t in (teams if isinstance(teams, list) else []) if isinstance(t, dict)}
    for box in mailboxes:
        if box.team and box.team.strip().lower() not in names:
            raise fail(f"[[mailboxes]] {box.address!r} team",
                       f"no [[teams]] entry named {box.team!r}")


MAX_WORKERS = 64  # [server] workers and `serve --workers`

NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _node_id(value: str | None, fail: Any) -> str:
    """`[storage] node_id`: this daemon's name among the nodes on one database (default: the
    host's name, cut at its first dot)."""
    if value is None:
        host = socket.gethostname().split(".")[0]
        return host if NODE_ID.fullmatch(host) else "mailgate"
    if not NODE_ID.fullmatch(value):
        raise fail("[storage] node_id", "must be 1-63 letters, digits, '.', '_' or '-',"
                   " starting with a letter or digit")
    return value


def _database_url(value: str | None, fail: Any) -> str | None:
    """`[storage] database`: a PostgreSQL URL (postgresql:// or postgres://), or unset."""
    if value is None:
        return None
    scheme = value.partition("://")[0].lower()
    if scheme not in ("postgresql", "postgres", "postgresql+psycopg") or "://" not in value:
        raise fail("[storage] database", "must be a postgresql:// URL (leave it out for SQLite"
                    " under data_dir)")
    return value


def parse_config(doc: dict[str, Any], path: Path) -> Config:
    """Validate a parsed TOML document; raise ConfigError naming file and key on the first fault."""

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{path}: {key}: {message}")

    values: dict[str, dict[str, Any]] = {}
    for section, body in doc.items():
        if section in ARRAYS:
            if not isinstance(body, list):
                raise fail(f"[[{section}]]", "must be an array of tables ([[...]])")
            continue
        if section in ("brands", "dkim") and isinstance(body, (list, dict)) and (
                section == "brands" or isinstance(body, list)):
            continue  # [brands.NAME] tables, [[dkim]] entries: read below
        if section not in SCHEMA:
            raise fail(f"[{section}]", "unknown section")
        if not isinstance(body, dict):
            raise fail(f"[{section}]", "must be a table")
        schema = SCHEMA[section]
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
        host, port = parse_hostport(server["listen"], lambda m: fail("[server] listen", m))
    base = path.parent

    def opt_path(section: str, key: str) -> Path | None:
        v = values.get(section, {}).get(key)
        if v in (None, ""):
            return None
        return (base / v).resolve()

    def tls_pair(section: str) -> tuple[Path | None, Path | None]:
        """`tls_cert` and `tls_key` of a section: both or neither, each an existing file."""
        cert, key = opt_path(section, "tls_cert"), opt_path(section, "tls_key")
        if (cert is None) != (key is None):
            raise fail(f"[{section}] tls_cert", "tls_cert and tls_key must be set together")
        for name, found in (("tls_cert", cert), ("tls_key", key)):
            if found is not None and not found.is_file():
                raise fail(f"[{section}] {name}", f"file not found: {found}")
        return cert, key

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
    tls_cert, tls_key = tls_pair("server")
    database_url = _database_url(values.get("storage", {}).get("database"), fail)
    workers = server.get("workers", 1)
    if not 1 <= workers <= MAX_WORKERS:
        raise fail("[server] workers", f"must be 1 to {MAX_WORKERS}")
    if workers > 1 and database_url is None:
        raise fail("[server] workers", "more than 1 needs [storage] database on PostgreSQL"
                   " (the embedded SQLite store is one process's)")

    mail = values.get("mail", {})
    domains = tuple(read_strings(mail.get("domains", []), lambda m: fail("[mail] domains", m)))
    domains = tuple(d.lower().strip(".") for d in domains)
    for d in domains:
        if "@" in d or ("." not in d and d != "localhost") or any(c.isspace() for c in d):
            raise fail("[mail] domains", f"not a domain name: {d!r}")
    mailboxes = []
    for box in read_strings(mail.get("mailboxes", []), lambda m: fail("[mail] mailboxes", m)):
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
        check_table(entry, where, AGENT_KEYS, fail, lambda k: "a string or a list of strings"
                    if k == "reply_auth" else "a string")
        if "email" not in entry or "@" not in entry["email"]:
            raise fail(f"{where} email", "an agent needs an email address")
        role = entry.get("role", "agent")
        if role not in ROLES:
            raise fail(f"{where} role", f'expected "agent" or "admin", got {role!r}')
        agents.append(Agent(name=entry.get("name", entry["email"]), email=entry["email"].lower(),
                            reply_auth=read_reply_auth(entry.get("reply_auth", ["dkim"]),
                                                   lambda m, w=where: fail(f"{w} reply_auth", m)),
                            role=role))

    log_format = values.get("log", {}).get("format", "text")
    if log_format not in ("text", "json"):
        raise fail("[log] format", f'expected "text" or "json", got {log_format!r}')
    admin = values.get("admin", {})
    admin_host: str | None = None
    admin_port = 8025
    if admin.get("listen"):
        admin_host, admin_port = parse_hostport(
            admin["listen"], lambda m: fail("[admin] listen", m))
    admin_cert, admin_key = tls_pair("admin")
    max_upload = admin.get("max_upload_bytes", DEFAULT_MAX_UPLOAD)
    if isinstance(max_upload, bool) or max_upload < 1:
        raise fail("[admin] max_upload_bytes", f"expected a positive number of bytes, got"
                                               f" {max_upload!r}")
    idle_minutes = float(admin.get("session_idle_minutes", 480))
    if not 0 < idle_minutes <= 60 * 24 * 30:
        raise fail("[admin] session_idle_minutes",
                   f"expected more than 0 and at most 43200 (30 days), got {idle_minutes:g}")
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
    pipeline_process = values.get("pipeline", {}).get("process", "inline")
    if pipeline_process not in ("separate", "inline"):
        raise fail("[pipeline] process", f'expected "separate" or "inline", got'
                   f" {pipeline_process!r}")

    relay_cfg = read_relay(values.get("relay", {}), base, fail)
    dkim_keys = read_dkim_keys(doc.get("dkim", {}), base, fail)
    branding = read_branding(values.get("branding", {}), fail)
    brands = read_brands(doc.get("brands", {}), fail)
    mailbox_settings = read_mailboxes(doc.get("mailboxes", []), domains,
                                      {name for name, _b in brands}, base, fail)
    check_teams(mailbox_settings, doc.get("teams"), fail)
    for box in mailbox_settings:  # [[mailboxes]] addresses take mail like [mail] mailboxes
        if box.address not in mailboxes:
            mailboxes.append(box.address)
    if mailbox_settings and mail.get("mailboxes"):
        first = mailbox_settings[0].address
        if mailboxes[0] != first:  # the default mailbox (outgoing mail without a ticket's)
            mailboxes.remove(first)
            mailboxes.insert(0, first)
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
    teams = read_teams(doc.get("teams", []), agents, tuple(mailboxes), fail)
    organizations = read_organizations(doc.get("organizations", []), agents, fail, teams)
    customers = values.get("customers", {})
    free_mail = tuple(d.lower() for d in read_strings(
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
    nameservers = tuple(read_strings(auth.get("nameservers", []),
                                 lambda m: fail("[auth] nameservers", m)))
    for ns in nameservers:
        ns_host, sep, ns_port = ns.rpartition(":")
        if not ns or (sep and (not ns_host or not ns_port.isdigit()
                               or not 0 < int(ns_port) < 65536)):
            raise fail("[auth] nameservers", f'expected "host:port" or "host", got {ns!r}')
    sealers = auth.get("trusted_arc_sealers")
    if sealers is not None:
        sealers = tuple(s.lower() for s in read_strings(
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
    spam = read_spam(values.get("spam", {}), fail)
    webhooks = read_webhooks(doc.get("webhooks", []), base, fail)
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
        database_url=database_url,
        workers=workers,
        node_id=_node_id(values.get("storage", {}).get("node_id"), fail),
        domains=domains,
        mailboxes=tuple(mailboxes),
        relay=relay_cfg,
        dkim=dkim_keys[0] if dkim_keys else None,
        dkim_keys=dkim_keys,
        branding=branding,
        brands=brands,
        mailbox_settings=mailbox_settings,
        templates_dir=templates_dir,
        templates=tuple(template_settings),
        auto_replies_per_address_per_hour=limits["auto_replies_per_address_per_hour"],
        auto_replies_per_domain_per_hour=limits["auto_replies_per_domain_per_hour"],
        auto_replies_per_hour=limits["auto_replies_per_hour"],
        agent_replies_by_email_per_hour=limits["agent_replies_by_email_per_hour"],
        agents=tuple(agents),
        teams=teams,
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
        pipeline_process=pipeline_process,
        log_level=level,
        log_format=log_format,
        strangers=strangers,
        reopen_closed_days=reopen_days,
        status_labels=labels,
        admin_host=admin_host,
        admin_port=admin_port,
        admin_tls_cert=admin_cert,
        admin_tls_key=admin_key,
        admin_max_upload_bytes=max_upload,
        admin_session_idle_minutes=idle_minutes,
        spam=spam,
        retention=read_retention(values.get("retention", {}), fail),
        webhooks=webhooks,
    )


