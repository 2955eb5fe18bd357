"""`mailgate init`: a first configuration, its keys and secrets, and what to do next.

Input: answers typed by an administrator, step by step (click prompts) or as flags with
`--non-interactive` (trusted intent, untrusted form: each answer is validated, and a bad one is
asked again, or is one line and exit 1 without prompts). Output: under `data_dir`, the server
secret (`secret.key`), a DKIM key (`dkim/<selector>.private`, reused when it already exists, so
that running init again never invalidates a published record) and the relay password file
(`relay.password`, mode 0600, when a password is given); the config file, written only when
`mailgate.config.load_config` accepts it and never over an existing file without `--force`;
then the DNS records to publish and how to forward mail to mailgate from Gmail and from
Outlook / Microsoft 365.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import click

from mailgate.config import find_config_path, is_loopback, load_config
from mailgate.errors import ConfigError, UserError
from mailgate.outbound.dkim_sign import (
    check_domain,
    check_selector,
    dns_record,
    dns_txt_value,
    keygen,
)
from mailgate.store.files import fsync_dir, load_or_create_secret

RELAY_PASSWORD_FILE = "relay.password"
# Relays whose senders publish an SPF include: host suffix → the mechanism to use.
SPF_INCLUDES = {
    "google.com": "include:_spf.google.com",
    "gmail.com": "include:_spf.google.com",
    "office365.com": "include:spf.protection.outlook.com",
    "outlook.com": "include:spf.protection.outlook.com",
    "amazonaws.com": "include:amazonses.com",
    "sendgrid.net": "include:sendgrid.net",
    "mailgun.org": "include:mailgun.org",
}


@dataclass(frozen=True)
class Answers:
    domain: str
    mailboxes: tuple[str, ...]
    hostname: str
    listen: str
    relay_host: str
    relay_port: int
    relay_starttls: bool
    relay_username: str
    relay_password: str
    agent_name: str
    agent_email: str
    data_dir: str
    dkim_selector: str
    company_name: str
    admin_listen: str
    public_address: str = ""  # the company's own support address, forwarded to mailboxes[0]

    @property
    def public_domain(self) -> str:
        return self.public_address.rpartition("@")[2]


@dataclass(frozen=True)
class Result:
    config_path: Path
    data_dir: Path
    dkim_record: str
    dkim_key: Path
    dkim_reused: bool
    public_dkim_record: str = ""  # the key for the public address's domain (its From)
    public_dkim_key: Path | None = None


# --- validation: each returns the clean value or raises UserError ----------------------------


def clean_domain(value: str) -> str:
    return check_domain(value)


def clean_hostname(value: str) -> str:
    return check_domain(value)


def clean_address(value: str, domain: str | None = None) -> str:
    address = value.strip().lower()
    local, at, dom = address.rpartition("@")
    if not at or not local or not dom or any(c.isspace() or c in "<>\"," for c in address):
        raise UserError(f"not an email address: {value!r}")
    if domain is not None:
        if "+" in local:
            raise UserError(f"a mailbox is a plain address without +tag: {value!r}")
        if dom != domain:
            raise UserError(f"{value!r} is not in the support domain {domain}")
    return address


def clean_mailboxes(value: str | tuple[str, ...], domain: str) -> tuple[str, ...]:
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    boxes = tuple(dict.fromkeys(clean_address(v, domain) for v in items))
    if not boxes:
        raise UserError("give at least one mailbox")
    return boxes


def clean_hostport(value: str, what: str, allow_empty: bool = False) -> str:
    value = value.strip()
    if not value and allow_empty:
        return ""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{what}: expected host:port, got {value!r}")
    return value


def clean_selector(value: str) -> str:
    return check_selector(value.strip())


def default_data_dir(config_path: Path) -> str:
    return "/var/lib/mailgate" if str(config_path).startswith("/etc/") else "data"


# --- asking -------------------------------------------------------------------------------------


def _ask(label: str, default: Any, clean: Callable[[str], Any], hide: bool = False) -> Any:
    def proc(value: str) -> Any:
        try:
            return clean(value)
        except UserError as exc:
            raise click.BadParameter(str(exc)) from None

    return click.prompt(label, default=default, value_proc=proc, hide_input=hide,
                        show_default=not hide)


def clean_public_address(value: str) -> str:
    """The company's own support address, or "" for none."""
    return clean_address(value) if value.strip() else ""


