"""The engine on a fake clock: exact firing instants, window refills, catch-up, races."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from forsun_box.errors import StoreError
from forsun_box.executor import CoroutineExecutor
from forsun_box.plan import CALENDAR, DELAY, Plan, build_plan
from forsun_box.scheduler import EngineOptions, Scheduler
from forsun_box.store.base import Batch
from forsun_box.store.memory import MemoryStore
from forsun_box.store.sqlite import SqliteStore
from forsun_box.testing import FakeClock

UTC = ZoneInfo("UTC")
T0 = 1_700_000_000_000


class Recorder:
    """An executor that records (key, due, clock time) and answers a status."""

    def __init__(self, clock: FakeClock, status: int = 1) -> None:
        self.clock = clock
        self.status = status
        self.calls: list[tuple[str, int, int]] = []
        self.block: asyncio.Event | None = None

    async def __call__(self, plan: Plan, due: int) -> int:
        self.calls.append((plan.key, due, self.clock.now_ms()))
        if self.block is not None:
            await self.block.wait()
        return self.status


def delay_plan(key: str, now: int, seconds: int, count: int = 1, action: str = "shell") -> Plan:
    return build_plan(
        key=key, kind=DELAY, now_ms=now, default_tz=UTC, second=seconds, count=count, action=action
    )


async def make(
    clock: FakeClock, store: MemoryStore | None = None, **opts
) -> tuple[Scheduler, Recorder, MemoryStore]:
    store = store or MemoryStore(path=None)
    await store.open()
    rec = Recorder(clock)
    sched = Scheduler(
        store, clock, UTC, options=EngineOptions(**opts), executor=CoroutineExecutor(rec)
    )
    await sched.start()
    return sched, rec, store


def run(coro):
    return asyncio.run(coro)


def test_fires_exactly_at_due_millisecond() -> None:
    async def main() -> None:
        clock = FakeClock(T0 + 123)
        sched, rec, store = await make(clock)
        await sched.create([delay_plan("a", clock.now_ms(), 5)])
        await clock.advance(4999)
        assert rec.calls == []
        await clock.advance(1)
        assert rec.calls == [("a", T0 + 123 + 5000, T0 + 123 + 5000)]
        await sched.flush()
        assert await store.get("a") is None  # count 1: finished and removed
        await sched.stop()

    run(main())


def test_repeating_plan_fires_count_times_on_its_grid() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        sched, rec, store = await make(clock)
        await sched.create([delay_plan("r", T0, 2, count=3)])
        for _ in range(10):
            await clock.advance(1000)
            await sched.flush()
        assert [c[1] for c in rec.calls] == [T0 + 2000, T0 + 4000, T0 + 6000]
        assert await store.get("r") is None
        await sched.stop()

    run(main())


def test_status_count_and_last_timeout_are_kept() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        sched, rec, store = await make(clock)
        rec.status = -1
        await sched.create([delay_plan("s", T0, 1, count=0)])
        await clock.advance(1000)
        await sched.flush()
        p = await store.get("s")
        assert p is not None
        assert (p.current_count, p.last_timeout, p.status, p.next_time) == (
            1,
            T0 + 1000,
            -1,
            T0 + 2000,
        )
        await sched.stop()

    run(main())


def test_removed_plan_never_fires_and_replacement_fires_once() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        sched, rec, _ = await make(clock)
        await sched.create([delay_plan("x", T0, 5), delay_plan("y", T0, 5)])
        await sched.remove("x")
        await sched.create([delay_plan("y", T0, 7)])
        await clock.advance(10_000)
        assert rec.calls == [("y", T0 + 7000, T0 + 7000)]
        await sched.stop()

    run(main())


def test_far_plans_load_through_window_refills() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        sched, rec, _ = await make(clock, window_ms=10_000)
        await sched.create([delay_plan("far", T0, 3600), delay_plan("near", T0, 3)])
        assert sched.window_size() == 1  # only "near" is inside the window
        await clock.advance(3_600_000)
        assert [(k, d) for k, d, _ in rec.calls] == [("near", T0 + 3000), ("far", T0 + 3_600_000)]
        assert all(due == at for _, due, at in rec.calls)
        await sched.stop()

    run(main())


def test_many_plans_with_small_refill_limit_fire_once_each_in_order() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        store = MemoryStore(path=None)
        sched, rec, _ = await make(clock, store, window_ms=5_000, refill_limit=100, slice_size=50)
        plans = [delay_plan(f"m{i:05d}", T0, 1 + i % 20) for i in range(3000)]
        await sched.create(plans)
        assert sched.window_size() <= 3000
        await clock.advance(25_000)
        assert len(rec.calls) == 3000
        assert len({k for k, _, _ in rec.calls}) == 3000
        dues = [d for _, d, _ in rec.calls]
        assert dues == sorted(dues)
        await sched.stop()

    run(main())


def test_firing_in_slices_lets_other_work_in() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        sched, rec, _ = await make(clock, slice_size=100)
        await sched.create([delay_plan(f"s{i}", T0, 1) for i in range(1000)])
        marks: list[int] = []

        async def other() -> None:
            for _ in range(50):
                marks.append(len(rec.calls))
                await asyncio.sleep(0)

        task = asyncio.create_task(other())
        await clock.advance(1000)
        await task
        assert len(rec.calls) == 1000
        # the other task observed the firing at intermediate points
        assert any(0 < m < 1000 for m in marks)
        await sched.stop()

    run(main())


def test_a_lone_create_or_remove_commits_in_the_callers_turn() -> None:
    """Nothing else queued: the caller commits itself, no hand-over to the writer's
    task (a callback scheduled before the call has not run when it returns)."""

    async def main() -> None:
        clock = FakeClock(T0)
        sched, rec, store = await make(clock)
        loop = asyncio.get_running_loop()
        for key in ("a", "b"):
            await asyncio.sleep(0)  # a new turn of the loop
            ran: list[bool] = []
            loop.call_soon(ran.append, True)
            before = sched._writer.commits
            await sched.create([delay_plan(key, T0, 100)])
            assert ran == [] and sched._writer.commits == before + 1
            assert (await store.get(key)) is not None
        await asyncio.sleep(0)
        ran = []
        loop.call_soon(ran.append, True)
        await sched.remove("a")
        assert ran == [] and await store.get("a") is None
        # a failed commit reaches the caller, and nothing is left half-done
        await asyncio.sleep(0)
        real_apply = store.apply

        async def failing_apply(batch):  # type: ignore[no-untyped-def]
            raise StoreError("disk full")

        store.apply = failing_apply  # type: ignore[method-assign]
        with pytest.raises(StoreError):
            await sched.create([delay_plan("c", T0, 1)])
        with pytest.raises(StoreError):
            await sched.remove("b")
        store.apply = real_apply  # type: ignore[method-assign]
        assert await store.get("c") is None and sched._window.pending == {}
        # the refused plan never fires; the one whose remove failed still does
        await clock.advance(100_000)
        assert [c[0] for c in rec.calls] == ["b"]
        await sched.create([delay_plan("c", clock.now_ms(), 100)])
        assert await sched.count() == 1
        await sched.stop()

    run(main())


def test_a_cancelled_lone_commit_releases_its_key() -> None:
    """A stop cancels a caller whose commit runs in its own turn: its key is not
    left marked as in flight, and nothing of it enters the window."""

    async def main() -> None:
        clock = FakeClock(T0)
        sched, rec, store = await make(clock)
        real_apply = store.apply
        stuck = asyncio.Event()

        async def slow_apply(batch):  # type: ignore[no-untyped-def]
            await stuck.wait()

        store.apply = slow_apply  # type: ignore[method-assign]
        task = asyncio.create_task(sched.create([delay_plan("a", T0, 1)]))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        store.apply = real_apply  # type: ignore[method-assign]
        assert sched._window.pending == {} and "a" not in sched._window
        await sched.create([delay_plan("b", T0, 1)])
        await clock.advance(1000)
        assert [c[0] for c in rec.calls] == ["b"]
        await sched.stop()

    run(main())


def test_group_commit_shares_transactions() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        sched, _, store = await make(clock)
        before = sched._writer.commits
        await asyncio.gather(*(sched.create([delay_plan(f"g{i}", T0, 100)]) for i in range(200)))
        assert sched._writer.commits - before < 20
        assert await store.count() == 200
        await sched.stop()

    run(main())


def test_advance_waits_for_the_action_at_least_once() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        sched, rec, store = await make(clock)
        rec.block = asyncio.Event()
        await sched.create([delay_plan("slow", T0, 1, count=0)])
        await clock.advance(1000)
        assert len(rec.calls) == 1
        await sched.flush()
        p = await store.get("slow")
        # the action hasn't finished: a crash now must refire it at restart
        assert p is not None and p.next_time == T0 + 1000 and p.current_count == 0
        rec.block.set()
        await clock.advance(0)
        await sched.flush()
        p = await store.get("slow")
        assert p is not None and p.next_time == T0 + 2000 and p.current_count == 1
        await sched.stop()

    run(main())


def test_remove_while_firing_does_not_resurrect() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        sched, rec, store = await make(clock)
        rec.block = asyncio.Event()
        await sched.create([delay_plan("z", T0, 1, count=0)])
        await clock.advance(1000)
        await sched.remove("z")
        rec.block.set()
        await clock.advance(5000)
        await sched.flush()
        assert await store.get("z") is None
        assert len(rec.calls) == 1
        await sched.stop()

    run(main())


class HeldRecords(SqliteStore):
    """A sqlite store whose commits of firing records wait until ``go`` is set."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.go = asyncio.Event()
        self.go.set()
        self.waiting = asyncio.Event()

    async def apply(self, batch: Batch) -> None:
        if batch.advances and not self.go.is_set():
            self.waiting.set()
            await self.go.wait()
        await super().apply(batch)


