"""The dashboard's figures: the service's counters and the upcoming-firings chart.

Scale: the chart never reads the whole plan table. It is index counts
capped per minute, plus the later firings of a bounded sample of the plans
due within the hour (recurring plans fire more than once in it).
"""

from __future__ import annotations

import asyncio
from typing import Any
from zoneinfo import ZoneInfo

from forsun_box import __version__
from forsun_box.actions import action_names
from forsun_box.api.console import text
from forsun_box.api.console.base import Console
from forsun_box.plan import DELAY, Plan
from forsun_box.stats import MinuteSeries

#: seconds the upcoming-firings chart is reused
UPCOMING_TTL_S = 10.0
#: the upcoming chart counts at most this many plans per minute
UPCOMING_CAP = 10_000
#: plans due within the hour whose later firings in it the chart adds
UPCOMING_SAMPLE = 2_000
#: most schedule steps spent on those later firings per chart (delay plans take none)
UPCOMING_STEPS = 20_000
UPCOMING_MINUTES = 60


async def upcoming(console: Console) -> dict[str, Any]:
    """The upcoming-firings chart: per minute of the next hour, the firings due (cached)."""
    service = console.service

    async def compute() -> dict[str, Any]:
        now = console.now_ms()
        start = now - now % 60_000
        end = start + UPCOMING_MINUTES * 60_000
        starts, counts = [], []
        for i in range(UPCOMING_MINUTES):
            a = start + i * 60_000
            lo = max(a, now)
            starts.append(a)
            counts.append(await service.count_firing_between(lo, a + 60_000, UPCOMING_CAP))
        due = await service.firing_between(now, end, UPCOMING_SAMPLE + 1)
        # pure computation over the whole sample: off the event loop, which goes on
        # firing meanwhile (its cost: bench/console_upcoming.py)
        later, complete = await asyncio.to_thread(
            later_firings, due[:UPCOMING_SAMPLE], start, end, console.tz
        )
        return {
            "start_ms": starts,
            "count": [c + n for c, n in zip(counts, later, strict=True)],
            "cap": UPCOMING_CAP,
            "partial": not complete or len(due) > UPCOMING_SAMPLE,
        }

    return dict(await console.cached("upcoming", UPCOMING_TTL_S, compute))


async def snapshot(console: Console) -> dict[str, Any]:
    """Everything the dashboard shows, as JSON-able values."""
    service = console.service
    now = console.now_ms()
    proc = console.process
    with proc.oneshot():
        cpu = proc.cpu_percent(interval=None)
        rss = proc.memory_info().rss
    size = await service.store_size()
    minutes = service.stats.minutes if service.stats is not None else MinuteSeries()
    series = minutes.series(now)
    hour = minutes.percentiles(now)
    last = len(series["fired"]) - 1
    facts = service.info_facts
    return {
        "version": __version__,
        "now_ms": now,
        "now": text.local_time(now, console.tz),
        "uptime_s": (now - console.started_ms) // 1000,
        "uptime": text.duration(max(0, now - console.started_ms) // 1000 * 1000, parts=2),
        "store": facts.store_name,
        "store_size": size,
        "store_size_text": text.human_bytes(size),
        "pending": await console.plan_count(),
        "window": service.window_size(),
        "inflight": service.inflight_count(),
        "cpu_percent": round(cpu, 1),
        "rss": rss,
        "rss_text": text.human_bytes(rss),
        "fired_last_minute": series["fired"][last] + series["fired"][last - 1],
        "failed_hour": sum(series["failed"]),
        "fired_hour": hour["count"],
        "lateness_p50": hour["p50"],
        "lateness_p99": hour["p99"],
        "series": series,
        "upcoming": await upcoming(console),
        "actions": sorted(action_names()),
        "extensions": sorted(facts.extensions()),
        "extension_errors": list(facts.extension_errors()),
        "timezone": getattr(console.tz, "key", str(console.tz)),
    }


def later_firings(
    plans: list[Plan], start: int, end: int, tz: ZoneInfo, budget: int = UPCOMING_STEPS
) -> tuple[list[int], bool]:
    """Per minute from ``start`` to ``end``: the firings of ``plans`` after their next one.

    Returns (counts, complete); complete is False when ``budget`` schedule
    steps ran out first. A delay plan's firings are counted arithmetically
    (they fall on a fixed grid), others are stepped through their schedule.
    """
    counts = [0] * ((end - start) // 60_000)
    steps = 0
    for plan in plans:
        first = plan.next_time
        if first is None or plan.paused:
            continue
        left = plan.count - plan.current_count - 1 if plan.count else -1
        if plan.kind == DELAY and plan.interval_ms > 0 and not plan.jitter_ms:
            every = plan.interval_ms
            stop = min(end, plan.end_ms) if plan.end_ms else end
            last = first + every * left if left >= 0 else stop
            for i in range(len(counts)):
                lo = max(start + i * 60_000, first + every)
                hi = min(start + (i + 1) * 60_000, stop, last + 1)
                if hi > lo:
                    # occurrences first + k * every, k >= 1, in [lo, hi)
                    counts[i] += -(-(hi - first) // every) - -(-(lo - first) // every)
            continue
        zone = ZoneInfo(plan.timezone) if plan.timezone else tz
        p = plan.copy()
        t: int | None = first
        while t is not None:
            if steps >= budget:
                return counts, False
            steps += 1
            p.current_count += 1
            t = p.next_after(t, zone)
            if t is None or t >= end:
                break
            counts[(t - start) // 60_000] += 1
    return counts, True
