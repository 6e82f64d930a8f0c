"""Cost of the dashboard's upcoming-firings chart: the later firings of a full sample.

``forsun_box.api.console.handlers.later_firings`` over the largest sample the chart
takes (UPCOMING_SAMPLE plans due within the hour): delay plans every 5 s
(counted on their grid) and cron plans every 7 s (stepped until the step
budget runs out). Best of ``--repeat`` runs.

Usage: .venv/bin/python bench/console_upcoming.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
from zoneinfo import ZoneInfo

from forsun_box.api.console.handlers import UPCOMING_SAMPLE, UPCOMING_STEPS, later_firings
from forsun_box.plan import Plan

T = 1_700_000_040_000
START = T - T % 60_000
END = START + 3_600_000


def best(plans: list[Plan], repeat: int) -> tuple[float, int, bool]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        counts, complete = later_firings(plans, START, END, ZoneInfo("Europe/Paris"))
        times.append(time.perf_counter() - t)
    return min(times), sum(counts), complete


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    delay = [
        Plan(f"d{i}", "delay", second=5, interval_ms=5000, anchor_ms=T, next_time=T + 5000)
        for i in range(UPCOMING_SAMPLE)
    ]
    cron = [
        Plan(f"c{i}", "cron", cron="*/7 * * * * *", next_time=START + 60_000)
        for i in range(UPCOMING_SAMPLE)
    ]
    for name, plans in (("delay every 5 s", delay), ("cron every 7 s", cron)):
        took, firings, complete = best(plans, args.repeat)
        print(
            f"{len(plans)} plans, {name}: {took * 1000:.1f} ms, {firings} later firings"
            f"{'' if complete else f' (step budget {UPCOMING_STEPS} used up)'}"
        )


if __name__ == "__main__":
    main()
