"""The console's words for schedules and times, its minute series and index counts."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from forsun_box.api.console import text
from forsun_box.api.console.plans import PREVIEW_COUNT, matches
from forsun_box.api.security import is_loopback
from forsun_box.plan import AT, CALENDAR, CRON, DELAY, build_plan
from forsun_box.stats import MinuteSeries
from forsun_box.store.base import Batch
from forsun_box.store.memory import MemoryStore
from forsun_box.store.sqlite import SqliteStore

UTC = ZoneInfo("UTC")
NOW = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC


def make(kind: str, **kw: object):
    return build_plan(key="k", kind=kind, now_ms=NOW, default_tz=UTC, **kw)  # type: ignore[arg-type]


def test_describe_delay() -> None:
    assert text.describe(make(DELAY, second=5, count=3)) == "every 5 s, 3 times"
    assert text.describe(make(DELAY, minute=30, hour=1)) == "every 1 h 30 min, no end"
    assert text.describe(make(DELAY, second=10, count=1)) == "once, 10 s after creation"


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ((0, 32, 16, -1, -1, -1), "daily at 16:32:00"),
        ((0, 0, 9, -1, -1, 1), "every Monday at 09:00:00"),
        ((0, 0, 0, 1, -1, -1), "monthly on day 1 at 00:00:00"),
        ((5, 4, 3, 2, 1, -1), "once, on Jan 2 at 03:04:05"),
        ((30, 15, -1, -1, -1, -1), "hourly at 15:30 past the hour"),
        ((7, -1, -1, -1, -1, -1), "every minute at second 7"),
        ((-1, -1, -1, -1, -1, -1), "every second"),
        ((-1, -1, 3, -1, -1, -1), "every second matching hour 3"),
    ],
)
def test_describe_calendar(fields: tuple[int, ...], words: str) -> None:
    assert text.describe_calendar(*fields) == words


def test_describe_cron_at_and_zone() -> None:
    assert text.describe(make(CRON, cron="*/5 * * * *")) == "cron */5 * * * *"
    at = make(AT, at_ms=NOW + 3_600_000)
    assert text.describe(at, UTC) == "once at 2023-11-14 23:13:20"
    paris = make(CALENDAR, second=0, minute=0, hour=8, timezone="Europe/Paris")
    assert text.describe(paris) == "daily at 08:00:00 (Europe/Paris)"


def test_relative_and_duration() -> None:
    assert text.relative(NOW + 180_000, NOW) == "in 3 min"
    assert text.relative(NOW - 12_000, NOW) == "12 s ago"
    assert text.relative(NOW + 400, NOW) == "now"
    assert text.relative(NOW + 2 * 86_400_000 + 3_600_000, NOW) == "in 2 d 1 h"
    assert text.duration(0) == "0 s"
    assert text.duration(3_600_000 + 5_000) == "1 h"  # no gap between units
    assert text.local_time(NOW, UTC) == "2023-11-14 22:13:20"


def test_mask_params() -> None:
    masked = text.mask_params(
        {
            "url": "http://x",
            "password": "p",
            "API_TOKEN": "t",
            "Authorization": "Bearer x",
            "client_secret": "s",
            "passwd": "q",
        }
    )
    assert masked["url"] == "http://x"
    assert {masked[k] for k in masked if k != "url"} == {text.MASK}


def test_upcoming_honours_count_end_and_a_finished_plan() -> None:
    plan = make(DELAY, second=5, count=3)
    assert plan.upcoming(PREVIEW_COUNT, UTC) == [NOW + 5000, NOW + 10000, NOW + 15000]
    assert plan.copy(end_ms=NOW + 10000).upcoming(PREVIEW_COUNT, UTC) == [NOW + 5000]
    assert plan.copy(next_time=None).upcoming(PREVIEW_COUNT, UTC) == []
    daily = make(CALENDAR, second=0, minute=32, hour=16)
    got = daily.upcoming(PREVIEW_COUNT, UTC)
    assert len(got) == 5 and all(b - a == 86_400_000 for a, b in itertools.pairwise(got))


def test_filters() -> None:
    plan = make(DELAY, second=5, action="shell")
    assert matches(plan, "", "", "")
    assert matches(plan, "shell", DELAY, "pending")
    assert not matches(plan, "http", "", "")
    assert not matches(plan, "", CALENDAR, "")
    assert not matches(plan, "", "", "failed")
    assert matches(plan.copy(paused=True), "", "", "paused")


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("10.1.2.3")
    # an IPv4 address in IPv6 form is what it maps to
    assert is_loopback("::ffff:127.0.0.1") and is_loopback("[::ffff:127.0.0.2]")
    assert not is_loopback("::ffff:10.1.2.3")


def run(started: int, due: int, attempt: int = 1, result: int = 1) -> SimpleNamespace:
    return SimpleNamespace(started_ms=started, due_ms=due, attempt=attempt, result=result)


def test_minute_series_buckets_the_last_hour() -> None:
    series = MinuteSeries()
    base = NOW - NOW % 60_000
    for i in range(100):
        series.record_run(run(base + i, base + i - (i % 10)))  # lateness 0..9 ms
    series.record_run(run(base + 5, base, attempt=1, result=-1))
    series.record_run(run(base + 6, base, attempt=2, result=1))  # a retry is no new firing
    series.record_run(run(base - 120_000, base - 120_000 - 50))
    out = series.series(base + 30_000)
    assert len(out["start_ms"]) == 60 and out["start_ms"][-1] == base
    assert out["fired"][-1] == 101 and out["failed"][-1] == 1
    assert out["fired"][-3] == 1 and out["p50"][-3] == 50
    assert out["p99"][-1] == 9
    hour = series.percentiles(base + 30_000)
    assert hour["count"] == 102 and hour["max"] == 50
    # an hour later the old minutes are gone from the series
    assert sum(series.series(base + 3_700_000)["fired"]) == 0


def test_minute_series_memory_is_bounded() -> None:
    series = MinuteSeries(keep=5)
    for m in range(20):
        series.record_run(run(m * 60_000, m * 60_000))
    assert len(series._buckets) == 5


@pytest.mark.parametrize("driver", ["mem", "sqlite"])
def test_count_firing_between(driver: str, tmp_path: Path) -> None:
    async def go() -> None:
        store = MemoryStore(None) if driver == "mem" else SqliteStore(str(tmp_path / "s.db"))
        await store.open()
        batch = Batch()
        for i in range(30):
            p = make(DELAY, second=1).copy(key=f"k{i:02d}", next_time=NOW + i * 1000)
            batch.ops[p.key] = p.copy(paused=True) if i == 3 else p
        await store.apply(batch)
        assert await store.count_firing_between(NOW, NOW + 10_000, 100) == 9  # k03 paused
        assert await store.count_firing_between(NOW, NOW + 10_000, 4) == 4  # capped
        assert await store.count_firing_between(NOW + 30_000, NOW + 90_000, 100) == 0
        await store.close()

    asyncio.run(go())
