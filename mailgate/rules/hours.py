"""Business hours: which moments count as working time, and adding working time to a moment.

Input: the `[business_hours]` table of the configuration (`timezone`, `days`, `start`, `end`;
trusted to mean what it says, not to be well-formed). Output: a `BusinessHours` whose
`contains(dt)` says whether an aware datetime falls inside working time and whose
`add(start, seconds)` gives the moment when that much working time has elapsed (for SLAs counted
in business hours). Wall-clock windows are taken in the configured time zone, so daylight-saving
changes move them correctly. Errors are `ConfigError`, one line naming the file and the key.
Stdlib + zoneinfo.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailgate.errors import ConfigError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_KEYS = ("timezone", "days", "start", "end")
_DAY_INDEX = {name: i for i, name in enumerate(DAY_NAMES)} | {
    name: i for i, name in enumerate(
        ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))}
_TIME = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
_MAX_DAYS = 366 * 50  # add() gives up beyond this many calendar days


def _aware(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt.isoformat()}: pass an aware (UTC) datetime")
    return dt


@dataclass(frozen=True)
class BusinessHours:
    timezone: str
    days: tuple[int, ...]  # 0 = Monday
    start: time
    end: time  # after start: windows never cross midnight
    tz: ZoneInfo = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tz", ZoneInfo(self.timezone))
        if not self.days or any(d not in range(7) for d in self.days):
            raise ValueError(f"days must be a non-empty set of 0..6, got {self.days!r}")
        if self.end <= self.start:
            raise ValueError("end must be after start")

    def contains(self, dt_utc: datetime) -> bool:
        """Is this moment inside working time (weekday in `days`, start <= local time < end)?"""
        local = _aware(dt_utc).astimezone(self.tz)
        return local.weekday() in self.days and self.start <= local.time() < self.end

    def window(self, day: date) -> tuple[datetime, datetime] | None:
        """That local day's working window as UTC datetimes, or None on a day off."""
        if day.weekday() not in self.days:
            return None
        begin = datetime.combine(day, self.start, tzinfo=self.tz).astimezone(UTC)
        finish = datetime.combine(day, self.end, tzinfo=self.tz).astimezone(UTC)
        return begin, finish

    def add(self, start_utc: datetime, seconds: float) -> datetime:
        """The moment (UTC) when `seconds` of working time have elapsed after `start_utc`.
        Zero seconds gives `start_utc` itself; time outside working windows does not count."""
        cursor = _aware(start_utc).astimezone(UTC)
        if seconds <= 0:
            return cursor
        remaining = timedelta(seconds=seconds)
        day = cursor.astimezone(self.tz).date()
        for _ in range(_MAX_DAYS):
            win = self.window(day)
            if win is not None:
                begin, finish = win
                if cursor < begin:
                    cursor = begin
                if cursor < finish:
                    available = finish - cursor
                    if remaining <= available:
                        return cursor + remaining
                    remaining -= available
                    cursor = finish
            day += timedelta(days=1)
        raise ValueError(f"{seconds} s of business time reach beyond {_MAX_DAYS} days")


def _parse_time(value: Any) -> time | None:
    if isinstance(value, time):
        return value.replace(tzinfo=None)
    if isinstance(value, str) and (m := _TIME.fullmatch(value.strip())):
        return time(int(m[1]), int(m[2]))
    return None


def load_business_hours(table: Mapping[str, Any] | None, source: str) -> BusinessHours | None:
    """The `[business_hours]` table → BusinessHours (None when the table is absent).
    Every key is required: timezone, days, start, end."""
    if table is None:
        return None

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{source}: [business_hours] {key}: {message}")

    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: [business_hours]: must be a table")
    for key in table:
        if key not in _KEYS:
            raise fail(key, "unknown key (timezone, days, start, end)")
    for key in _KEYS:
        if key not in table:
            raise fail(key, "required")
    tz = table["timezone"]
    if not isinstance(tz, str) or not tz.strip():
        raise fail("timezone", f"expected a time zone name like \"Europe/Berlin\", got {tz!r}")
    try:
        ZoneInfo(tz.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise fail("timezone", f"unknown time zone {tz!r}") from None
    raw_days = table["days"]
    if not isinstance(raw_days, list) or not raw_days:
        raise fail("days", "expected a non-empty list of days like [\"mon\", \"tue\"]")
    days: list[int] = []
    for d in raw_days:
        index = _DAY_INDEX.get(d.strip().lower()) if isinstance(d, str) else None
        if index is None:
            raise fail("days", f"not a day: {d!r} (mon, tue, wed, thu, fri, sat, sun)")
        if index in days:
            raise fail("days", f"{d!r} given twice")
        days.append(index)
    start, end = _parse_time(table["start"]), _parse_time(table["end"])
    if start is None:
        raise fail("start", f"expected a time like \"09:00\", got {table['start']!r}")
    if end is None:
        raise fail("end", f"expected a time like \"17:00\", got {table['end']!r}")
    if end <= start:
        raise fail("end", f"must be after start ({start:%H:%M}); windows cannot cross midnight")
    return BusinessHours(tz.strip(), tuple(sorted(days)), start, end)

