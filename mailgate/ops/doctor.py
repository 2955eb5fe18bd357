"""`mailgate doctor`: is this installation able to receive and send mail? One line per check.

Input: the config file (untrusted form: a bad one is the first failed check, never a
traceback), the templates and rules it uses (the built-in ones shipped in the package, or the
administrator's: each enabled template kind is rendered with sample data, the rules are
loaded), the machine (data directory, free space, the SMTP port), the relay over the network,
DNS and the spam scanner (their answers are untrusted text, shown on one line). Output: one
line per check, `ok`, `warn` or `FAIL`, with what was found and, when it is not ok, the fix;
`Doctor.failed` says whether any check failed (the command then exits 1). Every network step
has a timeout: the relay gets `--timeout` seconds, DNS a few seconds, and DNS that cannot be
reached is a `warn` (the check could not be made), not a failure.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import shutil
import smtplib
import socket
import sqlite3
import ssl
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
import click

from mailgate.config import (
    TEMPLATE_KINDS,
    Config,
    Dkim,
    find_config_path,
    is_loopback,
    load_config,
)
from mailgate.errors import UserError
from mailgate.ops import app
from mailgate.outbound.dkim_sign import dns_record, dns_txt_value
from mailgate.outbound.render import TemplateError
from mailgate.store.db import (
    LEGACY_HEAD,
    REVISIONS,
    FoundSchema,
    read_schema,
    schema_problem,
)

OK, WARN, FAIL = "ok", "warn", "FAIL"
ADMIN_TOKEN_FILE = "admin.token"  # mailgate.admin.token.TOKEN_FILE


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, warn, FAIL
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name:<9} {self.detail}"
        if self.fix and self.status != OK:
            text += f" — fix: {self.fix}"
        return text.replace("\r", " ").replace("\n", " ")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# --- the checks -------------------------------------------------------------------------------


def check_templates(cfg: Config) -> Check:
    """Every enabled template kind renders with sample data (subject, text and HTML), in every
    mailbox's templates and brand."""
    renderer = app.renderer(cfg)
    enabled = [k for k in renderer.kinds() if k["enabled"]]
    where = f"built-in {renderer.builtin_dir}"
    if renderer.override_dir is not None:
        where = f"{renderer.override_dir}, then {where}"
    boxes = cfg.support_mailboxes
    for box in boxes:
        mine = app.renderer(cfg, box)
        for entry in [k for k in mine.kinds() if k["enabled"]]:
            kind = entry["kind"]
            try:
                mine.render(kind, mine.sample_context(kind))
            except TemplateError as exc:
                whose = f"mailbox {box.address}: " if len(boxes) > 1 else ""
                return Check("templates", FAIL, f"{whose}{kind} does not render: {exc}",
                             _template_fix(cfg, kind, entry, str(exc)))
    if len(boxes) > 1:
        where += f", in each of {len(boxes)} mailboxes' templates and brand"
    names = ", ".join(k["kind"] for k in enabled) or "none"
    return Check("templates", OK, f"{len(enabled)} enabled kind(s) render ({names}) from {where}")


def _template_fix(cfg: Config, kind: str, entry: dict[str, object], problem: str) -> str:
    renderer = app.renderer(cfg)
    builtin_lost = not (renderer.builtin_dir / "base.html").is_file()
    if builtin_lost or (kind in TEMPLATE_KINDS and None in (entry["html_source"],
                                                            entry["text_source"])):
        return (f"the built-in templates are missing from {renderer.builtin_dir}: reinstall"
                " mailgate (pip install --force-reinstall, from where you installed it)")
    if problem.startswith("[branding]"):
        return f"[branding] logo (or the [brands.NAME] logo of that mailbox) in {cfg.path}"
    if problem.startswith("[templates."):
        return f"[templates.{kind}] subject in {cfg.path}"
    return (f"correct the file and line named (`mailgate templates preview {kind}` shows the"
            f" result), or set enabled = false under [templates.{kind}] in {cfg.path}")


