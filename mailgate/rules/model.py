"""The data of the rules stage: frozen dataclasses and the names rules may use.

Input: none (definitions). Output: `Facts` (what the engine may look at, filled by the lead's
orchestrator from the message and the ticket), `Condition` (one compiled check), `Rule` (a
validated automation), `Evaluation` (hit or miss, and why), `RuleError`, and the allowed
triggers, statuses and priorities. Facts carry untrusted text from the network (subject, body,
addresses); nothing here interprets it beyond comparing and searching. Stdlib only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from mailgate.errors import UserError

if TYPE_CHECKING:
    from mailgate.rules.hours import BusinessHours

TRIGGERS = ("ticket_created", "customer_replied", "agent_replied", "status_changed", "assigned",
            "idle", "sla_breached")
TIME_TRIGGERS = ("idle", "sla_breached")  # raised by the scheduler, not by a message
STATUSES = ("open", "pending_customer", "pending_agent", "resolved", "closed")
PRIORITIES = ("low", "normal", "high", "urgent")
TEMPLATE_RECIPIENTS = ("requester", "assignee")  # or an agent's address

# Longest text a `matches` regex is run on (subject + "\n" + body), and its time limit.
REGEX_MAX_CHARS = 100_000
REGEX_TIMEOUT_SECONDS = 0.25

EMPTY: Mapping[str, Any] = MappingProxyType({})


class RuleError(UserError):
    """A value in a rule or SLA is malformed (a duration, a time); one line, no file named.
    The loaders turn it into a ConfigError naming the file, the rule and the key."""


@dataclass(frozen=True, kw_only=True)
class Facts:
    """Everything a condition may test. Addresses and domains are compared case-insensitively;
    `mailbox` is the base address of ours that received the mail ("" for time events)."""

    now: datetime  # aware, UTC
    subject: str = ""
    body: str = ""  # the reply text (quotes stripped); "" for time events
    from_addr: str = ""
    from_domain: str = ""  # "" → taken from from_addr
    organization: str = ""  # name, "" for none
    mailbox: str = ""
    status: str = ""
    priority: str = ""
    tags: tuple[str, ...] = ()
    assignee: str = ""  # "" when unassigned

    # Folded once per Facts, shared by every rule evaluated on it.
    @cached_property
    def subject_folded(self) -> str:
        return self.subject.casefold()

    @cached_property
    def body_folded(self) -> str:
        return self.body.casefold()

    @cached_property
    def regex_text(self) -> str:
        return (self.subject + "\n" + self.body)[:REGEX_MAX_CHARS]

    @cached_property
    def from_folded(self) -> str:
        return self.from_addr.strip().lower()

    @cached_property
    def domain_folded(self) -> str:
        domain = self.from_domain or self.from_addr.rpartition("@")[2]
        return domain.strip().lower().rstrip(".")

    @cached_property
    def tags_folded(self) -> frozenset[str]:
        return frozenset(t.casefold() for t in self.tags)


# A check answers True (holds), False (does not), or a string: does not, and this is why
# (e.g. "regex timed out"). It gets the business hours passed to the engine (or None).
Check = Callable[[Facts, "BusinessHours | None"], "bool | str"]


@dataclass(frozen=True)
class Condition:
    key: str  # the condition's name, e.g. "subject_contains"
    label: str  # how `why` names it, e.g. 'subject_contains "urgent"'
    check: Check = field(compare=False, repr=False)


@dataclass(frozen=True)
class Rule:
    """A validated automation. `conditions` is the `if` table as written; `actions` is the `then`
    table normalised (see actions.py); `after` is seconds (idle rules only); `source` is the file
    it came from. `checks` are the compiled conditions, in the order written."""

    name: str
    when: str
    conditions: Mapping[str, Any]
    actions: Mapping[str, Any]
    after: float | None
    source: str
    enabled: bool = True
    checks: tuple[Condition, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Evaluation:
    """One rule's verdict. `actions` are the rule's actions on a hit, empty on a miss."""

    rule: str
    hit: bool
    why: str
    actions: Mapping[str, Any] = field(default_factory=lambda: EMPTY)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples become lists, nested mappings become dicts."""
        return {"rule": self.rule, "hit": self.hit, "why": self.why,
                "actions": _plain(self.actions)}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value
