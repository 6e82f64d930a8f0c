"""Per-plan jitter and misfire policies: bounds, the engine on a fake clock, storage."""

from __future__ import annotations

import asyncio
import sqlite3
from zoneinfo import ZoneInfo

import pytest

from forsun_box import errors
from forsun_box.executor import CoroutineExecutor
from forsun_box.plan import CRON, DELAY, Plan, build_plan
from forsun_box.scheduler import EngineOptions, Scheduler
from forsun_box.store.memory import MemoryStore
from forsun_box.store.sqlite import MIGRATIONS, SqliteStore
from forsun_box.testing import FakeClock

UTC = ZoneInfo("UTC")
T0 = 1_700_000_040_000  # a whole minute


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, plan: Plan, due: int) -> int:
        self.calls.append((plan.key, due))
        return 1


def every_second(key: str, **kw) -> Plan:
    return build_plan(key=key, kind=DELAY, now_ms=T0, default_tz=UTC, second=1, **kw)


def test_jitter_stays_within_bounds_is_stable_and_keeps_order() -> None:
    plan = build_plan(
        key="j", kind=CRON, cron="* * * * *", now_ms=T0, default_tz=UTC, jitter_ms=20_000
    )
    fires = []
    t = T0
    probe = plan.copy()
    for _ in range(200):
        nxt = probe.next_after(t, UTC)
        assert nxt is not None
        fires.append(nxt)
        t = nxt
    for i, f in enumerate(fires):
        nominal = T0 + 60_000 * (i + 1)
        assert nominal <= f <= nominal + 20_000
    assert len(set(f % 60_000 for f in fires)) > 50  # really spread
    again = build_plan(
        key="j", kind=CRON, cron="* * * * *", now_ms=T0, default_tz=UTC, jitter_ms=20_000
    )
    assert again.next_time == plan.next_time == fires[0]
    # another key spreads differently
    other = build_plan(
        key="k", kind=CRON, cron="* * * * *", now_ms=T0, default_tz=UTC, jitter_ms=20_000
    )
    assert [other.jitter_of(f - f % 60_000) for f in fires[:20]] != [f % 60_000 for f in fires[:20]]


def test_jitter_with_count_and_delay_bounds() -> None:
    plan = build_plan(
        key="d", kind=DELAY, now_ms=T0, default_tz=UTC, second=10, count=3, jitter_ms=4000
    )
    fires = []
    probe = plan.copy()
    nxt = probe.next_time
    while nxt is not None:
        fires.append(nxt)
        probe.current_count += 1
        nxt = probe.next_after(nxt, UTC)
    assert len(fires) == 3
    for k, f in enumerate(fires, 1):
        assert T0 + 10_000 * k <= f <= T0 + 10_000 * k + 4000
    for bad in ({"jitter_ms": 10_000}, {"jitter_ms": -1}, {"jitter_ms": 3_600_001}):
        with pytest.raises(errors.InvalidValue):
            build_plan(key="d", kind=DELAY, now_ms=T0, default_tz=UTC, second=10, **bad)
    with pytest.raises(errors.InvalidValue):
        every_second("m", misfire="sometimes")
    with pytest.raises(errors.InvalidValue):
        every_second("m", misfire="skip", grace_ms=-5)


async def _late_by(
    plan: Plan, late_to: int, catchup: str = "fire_once"
) -> tuple[Recorder, Plan | None]:
    """Start an engine, jump the clock to ``late_to`` without firing on the way, settle."""
    clock = FakeClock(T0)
    store = MemoryStore(path=None)
    await store.open()
    rec = Recorder()
    sched = Scheduler(
        store, clock, UTC, options=EngineOptions(catchup=catchup), executor=CoroutineExecutor(rec)
    )
    await sched.start()
    await sched.create([plan])
    clock._now = late_to  # the loop was busy: the timer for T0 + 1000 runs late
    for _ in range(10):
        await clock.advance(0)
        await sched.flush()
    stored = await store.get(plan.key)
    await sched.stop()
    return rec, stored