def ask(given: dict[str, Any], config_path: Path) -> Answers:
    """Prompt for every answer, offering the flags' values (or sensible ones) as defaults."""
    click.echo(f"Setting up mailgate; the config goes to {config_path}.\n")
    click.echo("Which address do your customers write to for support? (your own, e.g."
               " support@yourcompany.com, which you will forward to mailgate; empty if they"
               " will write to mailgate's address itself)")
    public = _ask("Your support address", given.get("public_address") or "",
                  clean_public_address)
    company = _ask("Company name (shown in the mail your customers get)",
                   given.get("company_name") or (public.rpartition("@")[2] or None),
                   lambda v: v.strip() or _raise("the company name cannot be empty"))
    click.echo("\n1. The support domain: mail for it comes to this server (its MX).")
    domain = _ask("Support domain", given.get("domain"), clean_domain)
    mailboxes = _ask("Mailboxes (comma-separated)",
                     ", ".join(given.get("mailbox") or [f"support@{domain}"]),
                     lambda v: clean_mailboxes(v, domain))
    hostname = _ask("This server's public host name (the MX target)",
                    given.get("hostname") or f"mx.{domain}", clean_hostname)
    listen = _ask("SMTP listen address", given.get("listen") or "0.0.0.0:25",
                  lambda v: clean_hostport(v, "listen"))
    click.echo("\n2. The relay (smarthost) that sends mailgate's outgoing mail.")
    relay_host = _ask("Relay host", given.get("relay_host") or "127.0.0.1",
                      lambda v: v.strip() or _raise("the relay host cannot be empty"))
    relay_port = _ask("Relay port", given.get("relay_port") or 25, _port)
    starttls_default = given.get("relay_starttls")
    if starttls_default is None:
        starttls_default = relay_port in (25, 587) and not is_loopback(relay_host)
    relay_starttls = click.confirm("Use STARTTLS with the relay", default=starttls_default)
    relay_username = _ask("Relay username (empty for none)", given.get("relay_username") or "",
                          lambda v: v.strip())
    relay_password = ""
    if relay_username:
        relay_password = _ask("Relay password", given.get("relay_password") or None,
                              lambda v: v or _raise("a username needs a password"), hide=True)
    click.echo("\n3. The first agent (more in [[agents]] later).")
    agent_email = _ask("Agent email (empty for none)", given.get("agent_email") or "",
                       lambda v: clean_address(v) if v.strip() else "")
    agent_name = ""
    if agent_email:
        agent_name = _ask("Agent name", given.get("agent_name") or agent_email.split("@")[0],
                          lambda v: v.strip() or _raise("a name cannot be empty"))
    click.echo("\n4. Where mailgate keeps its spool, database, attachments and keys.")
    data_dir = _ask("Data directory", given.get("data_dir") or default_data_dir(config_path),
                    lambda v: v.strip() or _raise("the data directory cannot be empty"))
    admin_listen = given.get("admin_listen")
    if public and public.rpartition("@")[2] == domain:
        public = ""  # already mailgate's own domain: nothing is forwarded
    return Answers(
        domain=domain, mailboxes=mailboxes, hostname=hostname, listen=listen,
        relay_host=relay_host, relay_port=relay_port, relay_starttls=relay_starttls,
        relay_username=relay_username, relay_password=relay_password,
        agent_name=agent_name, agent_email=agent_email, data_dir=data_dir,
        dkim_selector=clean_selector(given.get("dkim_selector") or default_selector()),
        company_name=company,
        admin_listen="127.0.0.1:8025" if admin_listen is None else admin_listen,
        public_address=public,
    )


