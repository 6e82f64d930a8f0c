"""Tests of forsun_box.schedule: explicit cases, DST, and properties against a brute force."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forsun_box import plan as plan_mod
from forsun_box import schedule
from forsun_box.plan import AT, CALENDAR, CRON, DELAY, Plan

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
UTC_Z = ZoneInfo("UTC")


def ms(tz: ZoneInfo, *fields: int, fold: int = 0) -> int:
    return int(datetime(*fields, tzinfo=tz, fold=fold).timestamp()) * 1000


def utc_ms(*fields: int) -> int:
    return int(datetime(*fields, tzinfo=UTC).timestamp()) * 1000


def local(x: int | None, tz: ZoneInfo) -> str | None:
    return None if x is None else datetime.fromtimestamp(x / 1000, tz).isoformat()


def cal(**fields: int) -> Plan:
    return Plan(key="k", kind=CALENDAR, **fields)


def cron(expr: str) -> Plan:
    return Plan(key="k", kind=CRON, cron=expr)


def next_fire(p: Plan, after_ms: int, tz: ZoneInfo) -> int | None:
    """The raw trigger's next firing (count and end are the plan's, not the trigger's)."""
    return p.trigger().next_after(after_ms, tz)


def preview(p: Plan, after_ms: int, tz: ZoneInfo, n: int) -> list[int]:
    """The trigger's next ``n`` firings, each strictly after the one before."""
    out: list[int] = []
    t: int | None = after_ms
    while len(out) < n and t is not None:
        t = next_fire(p, t, tz)
        if t is not None:
            out.append(t)
    return out


def firings(p: Plan, after_ms: int, tz: ZoneInfo, n: int) -> list[str | None]:
    return [local(x, tz) for x in preview(p, after_ms, tz, n)]


# -- delay, at, helpers -------------------------------------------------------


def test_each_kind_has_its_trigger():
    assert isinstance(Plan(key="k", kind=DELAY).trigger(), schedule.DelayTrigger)
    assert isinstance(Plan(key="k", kind=AT).trigger(), schedule.AtTrigger)
    assert isinstance(cal().trigger(), schedule.CalendarSpec)
    assert isinstance(cron("* * * * *").trigger(), schedule.CalendarSpec)
    assert plan_mod.KINDS == ("delay", "calendar", "cron", "at")
    with pytest.raises(ValueError, match="unknown schedule kind"):
        Plan(key="k", kind="weekly").trigger()


def test_delay_interval_counts_only_non_negative_fields():
    assert schedule.delay_interval_ms(5, -1, -1, -1, -1, -1) == 5000
    assert schedule.delay_interval_ms(-1, -1, -1, -1, -1, -1) == 0
    assert schedule.delay_interval_ms(1, 2, 3, 4, 5, 6) == 1000 * (
        1 + 2 * 60 + 3 * 3600 + 4 * 86400 + 5 * 30 * 86400 + 6 * 7 * 86400
    )
    assert schedule.delay_interval_ms(0, 1, -1, 0, -1, 1) == 1000 * (60 + 7 * 86400)


def test_delay_fires_on_anchor_plus_multiples_of_interval():
    p = Plan(key="k", kind=DELAY, interval_ms=500, anchor_ms=1000)
    assert next_fire(p, 0, UTC_Z) == 1500  # never at the anchor itself
    assert next_fire(p, 999, UTC_Z) == 1500
    assert next_fire(p, 1000, UTC_Z) == 1500
    assert next_fire(p, 1499, UTC_Z) == 1500
    assert next_fire(p, 1500, UTC_Z) == 2000
    assert next_fire(p, 1_000_000_123, UTC_Z) == 1_000_000_500
    assert preview(p, 1000, UTC_Z, 3) == [1500, 2000, 2500]
    assert next_fire(p.copy(interval_ms=0), 0, UTC_Z) is None


def test_at_fires_once():
    p = Plan(key="k", kind=AT, anchor_ms=5000)
    assert next_fire(p, 4999, UTC_Z) == 5000
    assert next_fire(p, 5000, UTC_Z) is None
    assert preview(p, 0, UTC_Z, 5) == [5000]