def check_rules(cfg: Config) -> Check:
    """The automation rules (inline, the rules file or the built-in default workflow) and the
    SLAs load."""
    try:
        source = app.rules_file(cfg)
        ruleset = app.ruleset(cfg)
    except UserError as exc:
        return Check("rules", FAIL, str(exc), f"correct what it names, then `mailgate --config"
                     f" {cfg.path} rules check`")
    origin = "the built-in default workflow" if source == app.BUILTIN_RULES else str(source)
    enabled = sum(1 for r in ruleset.rules if r.enabled)
    return Check("rules", OK, f"{len(ruleset.rules)} rule(s), {enabled} enabled ({cfg.path} and"
                 f" {origin}), {len(ruleset.slas)} SLA(s)")


def check_data_dir(cfg: Config) -> Check:
    d = cfg.data_dir
    if not d.exists():
        parent = next((p for p in d.parents if p.exists()), Path("/"))
        if os.access(parent, os.W_OK):
            return Check("data_dir", WARN, f"{d} does not exist yet (made at the first start)",
                         f"mkdir -p {d}")
        return Check("data_dir", FAIL, f"{d} does not exist and {parent} is not writable",
                     f"create {d} for the user mailgate runs as, or change [storage] data_dir"
                     f" in {cfg.path}")
    if not d.is_dir():
        return Check("data_dir", FAIL, f"{d} is not a directory",
                     f"[storage] data_dir in {cfg.path}")
    try:
        with tempfile.NamedTemporaryFile(dir=d, prefix=".doctor-") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return Check("data_dir", FAIL, f"{d} is not writable: {exc.strerror or exc}",
                     f"chown the directory to the user mailgate runs as (the unit's"
                     f" StateDirectory= does it), or change [storage] data_dir in {cfg.path}")
    free = shutil.disk_usage(d).free
    if cfg.min_free_bytes and free < cfg.min_free_bytes:
        return Check("data_dir", FAIL,
                     f"{d}: {_size(free)} free, below [server] min_free_bytes"
                     f" ({_size(cfg.min_free_bytes)}): mail is refused with 452 4.3.1",
                     "free disk space, or lower min_free_bytes")
    if cfg.min_free_bytes and free < 2 * cfg.min_free_bytes:
        return Check("data_dir", WARN, f"{d}: only {_size(free)} free (mail is refused below"
                     f" {_size(cfg.min_free_bytes)})", "free disk space")
    return Check("data_dir", OK, f"{d} writable, {_size(free)} free")


def check_schema(cfg: Config) -> Check:
    """The database's schema is the one this mailgate needs (read only: nothing is made)."""
    if cfg.database_url:
        return _check_pg_schema(cfg, cfg.database_url)
    path = cfg.db_path
    if not path.exists():
        return Check("schema", OK, f"no database yet: the first start makes {path} at"
                     f" revision {REVISIONS[-1]}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            found = read_schema(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return Check("schema", FAIL, f"cannot read {path}: {_one_line(exc)}",
                     f"`mailgate --config {cfg.path} db check` tells what is wrong")
    problem = schema_problem(found, path)
    if problem is None:
        return Check("schema", OK, f"{path}: {found}, what this mailgate needs")
    fix = ""
    if found.effective in REVISIONS or 0 < found.legacy < LEGACY_HEAD:
        fix = f"back up {path}, then `mailgate --config {cfg.path} db upgrade`"
    return Check("schema", FAIL, problem, fix or "see the line itself")


def _check_pg_schema(cfg: Config, url: str) -> Check:
    """PostgreSQL: reachable, at the schema this mailgate needs, and the nodes it has seen."""
    from sqlalchemy import exc as sa_exc

    from mailgate.store.engine import make_engine, shown
    from mailgate.store.upgrade import schema_state

    engine = make_engine(url, connect_args={"connect_timeout": 5})
    try:
        state = schema_state(engine)
    except sa_exc.DBAPIError as exc:
        return Check("schema", FAIL, f"the database {shown(url)} is down or unreachable:"
                     f" {_one_line(exc.orig)}",
                     f"start PostgreSQL, or correct [storage] database in {cfg.path}")
    finally:
        engine.dispose()
    found = FoundSchema(state.revision, state.legacy or 0, state.empty)
    if state.empty:
        return Check("schema", OK, f"{shown(url)}: empty; the first start makes the schema at"
                     f" revision {REVISIONS[-1]}")
    problem = schema_problem(found, shown(url))
    if problem is not None:
        fix = (f"back it up, then `mailgate --config {cfg.path} db upgrade`"
               if found.effective in REVISIONS else "see the line itself")
        return Check("schema", FAIL, problem, fix)
    return Check("schema", OK, f"{shown(url)}: {found}, what this mailgate needs;"
                 f" {_nodes_line(url)}")


