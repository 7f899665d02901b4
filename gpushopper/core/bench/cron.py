"""Five-field cron expressions (minute hour day-of-month month day-of-week), in UTC.

The syntax of Vixie cron: ``*``, numbers, ranges ``a-b``, steps ``*/n``, ``a-b/n`` and
``a/n`` (from a to the field's end), comma lists of any of them, month names ``jan``-``dec``
and day names ``sun``-``sat`` (case-insensitive; day 7 is Sunday too), and the macros
``@hourly @daily @midnight @weekly @monthly @yearly @annually``. When both day fields are
restricted (neither starts with ``*``) a day matches if EITHER matches; otherwise both must.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from gpushopper.model.errors import UsageError

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# name, low, high, names (index + offset = value)
FIELDS = (
    ("minute", 0, 59, None, 0),
    ("hour", 0, 23, None, 0),
    ("day of month", 1, 31, None, 0),
    ("month", 1, 12, MONTHS, 1),
    ("day of week", 0, 7, DAYS, 0),
)
SEARCH_YEARS = 12  # Feb 29 on a given weekday recurs within this; past it: never


@dataclass(frozen=True)
class Cron:
    """A parsed expression: the set of values each field allows."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday ... 6 = Saturday (7 folded into 0)
    dom_star: bool
    dow_star: bool

    def day_matches(self, year: int, month: int, day: int) -> bool:
        if month not in self.months:
            return False
        weekday = (calendar.weekday(year, month, day) + 1) % 7  # Python: Monday is 0
        in_dom = day in self.days
        in_dow = weekday in self.weekdays
        if self.dom_star or self.dow_star:
            return in_dom and in_dow
        return in_dom or in_dow

    def matches(self, when: datetime) -> bool:
        """Does the minute ``when`` (UTC) match?"""
        when = when.astimezone(timezone.utc)
        return (
            when.minute in self.minutes
            and when.hour in self.hours
            and self.day_matches(when.year, when.month, when.day)
        )

    def next_after(self, when: datetime) -> datetime | None:
        """The first matching minute strictly after ``when``; None if it never comes
        (``0 0 30 2 *``)."""
        start = when.astimezone(timezone.utc).replace(second=0, microsecond=0)
        start += timedelta(minutes=1)
        minutes = sorted(self.minutes)
        hours = sorted(self.hours)
        day = start.date()
        last = day + timedelta(days=366 * SEARCH_YEARS)
        first_day = True
        while day <= last:
            if self.day_matches(day.year, day.month, day.day):
                for hour in hours:
                    if first_day and hour < start.hour:
                        continue
                    for minute in minutes:
                        if first_day and hour == start.hour and minute < start.minute:
                            continue
                        return datetime(
                            day.year, day.month, day.day, hour, minute, tzinfo=timezone.utc
                        )
            day += timedelta(days=1)
            first_day = False
        return None


def parse(text: str) -> Cron:
    """A Cron for ``text``, or a UsageError naming the bad field."""
    if not isinstance(text, str) or len(text) > 200:
        raise UsageError("a cron expression is five fields: minute hour day month weekday")
    expr = text.strip()
    expr = MACROS.get(expr.lower(), expr)
    if expr.startswith("@"):
        raise UsageError(f"unknown cron macro {expr!r} (use one of {', '.join(MACROS)})")
    parts = expr.split()
    if len(parts) != 5:
        raise UsageError(
            f"cron expression {text!r} has {len(parts)} fields; it needs five: "
            "minute hour day-of-month month day-of-week (e.g. '0 3 * * mon')"
        )
    sets = [_field(part, *spec) for part, spec in zip(parts, FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])
    cron = Cron(
        text=" ".join(parts),
        minutes=sets[0],
        hours=sets[1],
        days=sets[2],
        months=sets[3],
        weekdays=weekdays,
        dom_star=parts[2].startswith("*"),
        dow_star=parts[4].startswith("*"),
    )
    if cron.next_after(datetime(2000, 1, 1, tzinfo=timezone.utc)) is None:
        raise UsageError(f"cron expression {text!r} never matches a real date")
    return cron


def _digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also says yes to ``²``, which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def _field(
    part: str, name: str, low: int, high: int, names: tuple[str, ...] | None, offset: int
) -> frozenset[int]:
    def bad(why: str) -> UsageError:
        return UsageError(f"cron {name} field {part!r}: {why} (allowed {low}-{high})")

    def number(token: str) -> int:
        token = token.strip()
        if names is not None and token.lower() in names:
            return names.index(token.lower()) + offset
        if not _digits(token) or len(token) > 4:
            raise bad(f"{token!r} is not a number" + (" or a name" if names else ""))
        value = int(token)
        if not low <= value <= high:
            raise bad(f"{value} is out of range")
        return value

    values: set[int] = set()
    for item in part.split(","):
        if not item:
            raise bad("empty list item")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _digits(step_text) or len(step_text) > 4 or int(step_text) == 0:
                raise bad(f"step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            start, end = low, high
            if name == "day of week":
                end = 6  # '*' is every day once: 7 would repeat Sunday
        elif "-" in base:
            first, _, second = base.partition("-")
            start, end = number(first), number(second)
            if start > end:
                raise bad(f"range {base!r} runs backwards")
        else:
            start = number(base)
            end = high if slash else start  # 'a/n': from a to the end, every n
        values.update(range(start, end + 1, step))
    return frozenset(values)