def test_start_of_next_year():
    assert schedule.start_of_next_year_ms(ms(NY, 2024, 6, 1), NY) == utc_ms(2025, 1, 1, 5)
    # 2024-12-31 23:30 in New York is already 2025 in UTC; the year is New York's.
    assert schedule.start_of_next_year_ms(ms(NY, 2024, 12, 31, 23, 30), NY) == utc_ms(2025, 1, 1, 5)
    assert schedule.start_of_next_year_ms(ms(BERLIN, 2025, 1, 1), BERLIN) == utc_ms(
        2025, 12, 31, 23
    )


# -- calendar -----------------------------------------------------------------


def test_daily_calendar_plan_fires_every_day_at_its_time():
    p = cal(second=0, minute=32, hour=16)
    after = ms(UTC_Z, 2024, 5, 1, 10)
    assert next_fire(p, after, UTC_Z) == utc_ms(2024, 5, 1, 16, 32)
    assert next_fire(p, utc_ms(2024, 5, 1, 16, 32), UTC_Z) == utc_ms(2024, 5, 2, 16, 32)
    assert next_fire(p, utc_ms(2024, 5, 1, 16, 32) - 1, UTC_Z) == utc_ms(2024, 5, 1, 16, 32)
    assert firings(p, ms(BERLIN, 2024, 12, 31, 17), BERLIN, 2) == [
        "2025-01-01T16:32:00+01:00",
        "2025-01-02T16:32:00+01:00",
    ]


def test_fully_fixed_calendar_fields_name_one_instant_a_year():
    p = cal(second=1, minute=35, hour=16, day=23, month=3)
    x = next_fire(p, ms(NY, 2025, 1, 1), NY)
    assert local(x, NY) == "2025-03-23T16:35:01-04:00"
    # Year bounds are plan.py's business: the schedule itself recurs yearly.
    assert local(next_fire(p, x, NY), NY) == "2026-03-23T16:35:01-04:00"


def test_any_fields_fire_every_second_and_results_are_whole_seconds():
    p = cal()
    assert next_fire(p, 1_700_000_000_123, UTC_Z) == 1_700_000_001_000
    assert preview(p, 1_700_000_000_000, UTC_Z, 3) == [
        1_700_000_001_000,
        1_700_000_002_000,
        1_700_000_003_000,
    ]
    p = cal(second=30)
    assert next_fire(p, utc_ms(2024, 1, 1, 0, 0, 30), UTC_Z) == utc_ms(2024, 1, 1, 0, 1, 30)


@pytest.mark.parametrize("week", [0, 7])
def test_week_zero_and_seven_are_sunday(week):
    p = cal(second=0, minute=0, hour=10, week=week)
    # 2024-05-01 is a Wednesday; the Sundays after it are May 5 and May 12.
    assert firings(p, ms(UTC_Z, 2024, 5, 1), UTC_Z, 2) == [
        "2024-05-05T10:00:00+00:00",
        "2024-05-12T10:00:00+00:00",
    ]


def test_calendar_day_and_week_must_both_match():
    friday_13 = cal(second=0, minute=0, hour=0, day=13, week=5)
    assert firings(friday_13, ms(UTC_Z, 2024, 1, 1), UTC_Z, 3) == [
        "2024-09-13T00:00:00+00:00",
        "2024-12-13T00:00:00+00:00",
        "2025-06-13T00:00:00+00:00",
    ]


def test_feb_29_plans():
    p = cal(second=0, minute=0, hour=0, day=29, month=2)
    assert firings(p, ms(NY, 2024, 3, 1), NY, 3) == [
        "2028-02-29T00:00:00-05:00",
        "2032-02-29T00:00:00-05:00",
        "2036-02-29T00:00:00-05:00",
    ]
    # 2100 is not a leap year.
    assert local(next_fire(p, ms(NY, 2096, 3, 1), NY), NY) == "2104-02-29T00:00:00-05:00"
    # Feb 29 on a Thursday: 2024, then 2052, 2080 and 40 years later 2120.
    p = cal(second=0, minute=0, hour=0, day=29, month=2, week=4)
    assert firings(p, ms(NY, 2024, 3, 1), NY, 3) == [
        "2052-02-29T00:00:00-05:00",
        "2080-02-29T00:00:00-05:00",
        "2120-02-29T00:00:00-05:00",
    ]


