"""The window on its own: admission up to the cursor, due pops, forget, refill."""

from __future__ import annotations

import asyncio
from zoneinfo import ZoneInfo

from forsun_box.plan import DELAY, Plan, build_plan
from forsun_box.store.base import Advance, Batch
from forsun_box.store.memory import MemoryStore
from forsun_box.testing import FakeClock
from forsun_box.window import MAX_KEY, Window

UTC = ZoneInfo("UTC")
T0 = 1_700_000_000_000


def plan(key: str, seconds: int, version: int = 1) -> Plan:
    p = build_plan(key=key, kind=DELAY, now_ms=T0, default_tz=UTC, second=seconds)
    p.version = version
    return p


def window(store: MemoryStore | None = None, clock: FakeClock | None = None) -> Window:
    clock = clock or FakeClock(T0)
    return Window(store or MemoryStore(path=None), asyncio.Lock(), clock.now_ms, 30_000, 50_000)


def test_committed_puts_admit_only_up_to_the_cursor_and_not_paused() -> None:
    w = window()
    w.cursor = (T0 + 10_000, MAX_KEY)
    near, far, paused = plan("near", 5), plan("far", 20), plan("paused", 5)
    paused.paused = True
    for p in (near, far, paused):
        w.hold(p.key)
    admitted = w.committed_puts([near, far, paused])
    assert [p.key for p in admitted] == ["near"]
    assert admitted[0] is not near  # the window holds its own copy
    assert "near" in w and "far" not in w and "paused" not in w
    assert w.pending == {} and len(w) == 1


def test_pop_due_takes_due_plans_in_order_by_slices_and_skips_replaced_ones() -> None:
    w = window()
    for i, key in enumerate(["c", "a", "b"]):
        w.admit(plan(key, 3 - i))
    w.admit(plan("late", 60))
    w.admit(plan("a", 9, version=2))  # replaces a's first entry in the heap
    assert w.next_due() == T0 + 1_000
    first = w.pop_due(T0 + 9_000, 2)
    assert [(p.key, due) for p, due in first] == [("b", T0 + 1_000), ("c", T0 + 3_000)]
    rest = w.pop_due(T0 + 9_000, 2)
    assert [(p.key, p.version) for p, _ in rest] == [("a", 2)]
    assert w.pop_due(T0 + 9_000, 2) == [] and list(w.plans) == ["late"]
    assert w.next_due() == T0 + 60_000


def test_forget_spares_pending_and_inflight_keys() -> None:
    w = window()
    for key in ("a", "b", "c"):
        w.admit(plan(key, 5))
    w.hold("a")
    w.start_firing("b", 1)
    w.forget(None)
    assert sorted(w.plans) == ["a", "b"]


def test_an_advance_returns_the_plan_only_if_it_is_still_the_one_firing() -> None:
    w = window()
    w.cursor = (T0 + 60_000, MAX_KEY)
    w.start_firing("a", 1)
    w.start_firing("b", 1)
    w.inflight["b"] = 2  # replaced while firing
    moved_a, moved_b = plan("a", 30), plan("b", 30)
    adv = [
        (Advance("a", 1, moved_a.next_time, 1, T0, 1), moved_a),
        (Advance("b", 1, moved_b.next_time, 1, T0, 1), moved_b),
    ]
    assert w.advanced(adv) == [moved_a]
    assert "a" in w and "b" not in w and w.inflight == {"b": 2} and w.pending == {}


def test_refill_loads_the_stored_plans_due_within_the_window() -> None:
    async def main() -> None:
        store = MemoryStore(path=None)
        await store.open()
        await store.apply(Batch(ops={"soon": plan("soon", 10), "later": plan("later", 120)}))
        w = window(store)
        await w.refill()
        assert list(w.plans) == ["soon"] and w.cursor == (T0 + 30_000 - 1, MAX_KEY)
        await w.rewind(None)
        assert w.cursor == (0, "")
        await store.close()

    asyncio.run(main())
