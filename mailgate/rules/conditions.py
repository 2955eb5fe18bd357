"""Conditions: the `if = {...}` table of a rule or SLA → compiled checks, and running them.

Input: the table as written in the configuration (trusted to mean what it says, not to be
well-formed), the agents, our mailboxes and the business hours for validation. Output: a tuple
of `Condition`s, each holding a precompiled check (folded strings, frozensets, compiled regexes),
or a `ConfigError` naming the file, the rule and the key. At evaluation the checks read `Facts`,
which carry untrusted text: it is only compared and searched, and a `matches` regex runs on at
most REGEX_MAX_CHARS characters with a real time limit (the `regex` module's timeout), a timeout
counting as a miss with the reason "regex timed out". Matching releases the GIL
(`concurrent=True`), so a slow regex in a worker thread does not stall the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import regex

from mailgate.errors import ConfigError
from mailgate.rules.hours import BusinessHours
from mailgate.rules.model import (
    PRIORITIES,
    REGEX_TIMEOUT_SECONDS,
    STATUSES,
    Check,
    Condition,
    Facts,
)

Fail = Callable[[str, str], ConfigError]  # (key, message) → the one-line error to raise

CONDITIONS = ("subject_contains", "body_contains", "matches", "from", "from_domain",
              "organization", "mailbox", "status", "priority", "tag", "assignee", "unassigned",
              "business_hours")


def show_value(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def string_list(value: Any, key: str, fail: Fail, what: str) -> tuple[str, ...]:
    """A string or a non-empty list of strings (meaning: any of them), each non-empty."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise fail(key, f"expected {what} or a non-empty list of them, got {show_value(value)}")
    out = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise fail(key, f"expected {what}, got {show_value(item)}")
        out.append(item.strip())
    return tuple(out)


def parse_address(text: str, key: str, fail: Fail, wildcard: bool = False) -> str:
    local, at, domain = text.lower().rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in text) \
            or (local == "*" and not wildcard):
        kind = "an address (or *@domain)" if wildcard else "an address"
        raise fail(key, f"expected {kind}, got {show_value(text)}")
    return f"{local}@{domain.rstrip('.')}"


def _domain(text: str, key: str, fail: Fail) -> str:
    domain = text.lower().strip(".")
    if "@" in domain or "." not in domain or any(c.isspace() for c in domain):
        raise fail(key, f"expected a domain name like \"example.com\", got {show_value(text)}")
    return domain


def one_of(text: str, allowed: tuple[str, ...], key: str, fail: Fail) -> str:
    if text not in allowed:
        raise fail(key, f"unknown value {show_value(text)} (one of {', '.join(allowed)})")
    return text


def _contains(attr: str, needles: tuple[str, ...]) -> Check:
    folded = tuple(n.casefold() for n in needles)
    if len(folded) == 1:
        needle = folded[0]
        return lambda f, _h: needle in getattr(f, attr)
    return lambda f, _h: any(n in getattr(f, attr) for n in folded)


def _matches(patterns: tuple[Any, ...]) -> Check:
    def check(facts: Facts, _hours: BusinessHours | None) -> bool | str:
        text = facts.regex_text
        timed_out = False
        for pattern in patterns:
            try:
                if pattern.search(text, concurrent=True, timeout=REGEX_TIMEOUT_SECONDS) is not None:
                    return True
            except TimeoutError:
                timed_out = True
        return "regex timed out" if timed_out else False
    return check


def _from(addresses: tuple[str, ...]) -> Check:
    exact = frozenset(a for a in addresses if not a.startswith("*@"))
    domains = frozenset(a[2:] for a in addresses if a.startswith("*@"))

    def check(f: Facts, _h: BusinessHours | None) -> bool:
        addr = f.from_folded
        return addr in exact or (bool(domains) and addr.rpartition("@")[2] in domains)
    return check


def _from_domain(domains: tuple[str, ...]) -> Check:
    exact = frozenset(domains)
    suffixes = tuple("." + d for d in domains)
    return lambda f, _h: f.domain_folded in exact or f.domain_folded.endswith(suffixes)


def _field_in(attr: str, values: tuple[str, ...], fold: bool) -> Check:
    allowed = frozenset(v.casefold() if fold else v for v in values)
    if fold:
        return lambda f, _h: getattr(f, attr).strip().casefold() in allowed
    return lambda f, _h: getattr(f, attr) in allowed


def _tag(tags: tuple[str, ...]) -> Check:
    wanted = frozenset(t.casefold() for t in tags)
    return lambda f, _h: not wanted.isdisjoint(f.tags_folded)


def _business_hours(inside: bool) -> Check:
    def check(f: Facts, hours: BusinessHours | None) -> bool | str:
        if hours is None:
            return "no [business_hours] given to the engine"
        return hours.contains(f.now) is inside
    return check


