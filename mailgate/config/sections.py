"""Readers for the sections with more than flat keys: teams, organizations and their routing,
the relay, spam, webhooks, DKIM keys ([dkim] or [[dkim]]), branding and [brands.NAME],
[[mailboxes]], an agent's reply authentication, host:port values.

Input: one section of the TOML document as parsed (untrusted form), the config file's directory
for relative paths, and `fail(key, message)` to make the one-line `ConfigError`. Output: the
section's frozen settings. Stdlib only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mailgate.config.schema import (
    MAILBOX_KEYS,
    ORG_KEYS,
    PRIORITIES,
    ROUTE_KEYS,
    SCHEMA,
    TEAM_KEYS,
    WEBHOOK_KEYS,
)
from mailgate.config.settings import (
    REPLY_AUTH_METHODS,
    REPLY_TO_MODES,
    RETENTION_REMOVES,
    WEBHOOK_EVENTS,
    Agent,
    Branding,
    Dkim,
    Mailbox,
    Relay,
    Retention,
    Spam,
    Team,
    Webhook,
)


def check_table(entry: Any, where: str, keys: dict[str, Any], fail: Any,
                wanted: Callable[[str], str], unknown: str = "unknown key") -> dict[str, Any]:
    """One table of an array of tables, as written: a table, holding only `keys`, each value of
    the type `keys[key]` names (a type, a tuple of types, or a (type, description) pair);
    `wanted(key)` words that type in the error. Returns the table."""
    if not isinstance(entry, dict):
        raise fail(where, "must be a table")
    for key, value in entry.items():
        if key not in keys:
            raise fail(f"{where} {key}", unknown)
        expected = keys[key]
        if isinstance(expected, tuple) and len(expected) == 2 and isinstance(expected[1], str):
            expected = expected[0]
        if not isinstance(value, expected):
            raise fail(f"{where} {key}", f"expected {wanted(key)}, got {value!r}")
    return entry


def read_teams(entries: list[Any], agents: list[Agent], mailboxes: tuple[str, ...], fail: Any
               ) -> tuple[Team, ...]:
    """`[[teams]]`: a unique name, members who are configured agents, mailboxes of ours."""
    agent_emails = {a.email for a in agents}
    seen: set[str] = set()
    out = []
    for i, entry in enumerate(entries):
        where = f"[[teams]] #{i + 1}"
        check_table(entry, where, TEAM_KEYS, fail,
                    lambda k: "a string" if TEAM_KEYS[k] is str else "a list of addresses",
                    unknown="unknown key (name, members, mailboxes)")
        name = entry.get("name", "").strip()
        if not name:
            raise fail(f"{where} name", "a team needs a name")
        where = f"[[teams]] {name!r}"
        if name.lower() in seen:
            raise fail(f"{where} name", "two teams with this name")
        seen.add(name.lower())
        members = [m.strip().lower() for m in read_strings(
            entry.get("members", []), lambda m, w=where: fail(f"{w} members", m))]
        for m in members:
            if m not in agent_emails:
                raise fail(f"{where} members", f"{m} is not an agent ([[agents]])")
        boxes = [b.strip().lower() for b in read_strings(
            entry.get("mailboxes", []), lambda m, w=where: fail(f"{w} mailboxes", m))]
        for b in boxes:
            if b not in mailboxes:
                raise fail(f"{where} mailboxes", f"{b} is not one of our mailboxes"
                                                 " ([mail] mailboxes or a [[mailboxes]] address)")
        out.append(Team(name, tuple(dict.fromkeys(members)), tuple(dict.fromkeys(boxes))))
    return tuple(out)


def read_organizations(entries: list[Any], agents: list[Agent], fail: Any,
                       teams: tuple[Team, ...] = ()) -> tuple[dict[str, Any], ...]:
    seen_names: set[str] = set()
    owner: dict[str, str] = {}
    agent_emails = {a.email for a in agents}
    out = []
    for i, entry in enumerate(entries):
        where = f"[[organizations]] #{i + 1}"
        check_table(entry, where, ORG_KEYS, fail, lambda k: ORG_KEYS[k].__name__)
        name = entry.get("name", "").strip()
        if not name:
            raise fail(f"{where} name", "an organization needs a name")
        where = f"[[organizations]] {name!r}"
        if name.lower() in seen_names:
            raise fail(f"{where} name", "two organizations with this name")
        seen_names.add(name.lower())
        domains = [d.lower().strip().rstrip(".") for d in read_strings(
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
        team_names = {t.name.lower(): t.name for t in teams}
        for key in ("assign_team", "round_robin_team", "notify_team"):
            if key in route:
                if route[key].strip().lower() not in team_names:
                    raise fail(f"{where} on_new_ticket.{key}",
                               f"{route[key]!r} is not a team ([[teams]])")
                route = {**route, key: team_names[route[key].strip().lower()]}
        if "round_robin_team" in route and ("assign" in route or "round_robin" in route):
            raise fail(f"{where} on_new_ticket.round_robin_team",
                       "cannot be combined with assign or round_robin")
        if "priority" in route and route["priority"] not in PRIORITIES:
            raise fail(f"{where} on_new_ticket.priority", f"one of {', '.join(PRIORITIES)}")
        statuses = ("open", "pending_customer", "pending_agent", "resolved", "closed")
        if "status" in route and route["status"] not in statuses:
            raise fail(f"{where} on_new_ticket.status", f"one of {', '.join(statuses)}")
        out.append({"name": name, "domains": domains, "notes": entry.get("notes", ""),
                    "on_new_ticket": route})
    return tuple(out)


def read_relay(body: dict[str, Any], base: Path, fail: Any, where: str = "[relay] ") -> Relay:
    """`[relay]`, or a mailbox's own relay (`where` is how errors name its keys)."""
    if not 0 < body.get("port", 25) < 65536:
        raise fail(f"{where}port", "must be between 1 and 65535")
    password = body.get("password", "")
    if "password_file" in body:
        if password:
            raise fail(f"{where}password_file",
                       "set either password or password_file, not both")
        pw_path = (base / body["password_file"]).resolve()
        try:
            password = pw_path.read_text().strip()
        except OSError as exc:
            raise fail(f"{where}password_file",
                       f"cannot read {pw_path}: {exc.strerror}") from None
    for key in ("timeout", "data_timeout", "retry_base_seconds", "retry_max_seconds",
                "give_up_after_seconds"):
        if key in body and body[key] <= 0:
            raise fail(f"{where}{key}", "must be positive")
    if bool(body.get("username")) != bool(password):
        raise fail(f"{where}username", "username and password must be set together")
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