def from_flags(given: dict[str, Any], config_path: Path) -> Answers:
    """The answers from flags alone; a missing or bad one is a UserError naming the flag."""
    if not given.get("domain"):
        raise UserError("--domain is required with --non-interactive")
    domain = clean_domain(given["domain"])
    username = (given.get("relay_username") or "").strip()
    password = given.get("relay_password") or ""
    if bool(username) != bool(password):
        raise UserError("--relay-username and --relay-password go together")
    agent_email = clean_address(given["agent_email"]) if given.get("agent_email") else ""
    relay_host = (given.get("relay_host") or "127.0.0.1").strip()
    relay_port = _port(str(given.get("relay_port") or 25))
    starttls = given.get("relay_starttls")
    if starttls is None:
        starttls = relay_port in (25, 587) and not is_loopback(relay_host)
    public = clean_public_address(given.get("public_address") or "")
    if public.rpartition("@")[2] == domain:
        public = ""
    return Answers(
        public_address=public,
        domain=domain,
        mailboxes=clean_mailboxes(tuple(given.get("mailbox") or ()) or (f"support@{domain}",),
                                  domain),
        hostname=clean_hostname(given.get("hostname") or f"mx.{domain}"),
        listen=clean_hostport(given.get("listen") or "0.0.0.0:25", "--listen"),
        relay_host=relay_host, relay_port=relay_port, relay_starttls=bool(starttls),
        relay_username=username, relay_password=password,
        agent_name=(given.get("agent_name") or agent_email.split("@")[0]).strip(),
        agent_email=agent_email,
        data_dir=(given.get("data_dir") or default_data_dir(config_path)).strip(),
        dkim_selector=clean_selector(given.get("dkim_selector") or default_selector()),
        company_name=given.get("company_name") or public.rpartition("@")[2] or domain,
        admin_listen=clean_hostport(
            "127.0.0.1:8025" if given.get("admin_listen") is None else given["admin_listen"],
            "--admin-listen", allow_empty=True),
    )


def default_selector() -> str:
    return time.strftime("mg%Y%m")


def _raise(message: str) -> Any:
    raise UserError(message)


def _port(value: str) -> int:
    if not str(value).strip().isdigit() or not 0 < int(value) < 65536:
        raise UserError(f"not a port number (1-65535): {value!r}")
    return int(value)


# --- writing ------------------------------------------------------------------------------------