def _nodes_line(url: str) -> str:
    from mailgate.store import nodes
    from mailgate.store.pg import PgDatabase

    db = PgDatabase(url)
    try:
        seen = nodes.recent(db)
    finally:
        db.close()
    if not seen:
        return "no node has run on it yet"
    parts = [f"{n.node_id} ({'up' if n.up else 'down'}, seen {n.seen_seconds_ago():.0f} s ago)"
             for n in seen]
    return "nodes: " + ", ".join(parts)


def _smtp_banner(host: str, port: int, timeout: float) -> tuple[str, str]:
    """The greeting and the first line of the EHLO reply of the server at host:port."""
    with smtplib.SMTP(timeout=timeout) as s:
        _code, greeting = s.connect(host, port)
        code, ehlo = s.ehlo("doctor.mailgate.invalid")
        return (_one_line(greeting.decode(errors="replace")),
                f"{code} {_one_line(ehlo.decode(errors='replace').splitlines()[0])}")


def check_smtp_port(cfg: Config, timeout: float) -> Check:
    host, port = cfg.listen_host, cfg.listen_port
    where = f"{host}:{port}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
        return Check("smtp", OK, f"{where} is free to listen on")
    except PermissionError:
        return Check("smtp", WARN, f"binding {where} needs CAP_NET_BIND_SERVICE (not run as"
                     " root)", "run mailgate from the systemd unit, which grants it; as a plain"
                     " user, listen on a port above 1023")
    except socket.gaierror as exc:
        return Check("smtp", FAIL, f"{where}: {exc.strerror or exc}",
                     f"[server] listen in {cfg.path}")
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            return Check("smtp", FAIL, f"{host} is not an address of this machine",
                         f"[server] listen in {cfg.path}: 0.0.0.0 or one of this host's"
                         " addresses")
        if exc.errno != errno.EADDRINUSE:
            return Check("smtp", FAIL, f"cannot bind {where}: {exc.strerror or exc}",
                         f"[server] listen in {cfg.path}")
    probe = host
    if probe in ("0.0.0.0", ""):
        probe = "127.0.0.1"
    elif probe == "::":
        probe = "::1"
    try:
        greeting, ehlo = _smtp_banner(probe, port, timeout)
    except (OSError, smtplib.SMTPException) as exc:
        return Check("smtp", FAIL, f"{where} is in use by a program that does not speak SMTP"
                     f" ({_one_line(exc) or type(exc).__name__})",
                     f"find it with `ss -ltnp 'sport = :{port}'`, or change [server] listen")
    if "mailgate" in greeting.split():
        return Check("smtp", OK, f"{where} is bound by a running mailgate (it answers EHLO:"
                     f" {ehlo})")
    return Check("smtp", FAIL, f"{where} is in use by another SMTP server ({greeting})",
                 "stop it (e.g. `systemctl disable --now postfix`) or change [server] listen"
                 f" in {cfg.path}")


async def _relay_session(cfg: Config, timeout: float) -> list[str]:
    relay = cfg.relay
    notes: list[str] = []
    smtp = aiosmtplib.SMTP(hostname=relay.host, port=relay.port, timeout=timeout,
                           local_hostname=cfg.hostname, use_tls=False, start_tls=False)
    await smtp.connect()
    try:
        code, message = await smtp.ehlo()
        notes.append(f"EHLO {code} {_one_line(message.splitlines()[0] if message else '')}")
        if relay.starttls:
            if not smtp.supports_extension("starttls"):
                raise _RelayProblem("the relay does not offer STARTTLS",
                                    f"set starttls = false in [relay] of {cfg.path}, or use a"
                                    " relay port that offers it (usually 587)")
            await smtp.starttls()
            notes.append("STARTTLS ok (certificate verified)")
        if relay.username:
            await smtp.login(relay.username, relay.password)
            notes.append(f"AUTH as {relay.username} ok")
    finally:
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()
    return notes


