"""The dispatcher on a fake clock: retries, run records, concurrency; and Stats."""

from __future__ import annotations

import asyncio

import pytest

from forsun_box.actions import ACTIONS, Action, ActionFailed, ActionSettings, register_action
from forsun_box.dispatcher import Dispatcher
from forsun_box.errors import RetryLater
from forsun_box.plan import Plan
from forsun_box.stats import COUNTER_NAMES, Stats
from forsun_box.testing import FakeClock

T0 = 1_700_000_000_000


@pytest.fixture(autouse=True)
def _clean_registry():
    saved_actions = dict(ACTIONS)
    saved_settings = Action.settings
    yield
    ACTIONS.clear()
    ACTIONS.update(saved_actions)
    Action.settings = saved_settings


class Harness:
    def __init__(self, **settings) -> None:
        self.clock = FakeClock(T0)
        self.runs = []
        self.statuses = []
        self.stats = Stats()
        self.dispatcher = Dispatcher(
            ActionSettings(**settings),
            self.clock,
            self.runs.append,
            lambda *a: self.statuses.append(a),
            self.stats,
        )

    def plan(self, action: str, key: str = "p1", version: int = 7, **params) -> Plan:
        return Plan(key=key, kind="at", action=action, params=params, version=version)


def test_retry_instants_runs_and_final_status():
    calls: list[int] = []

    class AlwaysFails(Action):
        async def execute(self):
            calls.append(h.clock.now_ms())
            raise ActionFailed("target down")

    register_action("failing", AlwaysFails)
    h = Harness(retry_max_count=3, retry_delay_seconds=2, retry_delay_rate=0.5)

    async def main():
        status = await h.dispatcher.run(h.plan("failing"), T0)
        assert status == -1
        assert [r.result for r in h.runs] == [2]
        assert h.dispatcher.pending_retries == 1
        # retry n waits 2 + 2 * 0.5 * (n - 1) s after the failed attempt
        await h.clock.advance(1999)
        assert len(calls) == 1
        await h.clock.advance(1)
        assert calls[-1] == T0 + 2000
        await h.clock.advance(2999)
        assert len(calls) == 2
        await h.clock.advance(1)
        assert calls[-1] == T0 + 5000
        assert h.statuses == []
        await h.clock.advance(4000)
        assert calls == [T0, T0 + 2000, T0 + 5000, T0 + 9000]
        await h.clock.advance(60_000)
        assert len(calls) == 4  # retries exhausted
        assert h.dispatcher.pending_retries == 0

    asyncio.run(main())
    assert [r.attempt for r in h.runs] == [1, 2, 3, 4]
    assert [r.result for r in h.runs] == [2, 2, 2, -1]
    assert all(r.error == "target down" and r.key == "p1" and r.due_ms == T0 for r in h.runs)
    assert [r.started_ms for r in h.runs] == calls
    assert all(r.action == "failing" for r in h.runs)
    assert h.statuses == [("p1", 7, -1)]
    s = h.stats
    assert (s.action_executed_count, s.action_executed_error_count, s.action_retried_count) == (
        4,
        4,
        3,
    )
    assert s.action_executing_count == 0