def test_feb_29_plan_is_cheap_to_repeat():
    p = cal(second=0, minute=0, hour=12, day=29, month=2, week=4)
    after = ms(UTC_Z, 2024, 3, 1)
    results = {next_fire(p, after + i * 1000, UTC_Z) for i in range(1000)}
    assert results == {utc_ms(2052, 2, 29, 12)}


@pytest.mark.parametrize(
    "fields",
    [
        {"day": 31, "month": 2},
        {"day": 30, "month": 2},
        {"day": 31, "month": 4},
        {"day": 31, "month": 11, "week": 3},
    ],
)
def test_impossible_calendar_spec_never_fires(fields):
    assert next_fire(cal(**fields), ms(UTC_Z, 2024, 1, 1), UTC_Z) is None


def test_invalid_calendar_field_is_a_value_error():
    with pytest.raises(ValueError, match="hour"):
        next_fire(cal(hour=24), 0, UTC_Z)
    with pytest.raises(ValueError, match="week"):
        next_fire(cal(week=8), 0, UTC_Z)


def test_compiled_specs_are_cached():
    assert schedule.compile_calendar(0, 1, 2, 3, 4, 5) is schedule.compile_calendar(
        0, 1, 2, 3, 4, 5
    )
    assert schedule.compile_cron("*/5 * * * *") is schedule.compile_cron("*/5 * * * *")


# -- cron ---------------------------------------------------------------------


def test_cron_every_five_minutes():
    p = cron("*/5 * * * *")
    assert firings(p, ms(UTC_Z, 2024, 5, 1, 10, 3, 17), UTC_Z, 3) == [
        "2024-05-01T10:05:00+00:00",
        "2024-05-01T10:10:00+00:00",
        "2024-05-01T10:15:00+00:00",
    ]
    assert local(next_fire(p, ms(UTC_Z, 2024, 12, 31, 23, 57), UTC_Z), UTC_Z) == (
        "2025-01-01T00:00:00+00:00"
    )


def test_cron_six_fields_have_the_second_first():
    p = cron("0 0 9 * * mon-fri")
    # 2024-05-03 is a Friday.
    assert firings(p, ms(BERLIN, 2024, 5, 3, 9), BERLIN, 3) == [
        "2024-05-06T09:00:00+02:00",
        "2024-05-07T09:00:00+02:00",
        "2024-05-08T09:00:00+02:00",
    ]
    assert firings(cron("*/20 * * * * *"), ms(UTC_Z, 2024, 5, 1), UTC_Z, 4) == [
        "2024-05-01T00:00:20+00:00",
        "2024-05-01T00:00:40+00:00",
        "2024-05-01T00:01:00+00:00",
        "2024-05-01T00:01:20+00:00",
    ]


def test_cron_names_lists_ranges_and_shortcuts():
    p = cron("15 8,20 * jan,jul SUN")
    # 2024-06-30 is a Sunday, but in June.
    assert firings(p, ms(UTC_Z, 2024, 6, 30, 9), UTC_Z, 3) == [
        "2024-07-07T08:15:00+00:00",
        "2024-07-07T20:15:00+00:00",
        "2024-07-14T08:15:00+00:00",
    ]
    # An equal range means its one value; a reversed range wraps around.
    assert schedule.compile_cron("5-5 * * * *").minutes == {5}
    assert schedule.compile_cron("0 0 * * fri-mon").dows == {5, 6, 0, 1}
    assert schedule.compile_cron("0 0 * * 7").dows == {0}
    assert schedule.compile_cron("@daily").minutes == {0}
    assert firings(cron("@hourly"), ms(UTC_Z, 2024, 5, 1, 10, 30), UTC_Z, 2) == [
        "2024-05-01T11:00:00+00:00",
        "2024-05-01T12:00:00+00:00",
    ]