def test_creates_commit_while_firing_records_wait_for_the_store(tmp_path: Path) -> None:
    """A burst's records commit for tens of ms; a create meanwhile is answered
    without waiting for them, and wins over the record of its key's firing."""

    async def main() -> None:
        clock = FakeClock(T0)
        store = HeldRecords(str(tmp_path / "s.db"))
        sched, rec, _ = await make(clock, store)  # type: ignore[arg-type]
        await sched.create([delay_plan("k", T0, 1, count=0)])  # every second
        store.go.clear()
        await clock.advance(1000)
        await asyncio.wait_for(store.waiting.wait(), 5)  # k's record holds the lock
        commits = sched._writer.commits
        # (a create that waited for the held record would never end: 30 s says so)
        await asyncio.wait_for(sched.create([delay_plan("k", clock.now_ms(), 10)]), 30)
        await asyncio.wait_for(sched.create([delay_plan("n", clock.now_ms(), 3)]), 30)
        assert not store.go.is_set() and sched._writer.commits == commits + 2
        replaced = await store.get("k")
        assert replaced is not None and replaced.count == 1
        store.go.set()
        await sched.flush()
        await clock.advance(10_000)
        await sched.flush()
        # the fired version never came back; the new one fired once, at its time
        fired = [(key, due - T0) for key, due, _ in rec.calls]
        assert fired == [("k", 1000), ("n", 4000), ("k", 11_000)]
        assert await store.get("k") is None and await store.get("n") is None
        await sched.stop()

    run(main())


