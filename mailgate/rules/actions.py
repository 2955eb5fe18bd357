"""Actions: the `then = {...}` table of a rule → validated, normalised data.

Input: the table as written in the configuration (trusted to mean what it says, not to be
well-formed), the agents' addresses, the teams' names and the template kinds that exist.
Output: a read-only mapping in the order written, or a `ConfigError` naming the file, the rule
and the key. Nothing is applied here: the orchestrator applies the actions to the ticket.
Normalised forms:

    assign         "bob@example.com"                        (lower-cased; a configured agent)
    round_robin    ("a@example.com", "b@example.com")       (agents, no repeats)
    status         "pending_agent"                          (one of STATUSES)
    priority       "urgent"                                 (one of PRIORITIES)
    add_tags       ("urgent", "vip")
    remove_tags    ("triage",)
    send_template  {"kind": "new_ticket_ack", "to": "requester"}   (to: requester, assignee or
                                                                     an agent's address)
    internal_note  "Escalated by rule."
    assign_team    "billing"          (a [[teams]] name, as configured: the ticket's team)
    round_robin_team "billing"        (the ticket's team, and its next member in turn assigned)
    notify_team    "billing"          (each member gets a team_notification)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from mailgate.rules.conditions import Fail, one_of, parse_address, show_value, string_list
from mailgate.rules.model import PRIORITIES, STATUSES, TEMPLATE_RECIPIENTS

ACTIONS = ("assign", "round_robin", "status", "priority", "add_tags", "remove_tags",
           "send_template", "internal_note", "assign_team", "round_robin_team", "notify_team")
TEAM_ACTIONS = ("assign_team", "round_robin_team", "notify_team")
_TEMPLATE_KEYS = ("kind", "to")


def _agent(text: Any, key: str, fail: Fail, agents: frozenset[str]) -> str:
    if not isinstance(text, str):
        raise fail(key, f"expected an agent's address, got {show_value(text)}")
    address = parse_address(text.strip(), key, fail)
    if address not in agents:
        raise fail(key, f"{show_value(address)} is not a configured agent ([[agents]])")
    return address


def _template(value: Any, key: str, fail: Fail, agents: frozenset[str],
              kinds: frozenset[str]) -> Mapping[str, str]:
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, Mapping):
        raise fail(key, "expected a template kind or { kind = \"...\", to = \"requester\" }, "
                        f"got {show_value(value)}")
    for sub in value:
        if sub not in _TEMPLATE_KEYS:
            raise fail(f"{key}.{sub}", "unknown key (kind, to)")
    kind = value.get("kind")
    if not isinstance(kind, str) or not kind:
        raise fail(f"{key}.kind", f"expected a template kind, got {show_value(kind)}")
    if kind not in kinds:
        raise fail(f"{key}.kind", f"unknown template kind {show_value(kind)} "
                                  f"(one of {', '.join(sorted(kinds))})")
    to = value.get("to", "requester")
    if not isinstance(to, str):
        raise fail(f"{key}.to", f"expected requester, assignee or an agent's address, "
                                f"got {show_value(to)}")
    if to not in TEMPLATE_RECIPIENTS:
        if "@" not in to:
            raise fail(f"{key}.to", f"expected requester, assignee or an agent's address, "
                                    f"got {show_value(to)}")
        to = _agent(to, f"{key}.to", fail, agents)
    return MappingProxyType({"kind": kind, "to": to})


def _team(value: Any, key: str, fail: Fail, teams: frozenset[str]) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(key, f"expected a team's name, got {show_value(value)}")
    found = {t.lower(): t for t in teams}.get(value.strip().lower())
    if found is None:
        known = f" (one of {', '.join(sorted(teams))})" if teams else ""
        raise fail(key, f"{show_value(value)} is not a team ([[teams]]){known}")
    return found


def compile_actions(table: Any, prefix: str, fail: Fail, *, agents: frozenset[str],
                    template_kinds: frozenset[str], teams: frozenset[str] = frozenset()
                    ) -> Mapping[str, Any]:
    """`{priority = "urgent", add_tags = ["urgent"]}` → a read-only mapping of normalised
    actions. At least one action; `assign` and `round_robin` exclude each other."""
    if table is None:
        raise fail(prefix, "required: what the rule does, e.g. then = { priority = \"high\" }")
    if not isinstance(table, Mapping) or not table:
        raise fail(prefix, f"expected a non-empty table of actions, got {show_value(table)}")
    out: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}.{name}"
        if name == "assign":
            out[name] = _agent(value, key, fail, agents)
        elif name == "round_robin":
            if not isinstance(value, list) or not value:
                raise fail(key, f"expected a non-empty list of agents, got {show_value(value)}")
            people = tuple(_agent(v, key, fail, agents) for v in value)
            if len(set(people)) != len(people):
                raise fail(key, "an agent is listed twice")
            out[name] = people
        elif name in ("status", "priority"):
            allowed = STATUSES if name == "status" else PRIORITIES
            if not isinstance(value, str):
                raise fail(key, f"expected one of {', '.join(allowed)}, got {show_value(value)}")
            out[name] = one_of(value, allowed, key, fail)
        elif name in ("add_tags", "remove_tags"):
            out[name] = tuple(dict.fromkeys(string_list(value, key, fail, "a tag")))
        elif name == "send_template":
            out[name] = _template(value, key, fail, agents, template_kinds)
        elif name in TEAM_ACTIONS:
            out[name] = _team(value, key, fail, teams)
        elif name == "internal_note":
            if not isinstance(value, str) or not value.strip():
                raise fail(key, f"expected a non-empty text, got {show_value(value)}")
            out[name] = value.strip()
        else:
            raise fail(key, f"unknown action (one of {', '.join(ACTIONS)})")
    if "assign" in out and "round_robin" in out:
        raise fail(f"{prefix}.round_robin", "cannot be combined with assign")
    if "round_robin_team" in out and ("assign" in out or "round_robin" in out):
        raise fail(f"{prefix}.round_robin_team", "cannot be combined with assign or round_robin")
    both = set(out.get("add_tags", ())) & set(out.get("remove_tags", ()))
    if both:
        raise fail(f"{prefix}.remove_tags", f"{show_value(sorted(both)[0])} is also in add_tags")
    return MappingProxyType(out)