def read_spam(body: dict[str, Any], fail: Any) -> Spam:
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


def read_retention(body: dict[str, Any], fail: Any) -> Retention:
    """`[retention]`: days not negative, `remove` one of RETENTION_REMOVES, a positive
    interval and batch (types were checked against SCHEMA)."""
    for key in ("closed_days", "audit_days"):
        if body.get(key, 0) < 0:
            raise fail(f"[retention] {key}", "must not be negative (0: keep forever)")
    remove = body.get("remove", "files")
    if remove not in RETENTION_REMOVES:
        raise fail("[retention] remove", f'expected "files" or "tickets", got {remove!r}')
    every = float(body.get("every_minutes", 60))
    if every <= 0:
        raise fail("[retention] every_minutes", "must be positive")
    batch = body.get("batch", 200)
    if not 1 <= batch <= 100000:
        raise fail("[retention] batch", "must be 1 to 100000")
    return Retention(closed_days=float(body.get("closed_days", 0)), remove=remove,
                     audit_days=float(body.get("audit_days", 0)), every_minutes=every,
                     batch=batch)


def read_dkim(body: dict[str, Any], base: Path, fail: Any, where: str = "[dkim]"
              ) -> Dkim | None:
    if not body:
        return None
    for key in ("domain", "selector", "key_file"):
        if not body.get(key):
            raise fail(f"{where} {key}", "domain, selector and key_file must all be set")
    key_file = (base / body["key_file"]).resolve()
    if not key_file.is_file():
        raise fail(f"{where} key_file", f"file not found: {key_file} (`mailgate dkim keygen`)")
    return Dkim(body["domain"].lower().rstrip("."), body["selector"], key_file)


def read_dkim_keys(value: Any, base: Path, fail: Any) -> tuple[Dkim, ...]:
    """`[dkim]` (one key) or `[[dkim]]` (one per domain): every key, one domain each."""
    if isinstance(value, dict):
        entries, label = [value], lambda _i: "[dkim]"
    elif isinstance(value, list):
        entries, label = value, lambda i: f"[[dkim]] #{i + 1}"
    else:
        raise fail("[dkim]", "must be a table ([dkim]) or an array of tables ([[dkim]])")
    keys: list[Dkim] = []
    for i, entry in enumerate(entries):
        where = label(i)
        check_table(entry, where, SCHEMA["dkim"], fail, lambda k: SCHEMA["dkim"][k][1])
        dkim = read_dkim(entry, base, fail, where)
        if dkim is None:
            continue
        if any(k.domain == dkim.domain for k in keys):
            raise fail(f"{where} domain", f"a second key for {dkim.domain} (one per domain)")
        keys.append(dkim)
    return tuple(keys)


