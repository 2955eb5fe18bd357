"""The validated configuration: frozen dataclasses, one per section that has a shape of its own.

Input: none (definitions). Output: `Config` and its parts (`Agent`, `Team`, `Relay`, `Dkim`,
`Branding`, `Mailbox`, `TemplateSettings`, `Spam`, `Webhook`), built only by
`mailgate.config.load`, so every value has been checked. Stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_NAME = "mailgate.toml"
MiB = 1024 * 1024


REPLY_AUTH_METHODS = ("dkim", "token")
ROLES = ("agent", "admin")  # agent: tickets; admin: also audits, organizations, settings


@dataclass(frozen=True)
class Agent:
    name: str
    email: str
    # How this agent's replies by email may prove they are the agent's: any one suffices.
    # "dkim": a passing DKIM signature aligned with the agent's domain; "token": the agent's
    # personal reply address (sent only to the agent). Empty: never by email.
    reply_auth: tuple[str, ...] = ("dkim",)
    role: str = "agent"  # one of ROLES: what the agent may see and do on the admin endpoint


@dataclass(frozen=True)
class Team:
    """`[[teams]]`: agents who share a queue. `mailboxes`: new tickets that came to one of
    these addresses belong to the team."""

    name: str
    members: tuple[str, ...] = ()  # agents' addresses, lower-cased, in the order written
    mailboxes: tuple[str, ...] = ()


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


DEFAULT_BRAND = ""  # the brand of `[branding]`: a mailbox without `brand` speaks in it
REPLY_TO_MODES = ("token", "public")


@dataclass(frozen=True)
class Mailbox:
    """One support address (`[[mailboxes]]`; without any, the first of `[mail] mailboxes` under
    `[branding]`): where its mail arrives, and how everything sent about its tickets speaks."""

    address: str  # ours: where the company forwards to, in one of [mail] domains
    public_address: str = ""  # the company's own address customers write to ("" = none)
    name: str = ""  # the display name in From ("": the brand's company name)
    brand: str = DEFAULT_BRAND  # a [brands.NAME] table; "" = [branding]
    templates_dir: Path | None = None  # searched before [templates] dir and the built-ins
    team: str = ""  # a [[teams]] name (stored; teams are checked where they exist)
    reply_to: str = "token"  # "token": Reply-To address+token; "public": the public address
    relay: Relay | None = None  # [mailboxes.relay]: None = the global [relay]

    @property
    def from_address(self) -> str:
        """What customers see in From: the public address when there is one."""
        return self.public_address or self.address

    @property
    def from_domain(self) -> str:
        return self.from_address.rpartition("@")[2]

    def addresses(self) -> tuple[str, ...]:
        return tuple(a for a in (self.address, self.public_address) if a)


@dataclass(frozen=True)
class TemplateSettings:
    enabled: bool = True
    subject: str | None = None  # a jinja2 template; None: the kind's built-in subject


DEFAULT_MAX_UPLOAD = 10 * 1024 * 1024  # [admin] max_upload_bytes

TEMPLATE_KINDS = ("new_ticket_ack", "agent_reply", "assignee_notification",
                  "customer_replied_notification", "team_notification")
# The kinds that go to agents (never to a customer): marked Auto-Submitted: auto-generated,
# with the ticket's internal-note address as their Reply-To.
NOTIFICATION_KINDS = ("assignee_notification", "customer_replied_notification",
                      "team_notification")


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


RETENTION_REMOVES = ("files", "tickets")


@dataclass(frozen=True)
class Retention:
    """`[retention]`: what old data the scheduler removes (hourly by default). 0 days: keep
    forever (the default for both)."""

    closed_days: float = 0.0  # tickets closed longer ago than this lose their files (or go)
    remove: str = "files"  # "files": raw mail and attachments; "tickets": the whole tickets
    audit_days: float = 0.0  # audit rows older than this are removed
    every_minutes: float = 60.0  # how often the scheduler runs it
    batch: int = 200  # tickets (or audit rows ×10) per transaction

    @property
    def enabled(self) -> bool:
        return self.closed_days > 0 or self.audit_days > 0


# What a `[[webhooks]]` entry may subscribe to (README "Webhooks" says when each is sent).
WEBHOOK_EVENTS = ("ticket_created", "message_received", "status_changed", "assigned",
                  "outbound_failed")


@dataclass(frozen=True)
class Webhook:
    """`[[webhooks]]`: where events are POSTed (JSON, signed with `secret`), and how delivery
    retries. `name` keys the outbox rows (default: the URL)."""

    name: str
    url: str
    events: tuple[str, ...]
    secret: str = field(repr=False, default="")
    allow_private: bool = False  # loopback, private, link-local ... addresses allowed
    timeout: float = 10.0  # seconds for one POST (connect to the end of the reply)
    retry_base_seconds: float = 30.0  # the first retry's delay; doubled each time, +-20 %
    retry_max_seconds: float = 3600.0
    give_up_after_seconds: float = 86400.0  # after the event: failed, no more attempts


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
    workers: int = 1  # [server] workers: SMTP + pipeline processes (`serve --workers`)
    worker: int | None = None  # set in one of those processes: its index (for_worker)
    data_dir: Path = Path("data")
    database_url: str | None = None  # [storage] database: PostgreSQL; None: SQLite in data_dir
    node_id: str = "mailgate"  # [storage] node_id: this daemon among those on one database
    domains: tuple[str, ...] = ()
    mailboxes: tuple[str, ...] = ()
    relay: Relay = Relay()
    dkim: Dkim | None = None  # the first key ([dkim], or the first [[dkim]] entry)
    dkim_keys: tuple[Dkim, ...] = ()  # every key, one per domain ([[dkim]]; [dkim] is one)
    branding: Branding = Branding()
    brands: tuple[tuple[str, Branding], ...] = ()  # [brands.NAME]
    mailbox_settings: tuple[Mailbox, ...] = ()  # [[mailboxes]] as written (empty: none)
    templates_dir: Path | None = None
    templates: tuple[tuple[str, TemplateSettings], ...] = ()
    auto_replies_per_address_per_hour: int = 10  # per mailbox, plus-part removed
    auto_replies_per_domain_per_hour: int = 50
    auto_replies_per_hour: int = 500
    agent_replies_by_email_per_hour: int = 60  # per agent
    agents: tuple[Agent, ...] = ()
    teams: tuple[Team, ...] = ()
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
    pipeline_process: str = "inline"  # or "separate": in a process of its own
    log_level: str = "INFO"
    log_format: str = "text"
    strangers: str = "internal"
    reopen_closed_days: float = 7.0
    status_labels: tuple[tuple[str, str], ...] = ()
    admin_host: str | None = None  # None: the admin endpoint is off
    admin_port: int = 8025
    admin_tls_cert: Path | None = None
    admin_tls_key: Path | None = None
    # the files of one agent's reply together (the upload form, the API, `--attach`)
    admin_max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    admin_session_idle_minutes: float = 480.0  # a panel session unused this long ends
    spam: Spam = Spam()
    retention: Retention = Retention()
    webhooks: tuple[Webhook, ...] = ()  # [[webhooks]]

    def template(self, kind: str) -> TemplateSettings:
        return dict(self.templates).get(kind, TemplateSettings())

    def agent(self, email: str) -> Agent | None:
        email = email.lower()
        return next((a for a in self.agents if a.email == email), None)

    def team(self, name: str) -> Team | None:
        return next((t for t in self.teams if t.name.lower() == name.strip().lower()), None)

    def status_label(self, status: str) -> str:
        """The name people see for a status ([statuses] in the config)."""
        return dict(self.status_labels).get(status, status.replace("_", " "))

    @property
    def from_address(self) -> str:
        """Our address for outgoing mail: the first configured mailbox."""
        return self.mailboxes[0] if self.mailboxes else f"support@{self.hostname}"

    @property
    def support_mailboxes(self) -> tuple[Mailbox, ...]:
        """Every mailbox, the default first: `[[mailboxes]]`, or else the one implicit mailbox
        of `[mail] mailboxes` (its first address, `[branding]`, `[templates]`, `[relay]`)."""
        if self.mailbox_settings:
            return self.mailbox_settings
        return (Mailbox(address=self.from_address),)

    def mailbox(self, address: str | None) -> Mailbox:
        """The mailbox whose `address` this is (a ticket's); the default one otherwise."""
        boxes = self.support_mailboxes
        wanted = (address or "").lower()
        return next((m for m in boxes if m.address == wanted), boxes[0])

    def brand(self, name: str) -> Branding:
        return dict(self.brands).get(name, self.branding) if name else self.branding

    def dkim_for(self, domain: str) -> Dkim | None:
        """The DKIM key that signs mail From `domain`."""
        domain = domain.lower()
        return next((k for k in self.dkim_keys if k.domain == domain), None)

    @property
    def spool_path(self) -> Path:
        """data_dir/spool.db; in worker i of `serve --workers N`, data_dir/workers/i/spool.db."""
        return self.state_dir / "spool.db"

    @property
    def state_dir(self) -> Path:
        """Where this process keeps what is its own (the spool, its data-dir lock): data_dir,
        or data_dir/workers/i in worker i."""
        if self.worker is None:
            return self.data_dir
        return self.data_dir / "workers" / str(self.worker)

    def for_worker(self, index: int) -> Config:
        """This config as worker `index` of `serve --workers N` sees it: its own spool and
        lock (`state_dir`), the node id `<node_id>-<index>`, the admin endpoint in worker 0
        only."""
        if self.worker is not None:
            raise ValueError("already a worker's config")
        return replace(self, worker=index, node_id=f"{self.node_id}-{index}",
                       admin_host=self.admin_host if index == 0 else None)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mailgate.db"

    @property
    def database(self) -> Path | str:
        """Where the store is: the PostgreSQL URL, or the SQLite file under data_dir."""
        return self.database_url or self.db_path



# The schema: section → key → (expected python type(s), description for errors).