async def _downtime(policy: str) -> tuple[Recorder, MemoryStore, FakeClock]:
    clock = FakeClock(T0)
    store = MemoryStore(path=None)
    sched, rec, _ = await make(clock, store)
    await sched.create(
        [
            delay_plan("every", T0, 1, count=0),
            build_plan(key="cal", kind=CALENDAR, now_ms=T0, default_tz=UTC, second=45),
        ]
    )
    await sched.stop()
    clock._now = T0 + 10_500  # down for 10.5 s: 'every' missed 10 firings
    sched2 = Scheduler(
        store, clock, UTC, options=EngineOptions(catchup=policy), executor=CoroutineExecutor(rec)
    )
    rec.calls.clear()
    await sched2.start()
    for _ in range(15):
        await clock.advance(0)
        await sched2.flush()
    await sched2.stop()
    return rec, store, clock


def test_catch_up_fire_once() -> None:
    async def main() -> None:
        rec, store, _ = await _downtime("fire_once")
        assert [k for k, _, _ in rec.calls] == ["every"]
        p = await store.get("every")
        assert p is not None and p.next_time == T0 + 11_000 and p.current_count == 1

    run(main())


def test_catch_up_fire_all() -> None:
    async def main() -> None:
        rec, store, _ = await _downtime("fire_all")
        assert [d for _, d, _ in rec.calls] == [T0 + 1000 * i for i in range(1, 11)]
        p = await store.get("every")
        assert p is not None and p.next_time == T0 + 11_000 and p.current_count == 10

    run(main())