def read_branding(body: dict[str, Any], fail: Any, where: str = "[branding]") -> Branding:
    color = body.get("primary_color", "#2563eb")
    if not re.fullmatch(r"#[0-9a-fA-F]{3}|#[0-9a-fA-F]{6}|[a-zA-Z]{3,20}", color):
        raise fail(f"{where} primary_color",
                   f"expected a CSS colour like #2563eb, got {color!r}")
    defaults = Branding()
    return Branding(**{k: body.get(k, getattr(defaults, k)) for k in SCHEMA["branding"]})


def read_brands(value: Any, fail: Any) -> tuple[tuple[str, Branding], ...]:
    """`[brands.NAME]` tables, each with the keys of `[branding]`."""
    if not isinstance(value, dict):
        raise fail("[brands]", "must hold [brands.NAME] tables")
    out = []
    for name, body in value.items():
        where = f"[brands.{name}]"
        if not isinstance(body, dict):
            raise fail(where, "must be a table with the keys of [branding]")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name):
            raise fail(where, "a brand name is letters, digits, '-' and '_'")
        for key, item in body.items():
            if key not in SCHEMA["branding"]:
                raise fail(f"{where} {key}", "unknown key")
            expected, description = SCHEMA["branding"][key]
            if not isinstance(item, expected) or (isinstance(item, bool)
                                                  and expected is not bool):
                raise fail(f"{where} {key}", f"expected {description}, got {item!r}")
        out.append((name, read_branding(body, fail, where)))
    return tuple(out)


def _plain_address(value: str) -> str | None:
    """`local@domain` lower-cased, or None when it is not one plain address."""
    local, at, domain = value.strip().lower().rpartition("@")
    if not at or not local or not domain or "+" in local or "." not in domain \
            or any(c.isspace() or c in '<>(),;:"[]\\' for c in value.strip()):
        return None
    return f"{local}@{domain.rstrip('.')}"


def read_mailboxes(entries: list[Any], domains: tuple[str, ...], brands: set[str], base: Path,
                   fail: Any) -> tuple[Mailbox, ...]:
    """`[[mailboxes]]`: each `address` in one of `domains`, `brand` one of `brands`, no address
    (ours or public) twice. A `team` is kept as written: teams are checked where they exist."""
    out: list[Mailbox] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(entries):
        where = f"[[mailboxes]] #{i + 1}"
        check_table(entry, where, MAILBOX_KEYS, fail, lambda k: MAILBOX_KEYS[k][1])
        if "address" not in entry:
            raise fail(f"{where} address", "a mailbox needs its address (ours, in [mail] domains)")
        address = _plain_address(entry["address"])
        if address is None:
            raise fail(f"{where} address",
                       f"not a plain address (local@domain): {entry['address']!r}")
        where = f"[[mailboxes]] {address!r}"
        if address.rpartition("@")[2] not in domains:
            raise fail(f"{where} address", f"{address} is not in one of [mail] domains")
        public = ""
        if entry.get("public_address"):
            public = _plain_address(entry["public_address"]) or ""
            if not public:
                raise fail(f"{where} public_address",
                           f"not a plain address (local@domain): {entry['public_address']!r}")
        for key, value in (("address", address), ("public_address", public)):
            if value and value in seen:
                raise fail(f"{where} {key}", f"{value} is already {seen[value]}")
            if value:
                seen[value] = f"the {key} of [[mailboxes]] {address!r}" if key != "address" \
                    else f"the address of [[mailboxes]] {address!r}"
        brand = entry.get("brand", "")
        if brand and brand not in brands:
            known = ", ".join(sorted(brands)) or "none defined"
            raise fail(f"{where} brand", f"no [brands.{brand}] table (brands: {known})")
        reply_to = entry.get("reply_to", "token")
        if reply_to not in REPLY_TO_MODES:
            raise fail(f"{where} reply_to", f'expected "token" or "public", got {reply_to!r}')
        if reply_to == "public" and not public:
            raise fail(f"{where} reply_to", '"public" needs a public_address')
        templates = None
        if entry.get("templates"):
            templates = (base / entry["templates"]).resolve()
            if not templates.is_dir():
                raise fail(f"{where} templates", f"not a directory: {templates}")
        relay = None
        if "relay" in entry:
            body = entry["relay"]
            for key, item in body.items():
                if key not in SCHEMA["relay"]:
                    raise fail(f"{where} relay.{key}", "unknown key")
                expected, description = SCHEMA["relay"][key]
                if not isinstance(item, expected) or (isinstance(item, bool)
                                                      and expected is not bool):
                    raise fail(f"{where} relay.{key}", f"expected {description}, got {item!r}")
            relay = read_relay(body, base, fail, f"{where} relay.")
        out.append(Mailbox(address=address, public_address=public,
                           name=entry.get("name", "").strip(), brand=brand,
                           templates_dir=templates, team=entry.get("team", "").strip(),
                           reply_to=reply_to, relay=relay))
    return tuple(out)


