"""What each section of the config file may hold: every key, its type, and the words an error
uses for it.

Input: none (tables). Output: `SCHEMA` (section → key → (type, description)), the keys of the
arrays of tables (agents, teams, organizations and their routing) and the priorities. `load`
checks a file against these; an unknown key is an error naming the file and the key. Stdlib
only.
"""

from __future__ import annotations

SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], str]]] = {
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
        "workers": (int, "an integer (processes; more than 1 needs PostgreSQL)"),
    },
    "storage": {"data_dir": (str, "a directory path"),
                "database": (str, "a postgresql:// URL (default: SQLite under data_dir)"),
                "node_id": (str, "a name of letters, digits, '.', '_' or '-' (default: the"
                            " host name)")},
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
    "pipeline": {"max_attempts": (int, "an integer"),
                 "process": (str, '"separate" or "inline"')},
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
    "retention": {
        "closed_days": ((int, float), "a number of days (0: keep forever)"),
        "remove": (str, '"files" or "tickets"'),
        "audit_days": ((int, float), "a number of days (0: keep forever)"),
        "every_minutes": ((int, float), "a number of minutes"),
        "batch": (int, "a whole number of rows"),
    },
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
        "max_upload_bytes": (int, "a whole number of bytes"),
        "session_idle_minutes": ((int, float), "a number of minutes"),
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
AGENT_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str, "email": str, "reply_auth": (str, list), "role": str}
ARRAYS = ("agents", "teams", "organizations", "automations", "sla", "forwarders",
          "mailboxes", "webhooks")  # arrays of tables ([[dkim]] may be one too: see load)
# [[mailboxes]]: one support address each (its relay is a [mailboxes.relay] table of [relay]'s
# keys).
MAILBOX_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "address": (str, "an email address in one of [mail] domains"),
    "public_address": (str, "an email address (the company's own)"),
    "name": (str, "a display name"),
    "brand": (str, "the NAME of a [brands.NAME] table"),
    "templates": (str, "a directory path"),
    "team": (str, "a team name"),
    "reply_to": (str, '"token" or "public"'),
    "relay": (dict, "a [mailboxes.relay] table"),
}
# [[webhooks]]: one receiver of events each (see config.sections.read_webhooks).
WEBHOOK_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "name": (str, "a name for the audit (default: the URL)"),
    "url": (str, "an http:// or https:// URL"),
    "events": (list, "a list of event names"),
    "secret": (str, "a string (the HMAC-SHA256 key)"),
    "secret_file": (str, "a file path"),
    "allow_private": (bool, "true or false"),
    "timeout": ((int, float), "a number (seconds)"),
    "retry_base_seconds": ((int, float), "a number (seconds)"),
    "retry_max_seconds": ((int, float), "a number (seconds)"),
    "give_up_after_seconds": ((int, float), "a number (seconds)"),
}
ORG_KEYS = {"name": str, "domains": list, "notes": str, "on_new_ticket": dict}
TEAM_KEYS = {"name": str, "members": list, "mailboxes": list}
ROUTE_KEYS = {"assign": str, "round_robin": list, "priority": str, "add_tags": list,
              "status": str, "send_template": str, "assign_team": str, "round_robin_team": str,
              "notify_team": str}
PRIORITIES = ("low", "normal", "high", "urgent")

