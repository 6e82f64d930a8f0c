"""The dashboard's upcoming-firings chart counts recurring plans' later firings too."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from forsun_box.api.console.handlers import later_firings
from forsun_box.plan import Plan

UTC = ZoneInfo("UTC")
T = 1_700_000_040_000  # 40 s into a minute
START = T - T % 60_000
END = START + 3_600_000


def brute(plan: Plan) -> list[int]:
    """Every firing after the next one, stepped through the schedule."""
    counts = [0] * 60
    p = plan.copy()
    t = plan.next_time
    while True:
        p.current_count += 1
        t = p.next_after(t, UTC)
        if t is None or t >= END:
            return counts
        counts[(t - START) // 60_000] += 1


def test_delay_plans_are_counted_on_their_grid() -> None:
    plans = [
        Plan("every5", "delay", second=5, interval_ms=5000, anchor_ms=T, next_time=T + 5000),
        Plan(
            "three", "delay", second=5, interval_ms=5000, anchor_ms=T, next_time=T + 5000, count=3
        ),
        Plan("hourly", "delay", hour=1, interval_ms=3_600_000, anchor_ms=T, next_time=T + 3000),
        Plan(
            "ends",
            "delay",
            second=7,
            interval_ms=7000,
            anchor_ms=T,
            next_time=T + 7000,
            end_ms=T + 600_000,
        ),
    ]
    for plan in plans:
        got, complete = later_firings([plan], START, END, UTC)
        assert complete and got == brute(plan), plan.key
    assert sum(later_firings(plans[:1], START, END, UTC)[0]) == 718
    assert sum(later_firings(plans[1:2], START, END, UTC)[0]) == 2  # 3 firings, 1 is the next


def test_calendar_and_cron_plans_are_stepped_and_bounded() -> None:
    cron = Plan("cron", "cron", cron="* * * * *", next_time=START + 60_000)
    got, complete = later_firings([cron], START, END, UTC)
    assert complete and got == brute(cron) and sum(got) == 58
    cal = Plan("cal", "calendar", second=30, next_time=START + 30_000)  # second 30 of each minute
    assert later_firings([cal], START, END, UTC)[0] == brute(cal)
    # out of budget: what was counted so far, marked incomplete
    got, complete = later_firings([cron], START, END, UTC, budget=10)
    assert not complete and sum(got) == 10


def test_paused_and_finished_plans_add_nothing() -> None:
    paused = Plan("p", "cron", cron="* * * * *", next_time=START + 60_000, paused=True)
    done = Plan("d", "cron", cron="* * * * *", next_time=None)
    assert later_firings([paused, done], START, END, UTC) == ([0] * 60, True)