def test_cron_day_of_month_or_day_of_week():
    # Both restricted: the 13th or any Friday (2024-09-06 and 09-20 are Fridays).
    assert firings(cron("0 0 13 * fri"), ms(UTC_Z, 2024, 9, 1), UTC_Z, 5) == [
        "2024-09-06T00:00:00+00:00",
        "2024-09-13T00:00:00+00:00",
        "2024-09-20T00:00:00+00:00",
        "2024-09-27T00:00:00+00:00",
        "2024-10-04T00:00:00+00:00",
    ]
    assert firings(cron("0 0 1 * mon"), ms(UTC_Z, 2024, 9, 28), UTC_Z, 3) == [
        "2024-09-30T00:00:00+00:00",
        "2024-10-01T00:00:00+00:00",
        "2024-10-07T00:00:00+00:00",
    ]
    # Only one restricted: it alone decides.
    assert firings(cron("0 0 * * fri"), ms(UTC_Z, 2024, 9, 1), UTC_Z, 2) == [
        "2024-09-06T00:00:00+00:00",
        "2024-09-13T00:00:00+00:00",
    ]
    # A field starting with "*" counts as unrestricted (Vixie cron): odd days
    # that are Fridays.
    assert firings(cron("0 0 */2 * fri"), ms(UTC_Z, 2024, 9, 1), UTC_Z, 2) == [
        "2024-09-13T00:00:00+00:00",
        "2024-09-27T00:00:00+00:00",
    ]


def test_impossible_cron_never_fires():
    assert next_fire(cron("0 0 30 2 *"), ms(UTC_Z, 2024, 1, 1), UTC_Z) is None
    assert next_fire(cron("0 0 31 4,6 *"), ms(UTC_Z, 2024, 1, 1), UTC_Z) is None


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "   ",
        "* * *",
        "* * * * * * *",
        "61 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * 8",
        "*/0 * * * *",
        "jan * * * *",
        "0 0 L * *",
        "0 0 * * 5L",
        "0 0 * * 1#2",
        "0 0 15W * *",
        "0 0 ? * *",
        "H * * * *",
        "@reboot",
        "@sometimes",
        "1-2-3 * * * *",
        "a b c d e",
    ],
)
def test_invalid_cron_is_a_value_error(expr):
    with pytest.raises(ValueError, match=r"\S") as info:  # says what is wrong
        schedule.compile_cron(expr)
    assert str(info.value)
    assert "Traceback" not in str(info.value)


# -- DST ------------------------------------------------------------------------


def test_new_york_spring_forward():
    # 2024-03-10: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
    jump = utc_ms(2024, 3, 10, 7)
    p = cal(second=0, minute=30, hour=2)
    assert next_fire(p, ms(NY, 2024, 3, 9, 12), NY) == jump
    assert firings(p, jump, NY, 1) == ["2024-03-11T02:30:00-04:00"]
    # Every minute: the skipped hour and 03:00 itself collapse into one firing.
    assert firings(cron("* * * * *"), ms(NY, 2024, 3, 10, 1, 58), NY, 4) == [
        "2024-03-10T01:59:00-05:00",
        "2024-03-10T03:00:00-04:00",
        "2024-03-10T03:01:00-04:00",
        "2024-03-10T03:02:00-04:00",
    ]
    # Fixed hour 2, any minute: one firing at the jump, then the next day.
    assert firings(cal(second=0, hour=2), ms(NY, 2024, 3, 10, 1), NY, 2) == [
        "2024-03-10T03:00:00-04:00",
        "2024-03-11T02:00:00-04:00",
    ]


def test_new_york_fall_back():
    # 2024-11-03: 02:00 EDT goes back to 01:00 EST (06:00 UTC).
    fixed = cal(second=0, minute=30, hour=1)
    assert firings(fixed, ms(NY, 2024, 11, 3), NY, 2) == [
        "2024-11-03T01:30:00-04:00",
        "2024-11-04T01:30:00-05:00",
    ]
    # After the first 01:30 or during the second pass: tomorrow.
    assert local(next_fire(fixed, utc_ms(2024, 11, 3, 6, 10), NY), NY) == (
        "2024-11-04T01:30:00-05:00"
    )
    any_hour = cron("30 * * * *")
    assert firings(any_hour, ms(NY, 2024, 11, 3), NY, 4) == [
        "2024-11-03T00:30:00-04:00",
        "2024-11-03T01:30:00-04:00",
        "2024-11-03T01:30:00-05:00",
        "2024-11-03T02:30:00-05:00",
    ]
    # Every minute keeps firing every minute through the repeated hour.
    start, stop = utc_ms(2024, 11, 3, 4), utc_ms(2024, 11, 3, 8)
    xs = preview(cron("* * * * *"), start, NY, 240)
    assert xs == list(range(start + 60_000, stop + 1, 60_000))


