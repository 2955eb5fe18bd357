"""Durations written by people: `"90s"`, `"30m"`, `"4h"`, `"2d"`, `"1h30m"` → seconds.

Input: a string from the configuration (trusted to mean what it says, not to be well-formed).
Output: a float number of seconds, or `RuleError` with a one-line reason. Pure, stdlib only.
"""

from __future__ import annotations

import re

from mailgate.rules.model import RuleError

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(text: object) -> float:
    """`"1h30m"` → 5400.0. Units d, h, m, s, largest first, each at most once; no sign, no
    fractions, no spaces. Raises RuleError for anything else (also for non-strings)."""
    if not isinstance(text, str):
        raise RuleError(f"expected a duration like \"4h\" or \"1h30m\", got {text!r}")
    m = _DURATION.fullmatch(text.strip().lower())
    if not text.strip() or m is None:
        raise RuleError(f"not a duration: {text!r} (use d, h, m, s: \"90s\", \"4h\", \"1h30m\")")
    return float(sum(int(n) * _UNITS[u] for n, u in zip(m.groups(), "dhms", strict=True) if n))