def test_retry_later_then_success_reports_ok():
    attempts: list[int] = []

    class Flaky(Action):
        async def execute(self):
            attempts.append(self.ts)
            if len(attempts) == 1:
                raise RetryLater("busy")

    register_action("flaky", Flaky)
    h = Harness(retry_max_count=5, retry_delay_seconds=3, retry_delay_rate=1)

    async def main():
        assert await h.dispatcher.run(h.plan("flaky"), T0) == -1
        await h.clock.advance(3000)
        await h.clock.advance(60_000)

    asyncio.run(main())
    assert attempts == [T0 // 1000, T0 // 1000]  # ts stays the firing's due second
    assert [(r.attempt, r.result) for r in h.runs] == [(1, 2), (2, 1)]
    assert "busy" in h.runs[0].error and h.runs[1].error == ""
    assert h.runs[1].started_ms == T0 + 3000
    assert h.statuses == [("p1", 7, 1)]
    assert h.stats.action_retried_count == 1
    assert h.stats.action_executed_error_count == 1


def test_no_retry_when_max_count_is_zero():
    class Fails(Action):
        async def execute(self):
            raise RetryLater()

    register_action("fails", Fails)
    h = Harness()

    async def main():
        assert await h.dispatcher.run(h.plan("fails"), T0) == -1
        assert h.clock.pending() == 0

    asyncio.run(main())
    assert [(r.attempt, r.result, r.error) for r in h.runs] == [(1, -1, "retry later")]
    assert h.statuses == []


def test_success_records_duration_and_lateness():
    class Works(Action):
        async def execute(self):
            await h.clock.sleep(0.25)

    register_action("works", Works)
    h = Harness(retry_max_count=2)

    async def main():
        await h.clock.advance(150)  # the firing starts 150 ms late
        task = asyncio.create_task(h.dispatcher.run(h.plan("works"), T0))
        await h.clock.advance(250)
        return await task

    assert asyncio.run(main()) == 1
    (run,) = h.runs
    assert (run.result, run.attempt, run.started_ms, run.duration_ms) == (1, 1, T0 + 150, 250)
    assert h.stats.lateness_percentiles()["max"] == 150
    assert h.statuses == []
    assert h.stats.action_executed_count == 1 and h.stats.action_executed_error_count == 0


def test_plain_function_execute_and_action_attributes():
    seen = []

    class Plain(Action):
        def execute(self, *args, **kwargs):
            seen.append((self.ts, self.plan.key, self.action, self.params))

    class ReturnsAwaitable(Action):
        def execute(self):
            async def later():
                seen.append("awaited")

            return later()

    register_action("plain", Plain)
    register_action("returns-awaitable", ReturnsAwaitable)
    h = Harness()

    async def main():
        a = await h.dispatcher.run(h.plan("plain", key="k", a="1"), T0 + 999)
        b = await h.dispatcher.run(h.plan("returns-awaitable"), T0)
        return a, b

    assert asyncio.run(main()) == (1, 1)
    assert seen == [(T0 // 1000, "k", "plain", {"a": "1"}), "awaited"]


def test_unexpected_exception_is_a_failure_with_its_type():
    class Broken(Action):
        async def execute(self):
            raise KeyError("oops")

    register_action("broken", Broken)
    h = Harness()
    assert asyncio.run(h.dispatcher.run(h.plan("broken"), T0)) == -1
    assert h.runs[0].error.startswith("KeyError")


def test_unknown_action_fails_without_retry():
    h = Harness(retry_max_count=3)

    async def main():
        status = await h.dispatcher.run(h.plan("no-such-action"), T0)
        await h.clock.advance(600_000)
        return status

    assert asyncio.run(main()) == -1
    assert [(r.result, r.error, r.action) for r in h.runs] == [
        (-1, "unknown action", "no-such-action")
    ]
    assert h.statuses == []
    assert h.stats.action_executed_error_count == 1


def test_alias_resolves_to_registered_action():
    ran = []

    class Fake(Action):
        async def execute(self):
            ran.append(self.action)

    register_action("shell", Fake)
    h = Harness()
    assert asyncio.run(h.dispatcher.run(h.plan("sh"), T0)) == 1
    assert ran == ["sh"]


def test_bounded_concurrency_queues_and_completes_everything():
    state = {"now": 0, "max": 0, "done": 0}

    class Slow(Action):
        async def execute(self):
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            try:
                await state["gate"].wait()
            finally:
                state["now"] -= 1
            state["done"] += 1

    class Other(Action):
        async def execute(self):
            state["other"] = True

    register_action("slow", Slow)
    register_action("other", Other)
    h = Harness(concurrency={"slow": 2})

    async def main():
        state["gate"] = asyncio.Event()
        tasks = [
            asyncio.create_task(h.dispatcher.run(h.plan("slow", key=f"k{i}"), T0))
            for i in range(10)
        ]
        for _ in range(50):
            await asyncio.sleep(0)
        assert state["now"] == 2
        assert h.dispatcher.active == 10
        assert h.stats.action_executing_count == 2
        # another action name has its own limit: not blocked by the slow ones
        assert await asyncio.wait_for(h.dispatcher.run(h.plan("other"), T0), 5) == 1
        state["gate"].set()
        return await asyncio.wait_for(asyncio.gather(*tasks), 5)

    assert asyncio.run(main()) == [1] * 10
    assert state["max"] == 2 and state["done"] == 10
    assert sorted(r.key for r in h.runs if r.action == "slow") == sorted(f"k{i}" for i in range(10))


def test_close_cancels_pending_retries():
    calls = []

    class Fails(Action):
        async def execute(self):
            calls.append(1)
            raise ActionFailed("no")

    register_action("fails", Fails)
    h = Harness(retry_max_count=3, retry_delay_seconds=1)

    async def main():
        await h.dispatcher.run(h.plan("fails"), T0)
        assert h.dispatcher.pending_retries == 1
        await h.dispatcher.close(timeout=1)
        assert h.dispatcher.pending_retries == 0
        await h.clock.advance(60_000)

    asyncio.run(main())
    assert len(calls) == 1
    assert h.statuses == []


def test_close_waits_for_running_attempts():
    class Slowish(Action):
        async def execute(self):
            await asyncio.sleep(0.05)  # an attempt that takes a while: the behaviour

    register_action("slowish", Slowish)
    h = Harness()

    async def main():
        task = asyncio.create_task(h.dispatcher.run(h.plan("slowish"), T0))
        await asyncio.sleep(0)
        await h.dispatcher.close(timeout=5)
        assert task.done()
        return task.result()

    assert asyncio.run(main()) == 1


def test_action_time_limit():
    class Hangs(Action):
        async def execute(self):
            await asyncio.Event().wait()

    register_action("hangs", Hangs)
    h = Harness(action_timeout_s=0.05)
    assert asyncio.run(h.dispatcher.run(h.plan("hangs"), T0)) == -1
    assert "timed out" in h.runs[0].error
    assert h.stats.action_executing_count == 0


def test_failing_callbacks_do_not_break_the_dispatcher():
    class Works(Action):
        async def execute(self):
            pass

    register_action("works", Works)
    h = Harness()

    def boom(run):
        raise RuntimeError("store is down")

    h.dispatcher._on_run = boom
    assert asyncio.run(h.dispatcher.run(h.plan("works"), T0)) == 1


# -- stats ----------------------------------------------------------------------


def test_stats_counters():
    s = Stats()
    assert set(COUNTER_NAMES) <= set(s.as_dict())
    assert all(v == 0 for v in s.as_dict().values())
    s.incr("created_count")
    s.incr("created_count", 4)
    s.incr("action_executing_count")
    s.decr("action_executing_count")
    s.set("plan_count", 42)
    s.incr("my_extension_count")
    assert s.created_count == 5
    assert s.as_dict()["plan_count"] == 42
    assert s.as_dict()["my_extension_count"] == 1
    assert s.action_executing_count == 0
    assert s.get("never_touched") == 0
    with pytest.raises(AttributeError):
        _ = s.no_such_counter


def test_stats_lateness_percentiles_over_a_bounded_ring():
    s = Stats(lateness_samples=100)
    assert s.lateness_percentiles() == {"count": 0, "p50": 0, "p99": 0, "max": 0, "max_ever": 0}
    s.record_lateness(5000)
    for ms in range(1, 101):  # pushes the 5000 sample out of the ring
        s.record_lateness(ms)
    s.record_lateness(-3)  # early counts as on time
    p = s.lateness_percentiles()
    assert p["count"] == 100
    assert p["p50"] == 50
    assert p["p99"] == 99
    assert p["max"] == 100
    assert p["max_ever"] == 5000


def test_start_firing_runs_plain_actions_inline():
    calls = []

    class Plain(Action):
        def execute(self):
            calls.append(self.plan.key)

    class PlainFails(Action):
        def execute(self):
            calls.append("fail")
            raise ActionFailed("no")

    class Coro(Action):
        async def execute(self):
            calls.append("coro")

    register_action("plain", Plain)
    register_action("plain-fails", PlainFails)
    register_action("coro", Coro)
    h = Harness(retry_max_count=1, retry_delay_seconds=1)

    async def main():
        await h.clock.set(T0 + 5)
        # A plain function finishes right here: a status, not an awaitable.
        assert h.dispatcher.start_firing(h.plan("plain", key="a"), T0) == 1
        assert calls == ["a"] and h.dispatcher.active == 0
        assert [(r.key, r.result, r.attempt, r.started_ms) for r in h.runs] == [("a", 1, 1, T0 + 5)]
        # A failure arms its retry as usual; the retry reports the final status.
        assert h.dispatcher.start_firing(h.plan("plain-fails", key="b"), T0) == -1
        assert h.runs[-1].result == 2 and h.dispatcher.pending_retries == 1
        await h.clock.advance(1000)
        assert calls[-1] == "fail" and h.runs[-1].result == -1
        assert h.statuses == [("b", 7, -1)]
        # Coroutine actions and unknown actions go the asynchronous way.
        pending = h.dispatcher.start_firing(h.plan("coro", key="c"), T0)
        assert not isinstance(pending, int) and "coro" not in calls
        assert await pending == 1 and calls[-1] == "coro"
        unknown = h.dispatcher.start_firing(h.plan("nope", key="d"), T0)
        assert await unknown == -1

    asyncio.run(main())
    s = h.stats
    assert s.action_executed_count == 5 and s.action_executed_error_count == 3
    assert s.action_executing_count == 0


def test_start_firing_waits_for_a_slot_when_the_action_is_busy():
    seen = []

    class ReturnsAwaitable(Action):
        def execute(self):
            async def later():
                seen.append(self.plan.key)
                await asyncio.sleep(0)

            return later()

    register_action("ra", ReturnsAwaitable)
    h = Harness(concurrency={"ra": 1})

    async def main():
        # execute() returned an awaitable: the rest runs in a slot, asynchronously.
        first = h.dispatcher.start_firing(h.plan("ra", key="x"), T0)
        second = h.dispatcher.start_firing(h.plan("ra", key="y"), T0)
        assert not isinstance(first, int) and not isinstance(second, int)
        assert await asyncio.gather(first, second) == [1, 1]

    asyncio.run(main())
    assert sorted(seen) == ["x", "y"]
    assert [r.result for r in h.runs] == [1, 1]


def test_manual_firings_and_their_retries_are_marked_manual():
    class FailsOnce(Action):
        calls = 0

        async def execute(self):
            FailsOnce.calls += 1
            if FailsOnce.calls == 1:
                raise ActionFailed("first try fails")

    register_action("fails-once", FailsOnce)
    h = Harness(retry_max_count=1, retry_delay_seconds=1)

    async def main():
        assert await h.dispatcher.run(h.plan("fails-once"), T0, manual=True) == -1
        await h.clock.advance(1000)  # the retry
        await h.dispatcher.run(h.plan("fails-once", key="p2"), T0 + 1000)  # a scheduled firing

    asyncio.run(main())
    assert [(r.key, r.attempt, r.result, r.manual) for r in h.runs] == [
        ("p1", 1, 2, True),
        ("p1", 2, 1, True),
        ("p2", 1, 1, False),
    ]
