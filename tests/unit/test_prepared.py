"""Firings prepared ahead (engine + dispatcher on a fake clock).

The engine hands the dispatcher the firings due within ``prepare_ahead_ms``; an
action that can prepare builds them then, and at the instant only starts them. What
fires must always be the plan as it stands at the instant: a plan replaced, moved or
removed after its preparation never fires stale.
"""

from __future__ import annotations

import asyncio
import itertools
from zoneinfo import ZoneInfo

import pytest

from forsun_box import turns
from forsun_box.actions import ACTIONS, Action, ActionFailed, ActionSettings, register_action
from forsun_box.actions.base import Done
from forsun_box.dispatcher import STALE_PREPARED_MS, Dispatcher
from forsun_box.plan import AT, DELAY, Plan, build_plan
from forsun_box.scheduler import (
    FIRE_CHUNK,
    PREPARE_CHUNK,
    TAKE_UP_LOOK_AT,
    TAKE_UP_LOOK_S,
    EngineOptions,
    Scheduler,
)
from forsun_box.stats import Stats
from forsun_box.store.base import Batch, Run
from forsun_box.store.memory import MemoryStore
from forsun_box.testing import FakeClock
from tests.helpers import wait_until_async

UTC = ZoneInfo("UTC")
T0 = 1_700_000_000_000


class _Log:  # one shared record, reset by each test
    prepared: list[tuple[str, str, int]] = []  # noqa: RUF012  # (key, param v, due) at each prepare
    started: list[tuple[str, str, int, int, str]] = []  # noqa: RUF012  # (key, v, due, clock, firing id)
    discarded: list[tuple[str, str]] = []  # noqa: RUF012
    armed: list[tuple[str, str, int]] = []  # noqa: RUF012  # (key, v, instant)
    disarmed: list[tuple[str, str, bool]] = []  # noqa: RUF012  # (key, v, it went out)
    executed: list[tuple[str, str]] = []  # noqa: RUF012  # firings that went through execute instead
    fail_with: str = ""


class _Ready:
    def __init__(self, action: Recording) -> None:
        self.action = action
        # what the firing will send is fixed here, ahead of the instant
        self.v = action.params.get("v", "")

    def start(self, done: Done) -> None:
        a = self.action
        _Log.started.append((a.plan.key, self.v, a.due_ms, a.clock_ms(), a.firing_id))
        error = ActionFailed(_Log.fail_with) if _Log.fail_with else None
        asyncio.get_running_loop().call_soon(done, error)

    def discard(self) -> None:
        _Log.discarded.append((self.action.plan.key, self.v))


class _Held(_Ready):
    """A preparation bounded where it is sent; it ends when the test says so."""

    bounded = True
    ends: list[Done] = []  # noqa: RUF012

    def start(self, done: Done) -> None:
        a = self.action
        _Log.started.append((a.plan.key, self.v, a.due_ms, a.clock_ms(), a.firing_id))
        _Held.ends.append(done)


class _Armable(_Ready):
    """Armed, it goes out by itself at its instant (``lead`` ms early: a firing process
    whose reading of the clock is ahead of the engine's), as the firing process does."""

    def __init__(self, action: Recording) -> None:
        super().__init__(action)
        self.out = False
        self.timer: object = None
        self.done: Done | None = None
        #: (started, ended) there, once its end came
        self.went_out: tuple[int, int] | None = None

    def arm(self, at_ms: int) -> None:
        a = self.action
        _Log.armed.append((a.plan.key, self.v, at_ms))
        assert Recording.clock is not None
        lead = int(a.params.get("lead", "0"))
        self.timer = Recording.clock.call_at(at_ms - lead, self._go)

    def _go(self) -> None:
        self.out = True
        a = self.action
        started = a.clock_ms()
        _Log.started.append((a.plan.key, self.v, a.due_ms, started, a.firing_id))
        assert Recording.clock is not None
        # its end comes ``takes`` ms later
        takes = int(a.params.get("takes", "0"))
        Recording.clock.call_at(started + takes, lambda: self._end(started, started + takes))

    def _end(self, started: int, ended: int) -> None:
        self.went_out = (started, ended)
        if self.done is not None:
            asyncio.get_running_loop().call_soon(self.done, None)

    def ended(self) -> bool:
        return self.went_out is not None

    #: what the firing process says while it holds ends (the test moves it)
    said = 0

    def progress(self) -> int:
        return _Armable.said

    def disarm(self) -> asyncio.Future[bool]:
        self.timer.cancel()  # type: ignore[attr-defined]
        answer = asyncio.get_running_loop().create_future()
        answer.set_result(self.out)
        _Log.disarmed.append((self.action.plan.key, self.v, self.out))
        self.timer = None
        return answer

    def start(self, done: Done) -> None:
        if self.went_out is not None:  # it went out and ended: only its end is learnt
            asyncio.get_running_loop().call_soon(done, None)
        elif self.out or self.timer is not None:  # it went out or goes out by itself:
            self.done = done  # its end is learnt when it comes (a start sends nothing)
        else:
            super().start(done)

    def discard(self) -> None:
        if self.timer is not None:
            self.timer.cancel()  # type: ignore[attr-defined]
        super().discard()