class _RelayProblem(Exception):
    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.fix = fix


def check_relay(cfg: Config, timeout: float) -> Check:
    relay = cfg.relay
    where = f"{relay.host}:{relay.port}"
    fix_addr = f"start the relay, or set [relay] host and port in {cfg.path}"
    try:
        notes = asyncio.run(asyncio.wait_for(_relay_session(cfg, timeout), timeout * 3))
    except _RelayProblem as exc:
        return Check("relay", FAIL, f"{where}: {exc}", exc.fix)
    except aiosmtplib.SMTPAuthenticationError as exc:
        return Check("relay", FAIL, f"{where} refused the login: {exc.code}"
                     f" {_one_line(exc.message)}",
                     f"check [relay] username and password (or password_file) in {cfg.path}")
    except (TimeoutError, aiosmtplib.SMTPTimeoutError):
        return Check("relay", FAIL, f"{where} did not answer within {timeout:.0f}s", fix_addr)
    except aiosmtplib.SMTPConnectError as exc:
        return Check("relay", FAIL, f"cannot connect to {where}: {_one_line(exc)}", fix_addr)
    except aiosmtplib.SMTPResponseException as exc:
        return Check("relay", FAIL, f"{where} answered {exc.code} {_one_line(exc.message)}",
                     fix_addr)
    except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
        return Check("relay", FAIL, f"{where}: {_one_line(exc) or type(exc).__name__}",
                     fix_addr + (" (and check its TLS certificate)" if relay.starttls else ""))
    return Check("relay", OK, f"{where} answers: " + "; ".join(notes))


def _dkim_tags(txt: str) -> dict[str, str]:
    tags = {}
    for part in txt.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags[key.strip().lower()] = "".join(value.split())
    return tags


def _nameserver(value: str) -> tuple[list[str], int]:
    """`IP`, `IP:PORT` or `[IPv6]:PORT` → ([IP], port)."""
    host, port = value, "53"
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":") or "53"
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    ipaddress.ip_address(host)  # ValueError: not an address
    return [host], int(port)


def check_dkim(cfg: Config, timeout: float, nameserver: str | None = None) -> list[Check]:
    """One line per key (`[dkim]`, or each `[[dkim]]`): DNS serves it; and one warning per
    From domain of a mailbox that no key signs for (DMARC fails there)."""
    if not cfg.dkim_keys:
        return [Check("dkim", WARN, "no [dkim] section: outgoing mail is not signed and may land"
                      " in spam", "mailgate dkim keygen --selector mg1, then add the [dkim]"
                      f" section it prints to {cfg.path}")]
    results = [_check_key(cfg, dkim, timeout, nameserver) for dkim in cfg.dkim_keys]
    signed = {k.domain for k in cfg.dkim_keys}
    for box in cfg.support_mailboxes:
        if box.from_domain in signed:
            continue
        fix = (f"mailgate dkim keygen --selector mg1 --domain {box.from_domain}, publish the"
               f" record and add the [[dkim]] entry it prints to {cfg.path}")
        if box.public_address:
            fix += f", or unset public_address of [[mailboxes]] {box.address!r}"
        results.append(Check("dkim", WARN, f"mail From {box.from_address} is not DKIM-signed"
                             f" for {box.from_domain} (no [[dkim]] key; it carries"
                             f" d={cfg.dkim_keys[0].domain}, which does not align): DMARC will"
                             " fail at receivers and the mail may be refused or land in spam",
                             fix))
        signed.add(box.from_domain)
    return results