def test_berlin_transitions():
    # 2024-03-31: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    assert next_fire(cal(second=0, minute=15, hour=2), ms(BERLIN, 2024, 3, 30, 12), BERLIN) == (
        utc_ms(2024, 3, 31, 1)
    )
    assert firings(cron("0 */20 * * * *"), ms(BERLIN, 2024, 3, 31, 1, 30), BERLIN, 3) == [
        "2024-03-31T01:40:00+01:00",
        "2024-03-31T03:00:00+02:00",
        "2024-03-31T03:20:00+02:00",
    ]
    # 2024-10-27: 03:00 CEST goes back to 02:00 CET (01:00 UTC).
    assert firings(cal(second=0, minute=0, hour=2), ms(BERLIN, 2024, 10, 26, 12), BERLIN, 2) == [
        "2024-10-27T02:00:00+02:00",
        "2024-10-28T02:00:00+01:00",
    ]
    assert firings(cal(second=0, minute=0), ms(BERLIN, 2024, 10, 27, 1, 30), BERLIN, 3) == [
        "2024-10-27T02:00:00+02:00",
        "2024-10-27T02:00:00+01:00",
        "2024-10-27T03:00:00+01:00",
    ]


def test_lord_howe_half_hour_shifts():
    # 2024-04-07: 02:00 (+11) goes back to 01:30 (+10:30) at 15:00 UTC.
    assert firings(cron("*/15 * * * *"), ms(LORD_HOWE, 2024, 4, 7, 1, 20), LORD_HOWE, 5) == [
        "2024-04-07T01:30:00+11:00",
        "2024-04-07T01:45:00+11:00",
        "2024-04-07T01:30:00+10:30",
        "2024-04-07T01:45:00+10:30",
        "2024-04-07T02:00:00+10:30",
    ]
    assert firings(cron("45 1 * * *"), ms(LORD_HOWE, 2024, 4, 7), LORD_HOWE, 2) == [
        "2024-04-07T01:45:00+11:00",
        "2024-04-08T01:45:00+10:30",
    ]
    # 2024-10-06: 02:00 (+10:30) jumps to 02:30 (+11) at 15:30 UTC.
    assert firings(
        cal(second=0, minute=15, hour=2), ms(LORD_HOWE, 2024, 10, 5, 12), LORD_HOWE, 2
    ) == [
        "2024-10-06T02:30:00+11:00",
        "2024-10-07T02:15:00+11:00",
    ]
    assert firings(cron("*/10 * * * *"), ms(LORD_HOWE, 2024, 10, 6, 1, 45), LORD_HOWE, 4) == [
        "2024-10-06T01:50:00+10:30",
        "2024-10-06T02:30:00+11:00",
        "2024-10-06T02:40:00+11:00",
        "2024-10-06T02:50:00+11:00",
    ]


# -- properties against a brute force ------------------------------------------

ZONES = (NY, BERLIN, LORD_HOWE)
WINDOW_S = 3 * 86400
CHAIN = 25


