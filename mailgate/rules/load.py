"""Loading automation rules: `[[automations]]` entries → validated, precompiled `Rule`s.

Input: the `[[automations]]` entries of the main configuration (already parsed TOML, source =
the config's path) and a rules file of the same format (`[[automations]]` tables and nothing
else), read here: the only I/O of the rules stage. Both are written by an administrator:
trusted to mean what they say, not to be well-formed. Output: a tuple of `Rule`s, inline rules
first, then the file's, in the order written; or a `ConfigError` whose message is one line naming
the file, the rule (by name, or #index when it has none) and the key, e.g.
`config/automations.toml: rule "urgent mail": if.subject_containz: unknown condition (...)`.
Disabled rules (`enabled = false`) are validated and returned too; the engine skips them.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mailgate.errors import ConfigError
from mailgate.rules.actions import compile_actions
from mailgate.rules.conditions import compile_conditions, show_value
from mailgate.rules.durations import parse_duration
from mailgate.rules.hours import BusinessHours
from mailgate.rules.model import TIME_TRIGGERS, TRIGGERS, Rule, RuleError

RULE_KEYS = ("name", "when", "after", "if", "then", "enabled")


def one_line(text: str) -> str:
    return " ".join(text.split())


def entry_label(kind: str, entry: Any, index: int) -> str:
    """'rule "urgent mail"' when the entry has a usable name, else 'rule #3' (1-based)."""
    name = entry.get("name") if isinstance(entry, Mapping) else None
    if isinstance(name, str) and name.strip() and name.isprintable():
        return f"{kind} {json.dumps(name.strip(), ensure_ascii=False)}"
    return f"{kind} #{index}"


def check_name(entry: Mapping[str, Any], fail: Any) -> str:
    name = entry.get("name")
    if name is None:
        raise fail("name", "required")
    if not isinstance(name, str) or not name.strip():
        raise fail("name", f"expected a non-empty string, got {show_value(name)}")
    if not name.isprintable():
        raise fail("name", "control characters and line breaks are not allowed")
    return name.strip()


def open_entry(entry: Any, source: str, index: int, kind: str, table: str,
               keys: Sequence[str]) -> tuple[str, Callable[[str, str], ConfigError]]:
    """The checks every `[[table]]` entry starts with: a table, a valid name, only `keys`.

    Returns the name (stripped) and `fail(key, message)`, the entry's one-line ConfigError
    naming the source, the entry (as `kind` "name" or `kind` #index) and the key.
    """
    where = f"{source}: {entry_label(kind, entry, index)}"

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(one_line(f"{where}: {key}: {message}"))

    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: must be a table ([[{table}]])")
    name = check_name(entry, fail)
    for key in entry:
        if key not in keys:
            raise fail(key, f"unknown key (one of {', '.join(keys)})")
    return name, fail


def compile_rule(entry: Any, source: str, index: int, *, agents: frozenset[str],
                 template_kinds: frozenset[str], hours: BusinessHours | None = None,
                 mailboxes: frozenset[str] | None = None,
                 teams: frozenset[str] = frozenset()) -> Rule:
    """One `[[automations]]` entry (index: 1-based within its source) → a Rule."""
    name, fail = open_entry(entry, source, index, "rule", "automations", RULE_KEYS)
    when = entry.get("when")
    if when is None:
        raise fail("when", f"required (one of {', '.join(TRIGGERS)})")
    if when not in TRIGGERS:
        raise fail("when", f"unknown trigger {show_value(when)} (one of {', '.join(TRIGGERS)})")
    after: float | None = None
    if when == "idle":
        if "after" not in entry:
            raise fail("after", "required for when = \"idle\" (a duration like \"4h\")")
        try:
            after = parse_duration(entry["after"])
        except RuleError as exc:
            raise fail("after", str(exc)) from None
        if after <= 0:
            raise fail("after", "must be more than zero")
    elif "after" in entry:
        raise fail("after", f"only for when = \"idle\" (this rule is when = \"{when}\")")
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise fail("enabled", f"expected true or false, got {show_value(enabled)}")
    conditions = entry.get("if")
    if when in TIME_TRIGGERS and isinstance(conditions, Mapping) and "mailbox" in conditions:
        raise fail("if.mailbox", f"never holds for when = \"{when}\": time events have no "
                                 "receiving mailbox")
    checks = compile_conditions(conditions, "if", fail, agents=agents, mailboxes=mailboxes,
                                hours=hours)
    actions = compile_actions(entry.get("then"), "then", fail, agents=agents,
                              template_kinds=template_kinds, teams=teams)
    return Rule(name=name, when=when, conditions=MappingProxyType(dict(conditions or {})),
                actions=actions, after=after, source=source, enabled=enabled, checks=checks)


def read_rules_file(path: Path, required: bool) -> list[Any]:
    """The `[[automations]]` entries of a rules file; [] when it is missing and not required."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: rules file not found ([rules] file)") from None
        return []
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read rules file: {exc.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: rules file is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(one_line(f"{path}: invalid TOML: {exc}")) from None
    for key in doc:
        if key != "automations":
            raise ConfigError(f"{path}: {key}: unknown key (a rules file holds only "
                              "[[automations]] entries)")
    entries = doc.get("automations", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: automations: must be [[automations]] entries, not a table")
    return entries


def load_rules(inline: Sequence[Any], inline_source: str, file: Path | None, *,
               agents: frozenset[str], template_kinds: frozenset[str],
               file_required: bool = False, hours: BusinessHours | None = None,
               mailboxes: frozenset[str] | None = None,
               teams: frozenset[str] = frozenset()) -> tuple[Rule, ...]:
    """Inline `[[automations]]` (from the config at `inline_source`), then the rules file.

    `file` None: no rules file. `file_required`: a missing file is an error (set it when
    `[rules] file` was configured explicitly); otherwise a missing file means no rules.
    `agents`: the configured agents' addresses (assign, round_robin, assignee, send_template.to).
    `template_kinds`: the kinds send_template may name. `hours`: the `[business_hours]`, needed by
    any `business_hours` condition. `mailboxes`: our mailboxes, checked for `mailbox` (None:
    not checked). `teams`: the `[[teams]]` names (assign_team, round_robin_team,
    notify_team). Rule names are unique across both sources.
    """
    agents = frozenset(a.lower() for a in agents)
    if mailboxes is not None:
        mailboxes = frozenset(m.lower() for m in mailboxes)
    sources: list[tuple[str, Sequence[Any]]] = [(inline_source, inline)]
    if file is not None:
        sources.append((str(file), read_rules_file(file, file_required)))
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for source, entries in sources:
        for index, entry in enumerate(entries, start=1):
            rule = compile_rule(entry, source, index, agents=agents,
                                template_kinds=frozenset(template_kinds), hours=hours,
                                mailboxes=mailboxes, teams=teams)
            if rule.name in seen:
                raise ConfigError(f"{source}: {entry_label('rule', entry, index)}: name: "
                                  f"duplicate rule name (also in {seen[rule.name]})")
            seen[rule.name] = source
            rules.append(rule)
    return tuple(rules)
