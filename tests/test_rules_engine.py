"""The rules stage alone: durations, business hours, loading and validating rules (every trigger,
condition and action, good and bad), evaluation with its `why`, the regex time limit, SLAs, and a
micro-benchmark that prints evaluations per second (no timing assertion). Pure: real TOML files
in tmp_path, no daemon, no database."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any

import pytest

from mailgate.config import TEMPLATE_KINDS
from mailgate.errors import ConfigError
from mailgate.rules import (
    ACTIONS,
    CONDITIONS,
    TRIGGERS,
    BusinessHours,
    Facts,
    RuleError,
    choose_sla,
    evaluate,
    evaluate_rule,
    load_business_hours,
    load_rules,
    load_slas,
    parse_duration,
    sla_due,
    sla_state,
)

ROOT = Path(__file__).resolve().parent.parent
AGENTS = frozenset({"alice@example.com", "bob@example.com"})
KINDS = frozenset(TEMPLATE_KINDS)
BOXES = frozenset({"support@example.com", "sales@example.com"})
TEAMS = frozenset({"Billing", "tier2"})
BERLIN = BusinessHours("Europe/Berlin", (0, 1, 2, 3, 4), dtime(9), dtime(17))
# 2024-03-01 is a Friday; Berlin is UTC+1 until 2024-03-31 (a Sunday), then UTC+2.
FRI_1500Z = datetime(2024, 3, 1, 15, 0, tzinfo=UTC)  # 16:00 in Berlin: inside business hours


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def facts(**kw: Any) -> Facts:
    base: dict[str, Any] = {
        "now": FRI_1500Z, "subject": "Printer is on FIRE", "body": "Please help, it burns.",
        "from_addr": "Jane@Eu.Acme.com", "organization": "Acme", "mailbox": "support@example.com",
        "status": "open", "priority": "normal", "tags": ("Hardware",), "assignee": "",
    }
    return Facts(**(base | kw))


def load(tmp_path: Path, text: str, inline: list | None = None, **kw: Any) -> tuple:
    path = tmp_path / "automations.toml"
    path.write_text(text)
    args: dict[str, Any] = {"agents": AGENTS, "template_kinds": KINDS, "hours": BERLIN,
                            "mailboxes": BOXES, "teams": TEAMS}
    return load_rules(inline or [], "mailgate.toml", path, **(args | kw))


def rule_toml(when: str = "ticket_created", cond: str = "", action: str = 'priority = "high"',
              name: str = "r", extra: str = "") -> str:
    if_line = f"if = {{ {cond} }}\n" if cond else ""
    return (f'[[automations]]\nname = "{name}"\nwhen = "{when}"\n{extra}{if_line}'
            f"then = {{ {action} }}\n")


def load_error(tmp_path: Path, text: str, **kw: Any) -> str:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, text, **kw)
    message = str(exc.value)
    assert "\n" not in message
    return message


# --- durations -----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("30m", 1800), ("4h", 14400), ("2d", 172800), ("1h30m", 5400),
    ("1d2h3m4s", 93784), ("0s", 0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "4", "h", "1.5h", "-4h", "4x", "30m1h", "4hh", "4 h", 4,
                                 None])
def test_parse_duration_rejects(bad: Any) -> None:
    with pytest.raises(RuleError):
        parse_duration(bad)


# --- business hours ------------------------------------------------------------------------

def test_business_hours_from_config_table() -> None:
    table = {"timezone": "Europe/Berlin", "days": ["mon", "tue", "wed", "thu", "fri"],
             "start": "09:00", "end": "17:00"}
    assert load_business_hours(table, "mailgate.toml") == BERLIN
    assert load_business_hours(None, "mailgate.toml") is None


@pytest.mark.parametrize(("change", "key", "fragment"), [
    ({"timezone": "Europe/Berln"}, "timezone", "unknown time zone"),
    ({"days": ["mon", "funday"]}, "days", "not a day"),
    ({"days": []}, "days", "non-empty"),
    ({"start": "9am"}, "start", "expected a time"),
    ({"end": "08:00"}, "end", "must be after start"),
    ({"lunch": "12:00"}, "lunch", "unknown key"),
])
def test_business_hours_errors(change: dict, key: str, fragment: str) -> None:
    table = {"timezone": "Europe/Berlin", "days": ["mon"], "start": "09:00", "end": "17:00"}
    with pytest.raises(ConfigError) as exc:
        load_business_hours(table | change, "mailgate.toml")
    assert str(exc.value).startswith(f"mailgate.toml: [business_hours] {key}: ")
    assert fragment in str(exc.value)


def test_business_hours_contains() -> None:
    assert BERLIN.contains(utc(2024, 3, 1, 15, 30))  # Fri 16:30 Berlin
    assert not BERLIN.contains(utc(2024, 3, 1, 16, 0))  # Fri 17:00 Berlin: end is exclusive
    assert not BERLIN.contains(utc(2024, 3, 2, 12, 0))  # Saturday
    assert not BERLIN.contains(utc(2024, 3, 4, 7, 30))  # Mon 08:30 Berlin
    assert BERLIN.contains(utc(2024, 3, 4, 8, 0))  # Mon 09:00 Berlin
    assert BERLIN.contains(utc(2024, 4, 1, 7, 0))  # Mon 09:00 Berlin in summer time (UTC+2)
    assert not BERLIN.contains(utc(2024, 4, 1, 15, 30))  # Mon 17:30 Berlin in summer time
    # Another time zone, where the local day is not the UTC day.
    la = BusinessHours("America/Los_Angeles", (0, 1, 2, 3, 4), dtime(9), dtime(17))
    assert la.contains(utc(2024, 3, 2, 0, 30))  # Saturday in UTC, Friday 16:30 in LA
    assert not la.contains(utc(2024, 3, 4, 12, 0))  # Monday in UTC, Monday 04:00 in LA
    tokyo = BusinessHours("Asia/Tokyo", (0, 1, 2, 3, 4), dtime(9), dtime(18))
    assert tokyo.contains(utc(2024, 3, 4, 0, 30))  # Monday 09:30 in Tokyo
    assert not tokyo.contains(utc(2024, 3, 3, 23, 30))  # Monday 08:30 in Tokyo
    assert not tokyo.contains(utc(2024, 3, 1, 12, 0))  # Friday 21:00 in Tokyo
    with pytest.raises(ValueError, match="naive"):
        BERLIN.contains(datetime(2024, 3, 1, 12))


def test_business_hours_add_across_weekend_and_time_change() -> None:
    # Fri 16:00 Berlin + 2h: 1h on Friday, 1h on Monday from 09:00 Berlin (08:00 UTC).
    assert BERLIN.add(FRI_1500Z, 7200) == utc(2024, 3, 4, 9, 0)
    # Started on Saturday: counting begins Monday 09:00.
    assert BERLIN.add(utc(2024, 3, 2, 10, 0), 1800) == utc(2024, 3, 4, 8, 30)
    # Exactly filling Friday ends at Friday 17:00, not on Monday.
    assert BERLIN.add(FRI_1500Z, 3600) == utc(2024, 3, 1, 16, 0)
    # Across the switch to summer time on Sunday 2024-03-31: Monday 09:00 Berlin is 07:00 UTC.
    assert BERLIN.add(utc(2024, 3, 29, 15, 0), 7200) == utc(2024, 4, 1, 8, 0)
    # A whole working week (5 × 8 h) from Monday 09:00 ends on Friday 17:00.
    assert BERLIN.add(utc(2024, 3, 4, 8, 0), 40 * 3600) == utc(2024, 3, 8, 16, 0)
    assert BERLIN.add(FRI_1500Z, 0) == FRI_1500Z
    # In Tokyo (no DST), the same instant lands on a different local day.
    tokyo = BusinessHours("Asia/Tokyo", (0, 1, 2, 3, 4), dtime(9), dtime(18))
    # Fri 15:00 UTC = Sat 00:00 Tokyo: the next window is Mon 09:00 Tokyo = Mon 00:00 UTC.
    assert tokyo.add(FRI_1500Z, 3600) == utc(2024, 3, 4, 1, 0)


# --- loading: triggers and the rule's own keys ---------------------------------------------

@pytest.mark.parametrize("when", TRIGGERS)
def test_every_trigger_loads(tmp_path: Path, when: str) -> None:
    extra = 'after = "4h"\n' if when == "idle" else ""
    (rule,) = load(tmp_path, rule_toml(when=when, extra=extra))
    assert rule.when == when
    assert rule.after == (14400 if when == "idle" else None)
    assert rule.source == str(tmp_path / "automations.toml")


@pytest.mark.parametrize(("text", "key", "fragment"), [
    (rule_toml(when="ticket_opened"), "when", "unknown trigger"),
    (rule_toml(when="idle"), "after", "required for when = \"idle\""),
    (rule_toml(when="idle", extra='after = "soon"\n'), "after", "not a duration"),
    (rule_toml(when="idle", extra='after = "0s"\n'), "after", "more than zero"),
    (rule_toml(extra='after = "4h"\n'), "after", "only for when = \"idle\""),
    (rule_toml(extra='enabled = "no"\n'), "enabled", "true or false"),
    (rule_toml(extra='priority = "high"\n'), "priority", "unknown key"),
    ('[[automations]]\nname = "r"\nwhen = "ticket_created"\n', "then", "required"),
    (rule_toml(action=""), "then", "non-empty table"),
    ('[[automations]]\nname = "r"\nthen = { priority = "high" }\n', "when", "required"),
    (rule_toml(when="idle", extra='after = "1h"\n', cond='mailbox = "support@example.com"'),
     "if.mailbox", "time events have no receiving mailbox"),
])
def test_rule_key_errors_name_file_rule_and_key(tmp_path: Path, text: str, key: str,
                                               fragment: str) -> None:
    message = load_error(tmp_path, text)
    assert message.startswith(f'{tmp_path / "automations.toml"}: rule "r": {key}: '), message
    assert fragment in message


def test_rule_without_a_name_is_named_by_index(tmp_path: Path) -> None:
    text = rule_toml(name="first") + '[[automations]]\nwhen = "ticket_created"\n'
    message = load_error(tmp_path, text)
    assert message == f"{tmp_path / 'automations.toml'}: rule #2: name: required"


def test_rule_names_are_unique_across_config_and_file(tmp_path: Path) -> None:
    inline = [{"name": "r", "when": "assigned", "then": {"priority": "low"}}]
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, rule_toml(), inline=inline)
    assert str(exc.value) == (f'{tmp_path / "automations.toml"}: rule "r": name: duplicate '
                              "rule name (also in mailgate.toml)")


def test_inline_rules_come_first_then_the_file(tmp_path: Path) -> None:
    inline = [{"name": "inline", "when": "assigned", "then": {"priority": "low"}}]
    rules = load(tmp_path, rule_toml(name="from file"), inline=inline)
    assert [(r.name, r.source) for r in rules] == [
        ("inline", "mailgate.toml"), ("from file", str(tmp_path / "automations.toml"))]
    with pytest.raises(ConfigError) as exc:
        load_rules([{"name": "x", "when": "nope", "then": {}}], "/etc/mailgate/mailgate.toml",
                   None, agents=AGENTS, template_kinds=KINDS)
    assert str(exc.value).startswith('/etc/mailgate/mailgate.toml: rule "x": when: ')


def test_rules_file_missing_default_explicit_and_malformed(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert load_rules([], "m.toml", missing, agents=AGENTS, template_kinds=KINDS) == ()
    with pytest.raises(ConfigError, match=r"nope\.toml: rules file not found"):
        load_rules([], "m.toml", missing, agents=AGENTS, template_kinds=KINDS,
                   file_required=True)
    assert "invalid TOML" in load_error(tmp_path, "[[automations]\n")
    assert "unknown key" in load_error(tmp_path, "[[sla]]\nname = 'x'\n")
    assert "not a table" in load_error(tmp_path, "[automations]\nname = 'x'\n")


def test_disabled_rules_load_but_do_not_run(tmp_path: Path) -> None:
    (rule,) = load(tmp_path, rule_toml(extra="enabled = false\n"))
    assert not rule.enabled
    assert evaluate((rule,), "ticket_created", facts(), BERLIN) == []
    assert evaluate_rule(rule, facts(), BERLIN).hit  # `rules test` can still show it


def test_shipped_default_workflow(tmp_path: Path) -> None:
    rules = load_rules([], "mailgate.toml", ROOT / "mailgate" / "builtin" / "automations.toml",
                       agents=AGENTS, template_kinds=KINDS, file_required=True)
    assert [(r.name, r.when, r.enabled) for r in rules] == [
        ("acknowledge new tickets", "ticket_created", True),
        ("notify the assignee of customer replies", "customer_replied", True)]
    (ack,) = evaluate(rules, "ticket_created", facts(), None)
    assert ack.hit and ack.why == "no conditions (always)"
    assert dict(ack.actions["send_template"]) == {"kind": "new_ticket_ack", "to": "requester"}
    (notify,) = evaluate(rules, "customer_replied", facts(), None)
    assert not notify.hit and notify.why == "unassigned false: no (unassigned)"
    (notify,) = evaluate(rules, "customer_replied", facts(assignee="bob@example.com"), None)
    assert notify.hit
    assert dict(notify.actions["send_template"]) == {"kind": "customer_replied_notification",
                                                     "to": "assignee"}
    # Switching one off is editing one line.
    text = (ROOT / "mailgate" / "builtin" / "automations.toml").read_text()
    assert text.count("enabled = true") == 2
    off = tmp_path / "off.toml"
    off.write_text(text.replace("enabled = true", "enabled = false", 1))
    rules = load_rules([], "m.toml", off, agents=AGENTS, template_kinds=KINDS)
    assert evaluate(rules, "ticket_created", facts(), None) == []


# --- conditions: each one good (hit and miss) and bad --------------------------------------

GOOD_CONDITIONS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    # (condition, facts that hit, facts that miss, the miss's `why`)
    ('subject_contains = "fire"', {}, {"subject": "Printer jam"},
     'subject_contains "fire": no'),
    ('subject_contains = ["jam", "FIRE"]', {}, {"subject": "Out of toner"},
     'subject_contains ["jam", "FIRE"]: no'),
    ('body_contains = "BURNS"', {}, {"body": "fine now"}, 'body_contains "BURNS": no'),
    ("matches = '(?i)printer.*\\n.*burns'", {}, {"body": "cold"},
     'matches "(?i)printer.*\\\\n.*burns": no'),
    ('from = "jane@eu.acme.com"', {}, {"from_addr": "john@eu.acme.com"},
     'from "jane@eu.acme.com": no (from is "john@eu.acme.com")'),
    ('from = ["x@y.com", "*@EU.acme.com"]', {}, {"from_addr": "jane@acme.com"},
     'from ["x@y.com", "*@EU.acme.com"]: no (from is "jane@acme.com")'),
    ('from_domain = "acme.com"', {}, {"from_addr": "jane@notacme.com"},
     'from_domain "acme.com": no (from_domain is "notacme.com")'),
    ('organization = "ACME"', {}, {"organization": ""},
     'organization "ACME": no (organization is "")'),
    ('mailbox = "support@example.com"', {}, {"mailbox": "sales@example.com"},
     'mailbox "support@example.com": no (mailbox is "sales@example.com")'),
    ('status = ["open", "pending_agent"]', {}, {"status": "resolved"},
     'status ["open", "pending_agent"]: no (status is "resolved")'),
    ('priority = "normal"', {}, {"priority": "urgent"},
     'priority "normal": no (priority is "urgent")'),
    ('tag = "hardware"', {}, {"tags": ("billing",)}, 'tag "hardware": no (tags are ["billing"])'),
    ('assignee = "bob@example.com"', {"assignee": "Bob@Example.com"}, {},
     'assignee "bob@example.com": no (unassigned)'),
    ("unassigned = true", {}, {"assignee": "bob@example.com"},
     'unassigned true: no (assignee is "bob@example.com")'),
    ("business_hours = true", {}, {"now": utc(2024, 3, 2, 12, 0)},
     "business_hours true: no (now is 2024-03-02T12:00:00+00:00)"),
    ("business_hours = false", {"now": utc(2024, 3, 2, 12, 0)}, {},
     "business_hours false: no (now is 2024-03-01T15:00:00+00:00)"),
]


@pytest.mark.parametrize(("cond", "hit", "miss", "why"), GOOD_CONDITIONS)
def test_each_condition_hits_and_misses(tmp_path: Path, cond: str, hit: dict, miss: dict,
                                        why: str) -> None:
    (rule,) = load(tmp_path, rule_toml(cond=cond))
    (good,) = evaluate((rule,), "ticket_created", facts(**hit), BERLIN)
    assert good.hit, good.why
    assert good.why.endswith(": yes")
    assert dict(good.actions) == {"priority": "high"}
    (bad,) = evaluate((rule,), "ticket_created", facts(**miss), BERLIN)
    assert not bad.hit
    assert bad.why == why
    assert dict(bad.actions) == {}


def test_every_condition_is_covered() -> None:
    covered = {c.split("=")[0].strip() for c, *_ in GOOD_CONDITIONS}
    assert covered == set(CONDITIONS)
    covered_bad = {k.removeprefix("if.") for _, k, _ in BAD_CONDITIONS}
    assert covered_bad >= set(CONDITIONS)


BAD_CONDITIONS: list[tuple[str, str, str]] = [
    ('subject_containz = "urgent"', "if.subject_containz", "unknown condition"),
    ("subject_contains = 3", "if.subject_contains", "expected a non-empty string"),
    ("body_contains = []", "if.body_contains", "non-empty list"),
    ('matches = "(unclosed"', "if.matches", "invalid regular expression"),
    ('from = "not-an-address"', "if.from", "expected an address"),
    ('from_domain = "@acme.com"', "if.from_domain", "expected a domain name"),
    ("organization = [1]", "if.organization", "expected an organization name"),
    ('mailbox = "other@example.com"', "if.mailbox", "not one of our mailboxes"),
    ('status = "waiting"', "if.status", "unknown value \"waiting\""),
    ('priority = "critical"', "if.priority", "unknown value \"critical\""),
    ('tag = ""', "if.tag", "expected a tag"),
    ('assignee = "eve@example.com"', "if.assignee", "not a configured agent"),
    ('unassigned = "yes"', "if.unassigned", "expected true or false"),
    ("business_hours = 1", "if.business_hours", "expected true or false"),
]


@pytest.mark.parametrize(("cond", "key", "fragment"), BAD_CONDITIONS)
def test_bad_conditions(tmp_path: Path, cond: str, key: str, fragment: str) -> None:
    message = load_error(tmp_path, rule_toml(cond=cond, name="urgent mail"))
    assert message.startswith(f'{tmp_path / "automations.toml"}: rule "urgent mail": {key}: ')
    assert fragment in message


def test_business_hours_condition_needs_business_hours(tmp_path: Path) -> None:
    message = load_error(tmp_path, rule_toml(cond="business_hours = true"), hours=None)
    assert message == (f'{tmp_path / "automations.toml"}: rule "r": if.business_hours: '
                       "needs a [business_hours] table in the configuration")


def test_if_must_be_a_table(tmp_path: Path) -> None:
    text = '[[automations]]\nname = "r"\nwhen = "assigned"\nif = "urgent"\nthen = {status="open"}\n'
    assert ': rule "r": if: expected a table' in load_error(tmp_path, text)


# --- actions: each one good and bad --------------------------------------------------------

GOOD_ACTIONS: list[tuple[str, str, Any]] = [
    ('assign = "Bob@Example.com"', "assign", "bob@example.com"),
    ('round_robin = ["alice@example.com", "bob@example.com"]', "round_robin",
     ("alice@example.com", "bob@example.com")),
    ('status = "pending_agent"', "status", "pending_agent"),
    ('priority = "urgent"', "priority", "urgent"),
    ('add_tags = ["urgent", "vip", "urgent"]', "add_tags", ("urgent", "vip")),
    ('remove_tags = "triage"', "remove_tags", ("triage",)),
    ('send_template = "new_ticket_ack"', "send_template",
     {"kind": "new_ticket_ack", "to": "requester"}),
    ('send_template = { kind = "assignee_notification", to = "assignee" }', "send_template",
     {"kind": "assignee_notification", "to": "assignee"}),
    ('send_template = { kind = "agent_reply", to = "ALICE@example.com" }', "send_template",
     {"kind": "agent_reply", "to": "alice@example.com"}),
    ('internal_note = "  Escalated by rule. "', "internal_note", "Escalated by rule."),
    ('assign_team = "billing"', "assign_team", "Billing"),  # the name as [[teams]] spells it
    ('round_robin_team = "tier2"', "round_robin_team", "tier2"),
    ('notify_team = "Billing"', "notify_team", "Billing"),
]


@pytest.mark.parametrize(("action", "name", "value"), GOOD_ACTIONS)
def test_each_action_is_returned_as_data(tmp_path: Path, action: str, name: str,
                                         value: Any) -> None:
    (rule,) = load(tmp_path, rule_toml(action=action))
    got = rule.actions[name]
    assert (dict(got) if name == "send_template" else got) == value
    (ev,) = evaluate((rule,), "ticket_created", facts(), BERLIN)
    assert ev.hit and ev.actions is rule.actions
    assert ev.as_dict()["actions"][name] == (list(value) if isinstance(value, tuple) else value)


BAD_ACTIONS: list[tuple[str, str, str]] = [
    ('asign = "bob@example.com"', "then.asign", "unknown action"),
    ('assign = "eve@example.com"', "then.assign", "not a configured agent"),
    ("assign = 7", "then.assign", "expected an agent's address"),
    ("round_robin = []", "then.round_robin", "non-empty list of agents"),
    ('round_robin = ["bob@example.com", "eve@example.com"]', "then.round_robin",
     "\"eve@example.com\" is not a configured agent"),
    ('round_robin = ["bob@example.com", "bob@example.com"]', "then.round_robin", "twice"),
    ('assign = "bob@example.com", round_robin = ["alice@example.com"]', "then.round_robin",
     "cannot be combined with assign"),
    ('status = "done"', "then.status", "unknown value \"done\""),
    ('priority = "p1"', "then.priority", "unknown value \"p1\""),
    ("add_tags = [1]", "then.add_tags", "expected a tag"),
    ('remove_tags = ["x"], add_tags = ["x"]', "then.remove_tags", "also in add_tags"),
    ('send_template = "welcome"', "then.send_template.kind", "unknown template kind"),
    ('send_template = { kind = "new_ticket_ack", to = "customer" }', "then.send_template.to",
     "expected requester, assignee or an agent's address"),
    ('send_template = { kind = "new_ticket_ack", to = "jane@acme.com" }',
     "then.send_template.to", "not a configured agent"),
    ('send_template = { kind = "new_ticket_ack", cc = "x" }', "then.send_template.cc",
     "unknown key"),
    ("send_template = 3", "then.send_template", "expected a template kind"),
    ('internal_note = ""', "then.internal_note", "non-empty text"),
    ('assign_team = "sales"', "then.assign_team", '"sales" is not a team ([[teams]])'),
    ("assign_team = 3", "then.assign_team", "expected a team's name"),
    ('round_robin_team = "nobody"', "then.round_robin_team", "is not a team"),
    ('round_robin_team = "tier2", assign = "bob@example.com"', "then.round_robin_team",
     "cannot be combined with assign or round_robin"),
    ('notify_team = ""', "then.notify_team", "expected a team's name"),
]


@pytest.mark.parametrize(("action", "key", "fragment"), BAD_ACTIONS)
def test_bad_actions(tmp_path: Path, action: str, key: str, fragment: str) -> None:
    message = load_error(tmp_path, rule_toml(action=action, name="urgent mail"))
    assert message.startswith(f'{tmp_path / "automations.toml"}: rule "urgent mail": {key}: ')
    assert fragment in message


def test_every_action_is_covered() -> None:
    assert {n for _, n, _ in GOOD_ACTIONS} == set(ACTIONS)
    assert {k.split(".")[1] for _, k, _ in BAD_ACTIONS} >= set(ACTIONS)


# --- evaluation ----------------------------------------------------------------------------

RULES_TEXT = """
[[automations]]
name = "urgent mail"
when = "ticket_created"
if = { subject_contains = "urgent", unassigned = true }
then = { priority = "urgent", add_tags = ["urgent"], assign = "bob@example.com" }

