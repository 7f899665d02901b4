"""Five-field cron: the syntax, the day-of-month/day-of-week OR rule, and next_after()
checked against a brute-force minute-by-minute walk."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpushopper.core.bench.cron import parse
from gpushopper.model.errors import UsageError

UTC = timezone.utc


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "field", "values"),
    [
        ("* * * * *", "minutes", set(range(60))),
        ("*/15 * * * *", "minutes", {0, 15, 30, 45}),
        ("5-20/5 * * * *", "minutes", {5, 10, 15, 20}),
        ("50/4 * * * *", "minutes", {50, 54, 58}),
        ("1,2,40-42 * * * *", "minutes", {1, 2, 40, 41, 42}),
        ("0 */6 * * *", "hours", {0, 6, 12, 18}),
        ("0 0 1-7,15 * *", "days", {1, 2, 3, 4, 5, 6, 7, 15}),
        ("0 0 * jan,Mar-may *", "months", {1, 3, 4, 5}),
        ("0 0 * */4 *", "months", {1, 5, 9}),
        ("0 0 * * mon-fri", "weekdays", {1, 2, 3, 4, 5}),
        ("0 0 * * 7", "weekdays", {0}),
        ("0 0 * * 5-7", "weekdays", {5, 6, 0}),
        ("0 0 * * SUN,sat", "weekdays", {0, 6}),
        ("0 0 * * */2", "weekdays", {0, 2, 4, 6}),
    ],
)
def test_fields(expr, field, values):
    assert set(getattr(parse(expr), field)) == values


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "* * * *",
        "* * * * * *",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * 32 * *",
        "* * * 13 *",
        "* * * * 8",
        "*/0 * * * *",
        "5-1 * * * *",
        "a * * * *",
        "* * * foo *",
        "1,,2 * * * *",
        "@sometimes",
        "0 0 30 2 *",
        "0 0 31 4,6,9,11 *",
        "-1 * * * *",
        "1-2-3 * * * *",
        "\u00b2 * * * *",  # str.isdigit() says yes to a superscript two; int() does not
        "*/\u00b2 * * * *",
        "\u0663 * * * *",  # an Arabic-Indic three: cron's digits are ASCII
    ],
)
def test_bad_expressions_are_usage_errors(expr):
    with pytest.raises(UsageError):
        parse(expr)


def test_macros():
    assert parse("@daily").text == "0 0 * * *"
    assert parse("@HOURLY").text == "0 * * * *"
    assert parse("@weekly").next_after(at(2026, 12, 1)) == at(2026, 12, 6)  # a Sunday


def test_next_after_is_strictly_after_and_drops_seconds():
    cron = parse("30 14 * * *")
    assert cron.next_after(at(2026, 12, 1, 14, 30)) == at(2026, 12, 2, 14, 30)
    assert cron.next_after(at(2026, 12, 1, 14, 29, 59)) == at(2026, 12, 1, 14, 30)


def test_day_of_month_or_day_of_week_when_both_restricted():
    cron = parse("0 0 13 * fri")  # every 13th AND every Friday (Vixie cron's OR)
    assert cron.next_after(at(2026, 12, 1)) == at(2026, 12, 4)  # Friday the 4th
    assert cron.next_after(at(2026, 12, 11)) == at(2026, 12, 13)  # Sunday the 13th
    both_star = parse("0 0 */2 * fri")  # a '*' field: both must match (AND)
    assert both_star.next_after(at(2026, 12, 1)) == at(2026, 12, 11)  # Friday, odd day


def test_leap_day_and_month_ends():
    assert parse("0 0 29 2 *").next_after(at(2026, 3, 1)) == at(2028, 2, 29)
    assert parse("0 12 31 * *").next_after(at(2026, 4, 1)) == at(2026, 5, 31, 12)


def brute_force(cron, start: datetime, limit_minutes: int) -> datetime | None:
    """The reference: walk minute by minute, checking each against the field sets."""
    t = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(limit_minutes):
        if cron.matches(t):
            return t
        t += timedelta(minutes=1)
    return None


def field_text(low: int, high: int) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    single = number.map(str)
    ranged = st.tuples(number, number).map(lambda p: f"{min(p)}-{max(p)}")
    stepped = st.tuples(st.sampled_from(["*", None]), number, number, st.integers(1, 9)).map(
        lambda p: f"{p[0] or f'{min(p[1], p[2])}-{max(p[1], p[2])}'}/{p[3]}"
    )
    item = st.one_of(st.just("*"), single, ranged, stepped)
    return st.lists(item, min_size=1, max_size=3).map(",".join)


EXPRESSIONS = st.tuples(
    field_text(0, 59), field_text(0, 23), field_text(1, 31), field_text(1, 12), field_text(0, 7)
).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(
    expr=EXPRESSIONS,
    start=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2030, 12, 31)),
)
def test_next_after_matches_a_minute_by_minute_walk(expr, start):
    try:
        cron = parse(expr)
    except UsageError:
        return  # e.g. '0 0 30 2 *': never a real date
    start = start.replace(tzinfo=UTC)
    expected = brute_force(cron, start, limit_minutes=60 * 24 * 62)
    got = cron.next_after(start)
    if expected is not None:
        assert got == expected
    else:
        assert got is None or got - start > timedelta(days=61)


@settings(max_examples=200, deadline=None)
@given(
    minute=st.integers(0, 59),
    hour=st.integers(0, 23),
    day=st.integers(1, 28),
    month=st.integers(1, 12),
    weekday=st.integers(0, 7),
)
def test_matches_follows_each_field(minute, hour, day, month, weekday):
    when = at(2027, month, day, hour, minute)
    assert parse(f"{minute} {hour} {day} {month} *").matches(when)
    assert not parse(f"{(minute + 1) % 60} {hour} {day} {month} *").matches(when)
    python_dow = (when.weekday() + 1) % 7
    assert parse(f"{minute} {hour} * {month} {weekday}").matches(when) == (
        weekday % 7 == python_dow
    )