def _check_key(cfg: Config, dkim: Dkim, timeout: float, nameserver: str | None) -> Check:
    try:
        expected = dns_txt_value(dkim.key_file)
    except UserError as exc:
        return Check("dkim", FAIL, str(exc), f"[dkim] key_file in {cfg.path}")
    record = dns_record(dkim.selector, dkim.domain, expected)
    name = f"{dkim.selector}._domainkey.{dkim.domain}"
    try:
        import dns.exception
        import dns.resolver
    except ImportError:
        return Check("dkim", WARN, f"cannot look up {name}: dnspython is not installed",
                     "pip install dnspython")
    try:
        resolver = dns.resolver.Resolver(configure=nameserver is None)
        if nameserver is not None:
            resolver.nameservers, resolver.port = _nameserver(nameserver)
        resolver.timeout = resolver.lifetime = timeout
        answer = resolver.resolve(name, "TXT", lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return Check("dkim", FAIL, f"{name} has no TXT record: receivers cannot verify our"
                     " signatures", f"publish {record}")
    except (dns.exception.Timeout, dns.resolver.NoNameservers,
            dns.resolver.NoResolverConfiguration, OSError, ValueError) as exc:
        return Check("dkim", WARN, f"DNS not reachable, {name} not checked"
                     f" ({_one_line(exc) or type(exc).__name__})",
                     "run doctor again where DNS works")
    except dns.exception.DNSException as exc:
        return Check("dkim", WARN, f"{name} not checked: {_one_line(exc)}",
                     "run doctor again later")
    texts = [b"".join(r.strings).decode("ascii", "replace") for r in answer]
    want = _dkim_tags(expected)["p"]
    keys = [_dkim_tags(t).get("p") for t in texts if "p" in _dkim_tags(t)]
    if want in keys:
        return Check("dkim", OK, f"{name} publishes the key in {dkim.key_file}")
    if keys and all(k == "" for k in keys):
        return Check("dkim", FAIL, f"{name} publishes a revoked key (empty p=)",
                     f"publish {record}")
    return Check("dkim", FAIL, f"{name} publishes a different key than {dkim.key_file}"
                 " (a rotation not yet in DNS?)", f"publish {record}")


def check_admin(cfg: Config) -> Check:
    if cfg.admin_host is None:
        return Check("admin", OK, "admin endpoint off ([admin] listen not set)")
    where = f"{cfg.admin_host}:{cfg.admin_port}"
    if not is_loopback(cfg.admin_host) and cfg.admin_tls_cert is None:
        return Check("admin", FAIL, f"{where} is beyond loopback without TLS: the daemon"
                     " refuses to start", f"set [admin] tls_cert and tls_key in {cfg.path}, or"
                     " listen on 127.0.0.1")
    token = cfg.data_dir / ADMIN_TOKEN_FILE
    try:
        text = token.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return Check("admin", WARN, f"{where}: no admin token yet ({token})",
                     "it is made at the first start; `mailgate admin token` prints it")
    except (OSError, UnicodeDecodeError) as exc:
        return Check("admin", FAIL, f"cannot read the admin token {token}: {exc}",
                     "`mailgate admin token --rotate` writes a new one")
    if len(text) < 16:
        return Check("admin", FAIL, f"the admin token in {token} is empty or too short",
                     "`mailgate admin token --rotate` writes a new one")
    return Check("admin", OK, f"{where}, token present in {token}")


def check_tls(cfg: Config) -> Check | None:
    if cfg.tls_cert is not None or is_loopback(cfg.listen_host):
        return None
    return Check("tls", WARN, "no [server] tls_cert/tls_key: senders cannot use STARTTLS, so"
                 " mail reaches this server unencrypted", "set tls_cert and tls_key in"
                 f" [server] of {cfg.path} (e.g. a Let's Encrypt certificate for"
                 f" {cfg.hostname})")


def check_spam(cfg: Config, timeout: float) -> Check | None:
    """`[spam] rspamd`: does rspamd's normal worker answer its /ping?"""
    url = cfg.spam.rspamd
    if url is None:
        return None
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=timeout) as resp:
            answer = resp.read(64).strip()
    except (OSError, ValueError) as exc:
        answer, problem = b"", _one_line(getattr(exc, "reason", exc))
    else:
        problem = f"it answered {answer[:20]!r}, not pong"
    if answer == b"pong":
        return Check("spam", OK, f"rspamd answers at {url}")
    if cfg.spam.on_error == "tempfail":
        return Check("spam", FAIL, f"rspamd at {url}: {problem}; every mail gets 451 4.7.1"
                     " ([spam] on_error = \"tempfail\")", "start rspamd (`systemctl start"
                     f" rspamd`) or correct [spam] rspamd in {cfg.path}")
    return Check("spam", WARN, f"rspamd at {url}: {problem}; mail is taken unscanned",
                 f"start rspamd (`systemctl start rspamd`) or correct [spam] rspamd in"
                 f" {cfg.path}")