def read_reply_auth(value: str | list[Any], fail: Any) -> tuple[str, ...]:
    methods = [value] if isinstance(value, str) else read_strings(value, fail)
    for method in methods:
        if method not in REPLY_AUTH_METHODS:
            raise fail(f"expected any of {', '.join(map(repr, REPLY_AUTH_METHODS))}, got"
                       f" {method!r}")
    return tuple(dict.fromkeys(methods))


def read_strings(value: list[Any], fail: Any) -> list[str]:
    for item in value:
        if not isinstance(item, str):
            raise fail(f"expected strings, got {item!r}")
    return value


def parse_hostport(value: str, fail: Any) -> tuple[str, int]:
    host, sep, port_s = value.rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise fail(f"expected host:port, got {value!r}")
    port = int(port_s)
    if not 0 <= port < 65536:
        raise fail(f"port out of range: {port}")
    return host.strip("[]"), port


def _webhook_url(value: str, fail: Any) -> str:
    """An http(s) URL with a host, no user:password and no fragment (the address it names is
    checked when it is resolved, at each delivery)."""
    parts = urlsplit(value.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme.lower() not in ("http", "https"):
        raise fail(f"expected an http:// or https:// URL, got {value!r}")
    if not parts.hostname or port == -1 or parts.username is not None or parts.fragment \
            or any(c.isspace() or ord(c) < 32 for c in value.strip()):
        raise fail(f"not a usable URL (a host, an optional port, no user:password, no"
                   f" #fragment): {value!r}")
    return value.strip()


def read_webhooks(entries: list[Any], base: Path, fail: Any) -> tuple[Webhook, ...]:
    """`[[webhooks]]`: each an http(s) `url`, `events` from WEBHOOK_EVENTS, a `secret` (or a
    `secret_file` holding it), positive times; names unique."""
    out: list[Webhook] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"[[webhooks]] #{i + 1}"
        check_table(entry, where, WEBHOOK_KEYS, fail, lambda k: WEBHOOK_KEYS[k][1])
        for key, value in entry.items():
            if isinstance(value, bool) and key not in ("allow_private",):
                raise fail(f"{where} {key}", f"expected {WEBHOOK_KEYS[key][1]}, got {value!r}")
        if "url" not in entry:
            raise fail(f"{where} url", "a webhook needs the url events are POSTed to")
        url = _webhook_url(entry["url"], lambda m, w=where: fail(f"{w} url", m))
        name = entry.get("name", "").strip() or url
        if "name" in entry and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            raise fail(f"{where} name", "a webhook name is 1-64 letters, digits, '.', '_', '-'")
        if name in seen:
            raise fail(f"{where} name", f"two webhooks named {name!r} (give each its own name)")
        seen.add(name)
        events = read_strings(entry.get("events", []),
                              lambda m, w=where: fail(f"{w} events", m))
        if not events:
            raise fail(f"{where} events", f"name the events to send (any of"
                                          f" {', '.join(WEBHOOK_EVENTS)})")
        for event in events:
            if event not in WEBHOOK_EVENTS:
                raise fail(f"{where} events", f"unknown event {event!r} (known:"
                                              f" {', '.join(WEBHOOK_EVENTS)})")
        secret = entry.get("secret", "")
        if "secret_file" in entry:
            if secret:
                raise fail(f"{where} secret_file", "set either secret or secret_file, not both")
            path = (base / entry["secret_file"]).resolve()
            try:
                secret = path.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                why = getattr(exc, "strerror", None) or "not readable text"
                raise fail(f"{where} secret_file", f"cannot read {path}: {why}") from None
        if len(secret) < 16:
            raise fail(f"{where} {'secret_file' if 'secret_file' in entry else 'secret'}",
                       "a webhook needs a secret of at least 16 characters (receivers check"
                       " the signature with it)")
        times = {}
        defaults = Webhook("", "", ())
        for key, limit in (("timeout", 300.0), ("retry_base_seconds", 86400.0),
                           ("retry_max_seconds", 7 * 86400.0),
                           ("give_up_after_seconds", 30 * 86400.0)):
            value = float(entry.get(key, getattr(defaults, key)))
            if not 0 < value <= limit:
                raise fail(f"{where} {key}", f"must be more than 0 and at most {limit:g}")
            times[key] = value
        out.append(Webhook(name=name, url=url, events=tuple(dict.fromkeys(events)),
                           secret=secret, allow_private=entry.get("allow_private", False),
                           **times))
    return tuple(out)