def test_catch_up_skip() -> None:
    async def main() -> None:
        rec, store, _ = await _downtime("skip")
        assert rec.calls == []
        p = await store.get("every")
        assert p is not None and p.next_time == T0 + 11_000 and p.current_count == 0

    run(main())


def test_unknown_catchup_policy_is_refused() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="catchup must be one of fire_once, fire_all, skip"):
            Scheduler(
                MemoryStore(path=None), FakeClock(), UTC, options=EngineOptions(catchup="sometimes")
            )

    run(main())


def test_pause_resume_and_fire_now() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        sched, rec, store = await make(clock)
        await sched.create([delay_plan("p", T0, 1, count=0)])
        await clock.advance(1000)
        assert len(rec.calls) == 1
        await sched.flush()
        paused = await sched.pause("p")
        assert paused.paused
        await clock.advance(5000)
        assert len(rec.calls) == 1  # nothing while paused
        assert (await store.get("p")).paused  # type: ignore[union-attr]
        resumed = await sched.resume("p")
        assert not resumed.paused and resumed.next_time == T0 + 7000
        await clock.advance(1000)
        assert [d for _, d, _ in rec.calls] == [T0 + 1000, T0 + 7000]
        assert await sched.fire_now("p") == 1
        assert rec.calls[-1] == ("p", T0 + 7000, T0 + 7000)
        await sched.flush()
        p = await store.get("p")
        assert p is not None and p.current_count == 2  # fire_now doesn't count
        await sched.stop()

    run(main())


def test_plan_copy_keeps_every_field() -> None:
    import dataclasses

    names = [f.name for f in dataclasses.fields(Plan)]
    original = Plan(**{n: i for i, n in enumerate(names)})  # type: ignore[arg-type]
    copied = original.copy(status=-5)
    assert copied is not original
    assert [getattr(copied, n) for n in names] == [
        (-5 if n == "status" else i) for i, n in enumerate(names)
    ]


@pytest.fixture
def count_action() -> Iterator[list[tuple[str, int]]]:
    """A plain-function action ``count`` that appends (key, current count) to the list."""
    from forsun_box.actions import ACTIONS, Action, register_action

    fired: list[tuple[str, int]] = []

    class Count(Action):
        def execute(self) -> None:
            fired.append((self.plan.key, self.plan.current_count))

    saved = dict(ACTIONS)
    register_action("count", Count)
    try:
        yield fired
    finally:
        ACTIONS.clear()
        ACTIONS.update(saved)


def inline_scheduler(store: MemoryStore, clock: FakeClock, options: EngineOptions) -> Scheduler:
    """A scheduler whose executor is a dispatcher: plain actions fire inline."""
    from forsun_box.actions import ActionSettings
    from forsun_box.dispatcher import Dispatcher
    from forsun_box.stats import Stats

    stats = Stats()
    sched = Scheduler(store, clock, UTC, stats=stats, options=options)
    dispatcher = Dispatcher(ActionSettings(), clock, sched.record_run, sched.record_status, stats)
    sched.executor = dispatcher
    assert sched._start == dispatcher.start_firing  # the inline path is used
    return sched


def test_plain_actions_fire_inline_and_advances_commit_after_them(
    count_action: list[tuple[str, int]],
) -> None:
    fired = count_action

    async def main() -> None:
        clock = FakeClock(T0)
        store = MemoryStore(path=None)
        await store.open()
        # A long linger: only a flush (or a caller's mutation) commits firing records.
        sched = inline_scheduler(store, clock, EngineOptions(firing_commit_linger_ms=60_000))
        stats = sched.stats
        assert stats is not None
        await sched.start()
        plans = [
            build_plan(
                key=f"at{i}",
                kind="at",
                at_ms=T0 + 1000 + i,
                now_ms=T0,
                default_tz=UTC,
                action="count",
            )
            for i in range(3)
        ]
        plans.append(delay_plan("rep", T0, 1, count=3, action="count"))
        created = await asyncio.wait_for(sched.create(plans), 5)  # not held by the linger
        assert len(created) == 4
        await clock.advance(1002)
        assert sorted(fired) == [("at0", 0), ("at1", 0), ("at2", 0), ("rep", 0)]
        assert not sched._tasks or all(t.done() for t in sched._tasks)
        # At least once: the advances are not committed yet, the plans are still stored.
        assert (await store.get("at0")) is not None
        await sched.flush()
        assert [await store.get(f"at{i}") for i in range(3)] == [None, None, None]
        rep = await store.get("rep")
        assert rep is not None and rep.current_count == 1 and rep.next_time == T0 + 2000
        assert rep.status == 1  # the status of the inline first attempt
        assert [r.result for r in await store.runs("at1")] == [1]
        # The recurring plan went back into the window and fires on, each
        # firing once the previous one's advance committed.
        await clock.advance(1000)
        await sched.flush()
        await clock.advance(1000)
        assert [c for k, c in fired if k == "rep"] == [0, 1, 2]
        await sched.flush()
        assert await store.get("rep") is None
        assert stats.timeout_handling_count == stats.timeout_handled_count == 6
        await sched.stop()
        await store.close()

    run(main())


