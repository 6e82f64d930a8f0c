"""server_mode AGENT on the fake clock: plans are stored and served, never fired;
the same store under a firing engine fires them, once."""

from __future__ import annotations

import asyncio
from zoneinfo import ZoneInfo

from forsun_box.executor import CoroutineExecutor
from forsun_box.plan import DELAY, Plan, build_plan
from forsun_box.scheduler import EngineOptions, Scheduler
from forsun_box.stats import Stats
from forsun_box.store.memory import MemoryStore
from forsun_box.testing import FakeClock

UTC = ZoneInfo("UTC")
T0 = 1_700_000_000_000


def test_agent_never_fires_and_a_timer_on_its_store_fires_once() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        store = MemoryStore(path=None)
        await store.open()
        calls: list[tuple[str, int]] = []

        async def executor(plan: Plan, due: int) -> int:
            calls.append((plan.key, due))
            return 1

        stats = Stats()
        agent = Scheduler(
            store,
            clock,
            UTC,
            options=EngineOptions(fire=False),
            executor=CoroutineExecutor(executor),
            stats=stats,
        )
        await agent.start()
        plan = build_plan(key="a", kind=DELAY, now_ms=T0, default_tz=UTC, second=2, count=1)
        await agent.create([plan])
        for _ in range(20):
            await clock.advance(1000)
        await agent.flush()
        assert calls == [] and agent.window_size() == 0
        assert stats.timer_loop_count == 0
        assert (await agent.get("a")).current_count == 0  # stored, served
        await agent.stop()

        timer = Scheduler(
            store, clock, UTC, options=EngineOptions(), executor=CoroutineExecutor(executor)
        )
        await timer.start()
        for _ in range(10):
            await clock.advance(1000)
            await timer.flush()
        # due while no timer ran: caught up at start, once
        assert calls == [("a", T0 + 2000)]
        assert await store.get("a") is None
        await timer.stop()

    asyncio.run(main())