def _transitions(tz: ZoneInfo, year: int) -> list[int]:
    """UTC instants (s) where tz's offset changes in a year, found hour by hour then by minute."""
    out = []
    t = int(datetime(year, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(year + 1, 1, 1, tzinfo=UTC).timestamp())
    prev = datetime.fromtimestamp(t, tz).utcoffset()
    while t < end:
        nxt = datetime.fromtimestamp(t + 3600, tz).utcoffset()
        if nxt != prev:
            m = t
            while datetime.fromtimestamp(m, tz).utcoffset() == prev:
                m += 60
            out.append(m)
            prev = nxt
        t += 3600
    return out


TRANSITIONS = [(tz, x) for tz in ZONES for y in (2024, 2025) for x in _transitions(tz, y)]


def _wall_matches(spec: schedule.CalendarSpec, wall: datetime) -> bool:
    if wall.month not in spec.months or wall.hour not in spec.hours:
        return False
    if wall.minute not in spec.minutes:
        return False
    dom = wall.day in spec.doms
    dow = wall.isoweekday() % 7 in spec.dows
    return (dom or dow) if spec.day_or else (dom and dow)


def reference_firings(spec: schedule.CalendarSpec, after_s: int, tz: ZoneInfo, window_s: int):
    """Every firing in (after_s, after_s + window_s], walking each UTC minute.

    The offsets involved are whole minutes, so seconds within a UTC minute
    are seconds within the local minute.
    """
    hour_any = len(spec.hours) == 24
    seconds = sorted(spec.seconds)
    m = (after_s + 1) // 60 * 60
    prev_wall = datetime.fromtimestamp(m - 60, tz).replace(tzinfo=None)
    while m <= after_s + window_s:
        aware = datetime.fromtimestamp(m, tz)
        wall = aware.replace(tzinfo=None)
        found: list[int] = []
        if wall - prev_wall > timedelta(minutes=1):
            # The clock jumped forward over [prev_wall + 1 min, wall).
            w = prev_wall + timedelta(minutes=1)
            while w < wall:
                if _wall_matches(spec, w):
                    found.append(m)
                    break
                w += timedelta(minutes=1)
        if _wall_matches(spec, wall) and (aware.fold == 0 or hour_any):
            found.extend(m + s for s in seconds)
        for x in sorted(set(found)):
            if after_s < x <= after_s + window_s:
                yield x
        prev_wall = wall
        m += 60


def _values(lo: int, hi: int, max_size: int):
    return st.one_of(
        st.just(frozenset(range(lo, hi + 1))),
        st.frozensets(st.integers(lo, hi), min_size=1, max_size=max_size),
    )


ALL_DAYS = frozenset(range(1, 32))
ALL_MONTHS = frozenset(range(1, 13))
ALL_DOWS = frozenset(range(7))
# Hours are drawn near the local times DST changes happen at (1-3) more
# often, and day fields are mostly "any", so that the windows (which start
# near a transition) often see firings on both sides of it.
HOURS = st.one_of(
    st.just(frozenset(range(24))),
    st.frozensets(st.integers(0, 4), min_size=1, max_size=3),
    st.frozensets(st.integers(0, 23), min_size=1, max_size=6),
)
DAYS = st.one_of(
    st.just(ALL_DAYS), st.just(ALL_DAYS), st.frozensets(st.integers(1, 31), min_size=1, max_size=10)
)
DOWS = st.one_of(
    st.just(ALL_DOWS), st.just(ALL_DOWS), st.frozensets(st.integers(0, 6), min_size=1, max_size=4)
)
MONTHS = st.one_of(
    st.just(ALL_MONTHS),
    st.just(ALL_MONTHS),
    st.frozensets(st.integers(1, 12), min_size=4, max_size=10),
)
AROUND = st.one_of(
    st.integers(-2 * 3600, 2 * 3600),
    st.integers(-6 * 3600, 3600),
    st.integers(-2 * 86400, 86400),
)


def _check_against_reference(spec, tz, after_ms, next_of):
    after_s = after_ms // 1000
    expected = []
    for x in reference_firings(spec, after_s, tz, WINDOW_S):
        expected.append(x * 1000)
        if len(expected) == CHAIN:
            break
    got = []
    t = after_ms
    for _ in range(len(expected)):
        t = next_of(t)
        assert t is not None
        got.append(t)
    assert [local(x, tz) for x in got] == [local(x, tz) for x in expected]
    if len(expected) < CHAIN:
        # Nothing more inside the window: the engine's next is beyond it.
        t = next_of(got[-1] if got else after_ms)
        assert t is None or t > (after_s + WINDOW_S) * 1000


@settings(max_examples=120, deadline=None)
@given(
    where=st.sampled_from(TRANSITIONS),
    shift=AROUND,
    frac_ms=st.integers(0, 999),
    seconds=_values(0, 59, 3),
    minutes=_values(0, 59, 4),
    hours=HOURS,
    days=DAYS,
    months=MONTHS,
    dows=DOWS,
    day_or=st.booleans(),
)
def test_calendar_engine_matches_brute_force(
    where, shift, frac_ms, seconds, minutes, hours, days, months, dows, day_or
):
    tz, transition = where
    spec = schedule.CalendarSpec(seconds, minutes, hours, days, months, dows, day_or=day_or)
    after_ms = (transition + shift) * 1000 + frac_ms
    _check_against_reference(spec, tz, after_ms, lambda t: schedule._calendar_ms(spec, t, tz))


def _field(name_values: frozenset[int], lo: int, hi: int) -> str:
    if name_values == frozenset(range(lo, hi + 1)):
        return "*"
    return ",".join(str(v) for v in sorted(name_values))


@settings(max_examples=80, deadline=None)
@given(
    where=st.sampled_from(TRANSITIONS),
    shift=AROUND,
    with_seconds=st.booleans(),
    seconds=_values(0, 59, 3),
    minutes=st.one_of(_values(0, 59, 4), st.sampled_from([frozenset(range(0, 60, 7))])),
    hours=HOURS,
    days=DAYS,
    dows=DOWS,
)
def test_cron_matches_brute_force(where, shift, with_seconds, seconds, minutes, hours, days, dows):
    tz, transition = where
    fields = [
        _field(minutes, 0, 59),
        _field(hours, 0, 23),
        _field(days, 1, 31),
        "*",
        _field(dows, 0, 6),
    ]
    if with_seconds:
        fields.insert(0, _field(seconds, 0, 59))
    p = cron(" ".join(fields))
    spec = schedule.CalendarSpec(
        seconds if with_seconds else {0},
        minutes,
        hours,
        days,
        range(1, 13),
        dows,
        day_or=fields[-1] != "*" and fields[-3] != "*",
    )
    _check_against_reference(spec, tz, (transition + shift) * 1000, lambda t: next_fire(p, t, tz))


@settings(max_examples=60, deadline=None)
@given(
    tz=st.sampled_from((*ZONES, UTC_Z)),
    start=st.integers(utc_ms(2000, 1, 1), utc_ms(2090, 1, 1)),
    second=st.integers(-1, 59),
    minute=st.integers(-1, 59),
    hour=st.integers(-1, 23),
    day=st.one_of(st.just(-1), st.integers(1, 31)),
    month=st.one_of(st.just(-1), st.integers(1, 12)),
    week=st.integers(-1, 7),
)
def test_calendar_next_fire_matches_its_fields(tz, start, second, minute, hour, day, month, week):
    p = cal(second=second, minute=minute, hour=hour, day=day, month=month, week=week)
    x = next_fire(p, start, tz)
    if x is None:
        # Only a day the month never has makes a plan impossible.
        longest = {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}.get(month, 31)
        assert month != -1 and day > longest
        return
    assert x > start and x % 1000 == 0
    wall = datetime.fromtimestamp(x / 1000, tz)
    ok = [
        second in (-1, wall.second),
        minute in (-1, wall.minute),
        hour in (-1, wall.hour),
        day in (-1, wall.day),
        month in (-1, wall.month),
        week == -1 or week % 7 == wall.isoweekday() % 7,
    ]
    # A wall time skipped by a DST jump fires at the end of the jump instead.
    skipped = datetime.fromtimestamp(x / 1000 - 1, tz).utcoffset() != wall.utcoffset()
    assert all(ok) or skipped
    # Asking again from just before the firing finds the same one.
    assert next_fire(p, x - 1000, tz) == x


@settings(max_examples=80, deadline=None)
@given(
    now=st.integers(utc_ms(2000, 1, 1), utc_ms(2090, 1, 1)),
    second=st.integers(-1, 5000),
    minute=st.integers(-1, 90),
    hour=st.integers(-1, 30),
    count=st.integers(0, 5),
    jitter=st.integers(0, 999),
    end_after=st.one_of(st.just(0), st.integers(1, 10_000_000)),
)
def test_delay_plan_first_firing_is_next_after_its_creation(
    now, second, minute, hour, count, jitter, end_after
):
    # build_plan takes a shortcut for the common delay plan (no jitter, no end):
    # it must give what the general path gives
    try:
        p = plan_mod.build_plan(
            key="k",
            kind=DELAY,
            now_ms=now,
            default_tz=UTC_Z,
            second=second,
            minute=minute,
            hour=hour,
            count=count,
            jitter_ms=jitter,
            end_ms=now + end_after if end_after else 0,
        )
    except plan_mod.errors.ForsunBoxError:
        assert (second <= 0 and minute <= 0 and hour <= 0) or jitter or end_after
        return
    general = p.copy(next_time=None).next_after(now, UTC_Z)
    assert p.next_time == general and p.anchor_ms == now
    assert p.interval_ms == schedule.delay_interval_ms(second, minute, hour, -1, -1, -1)