def toml_string(value: str) -> str:
    """A TOML basic string: quotes, backslashes and every control character escaped."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\u{code:04X}"))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def render_config(a: Answers, key_file: str, password_file: str | None,
                  public_key_file: str = "") -> str:
    s = toml_string
    lines = [
        f"# mailgate configuration written by `mailgate init` on {time.strftime('%Y-%m-%d')}.",
        "# `mailgate check-config` validates it, `mailgate doctor` checks the whole setup;",
        "# README.md describes every key.",
        "",
        "[server]",
        f"listen = {s(a.listen)}",
        f"hostname = {s(a.hostname)}",
        "shutdown_seconds = 30",
        "",
        "[storage]",
        f"data_dir = {s(a.data_dir)}",
        "",
        "[mail]",
        f"domains = [{s(a.domain)}]",
        f"mailboxes = [{', '.join(s(m) for m in a.mailboxes)}]",
        "",
        "[relay]",
        f"host = {s(a.relay_host)}",
        f"port = {a.relay_port}",
        f"starttls = {'true' if a.relay_starttls else 'false'}",
    ]
    if a.relay_username:
        lines += [f"username = {s(a.relay_username)}"]
        if password_file is not None:
            lines += [f"password_file = {s(password_file)}"]
    if not a.public_address:
        lines += [
            "",
            "[dkim]",
            f"domain = {s(a.domain)}",
            f"selector = {s(a.dkim_selector)}",
            f"key_file = {s(key_file)}",
        ]
    else:
        lines += [
            "",
            "[[dkim]]                       # one key per domain mail goes out From",
            f"domain = {s(a.domain)}",
            f"selector = {s(a.dkim_selector)}",
            f"key_file = {s(key_file)}",
            "",
            "[[dkim]]",
            f"domain = {s(a.public_domain)}",
            f"selector = {s(a.dkim_selector)}",
            f"key_file = {s(public_key_file)}",
            "",
            "[[mailboxes]]                  # customers write to public_address, which forwards"
            " to address",
            f"address = {s(a.mailboxes[0])}",
            f"public_address = {s(a.public_address)}",
            f"name = {s(a.company_name)}",
        ]
    lines += [
        "",
        "[branding]",
        f"company_name = {s(a.company_name)}",
        "",
    ]
    if a.admin_listen:
        lines += ["[admin]", f"listen = {s(a.admin_listen)}", ""]
    lines += ["[log]", 'level = "INFO"', 'format = "text"', ""]
    if a.agent_email:
        lines += ["[[agents]]", f"name = {s(a.agent_name)}", f"email = {s(a.agent_email)}", ""]
    return "\n".join(lines)


def _write_private(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _install(tmp: Path, path: Path, force: bool) -> None:
    """Move the validated `tmp` to `path`; never over an existing file unless `force`."""
    if force:
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path)  # fails if the file appeared meanwhile
        except FileExistsError:
            raise UserError(f"{path} already exists; refusing to overwrite it"
                            " (use --force)") from None
        finally:
            tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def refuse_existing(config_path: Path, force: bool) -> None:
    if config_path.exists() and not force:
        raise UserError(f"{config_path} already exists; refusing to overwrite it (use --force)")


def setup(config_path: Path, a: Answers, force: bool) -> Result:
    """Make the data directory, secret, DKIM key and relay password file, then the config."""
    refuse_existing(config_path, force)
    config_dir = config_path.parent
    data_dir = (config_dir / a.data_dir).resolve()
    try:
        config_dir.mkdir(parents=True, exist_ok=True)
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        load_or_create_secret(data_dir)
    except OSError as exc:
        raise UserError(f"cannot prepare {data_dir}: {exc.strerror or exc}") from None
    key_rel = str(PurePath(a.data_dir) / "dkim" / f"{a.dkim_selector}.private")
    key_path = data_dir / "dkim" / f"{a.dkim_selector}.private"
    reused = key_path.exists()
    if reused:  # a record may already be published for it: keep it
        record = dns_record(a.dkim_selector, a.domain, dns_txt_value(key_path))
    else:
        key_path, record = keygen(data_dir, a.dkim_selector, a.domain)
    public_record, public_key, public_rel = "", None, ""
    if a.public_address:  # mail goes out From the public address: a key for its domain too
        public_rel = str(PurePath(a.data_dir) / "dkim" / a.public_domain
                         / f"{a.dkim_selector}.private")
        public_key = data_dir / "dkim" / a.public_domain / f"{a.dkim_selector}.private"
        if public_key.exists():
            public_record = dns_record(a.dkim_selector, a.public_domain,
                                       dns_txt_value(public_key))
        else:
            public_key, public_record = keygen(data_dir, a.dkim_selector, a.public_domain,
                                               per_domain=True)
    password_rel = None
    if a.relay_username:
        password_rel = str(PurePath(a.data_dir) / RELAY_PASSWORD_FILE)
        try:
            _write_private(data_dir / RELAY_PASSWORD_FILE, a.relay_password)
        except OSError as exc:
            raise UserError(f"cannot write {data_dir / RELAY_PASSWORD_FILE}:"
                            f" {exc.strerror or exc}") from None
    text = render_config(a, key_rel, password_rel, public_rel)
    tmp = config_dir / f".{config_path.name}.{os.getpid()}.tmp"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o644)  # no secrets in it: those are files under data_dir
        try:
            load_config(tmp)
        except ConfigError as exc:
            raise UserError(f"the configuration mailgate init made is not valid ({exc});"
                            " nothing was written") from None
        _install(tmp, config_path, force)
    except OSError as exc:
        raise UserError(f"cannot write {config_path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return Result(config_path.resolve(), data_dir, record, key_path, reused, public_record,
                  public_key)


# --- what to do next ------------------------------------------------------------------------


def spf_mechanism(a: Answers) -> tuple[str, str]:
    """The SPF mechanism that lets our relay send for the domain, and a note about it."""
    host = a.relay_host.lower().rstrip(".")
    for suffix, include in SPF_INCLUDES.items():
        if host == suffix or host.endswith("." + suffix):
            return include, f"your relay {a.relay_host} sends from its provider's servers"
    if is_loopback(host):
        return f"a:{a.hostname}", ("the relay is a local MTA: mail leaves from this server"
                                   f" ({a.hostname})")
    return f"a:{host}", (f"the relay {a.relay_host} sends the mail; if it is a provider, use"
                         " the include: mechanism it documents instead")


def next_steps(a: Answers, r: Result) -> str:
    spf, spf_note = spf_mechanism(a)
    support = a.mailboxes[0]
    config = r.config_path
    width = max(len(f"{a.dkim_selector}._domainkey.{a.domain}."), len(f"_dmarc.{a.domain}."))

    def rr(name: str, rest: str) -> str:
        return f"    {name.ljust(width)}  {rest}"

    dkim_rest = r.dkim_record.split(" ", 1)[1]
    key_note = "kept the existing key" if r.dkim_reused else "made a new key"
    public, pd = a.public_address, a.public_domain
    company_dns: list[str] = []
    if public:
        name = f"{a.dkim_selector}._domainkey.{pd}."
        company_dns = [
            "",
            f"   In the DNS of {pd} (your company's domain: mail to customers goes out From"
            f" {public}):",
            "",
            f"    {name}  {r.public_dkim_record.split(' ', 1)[1]}",
            "",
            f"   - DKIM for {pd}: without it, mail From {public} fails DMARC at receivers"
            " (`mailgate doctor` checks it).",
            f"   - SPF for {pd}: add {spf} to its SPF record, or give that mailbox the company's"
            " own relay ([mailboxes.relay]).",
        ]
    forward_from = public or "your support mailbox"
    return "\n".join([
        f"Wrote {config}.",
        f"Data directory {r.data_dir}: server secret ready, DKIM {key_note} ({r.dkim_key}).",
        "",
        "Next steps",
        "",
        "1. Publish these DNS records (zone-file syntax):",
        "",
        rr(f"{a.domain}.", f"IN MX  10 {a.hostname}."),
        rr(f"{a.hostname}.", "IN A   <this server's public IPv4>   (and AAAA for IPv6)"),
        rr(f"{a.domain}.", f'IN TXT "v=spf1 {spf} ~all"'),
        rr(f"{a.dkim_selector}._domainkey.{a.domain}.", dkim_rest),
        rr(f"_dmarc.{a.domain}.", 'IN TXT "v=DMARC1; p=none; adkim=r; aspf=r"'),
        "",
        f"   - MX: mail for {a.domain} comes to {a.hostname}; port 25 must be open to the"
        " internet, and the reverse DNS (PTR) of the server's address should name it.",
        f"   - SPF: {spf_note}. A name has only one SPF record: if {a.domain} already has"
        f" one, add {spf} to it.",
        "   - DKIM: the key mailgate signs with; `mailgate doctor` checks that DNS serves it.",
        "   - DMARC: p=none only reports; add rua=mailto:<an address you read> to receive the"
        " reports, and move to p=quarantine once they show your mail aligned.",
        *company_dns,
        "",
        f"2. Check the setup: mailgate --config {config} doctor",
        "   Then start it: mailgate systemd-unit > /etc/systemd/system/mailgate.service &&"
        " systemctl daemon-reload && systemctl enable --now mailgate",
        f"   (or in the foreground: mailgate --config {config} serve)",
        "",
        f"3. Forward {forward_from} to {support}:",
        "",
        "   Gmail / Google Workspace:",
        "     Settings (gear) > See all settings > Forwarding and POP/IMAP > Add a forwarding"
        " address,",
        f"     enter {support}. Google sends a confirmation mail there: mailgate receives it,"
        if not public else f"     (signed in as {public}) enter {support}. Google sends a"
        " confirmation mail there: mailgate receives it,",
        "     and `mailgate forwarding pending` (or the admin endpoint's /forwarding page)"
        " shows",
        "     its confirmation code and link. Enter the code in Gmail, then choose 'Forward a"
        " copy",
        "     of incoming mail to' and save.",
        "",
        "   Outlook / Microsoft 365:",
        "     Per mailbox: Outlook on the web > Settings > Mail > Forwarding > Enable"
        f" forwarding, enter {support}, keep a copy, save",
        "     (or in the Microsoft 365 admin center: Users > Active users > the mailbox > Mail"
        " > Email forwarding).",
        "     Organisation-wide: Exchange admin center > Mail flow > Rules > add a rule"
        f" 'Redirect the message to' {support}.",
        "     Microsoft blocks automatic forwarding to outside domains by default: in Microsoft"
        " Defender > Policies >",
        "     Anti-spam > Anti-spam outbound policy, set 'Automatic forwarding rules' to On"
        " (for these mailboxes),",
        "     or forwarded mail is dropped with '550 5.7.520 Access denied'.",
    ])


# --- the command ----------------------------------------------------------------------------


@click.command("init")
@click.option("--non-interactive", is_flag=True,
              help="Take every answer from the flags; ask nothing.")
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@click.option("--domain", help="The support domain (mail for it comes here).")
@click.option("--mailbox", multiple=True,
              help="A mailbox in that domain (repeatable; default support@DOMAIN).")
@click.option("--hostname", help="This server's public host name, the MX target"
              " (default mx.DOMAIN).")
@click.option("--listen", help="SMTP listen address host:port (default 0.0.0.0:25).")
@click.option("--relay-host", help="The relay (smarthost) for outgoing mail.")
@click.option("--relay-port", type=int, help="Its port (default 25).")
@click.option("--relay-starttls/--no-relay-starttls", default=None,
              help="Use STARTTLS with the relay (default: on for a remote relay).")
@click.option("--relay-username", help="Relay login name.")
@click.option("--relay-password", envvar="MAILGATE_RELAY_PASSWORD",
              help="Relay password (or $MAILGATE_RELAY_PASSWORD, which keeps it out of ps).")
@click.option("--agent-name", help="The first agent's name.")
@click.option("--agent-email", help="The first agent's address.")
@click.option("--data-dir", help="Data directory (default /var/lib/mailgate for a config"
              " under /etc, else data next to the config).")
@click.option("--dkim-selector", help="DKIM selector (default mgYYYYMM).")
@click.option("--company-name", help="Company name in outgoing mail (default: the domain).")
@click.option("--public-address", help="The company's own support address customers write to,"
              " forwarded to the first mailbox (mail goes out From it; default: none).")
@click.option("--admin-listen", help='Admin HTTP endpoint host:port (default 127.0.0.1:8025;'
              ' "" for none).')
@click.pass_context
def init_command(ctx: click.Context, non_interactive: bool, force: bool, **given: Any) -> None:
    """Write a first configuration, make the keys, and print the DNS records to publish."""
    config_path = find_config_path(getattr(ctx.obj, "config_path", None)).absolute()
    refuse_existing(config_path, force)  # before asking anything
    answers = from_flags(given, config_path) if non_interactive else ask(given, config_path)
    result = setup(config_path, answers, force)
    load_config(result.config_path)
    click.echo("")
    click.echo(next_steps(answers, result))
