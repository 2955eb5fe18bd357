"""Service-level agreements: `[[sla]]` policies, which one applies, due times and breaches.

Input: the `[[sla]]` entries of the configuration (trusted to mean what they say, not to be
well-formed), a ticket's `Facts` and timestamps (aware datetimes) and the business hours.
Output: `SlaPolicy`s (or a one-line `ConfigError` naming the file, the policy and the key), the
policy a ticket falls under (the first whose conditions hold), its due times, counted in
wall-clock time or in business hours, and whether they were breached. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from mailgate.errors import ConfigError
from mailgate.rules.conditions import compile_conditions, first_failure, show_value
from mailgate.rules.durations import parse_duration
from mailgate.rules.hours import BusinessHours
from mailgate.rules.load import entry_label, open_entry
from mailgate.rules.model import Condition, Facts, RuleError

SLA_KEYS = ("name", "if", "first_response", "resolution", "business_hours")


@dataclass(frozen=True)
class SlaPolicy:
    name: str
    conditions: Mapping[str, Any]  # the `if` table as written
    first_response: float | None  # seconds; None: no first-response target
    resolution: float | None
    business_hours: bool  # targets counted in business hours rather than wall-clock time
    source: str
    checks: tuple[Condition, ...] = field(default=(), compare=False, repr=False)


def _compile(entry: Any, source: str, index: int, hours: BusinessHours | None,
             agents: frozenset[str] | None, mailboxes: frozenset[str] | None) -> SlaPolicy:
    name, fail = open_entry(entry, source, index, "sla", "sla", SLA_KEYS)
    targets: dict[str, float | None] = {}
    for key in ("first_response", "resolution"):
        if key not in entry:
            targets[key] = None
            continue
        try:
            targets[key] = parse_duration(entry[key])
        except RuleError as exc:
            raise fail(key, str(exc)) from None
        if not targets[key]:
            raise fail(key, "must be more than zero")
    if targets["first_response"] is None and targets["resolution"] is None:
        raise fail("first_response", "an SLA needs first_response, resolution or both")
    in_hours = entry.get("business_hours", False)
    if not isinstance(in_hours, bool):
        raise fail("business_hours", f"expected true or false, got {show_value(in_hours)}")
    if in_hours and hours is None:
        raise fail("business_hours", "needs a [business_hours] table in the configuration")
    conditions = entry.get("if")
    checks = compile_conditions(conditions, "if", fail, agents=agents, mailboxes=mailboxes,
                                hours=hours)
    return SlaPolicy(name, MappingProxyType(dict(conditions or {})), targets["first_response"],
                     targets["resolution"], in_hours, source, checks)


def load_slas(entries: Sequence[Any], source: str, hours: BusinessHours | None, *,
              agents: frozenset[str] | None = None,
              mailboxes: frozenset[str] | None = None) -> tuple[SlaPolicy, ...]:
    """`[[sla]]` entries → SlaPolicies in order; names unique. `agents`/`mailboxes` (lower-case)
    are checked for `assignee`/`mailbox` conditions when given."""
    out: list[SlaPolicy] = []
    for index, entry in enumerate(entries, start=1):
        policy = _compile(entry, source, index, hours, agents, mailboxes)
        if any(p.name == policy.name for p in out):
            raise ConfigError(f"{source}: {entry_label('sla', entry, index)}: name: "
                              "duplicate SLA name")
        out.append(policy)
    return tuple(out)


def choose_sla(slas: Iterable[SlaPolicy], facts: Facts,
               hours: BusinessHours | None = None) -> SlaPolicy | None:
    """The first policy whose conditions all hold (a policy without `if` always holds)."""
    for policy in slas:
        if first_failure(policy.checks, facts, hours) is None:
            return policy
    return None


def _due(seconds: float | None, created_at: datetime, in_hours: bool,
         hours: BusinessHours | None) -> datetime | None:
    if seconds is None:
        return None
    if in_hours:
        if hours is None:
            raise ValueError("this SLA counts business hours: pass the BusinessHours")
        return hours.add(created_at, seconds)
    return created_at.astimezone(UTC) + timedelta(seconds=seconds)


def sla_due(policy: SlaPolicy, created_at: datetime,
            hours: BusinessHours | None) -> tuple[datetime | None, datetime | None]:
    """(first_response_due, resolution_due) as aware UTC datetimes; None where no target."""
    if created_at.tzinfo is None:
        raise ValueError("created_at must be an aware datetime")
    return (_due(policy.first_response, created_at, policy.business_hours, hours),
            _due(policy.resolution, created_at, policy.business_hours, hours))


def _breached(due: datetime | None, done_at: datetime | None, now: datetime) -> bool:
    """Done after the due time, or not done and the due time has passed (at it: not yet)."""
    if due is None:
        return False
    return (done_at if done_at is not None else now) > due


def sla_state(policy: SlaPolicy, created_at: datetime, first_response_at: datetime | None,
              resolved_at: datetime | None, now: datetime,
              hours: BusinessHours | None) -> dict[str, Any]:
    """JSON-ready: {policy, first_response_due, resolution_due (ISO 8601 UTC or None),
    first_response_breached, resolution_breached, breached}."""
    fr_due, res_due = sla_due(policy, created_at, hours)
    fr_breached = _breached(fr_due, first_response_at, now)
    res_breached = _breached(res_due, resolved_at, now)
    return {
        "policy": policy.name,
        "first_response_due": fr_due.isoformat() if fr_due else None,
        "resolution_due": res_due.isoformat() if res_due else None,
        "first_response_breached": fr_breached,
        "resolution_breached": res_breached,
        "breached": fr_breached or res_breached,
    }