def test_a_burst_fired_here_commits_its_records_after_its_last_slice(
    count_action: list[tuple[str, int]],
) -> None:
    fired = count_action
    commits_at: list[int] = []  # how many had fired at each commit of firing records

    class Watched(MemoryStore):
        async def apply(self, batch: Batch) -> None:
            if batch.runs or batch.advances:
                commits_at.append(len(fired))
            await super().apply(batch)

    async def main() -> None:
        clock = FakeClock(T0)
        store = Watched(path=None)
        await store.open()
        # no linger: without the hold, records would commit between two slices
        options = EngineOptions(firing_commit_linger_ms=0, slice_size=100)
        sched = inline_scheduler(store, clock, options)
        await sched.start()
        n = 1000
        plans = [delay_plan(f"b{i}", T0, 1, action="count") for i in range(n)]
        await sched.create(plans)
        api_turns = 0

        async def api() -> None:  # other work gets its turns between the slices
            nonlocal api_turns
            while len(fired) < n:
                api_turns += 1 if 0 < len(fired) < n else 0
                await asyncio.sleep(0)

        task = asyncio.create_task(api())
        await clock.advance(1000)
        await asyncio.wait_for(task, 5)
        await sched.flush()
        assert len(fired) == n and api_turns > 0
        assert commits_at and all(at == n for at in commits_at), commits_at
        assert [await store.get(f"b{i}") for i in (0, n - 1)] == [None, None]
        await sched.stop()
        await store.close()

    run(main())


def test_catch_up_log_lines_read_as_times(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="forsun_box.scheduler")
    run(_downtime("fire_once"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("misfire")]
    # T0 + 1 s in the server's zone, with its name, not raw unix milliseconds
    due = datetime.fromtimestamp((T0 + 1000) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert lines == [f"misfire: firing every due at {due}.000 UTC (9.5 s late, fire_once)"]
    assert str(T0 + 1000) not in lines[0]


@pytest.mark.parametrize(("outage", "fired"), [(True, 1), (False, 10)])
def test_plans_a_cluster_node_could_not_fire_catch_up_from_when_it_can(
    outage: bool, fired: int
) -> None:
    """A plan whose partition no node could fire for 10.5 s (the gate refused it here;
    its lease was another node's, which died) fires under the catch-up policy once the
    partition is taken over, as after a downtime of the node itself; handed over
    (no outage), every occurrence fires."""

    async def main() -> None:
        clock = FakeClock(T0)
        sched, rec, store = await make(clock, catchup="fire_once")
        may_fire = False
        sched.gate = lambda plan: may_fire
        since = 0
        sched.catchup_since = lambda key: since
        await sched.create([delay_plan("every", T0, 1, count=0)])
        for _ in range(10):
            await clock.advance(1000)
            await sched.flush()
        await clock.advance(500)
        assert rec.calls == [] and sched.gated >= 1
        may_fire = True
        since = clock.now_ms() if outage else 0
        await sched.rescan(None)
        for _ in range(15):
            await clock.advance(0)
            await sched.flush()
        assert [d for _, d, _ in rec.calls] == [T0 + 1000 * i for i in range(1, fired + 1)]
        p = await store.get("every")
        assert p is not None and p.next_time == T0 + 11_000 and p.current_count == fired
        assert sched.caught_up == (1 if outage else 0)
        await sched.stop()

    run(main())
