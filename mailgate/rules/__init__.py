"""The rules stage: automation rules and SLAs → decisions as data, each with hit/miss and why.

Input: the `[[automations]]`, `[[sla]]` and `[business_hours]` configuration (validated here,
with one-line errors naming file, rule and key), a rules file (the stage's only I/O, in
load.py), and per event the `Facts` of a ticket and message (untrusted text). Output: `Rule`s,
`Evaluation`s (hit or miss, the deciding condition, the actions to apply) and SLA due times and
breaches. Pure: the orchestrator applies actions, records evaluations and runs the scheduler.

Modules: durations (parse "1h30m"), hours (business hours), model (data), conditions (`if`),
actions (`then`), load (rules and the rules file), engine (evaluate), sla (policies).
"""

from mailgate.rules.actions import ACTIONS
from mailgate.rules.conditions import CONDITIONS
from mailgate.rules.durations import parse_duration
from mailgate.rules.engine import evaluate, evaluate_rule
from mailgate.rules.hours import BusinessHours, load_business_hours
from mailgate.rules.load import load_rules, read_rules_file
from mailgate.rules.model import (
    PRIORITIES,
    STATUSES,
    TRIGGERS,
    Evaluation,
    Facts,
    Rule,
    RuleError,
)
from mailgate.rules.sla import SlaPolicy, choose_sla, load_slas, sla_due, sla_state

__all__ = [
    "ACTIONS",
    "CONDITIONS",
    "PRIORITIES",
    "STATUSES",
    "TRIGGERS",
    "BusinessHours",
    "Evaluation",
    "Facts",
    "Rule",
    "RuleError",
    "SlaPolicy",
    "choose_sla",
    "evaluate",
    "evaluate_rule",
    "load_business_hours",
    "load_rules",
    "load_slas",
    "parse_duration",
    "read_rules_file",
    "sla_due",
    "sla_state",
]