# --- running them ----------------------------------------------------------------------------


class Doctor:
    def __init__(self, config_path: str | None, timeout: float = 10.0,
                 dns_timeout: float = 3.0, nameserver: str | None = None) -> None:
        self.config_path = config_path
        self.timeout = timeout
        self.dns_timeout = dns_timeout
        self.nameserver = nameserver
        self.failed = False
        self.warnings = 0

    def _guard(self, name: str, fn: Callable[[], Check | list[Check] | None]
               ) -> Check | list[Check] | None:
        try:
            return fn()
        except Exception as exc:  # a check never ends the run with a traceback
            return Check(name, FAIL, f"the check itself failed: {type(exc).__name__}:"
                         f" {_one_line(exc)}", "report this as a mailgate bug")

    def checks(self) -> Iterator[Check]:
        path = find_config_path(self.config_path)
        try:
            cfg = load_config(path)
        except UserError as exc:
            self.failed = True
            yield Check("config", FAIL, str(exc), f"edit {path}, then `mailgate check-config`")
            return
        yield Check("config", OK, f"{cfg.path} is valid ({len(cfg.domains)} domain(s),"
                    f" {len(cfg.mailboxes)} mailbox(es), {len(cfg.agents)} agent(s))")
        steps: list[tuple[str, Callable[[], Check | list[Check] | None]]] = [
            ("templates", lambda: check_templates(cfg)),
            ("rules", lambda: check_rules(cfg)),
            ("data_dir", lambda: check_data_dir(cfg)),
            ("schema", lambda: check_schema(cfg)),
            ("smtp", lambda: check_smtp_port(cfg, min(self.timeout, 5.0))),
            ("tls", lambda: check_tls(cfg)),
            ("relay", lambda: check_relay(cfg, self.timeout)),
            ("dkim", lambda: check_dkim(cfg, self.dns_timeout, self.nameserver)),  # a list
            ("admin", lambda: check_admin(cfg)),
            ("spam", lambda: check_spam(cfg, min(self.timeout, 5.0))),
        ]
        for name, fn in steps:
            found = self._guard(name, fn)
            for result in found if isinstance(found, list) else [found]:
                if result is None:
                    continue
                if result.status == FAIL:
                    self.failed = True
                elif result.status == WARN:
                    self.warnings += 1
                yield result


@click.command("doctor")
@click.option("--timeout", type=click.FloatRange(0.5, 120), default=10.0, show_default=True,
              help="Seconds to wait for the relay.")
@click.option("--dns-timeout", type=click.FloatRange(0.2, 30), default=3.0, show_default=True,
              help="Seconds to wait for DNS.")
@click.option("--nameserver", metavar="IP[:PORT]",
              help="Ask this DNS server (e.g. the domain's authoritative one) instead of the"
              " system resolver.")
@click.pass_context
def doctor_command(ctx: click.Context, timeout: float, dns_timeout: float,
                   nameserver: str | None) -> None:
    """Check the configuration, templates, rules, data directory, SMTP port, relay, DKIM DNS
    record and admin token; one line each, with the fix. Exits 1 when a check fails."""
    if nameserver is not None:
        try:
            _nameserver(nameserver)
        except ValueError:
            raise click.BadParameter(f"not an IP[:PORT]: {nameserver!r}",
                                     param_hint="--nameserver") from None
    doctor = Doctor(getattr(ctx.obj, "config_path", None), timeout, dns_timeout, nameserver)
    for check in doctor.checks():
        click.echo(check.line())
    if doctor.failed:
        click.echo("doctor: some checks failed; see the fixes above", err=True)
        ctx.exit(1)
    click.echo(f"doctor: no check failed ({doctor.warnings} warning(s))")