[[automations]]
name = "acme is premium"
when = "ticket_created"
if = { from_domain = "acme.com" }
then = { send_template = "new_ticket_ack", add_tags = ["premium"] }

[[automations]]
name = "escalate stale"
when = "idle"
after = "4h"
if = { status = "pending_agent" }
then = { priority = "high", internal_note = "No answer for 4 hours." }

[[automations]]
name = "remind later"
when = "idle"
after = "1d"
then = { send_template = { kind = "assignee_notification", to = "assignee" } }
"""


def test_evaluate_in_order_with_the_deciding_condition(tmp_path: Path) -> None:
    rules = load(tmp_path, RULES_TEXT)
    first, second = evaluate(rules, "ticket_created", facts(subject="URGENT: printer"), BERLIN)
    assert (first.rule, first.hit, first.why) == ("urgent mail", True, "all 2 conditions hold")
    assert dict(first.actions) == {"priority": "urgent", "add_tags": ("urgent",),
                                   "assign": "bob@example.com"}
    assert (second.rule, second.hit, second.why) == ("acme is premium", True,
                                                     'from_domain "acme.com": yes')
    first, _ = evaluate(rules, "ticket_created", facts(), BERLIN)
    assert (first.hit, first.why) == (False, 'subject_contains "urgent": no')
    first, _ = evaluate(rules, "ticket_created",
                        facts(subject="urgent", assignee="alice@example.com"), BERLIN)
    assert first.why == 'unassigned true: no (assignee is "alice@example.com")'
    assert first.as_dict() == {"rule": "urgent mail", "hit": False, "why": first.why,
                               "actions": {}}
    assert evaluate(rules, "agent_replied", facts(), BERLIN) == []


def test_idle_rules_by_how_long_the_ticket_was_idle(tmp_path: Path) -> None:
    rules = load(tmp_path, RULES_TEXT)
    stale = facts(status="pending_agent", mailbox="", body="")
    assert [e.rule for e in evaluate(rules, "idle", stale, BERLIN)] == ["escalate stale",
                                                                         "remind later"]
    assert evaluate(rules, "idle", stale, BERLIN, idle_seconds=3600) == []
    (ev,) = evaluate(rules, "idle", stale, BERLIN, idle_seconds=5 * 3600)
    assert ev.hit and ev.actions["internal_note"] == "No answer for 4 hours."
    assert [e.hit for e in evaluate(rules, "idle", stale, BERLIN, idle_seconds=86400)] == [
        True, True]
    with pytest.raises(ValueError, match="unknown event"):
        evaluate(rules, "tuesday", stale, BERLIN)


def test_business_hours_condition_without_hours_at_evaluation_is_a_miss(tmp_path: Path) -> None:
    (rule,) = load(tmp_path, rule_toml(cond="business_hours = true"))
    (ev,) = evaluate((rule,), "ticket_created", facts(), None)
    assert not ev.hit and "no [business_hours]" in ev.why


def test_catastrophic_regex_times_out_as_a_miss(tmp_path: Path) -> None:
    (rule,) = load(tmp_path, rule_toml(cond='matches = "(a+)+$"'))
    hostile = facts(subject="", body="a" * 50000 + "b")
    began = time.perf_counter()
    (ev,) = evaluate((rule,), "ticket_created", hostile, BERLIN)
    took = time.perf_counter() - began
    assert not ev.hit
    assert ev.why == 'matches "(a+)+$": regex timed out'
    assert took < 2, took
    # The text is capped: a match beyond the first 100,000 characters is not seen.
    (rule,) = load(tmp_path, rule_toml(cond='matches = "needle"'))
    (ev,) = evaluate((rule,), "ticket_created", facts(body="x" * 200_000 + "needle"), BERLIN)
    assert not ev.hit
    (ev,) = evaluate((rule,), "ticket_created", facts(body="a needle"), BERLIN)
    assert ev.hit


# --- SLAs ----------------------------------------------------------------------------------

SLAS = [
    {"name": "premium", "if": {"organization": "Acme"}, "first_response": "4h",
     "resolution": "2d", "business_hours": True},
    {"name": "standard", "first_response": "4h", "resolution": "2d"},
]


def test_sla_due_in_wall_clock_time() -> None:
    _, standard = load_slas(SLAS, "mailgate.toml", BERLIN)
    assert sla_due(standard, FRI_1500Z, BERLIN) == (utc(2024, 3, 1, 19), utc(2024, 3, 3, 15))


def test_sla_due_in_business_hours() -> None:
    premium, _ = load_slas(SLAS, "mailgate.toml", BERLIN)
    first, resolution = sla_due(premium, FRI_1500Z, BERLIN)
    # 4 h: 1 h on Friday (16:00-17:00 Berlin), 3 h on Monday → 12:00 Berlin = 11:00 UTC.
    assert first == utc(2024, 3, 4, 11)
    # 2d = 48 h of business time: 1 h Fri, 5 × 8 h the next week, 7 h on Mon 2024-03-11.
    assert resolution == utc(2024, 3, 11, 15)


def test_choose_sla_first_whose_conditions_hold() -> None:
    slas = load_slas(SLAS, "mailgate.toml", BERLIN)
    assert choose_sla(slas, facts()).name == "premium"
    assert choose_sla(slas, facts(organization="Globex")).name == "standard"
    assert choose_sla(slas[:1], facts(organization="")) is None


def test_sla_state_and_breaches() -> None:
    _, standard = load_slas(SLAS, "mailgate.toml", BERLIN)
    state = sla_state(standard, FRI_1500Z, utc(2024, 3, 1, 18), None, utc(2024, 3, 4), BERLIN)
    assert state == {
        "policy": "standard",
        "first_response_due": "2024-03-01T19:00:00+00:00",
        "resolution_due": "2024-03-03T15:00:00+00:00",
        "first_response_breached": False,
        "resolution_breached": True,
        "breached": True,
    }
    late = sla_state(standard, FRI_1500Z, utc(2024, 3, 1, 20), utc(2024, 3, 2), utc(2024, 3, 9),
                     BERLIN)
    assert (late["first_response_breached"], late["resolution_breached"]) == (True, False)
    waiting = sla_state(standard, FRI_1500Z, None, None, utc(2024, 3, 1, 19), BERLIN)
    assert not waiting["breached"]  # exactly at the due time: not yet
    waiting = sla_state(standard, FRI_1500Z, None, None, utc(2024, 3, 1, 19, 1), BERLIN)
    assert waiting["first_response_breached"] and not waiting["resolution_breached"]


@pytest.mark.parametrize(("change", "key", "fragment"), [
    ({"first_response": "soon"}, "first_response", "not a duration"),
    ({"resolution": "0m"}, "resolution", "more than zero"),
    ({"business_hours": "yes"}, "business_hours", "true or false"),
    ({"if": {"prio": "high"}}, "if.prio", "unknown condition"),
    ({"target": "4h"}, "target", "unknown key"),
])
def test_sla_errors(change: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_slas([SLAS[1] | change], "mailgate.toml", BERLIN)
    assert str(exc.value).startswith(f'mailgate.toml: sla "standard": {key}: ')
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


def test_sla_errors_without_business_hours_and_duplicates() -> None:
    with pytest.raises(ConfigError, match=r'sla "premium": business_hours: needs a \['):
        load_slas(SLAS, "mailgate.toml", None)
    with pytest.raises(ConfigError, match=r'^mailgate.toml: sla "standard": name: duplicate SLA'):
        load_slas([SLAS[1], SLAS[1]], "mailgate.toml", BERLIN)
    with pytest.raises(ConfigError, match="sla #1: name: required"):
        load_slas([{"first_response": "1h"}], "mailgate.toml", BERLIN)
    with pytest.raises(ConfigError, match="needs first_response, resolution or both"):
        load_slas([{"name": "empty"}], "mailgate.toml", BERLIN)


# --- micro-benchmark (prints; asserts nothing about time) ----------------------------------

def test_benchmark_200_rules(tmp_path: Path) -> None:
    shapes = [
        'subject_contains = ["urgent", "asap"]',
        'from_domain = "acme.com", status = "open"',
        'priority = ["high", "urgent"]',
        'tag = "vip", unassigned = true',
        'organization = "Globex"',
        'body_contains = "invoice", mailbox = "sales@example.com"',
        'from = "*@globex.com"',
        "business_hours = false",
    ]
    text = "".join(rule_toml(name=f"rule {i}", cond=shapes[i % len(shapes)],
                             action='add_tags = ["seen"]') for i in range(200))
    rules = load(tmp_path, text)
    assert len(rules) == 200
    rounds = 100
    began = time.perf_counter()
    hits = 0
    for i in range(rounds):
        f = facts(subject=f"Ticket {i} is urgent", body="Please send the invoice again.")
        hits += sum(e.hit for e in evaluate(rules, "ticket_created", f, BERLIN))
    took = time.perf_counter() - began
    print(f"\nrules engine: {200 * rounds / took:,.0f} rule evaluations/s "
          f"({rounds / took:,.0f} events/s with 200 rules, {hits / rounds:.0f} hits each)")
    assert hits > 0