def test_misfire_skip_beyond_grace() -> None:
    rec, p = asyncio.run(_late_by(every_second("s", misfire="skip", grace_ms=500), T0 + 3500))
    assert rec.calls == []
    assert p is not None and p.next_time == T0 + 4000 and p.current_count == 0


def test_misfire_fire_once_beyond_grace() -> None:
    rec, p = asyncio.run(_late_by(every_second("o", misfire="fire_once", grace_ms=500), T0 + 3500))
    assert rec.calls == [("o", T0 + 1000)]
    assert p is not None and p.next_time == T0 + 4000 and p.current_count == 1


def test_misfire_fire_all_beyond_grace() -> None:
    rec, p = asyncio.run(_late_by(every_second("a", misfire="fire_all", grace_ms=500), T0 + 3500))
    assert rec.calls == [("a", T0 + 1000), ("a", T0 + 2000), ("a", T0 + 3000)]
    assert p is not None and p.next_time == T0 + 4000 and p.current_count == 3


def test_within_grace_fires_normally() -> None:
    rec, p = asyncio.run(_late_by(every_second("g", misfire="skip", grace_ms=500), T0 + 1400))
    assert rec.calls == [("g", T0 + 1000)]
    assert p is not None and p.next_time == T0 + 2000


def test_without_a_policy_a_late_running_engine_fires_every_occurrence() -> None:
    rec, _ = asyncio.run(_late_by(every_second("n"), T0 + 3500, catchup="skip"))
    assert [d for _, d in rec.calls] == [T0 + 1000, T0 + 2000, T0 + 3000]


def test_plan_policy_overrides_the_server_catch_up_after_downtime() -> None:
    async def main() -> Recorder:
        clock = FakeClock(T0)
        store = MemoryStore(path=None)
        await store.open()
        rec = Recorder()
        opts = EngineOptions(catchup="fire_all")
        sched = Scheduler(store, clock, UTC, options=opts, executor=CoroutineExecutor(rec))
        await sched.start()
        await sched.create([every_second("down", misfire="skip", grace_ms=0)])
        await sched.stop()
        clock._now = T0 + 5500
        sched2 = Scheduler(store, clock, UTC, options=opts, executor=CoroutineExecutor(rec))
        await sched2.start()
        for _ in range(10):
            await clock.advance(0)
            await sched2.flush()
        await sched2.stop()
        return rec

    assert asyncio.run(main()).calls == []


def test_new_fields_survive_every_store_and_the_sqlite_migration(tmp_path) -> None:
    plan = every_second("keep", misfire="fire_once", grace_ms=250, jitter_ms=300)

    async def round_trip(store) -> Plan | None:
        await store.open()
        from forsun_box.store.base import Batch

        await store.apply(Batch(ops={"keep": plan}))
        await store.close()
        await store.open()
        got = await store.get("keep")
        await store.close()
        return got

    for store in (
        SqliteStore(str(tmp_path / "a.db")),
        MemoryStore(path=str(tmp_path / "snap.mem")),
    ):
        got = asyncio.run(round_trip(store))
        assert got is not None
        assert (got.jitter_ms, got.misfire, got.grace_ms) == (300, "fire_once", 250)

    # A database written before the fields existed opens with their defaults.
    old = tmp_path / "old.db"
    con = sqlite3.connect(old)
    con.executescript(MIGRATIONS[0])
    con.execute(
        "INSERT INTO plans VALUES ('o', 'at', 'shell', '{}', -1, -1, -1, -1, -1, -1, "
        "0, '', 0, 4000000000000, '', 0, 4000000000000, 0, 0, 0, 0, 0, 7)"
    )
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()

    async def read_old() -> Plan | None:
        store = SqliteStore(str(old))
        await store.open()
        got = await store.get("o")
        await store.close()
        return got

    got = asyncio.run(read_old())
    assert got is not None and got.version == 7
    assert (got.jitter_ms, got.misfire, got.grace_ms) == (0, "", 0)
