"""The engine: which rules hit for an event, and why.

Input: loaded `Rule`s (trusted: validated and precompiled by load.py), the event name, the
`Facts` of the ticket and message (untrusted text, only compared and searched) and the business
hours. Output: one `Evaluation` per enabled rule of that event, in rule order: hit or miss, the
condition that decided it, and on a hit the rule's actions as data. Pure: nothing is applied,
stored or sent here; the orchestrator applies the actions and records the evaluations.
"""

from __future__ import annotations

from collections.abc import Iterable

from mailgate.rules.conditions import describe_hit, first_failure
from mailgate.rules.hours import BusinessHours
from mailgate.rules.model import EMPTY, TRIGGERS, Evaluation, Facts, Rule


def evaluate_rule(rule: Rule, facts: Facts, hours: BusinessHours | None) -> Evaluation:
    """One rule, whatever its trigger and even when disabled (for `rules test`/`explain`)."""
    why = first_failure(rule.checks, facts, hours)
    if why is None:
        return Evaluation(rule.name, True, describe_hit(rule.checks), rule.actions)
    return Evaluation(rule.name, False, why, EMPTY)


def evaluate(rules: Iterable[Rule], event: str, facts: Facts, hours: BusinessHours | None,
             *, idle_seconds: float | None = None) -> list[Evaluation]:
    """Every enabled rule whose `when` is `event`, in order. For "idle", `idle_seconds` (how
    long the ticket has been idle) leaves out rules whose `after` has not yet passed; without
    it every idle rule is evaluated. Raises ValueError for an unknown event (a bug)."""
    if event not in TRIGGERS:
        raise ValueError(f"unknown event {event!r} (one of {', '.join(TRIGGERS)})")
    out = []
    for rule in rules:
        if rule.when != event or not rule.enabled:
            continue
        if idle_seconds is not None and rule.after is not None and rule.after > idle_seconds:
            continue
        out.append(evaluate_rule(rule, facts, hours))
    return out