def _compile_one(name: str, value: Any, key: str, fail: Fail, *,
                 agents: frozenset[str] | None, mailboxes: frozenset[str] | None,
                 hours: BusinessHours | None) -> Check:
    if name in ("subject_contains", "body_contains"):
        attr = "subject_folded" if name == "subject_contains" else "body_folded"
        return _contains(attr, string_list(value, key, fail, "a non-empty string"))
    if name == "matches":
        compiled = []
        for p in string_list(value, key, fail, "a regular expression"):
            try:
                compiled.append(regex.compile(p))
            except (regex.error, ValueError, OverflowError) as exc:
                reason = " ".join(str(exc).split())
                raise fail(key, f"invalid regular expression {show_value(p)}: {reason}") from None
        return _matches(tuple(compiled))
    if name == "from":
        return _from(tuple(parse_address(a, key, fail, wildcard=True)
                           for a in string_list(value, key, fail, "an address")))
    if name == "from_domain":
        return _from_domain(tuple(_domain(d, key, fail)
                                  for d in string_list(value, key, fail, "a domain name")))
    if name == "organization":
        return _field_in("organization", string_list(value, key, fail, "an organization name"),
                         fold=True)
    if name == "mailbox":
        boxes = tuple(parse_address(a, key, fail)
                      for a in string_list(value, key, fail, "an address"))
        for box in boxes:
            if mailboxes is not None and box not in mailboxes:
                raise fail(key, f"{show_value(box)} is not one of our mailboxes ([mail] mailboxes)")
        return _field_in("mailbox", boxes, fold=True)
    if name in ("status", "priority"):
        allowed = STATUSES if name == "status" else PRIORITIES
        values = tuple(one_of(v, allowed, key, fail)
                       for v in string_list(value, key, fail, f"a {name}"))
        return _field_in(name, values, fold=False)
    if name == "tag":
        return _tag(string_list(value, key, fail, "a tag"))
    if name == "assignee":
        people = tuple(parse_address(a, key, fail)
                       for a in string_list(value, key, fail, "an address"))
        for person in people:
            if agents is not None and person not in agents:
                raise fail(key, f"{show_value(person)} is not a configured agent ([[agents]])")
        return _field_in("assignee", people, fold=True)
    if name in ("unassigned", "business_hours"):
        if not isinstance(value, bool):
            raise fail(key, f"expected true or false, got {show_value(value)}")
        if name == "unassigned":
            wanted = value
            return lambda f, _h: (not f.assignee) is wanted
        if hours is None:
            raise fail(key, "needs a [business_hours] table in the configuration")
        return _business_hours(value)
    raise fail(key, f"unknown condition (one of {', '.join(CONDITIONS)})")


def _actual(name: str) -> Callable[[Facts], str] | None:
    """What the facts held, for the `why` of a miss on a short field (None: not shown)."""
    field = {"from": "from_addr", "from_domain": "domain_folded"}.get(name, name)
    if name in ("from", "from_domain", "organization", "mailbox", "status", "priority"):
        return lambda f: f"{name} is {show_value(getattr(f, field))}"
    if name in ("assignee", "unassigned"):
        return lambda f: f"assignee is {show_value(f.assignee)}" if f.assignee else "unassigned"
    if name == "tag":
        return lambda f: f"tags are {show_value(list(f.tags))}"
    if name == "business_hours":
        return lambda f: f"now is {f.now.isoformat(timespec='seconds')}"
    return None


_ACTUAL = {name: _actual(name) for name in CONDITIONS}


def compile_conditions(table: Any, prefix: str, fail: Fail, *,
                       agents: frozenset[str] | None = None,
                       mailboxes: frozenset[str] | None = None,
                       hours: BusinessHours | None = None) -> tuple[Condition, ...]:
    """`{subject_contains = "urgent", unassigned = true}` → compiled Conditions, in order.
    `prefix` is the key path for errors ("if"); `agents`/`mailboxes` None: not checked;
    `hours` None: a `business_hours` condition is an error."""
    if table is None:
        return ()
    if not isinstance(table, Mapping):
        raise fail(prefix, f"expected a table like {{ subject_contains = \"urgent\" }}, "
                           f"got {show_value(table)}")
    out = []
    for name, value in table.items():
        key = f"{prefix}.{name}"
        check = _compile_one(name, value, key, fail, agents=agents, mailboxes=mailboxes,
                             hours=hours)
        out.append(Condition(name, f"{name} {show_value(value)}", check))
    return tuple(out)


def first_failure(conditions: tuple[Condition, ...], facts: Facts,
                  hours: BusinessHours | None) -> str | None:
    """None when every condition holds; else the `why` of the first that does not, e.g.
    'status "open": no (status is "resolved")' or 'matches "(a+)+$": regex timed out'."""
    for cond in conditions:
        result = cond.check(facts, hours)
        if result is True:
            continue
        if isinstance(result, str):
            return f"{cond.label}: {result}"
        actual = _ACTUAL.get(cond.key)
        return f"{cond.label}: no ({actual(facts)})" if actual else f"{cond.label}: no"
    return None


def describe_hit(conditions: tuple[Condition, ...]) -> str:
    """The `why` of a hit: 'no conditions (always)', 'subject_contains "x": yes',
    'all 2 conditions hold'."""
    if not conditions:
        return "no conditions (always)"
    if len(conditions) == 1:
        return f"{conditions[0].label}: yes"
    return f"all {len(conditions)} conditions hold"
