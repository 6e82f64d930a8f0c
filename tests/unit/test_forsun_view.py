"""Cron and single-instant plans read in forsun's shape (v1, Thrift, the forsun CLI)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from forsun_box.plan import AT, CALENDAR, CRON, DELAY, NOT_A_FORSUN_VALUE, Plan, to_forsun

X = NOT_A_FORSUN_VALUE
PARIS = ZoneInfo("Europe/Paris")


def fields(plan: Plan, tz: ZoneInfo | None = None) -> tuple[int, ...]:
    d = to_forsun(plan, tz)
    return tuple(d[f] for f in ("second", "minute", "hour", "day", "month", "week", "count"))


def test_cron_fields_say_what_forsun_can_and_mark_the_rest() -> None:
    cron = Plan("c", CRON, cron="0 9 * * *")
    # daily at 09:00:00 in forsun's words: second 0, minute 0, hour 9, any day
    assert fields(cron) == (0, 0, 9, -1, -1, -1, 0)
    assert fields(Plan("c", CRON, cron="*/15 * * * *", count=4)) == (0, X, -1, -1, -1, -1, 4)
    assert fields(Plan("c", CRON, cron="30 0 9 * * 1-5")) == (30, 0, 9, -1, -1, X, 0)
    assert fields(Plan("c", CRON, cron="0 12 1 jan *")) == (0, 0, 12, 1, 1, -1, 0)
    assert fields(Plan("c", CRON, cron="0 0 * * sun")) == (0, 0, 0, -1, -1, 0, 0)
    # day of month OR day of week: no forsun form for either
    assert fields(Plan("c", CRON, cron="0 8 1 * 1")) == (0, 0, 8, X, -1, X, 0)
    assert fields(Plan("c", CRON, cron="* * * * * *")) == (-1, -1, -1, -1, -1, -1, 0)
    assert to_forsun(cron)["is_time_out"] is False


def test_a_single_instant_reads_as_forsuns_one_instant_calendar_plan() -> None:
    at_ms = int(datetime(2030, 1, 2, 8, 30, 15, tzinfo=ZoneInfo("UTC")).timestamp() * 1000)
    plan = Plan("a", AT, anchor_ms=at_ms, next_time=at_ms)
    # in the server's zone (UTC+1 in January), fires once
    assert fields(plan, PARIS) == (15, 30, 9, 2, 1, -1, 1)
    assert fields(plan) == (15, 30, 8, 2, 1, -1, 1)  # no zone given: UTC
    tokyo = Plan("a", AT, anchor_ms=at_ms, next_time=at_ms, timezone="Asia/Tokyo")
    assert fields(tokyo, PARIS) == (15, 30, 17, 2, 1, -1, 1)  # its own zone wins
    assert to_forsun(plan, PARIS)["next_time"] == at_ms // 1000


def test_forsuns_own_plans_are_unchanged() -> None:
    delay = Plan("d", DELAY, second=5, count=3, interval_ms=5000)
    assert fields(delay) == (5, -1, -1, -1, -1, -1, 3)
    cal = Plan("k", CALENDAR, second=0, minute=32, hour=16)
    assert fields(cal, PARIS) == (0, 32, 16, -1, -1, -1, 0)