class Recording(Action):
    clock: FakeClock | None = None

    def clock_ms(self) -> int:
        assert Recording.clock is not None
        return Recording.clock.now_ms()

    def prepare(self) -> _Ready:
        if self.params.get("bad"):
            raise ActionFailed("bad params")
        _Log.prepared.append((self.plan.key, self.params.get("v", ""), self.due_ms))
        if self.params.get("held"):
            return _Held(self)
        return _Armable(self) if self.params.get("armable") else _Ready(self)

    async def execute(self, *args: object, **kwargs: object) -> None:
        _Log.executed.append((self.plan.key, self.params.get("v", "")))
        if self.params.get("bad"):
            raise ActionFailed("bad params")


@pytest.fixture(autouse=True)
def _registry():
    saved, saved_settings = dict(ACTIONS), Action.settings
    register_action("rec", Recording)
    _Log.prepared, _Log.started, _Log.discarded, _Log.executed = [], [], [], []
    _Log.armed, _Log.disarmed = [], []
    _Log.fail_with = ""
    _Held.ends = []
    yield
    ACTIONS.clear()
    ACTIONS.update(saved)
    Action.settings = saved_settings


class Engine:
    def __init__(self, clock: FakeClock, arming: bool = False, **settings: object) -> None:
        self.clock = clock
        Recording.clock = clock
        self.runs: list[Run] = []
        self.store = MemoryStore(path=None)
        self.stats = Stats()
        self.dispatcher = Dispatcher(
            ActionSettings(**settings),  # type: ignore[arg-type]
            clock,
            self._on_run,
            lambda *a: None,
            self.stats,
        )
        self.dispatcher.arming = arming
        self.sched = Scheduler(
            self.store,
            clock,
            UTC,
            options=EngineOptions(prepare_ahead_ms=1000),
            executor=self.dispatcher,
        )

    def _on_run(self, run: Run) -> None:
        self.runs.append(run)
        self.sched.record_run(run)

    async def start(self) -> None:
        await self.store.open()
        await self.sched.start()

    async def run_for(self, ms: int, step_ms: int) -> None:
        """Advance the clock ``ms`` in steps, each firing's records committed between."""
        for _ in range(ms // step_ms):
            await self.clock.advance(step_ms)
            for _ in range(5):
                await asyncio.sleep(0)
            await self.sched.flush()

    async def stop(self) -> None:
        await self.sched.stop()
        await self.dispatcher.close()

    def plan(self, key: str, at_ms: int, misfire: str = "", **params: str) -> Plan:
        return build_plan(
            key=key,
            kind=AT,
            at_ms=at_ms,
            now_ms=self.clock.now_ms(),
            default_tz=UTC,
            action="rec",
            params=params,
            misfire=misfire,
        )


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_prepared_ahead_then_only_started_at_the_instant() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        e = Engine(clock)
        await e.start()
        due = T0 + 5000
        await e.sched.create([e.plan("a", due, v="1"), e.plan("b", due, v="2")])
        await clock.advance(3900)
        assert _Log.prepared == []  # not within the lead yet
        await clock.advance(200)  # 900 ms before the instant
        assert sorted(_Log.prepared) == [("a", "1", due), ("b", "2", due)]
        assert e.dispatcher.prepared_count == 2
        assert _Log.started == []
        await clock.advance(899)
        assert _Log.started == []
        await clock.advance(1)
        assert sorted(_Log.started) == [
            ("a", "1", due, due, f"0:{due}:a"),
            ("b", "2", due, due, f"0:{due}:b"),
        ]
        assert len(_Log.prepared) == 2  # nothing built again at the instant
        assert _Log.executed == []
        assert e.dispatcher.prepared_count == 0
        await e.sched.flush()
        assert sorted(r.key for r in e.runs) == ["a", "b"]
        assert all(r.result == 1 and r.due_ms == due for r in e.runs)
        assert await e.store.get("a") is None  # one-shot: done and gone
        await e.stop()

    run(main())


def test_a_plan_replaced_after_preparation_fires_as_replaced() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        e = Engine(clock)
        await e.start()
        due = T0 + 5000
        await e.sched.create([e.plan("a", due, v="old")])
        await clock.advance(4500)
        assert _Log.prepared == [("a", "old", due)]
        await e.sched.create([e.plan("a", due, v="new")])  # same instant, new params
        await clock.advance(500)
        assert [(k, v) for k, v, *_ in _Log.started] == [("a", "new")]
        assert ("a", "old") in _Log.discarded
        await e.stop()

    run(main())


def test_a_plan_moved_after_preparation_fires_at_its_new_instant_only() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        e = Engine(clock)
        await e.start()
        due = T0 + 5000
        await e.sched.create([e.plan("a", due, v="1")])
        await clock.advance(4500)
        assert e.dispatcher.prepared_count == 1
        later = T0 + 8000
        await e.sched.create([e.plan("a", later, v="2")])
        await clock.advance(1000)  # past the old instant
        assert _Log.started == []
        await clock.advance(2500)
        assert [(k, v, d, at) for k, v, d, at, _ in _Log.started] == [("a", "2", later, later)]
        await e.stop()

    run(main())


def test_a_plan_removed_after_preparation_never_fires_and_is_dropped() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        e = Engine(clock)
        await e.start()
        due = T0 + 5000
        await e.sched.create([e.plan("gone", due, v="1")])
        await clock.advance(4500)
        assert e.dispatcher.prepared_count == 1
        await e.sched.remove("gone")
        await clock.advance(5000)
        assert _Log.started == [] and _Log.executed == []
        assert e.runs == []
        # the next walk after it went stale drops it
        other = clock.now_ms() + STALE_PREPARED_MS + 3000
        await e.sched.create([e.plan("other", other, v="x")])
        await clock.advance(STALE_PREPARED_MS + 2500)
        assert ("gone", "1") in _Log.discarded
        assert e.dispatcher.prepared_count == 1  # only "other" now
        await clock.advance(1000)
        assert [k for k, *_ in _Log.started] == ["other"]
        await e.stop()

    run(main())


def test_created_inside_the_lead_is_prepared_at_once() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        e = Engine(clock)
        await e.start()
        await e.sched.create([e.plan("early", T0 + 3000, v="1")])
        await clock.advance(2500)  # a walk ran: the lead is covered up to T0 + 3500
        await e.sched.create([e.plan("late", T0 + 3200, v="2")])
        assert ("late", "2", T0 + 3200) in _Log.prepared
        await clock.advance(1000)
        assert sorted((k, at) for k, _, _, at, _ in _Log.started) == [
            ("early", T0 + 3000),
            ("late", T0 + 3200),
        ]
        assert _Log.executed == []
        await e.stop()

    run(main())


def test_bad_params_are_not_prepared_and_fail_at_the_instant() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        e = Engine(clock)
        await e.start()
        due = T0 + 2000
        await e.sched.create([e.plan("bad", due, bad="1")])
        await clock.advance(2000)
        await e.sched.flush()
        assert _Log.prepared == [] and _Log.started == []
        assert _Log.executed == [("bad", "")]
        assert [(r.key, r.result, r.error) for r in e.runs] == [("bad", -1, "bad params")]
        await e.stop()

    run(main())


def test_prepared_firings_wait_for_a_slot_in_order_and_failures_are_recorded() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        e = Engine(clock, default_concurrency=2)
        await e.start()
        due = T0 + 2000
        _Log.fail_with = "target said no"
        await e.sched.create([e.plan(f"p{i}", due, v=str(i)) for i in range(5)])
        await clock.advance(2000)
        for _ in range(20):
            await asyncio.sleep(0)
        await e.sched.flush()
        assert len(_Log.started) == 5
        assert e.stats.get("action_executed_error_count") == 5
        assert sorted((r.key, r.result, r.error) for r in e.runs) == [
            (f"p{i}", -1, "target said no") for i in range(5)
        ]
        await e.stop()

    run(main())


def test_bounded_preparations_start_at_once_and_hold_no_slot() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        e = Engine(clock, default_concurrency=1)
        await e.start()
        due = T0 + 2000
        await e.sched.create([e.plan(f"h{i}", due, v=str(i), held="1") for i in range(3)])
        await clock.advance(2000)
        for _ in range(5):
            await asyncio.sleep(0)
        # one slot, none ended: all three started anyway (the sender bounds them)
        assert sorted(k for k, *_ in _Log.started) == ["h0", "h1", "h2"]
        assert e.stats.get("action_executing_count") == 3
        for done in _Held.ends:
            asyncio.get_running_loop().call_soon(done, None)
        for _ in range(20):
            await asyncio.sleep(0)
        await e.sched.flush()
        assert sorted((r.key, r.result) for r in e.runs) == [("h0", 1), ("h1", 1), ("h2", 1)]
        assert e.stats.get("action_executing_count") == 0
        await e.stop()

    run(main())


def test_retries_carry_the_same_firing_id() -> None:
    ids: list[str] = []

    class Flaky(Action):
        async def execute(self, *args: object, **kwargs: object) -> None:
            ids.append(self.firing_id)
            if len(ids) < 3:
                raise ActionFailed("not yet")

    register_action("flaky", Flaky)

    async def main() -> None:
        clock = FakeClock(T0)
        runs: list[Run] = []
        d = Dispatcher(
            ActionSettings(retry_max_count=3, retry_delay_seconds=1, firing_epoch="7"),
            clock,
            runs.append,
            lambda *a: None,
            Stats(),
        )
        plan = Plan(key="order:42", kind="at", action="flaky", params={}, version=1)
        assert await d.run(plan, T0 + 250) == -1
        for _ in range(4):  # retry 1 after 1 s, retry 2 after 2 s more
            await clock.advance(1000)
        assert ids == ["7:1700000000250:order:42"] * 3
        assert [r.result for r in runs] == [2, 2, 1]
        await d.close()

    run(main())


def test_the_walk_hands_over_exactly_the_firings_within_the_lead() -> None:
    import random

    async def main() -> None:
        clock = FakeClock(T0)
        e = Engine(clock)
        await e.start()
        rng = random.Random(5)
        dues = {f"k{i}": T0 + 2000 + rng.randrange(0, 6000) for i in range(300)}
        await e.sched.create([e.plan(k, d, v=k) for k, d in dues.items()])
        await clock.advance(1500)  # the first walk covers up to T0 + 2500 at the latest
        for step in range(12):
            await clock.advance(500)
            now = clock.now_ms()
            prepared = {k for k, _, _ in _Log.prepared}
            # everything due within the lead is prepared (or fired), nothing far beyond it
            assert {k for k, d in dues.items() if d <= now + 500} <= prepared, step
            assert all(d <= now + 1000 for k, d in dues.items() if k in prepared), step
        await clock.advance(1000)  # past the last instant (T0 + 8000)
        assert sorted(k for k, *_ in _Log.started) == sorted(dues)
        assert all(due == at for _, _, due, at, _ in _Log.started)
        assert len(_Log.prepared) == 300 and _Log.executed == []
        await e.stop()

    run(main())


def test_a_bursts_work_lets_the_loop_turn_once_it_held_it_a_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Preparing, starting and settling a burst each stop once a turn's budget is spent
    (here: at once), so what else waits on the loop (an API request) gets in between."""
    seconds = itertools.count()  # a second passes at every look at the clock
    monkeypatch.setattr(turns, "clock", lambda: float(next(seconds)))
    n = 200

    async def main() -> list[tuple[int, int, int]]:
        clock = FakeClock(T0)
        e = Engine(clock)
        await e.start()
        due = T0 + 2000
        await e.sched.create([e.plan(f"b{i}", due, v=str(i)) for i in range(n)])
        seen: list[tuple[int, int, int]] = []  # (prepared, started, settled) at each turn

        async def watch() -> None:
            while len(e.runs) < n:
                seen.append((len(_Log.prepared), len(_Log.started), len(e.runs)))
                await asyncio.sleep(0)
            seen.append((len(_Log.prepared), len(_Log.started), len(e.runs)))

        watcher = asyncio.ensure_future(watch())
        await clock.advance(2000)
        await asyncio.wait_for(watcher, 10)
        await e.stop()
        return seen

    seen = asyncio.run(main())
    assert seen[-1] == (n, n, n)
    steps = [tuple(b - a for a, b in zip(x, y, strict=True)) for x, y in itertools.pairwise(seen)]
    assert max(s[0] for s in steps) <= PREPARE_CHUNK
    assert max(s[1] for s in steps) <= FIRE_CHUNK
    assert max(s[2] for s in steps) == 1


def test_armed_firings_go_out_by_themselves_and_the_engine_learns_their_end() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        e = Engine(clock, arming=True)
        await e.start()
        due = T0 + 5000
        await e.sched.create([e.plan(k, due, v=k, armable="1") for k in ("a", "b")])
        await clock.advance(4500)
        assert sorted(_Log.armed) == [("a", "a", due), ("b", "b", due)]
        await clock.advance(500)
        for _ in range(5):
            await asyncio.sleep(0)
        # each went out once, at its instant, and nothing was sent again at the start
        assert sorted((k, at) for k, _, _, at, _ in _Log.started) == [("a", due), ("b", due)]
        await e.sched.flush()
        assert sorted((r.key, r.result) for r in e.runs) == [("a", 1), ("b", 1)]
        assert await e.store.get("a") is None
        await e.stop()

    run(main())


def test_a_plan_removed_or_replaced_before_its_instant_never_goes_out_armed() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        e = Engine(clock, arming=True)
        await e.start()
        due = T0 + 5000
        await e.sched.create([e.plan(k, due, v="old", armable="1") for k in ("gone", "moved")])
        await clock.advance(4500)
        assert len(_Log.armed) == 2
        await e.sched.remove("gone")
        await e.sched.create([e.plan("moved", due + 2000, v="new", armable="1")])
        assert sorted(_Log.disarmed) == [("gone", "old", False), ("moved", "old", False)]
        await clock.advance(3000)
        for _ in range(5):
            await asyncio.sleep(0)
        assert [(k, v, at) for k, v, _, at, _ in _Log.started] == [("moved", "new", due + 2000)]
        await e.sched.flush()
        assert [(r.key, r.due_ms) for r in e.runs] == [("moved", due + 2000)]
        await e.stop()

    run(main())


def test_a_plan_changed_as_its_armed_firing_went_out_is_fired_and_recorded_once() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        e = Engine(clock, arming=True)
        await e.start()
        due = T0 + 5000
        # its firing process goes 50 ms ahead of the engine's instant
        await e.sched.create([e.plan(k, due, v="old", armable="1", lead="50") for k in "ab"])
        await clock.advance(4960)
        assert len(_Log.started) == 2  # out, and the engine's instant not come yet
        await e.sched.create([e.plan("a", due + 1000, v="new", armable="1")])
        await e.sched.remove("b")
        assert sorted(_Log.disarmed) == [("a", "old", True), ("b", "old", True)]
        await clock.advance(2000)
        for _ in range(5):
            await asyncio.sleep(0)
        sent = sorted((k, v, at) for k, v, _, at, _ in _Log.started)
        assert sent == [("a", "new", due + 1000), ("a", "old", due - 50), ("b", "old", due - 50)]
        await e.sched.flush()
        # what went out is recorded, once; the changes stand
        runs = sorted((r.key, r.due_ms, r.result) for r in e.runs)
        assert runs == [("a", due, 1), ("a", due + 1000, 1), ("b", due, 1)]
        assert await e.store.get("a") is None and await e.store.get("b") is None
        await e.stop()

    run(main())


def test_a_stop_drops_what_is_armed_and_a_misfire_policy_is_never_armed() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        e = Engine(clock, arming=True)
        await e.start()
        due = T0 + 5000
        await e.sched.create(
            [
                e.plan("armed", due, v="1", armable="1"),
                e.plan("own-policy", due, misfire="skip", v="2", armable="1"),
            ]
        )
        await clock.advance(4500)
        assert [k for k, *_ in _Log.armed] == ["armed"]  # the other waits for the engine
        assert e.dispatcher.prepared_count == 2
        await e.stop()
        assert ("armed", "1") in _Log.discarded
        await clock.advance(1000)
        assert _Log.started == []

    run(main())


async def _burst(takes: int, step: int = 0, n: int = 0) -> tuple[FakeClock, Engine, int, int]:
    """An engine with a burst of ``n`` (default: the least that is one) armed firings due
    in 5 s, the i-th ending ``takes + i * step`` ms after it went out."""
    clock = FakeClock(T0)
    e = Engine(clock, arming=True)
    await e.start()
    due = T0 + 5000
    n = n or e.sched.options.take_up_from
    await e.sched.create(
        [e.plan(f"k{i}", due, armable="1", takes=str(takes + i * step)) for i in range(n)]
    )
    return clock, e, due, n


def test_a_bursts_armed_firings_are_taken_up_once_their_ends_are_in() -> None:
    async def main() -> None:
        clock, e, due, n = await _burst(takes=60)
        await clock.advance(5000)
        assert len(_Log.started) == n  # all out at the instant, by themselves
        await clock.advance(50)
        # their ends are not in: the engine has not taken them up yet, nor taken them
        # from the window (set aside there ahead of the instant)
        assert e.dispatcher.prepared_count == n and e.sched.inflight_count() == 0
        assert e.sched.window_size() == n
        assert e.stats.get("timeout_handling_count") == 0
        await clock.advance(10 + int(TAKE_UP_LOOK_S * 1000))
        for _ in range(5):
            await asyncio.sleep(0)
        assert e.dispatcher.prepared_count == 0
        await e.sched.flush()
        # recorded as they went out there: started at the instant, 100 ms long
        assert sorted({(r.started_ms, r.duration_ms, r.result) for r in e.runs}) == [(due, 60, 1)]
        assert len(e.runs) == n
        assert e.sched.inflight_count() == 0
        await e.stop()

    run(main())


def test_a_big_burst_whose_ends_came_together_is_taken_up_at_the_next_look() -> None:
    async def main() -> None:
        n = 3 * TAKE_UP_LOOK_AT + 10
        clock, e, _, _ = await _burst(takes=60, n=n)
        await clock.advance(5060 + int(TAKE_UP_LOOK_S * 1000))
        for _ in range(5):
            await asyncio.sleep(0)
        assert e.dispatcher.prepared_count < n  # taken up from that look on
        await clock.advance(10)
        assert e.dispatcher.prepared_count == 0
        # more than the action's slots: their records are settled at the dispatcher's
        # backlog pace (on the loop's own clock) while the rest wait for a slot
        assert await wait_until_async(lambda: len(e.runs) == n, 10)
        await e.sched.flush()
        await e.stop()

    run(main())


def test_a_bursts_armed_firings_are_taken_up_once_their_ends_stop_coming() -> None:
    async def main() -> None:
        clock, e, due, n = await _burst(takes=3000)
        idle = e.sched.options.take_up_idle_ms
        await clock.advance(5000 + idle - 20)
        assert e.dispatcher.prepared_count == n  # still out there, ends not in
        await clock.advance(20 + int(TAKE_UP_LOOK_S * 1000))
        for _ in range(5):
            await asyncio.sleep(0)
        assert e.dispatcher.prepared_count == 0  # taken up: they wait for their ends here
        assert e.runs == []
        await clock.advance(3000)
        for _ in range(5):
            await asyncio.sleep(0)
        await e.sched.flush()
        assert len(e.runs) == n and {(r.started_ms, r.duration_ms) for r in e.runs} == {(due, 3000)}
        assert len(_Log.started) == n  # none went out twice
        await e.stop()

    run(main())


def test_a_look_the_loop_came_to_late_still_sees_the_ends_that_came_meanwhile() -> None:
    async def main() -> None:
        # ends every 10 ms from +60 to +690; each look comes 150 ms late (a busy loop)
        clock, e, _, n = await _burst(takes=60, step=10)
        on_time = clock.sleep

        async def late(seconds: float) -> None:
            await on_time(seconds + 0.15)

        clock.sleep = late  # type: ignore[method-assign]
        idle = e.sched.options.take_up_idle_ms
        assert idle < TAKE_UP_LOOK_S * 1000 + 150  # each wait is longer than the idle bound
        await clock.advance(5000 + 600)
        for _ in range(5):
            await asyncio.sleep(0)
        # ends kept coming between the looks: the burst is not taken up while it goes on
        assert e.dispatcher.prepared_count == n and e.runs == []
        await clock.advance(300)
        for _ in range(5):
            await asyncio.sleep(0)
        await e.sched.flush()
        assert e.dispatcher.prepared_count == 0
        assert sorted(r.duration_ms for r in e.runs) == [60 + 10 * i for i in range(n)]
        assert len(_Log.started) == n
        await e.stop()

    run(main())


def test_a_burst_whose_ends_are_held_where_it_went_out_waits_while_more_end_there() -> None:
    async def main() -> None:
        clock, e, due, n = await _burst(takes=3000)
        _Armable.said = 0

        def say() -> None:  # "more ended" every 50 ms until 2.5 s after the instant
            _Armable.said += 1
            if clock.now_ms() < due + 2500:
                clock.call_at(clock.now_ms() + 50, say)

        clock.call_at(due + 50, say)
        await clock.advance(5000 + 2400)
        for _ in range(5):
            await asyncio.sleep(0)
        # no end came here for 2.4 s, but the process said more ended: not taken up
        assert e.dispatcher.prepared_count == n and e.runs == []
        idle = e.sched.options.take_up_idle_ms
        await clock.advance(100 + idle + 2 * int(TAKE_UP_LOOK_S * 1000))
        for _ in range(5):
            await asyncio.sleep(0)
        assert e.dispatcher.prepared_count == 0  # it stopped saying so: taken up
        await clock.advance(1000)
        await e.sched.flush()
        assert len(e.runs) == n and len(_Log.started) == n
        await e.stop()

    run(main())


def test_a_bursts_armed_firings_are_taken_up_at_the_latest_after_the_bound() -> None:
    async def main() -> None:
        # an end every 50 ms: they keep coming, for 3.2 s
        clock, e, _, n = await _burst(takes=50, step=50)
        after = e.sched.options.take_up_after_ms = 1000
        await clock.advance(5000 + after - 20)
        for _ in range(5):
            await asyncio.sleep(0)
        assert e.dispatcher.prepared_count == n and e.runs == []
        await clock.advance(20 + int(TAKE_UP_LOOK_S * 1000))
        for _ in range(5):
            await asyncio.sleep(0)
        assert e.dispatcher.prepared_count == 0  # taken up, the rest of the ends awaited
        await clock.advance(3000)
        for _ in range(5):
            await asyncio.sleep(0)
        await e.sched.flush()
        assert sorted(r.duration_ms for r in e.runs) == [50 + 50 * i for i in range(n)]
        assert len(_Log.started) == n
        await e.stop()

    run(main())


def test_a_stop_takes_up_what_went_out_and_sends_nothing_again() -> None:
    async def main() -> None:
        clock, e, _, n = await _burst(takes=50)
        await clock.advance(5010)
        assert e.dispatcher.prepared_count == n
        stopping = asyncio.get_running_loop().create_task(e.stop())
        for _ in range(5):
            await asyncio.sleep(0)
        assert e.dispatcher.prepared_count == 0  # taken up at once, not dropped
        await clock.advance(100)
        await stopping
        assert len(_Log.started) == n and _Log.discarded == []
        assert len(e.runs) == n

    run(main())


def test_a_plan_replaced_while_its_burst_waits_to_be_taken_up_fires_once_each() -> None:
    async def main() -> None:
        clock, e, due, n = await _burst(takes=300)
        await clock.advance(5050)  # out, ends not in, not taken up
        assert e.dispatcher.prepared_count == n
        await e.sched.create([e.plan("k0", due + 1000, v="new", armable="1")])
        await clock.advance(2000)
        for _ in range(5):
            await asyncio.sleep(0)
        await e.sched.flush()
        sent = sorted((k, v, at) for k, v, _, at, _ in _Log.started if k == "k0")
        assert sent == [("k0", "", due), ("k0", "new", due + 1000)]
        assert len(_Log.started) == n + 1
        runs = sorted((r.key, r.due_ms) for r in e.runs if r.key == "k0")
        assert runs == [("k0", due), ("k0", due + 1000)]
        assert len(e.runs) == n + 1
        await e.stop()

    run(main())


def test_plans_due_with_a_set_aside_burst_fire_at_their_instant_as_it_waits() -> None:
    async def main() -> None:
        clock, e, due, n = await _burst(takes=300)
        # due with the burst and just after it, not armed: the engine starts them itself
        await e.sched.create([e.plan("with", due), e.plan("after", due + 1)])
        await clock.advance(5001)
        for _ in range(5):
            await asyncio.sleep(0)
        started = {k: at for k, _, _, at, _ in _Log.started}
        assert started["with"] == due and started["after"] == due + 1
        assert len(started) == n + 2
        # the burst is out there, its plans still set aside in the window
        assert e.dispatcher.prepared_count == n and e.sched.window_size() == n
        await clock.advance(400)
        for _ in range(5):
            await asyncio.sleep(0)
        await e.sched.flush()
        assert len(e.runs) == n + 2 and e.sched.window_size() == 0
        await e.stop()

    run(main())


def test_a_plan_that_fires_again_soon_is_not_held_back_with_its_burst() -> None:
    async def main() -> None:
        # a burst whose ends keep coming, one every 90 ms: it is taken up after 5.8 s
        clock, e, due, _ = await _burst(takes=90, step=90)
        e.sched.options.take_up_after_ms = 8000
        e.sched.options.take_up_idle_ms = 200
        # every 5 s from T0: its firing with the burst is followed by one at T0 + 10 s
        every = build_plan(
            key="every",
            kind=DELAY,
            second=5,
            count=3,
            now_ms=clock.now_ms(),
            default_tz=UTC,
            action="rec",
            params={"armable": "1"},
        )
        await e.sched.create([every])
        await e.run_for(10_500, 50)
        started = sorted(at for k, _, _, at, _ in _Log.started if k == "every")
        assert started == [due, T0 + 10_000]  # the next on time, not after the burst
        assert e.dispatcher.prepared_count > 0  # the burst is still out there
        await clock.advance(2000)
        await e.stop()

    run(main())


def test_a_set_aside_firing_taken_back_before_its_instant_fires_at_it() -> None:
    async def main() -> None:
        clock, e, due, n = await _burst(takes=300)
        await clock.advance(4500)  # prepared, armed, set aside
        assert e.sched.window_size() == n
        # its plan is about to change: its arm is taken back (in time), the change not
        # yet in (the engine's first step of a create or remove)
        key = "k0"
        await e.sched._disarm_keys([key])
        assert _Log.disarmed == [(key, "", False)]
        await clock.advance(500)
        for _ in range(5):
            await asyncio.sleep(0)
        # due before the change was answered, it fired at its instant, not at the take-up
        started = {k: at for k, _, _, at, _ in _Log.started}
        assert started[key] == due and len(started) == n
        await clock.advance(1000)
        for _ in range(5):
            await asyncio.sleep(0)
        await e.sched.flush()
        assert len(e.runs) == n and len(_Log.started) == n
        await e.stop()

    run(main())


def test_a_burst_is_taken_up_without_waiting_for_a_plan_moved_out_of_it() -> None:
    async def main() -> None:
        clock, e, due, n = await _burst(takes=60)
        await clock.advance(4500)  # prepared, armed, set aside
        # k0 moves an hour on before the instant (taken back in time, committed)
        await e.sched.create([e.plan("k0", due + 3_600_000, armable="1", takes="60")])
        await e.sched.flush()
        await clock.advance(500 + 60 + int(TAKE_UP_LOOK_S * 1000))
        for _ in range(5):
            await asyncio.sleep(0)
        await e.sched.flush()
        # the others' ends are in: taken up at the next look, not once the ends stop
        assert sorted(r.key for r in e.runs) == sorted(f"k{i}" for i in range(1, n))
        assert "k0" not in {k for k, *_ in _Log.started}
        assert (await e.sched.get("k0")).next_time == due + 3_600_000
        await e.stop()

    run(main())


def test_plans_after_a_burst_that_filled_the_window_fire_on_time() -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        e = Engine(clock, arming=True)
        n = 64
        e.sched.options.refill_limit = e.sched._window.refill_limit = n
        due = T0 + 5000
        # stored before the start: the first refill loads the burst and fills the window,
        # the plan after it waits in the store for the next refill
        plans = [e.plan(f"k{i}", due, armable="1", takes="60") for i in range(n)]
        plans.append(e.plan("later", due + 200))
        await e.store.open()
        await e.store.apply(Batch(ops={p.key: p for p in plans}))
        await e.sched.start()
        assert "later" not in e.sched._window
        await e.run_for(6000, 100)
        started = {k: at for k, _, _, at, _ in _Log.started}
        assert started["later"] == due + 200
        assert len(e.runs) == n + 1
        await e.stop()

    run(main())
