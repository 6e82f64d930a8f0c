"""The store contract as a test suite any driver can run, built-in or an extension's.

Every test goes through the public :class:`~forsun_box.store.base.Store`
interface only. To run it against a driver, subclass :class:`StoreContract`
in a pytest module and give it a ``factory`` fixture: a callable that takes
the driver's keyword arguments (the suite passes ``max_runs_per_key`` and
``run_retention_ms``) and returns a new, unopened store; calling it again
must reopen the same data (that is how persistence is checked)::

    import pytest
    from forsun_box.testing.store_contract import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        def factory(self, tmp_path):
            return lambda **kw: MyStore(str(tmp_path / "data"), **kw)

pytest is needed to run it (it is not a dependency of the service).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from forsun_box.errors import StoreError
from forsun_box.plan import Plan
from forsun_box.store.base import Advance, Batch, Run, Store

T0 = 1_700_000_000_000
MAX_CHAR = chr(0x10FFFF)

Factory = Callable[..., Store]


def run(make: Factory, body: Callable[[Store], Awaitable[None]], **kwargs: Any) -> None:
    async def main() -> None:
        store = make(**kwargs)
        await store.open()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def plan(key: str, next_time: int | None = T0, **fields: Any) -> Plan:
    fields.setdefault("version", 1)
    return Plan(key=key, kind="at", anchor_ms=next_time or 0, next_time=next_time, **fields)


def full_plan() -> Plan:
    """A plan where every field holds a distinct, non-default value."""
    return Plan(
        key="ключ/🔑",
        kind="calendar",
        action="http",
        params={"url": "http://127.0.0.1/ü?x=1&y=%20", "body": '日本語 "quoted" \n\t', "": ""},
        second=1,
        minute=2,
        hour=3,
        day=4,
        month=5,
        week=6,
        count=7,
        cron="*/5 * * * *",
        interval_ms=8,
        anchor_ms=9,
        timezone="Europe/Paris",
        end_ms=T0 + 10,
        next_time=T0 + 11,
        current_count=12,
        last_timeout=T0 - 13,
        status=-1,
        created_time=T0 - 14,
        paused=True,
        version=15,
    )


async def put(store: Store, *plans: Plan) -> None:
    await store.apply(Batch(ops={p.key: p for p in plans}))


KEYS = [
    "a",
    "a%",
    "a%b",
    "a_",
    "a_b",
    "ab",
    "abc",
    "b",
    "é",
    "éa",
    "日本",
    "日本語",
    "\ud7ffx",
    "\ue000",
    "z" + MAX_CHAR,
    "z" + MAX_CHAR + "a",
    "z" + MAX_CHAR + MAX_CHAR,
    "{",
    MAX_CHAR,
    MAX_CHAR + "a",
    MAX_CHAR + MAX_CHAR,
    "🔑1",
    "🔑2",
]


class StoreContract:
    """The contract tests; a subclass provides the ``factory`` fixture (see the module)."""

    def test_put_get_replace_delete(self, factory: Factory) -> None:
        async def body(store: Store) -> None:
            assert await store.get("a") is None
            await put(store, plan("a", T0, params={"cmd": "echo 1"}))
            got = await store.get("a")
            assert got is not None and got.params == {"cmd": "echo 1"} and got.next_time == T0
            await put(store, plan("a", T0 + 5, params={"cmd": "echo 2"}, version=2))
            got = await store.get("a")
            assert got is not None and got.version == 2 and got.next_time == T0 + 5
            assert got.params == {"cmd": "echo 2"}
            assert await store.count() == 1
            await store.apply(Batch(ops={"a": None, "missing": None}))
            assert await store.get("a") is None
            assert await store.count() == 0
            assert await store.due(None, T0 + 100, 10) == []

        run(factory, body)

    def test_every_field_round_trips_and_survives_reopen(self, factory: Factory) -> None:
        original = full_plan()
        empty = plan("empty-params", None, params={})

        async def write(store: Store) -> None:
            await put(store, original, empty)
            assert await store.get(original.key) == original
            assert await store.get("empty-params") == empty

        async def check(store: Store) -> None:
            got = await store.get(original.key)
            assert got == original
            assert got is not None and got.paused is True and isinstance(got.paused, bool)
            got_empty = await store.get("empty-params")
            assert got_empty == empty and got_empty is not None and got_empty.next_time is None

        run(factory, write)
        run(factory, check)

    def test_stored_plans_are_not_shared_with_the_caller(self, factory: Factory) -> None:
        async def body(store: Store) -> None:
            p = plan("a", T0, params={"x": "1"})
            await put(store, p)
            p.params["x"] = "changed"
            p.next_time = T0 + 99
            got = await store.get("a")
            assert got is not None and got.params == {"x": "1"} and got.next_time == T0
            got.params["x"] = "mutated"
            got.version = 42
            again = await store.get("a")
            assert again is not None and again.params == {"x": "1"} and again.version == 1
            assert [q.key for q in await store.due(None, T0 + 1, 10)] == ["a"]

        run(factory, body)

    def test_advances_apply_only_to_the_current_version(self, factory: Factory) -> None:
        async def body(store: Store) -> None:
            await put(store, plan("a", T0, version=3), plan("b", T0, version=3))
            await store.apply(
                Batch(
                    advances=[
                        Advance("a", 2, T0 + 1000, 1, T0, 1),  # stale: ignored
                        Advance("b", 3, T0 + 2000, 4, T0 + 1, -1),
                        Advance("nobody", 1, T0, 1, T0, 1),
                    ]
                )
            )
            a, b = await store.get("a"), await store.get("b")
            assert a is not None and (a.next_time, a.current_count, a.status) == (T0, 0, 0)
            assert b is not None
            assert (b.next_time, b.current_count, b.last_timeout, b.status) == (
                T0 + 2000,
                4,
                T0 + 1,
                -1,
            )
            assert [p.key for p in await store.due(None, T0 + 1, 10)] == ["a"]
            assert [p.key for p in await store.due(None, T0 + 2001, 10)] == ["a", "b"]
            # A finished plan (next_time None) is deleted, but only at its version.
            await store.apply(Batch(advances=[Advance("a", 2, None, 1, T0, 1)]))
            assert await store.get("a") is not None
            await store.apply(Batch(advances=[Advance("a", 3, None, 1, T0, 1)]))
            assert await store.get("a") is None
            assert await store.keys() == ["b"]
            assert await store.count() == 1

        run(factory, body)

    def test_statuses_apply_only_to_the_current_version(self, factory: Factory) -> None:
        async def body(store: Store) -> None:
            await put(store, plan("a", T0, version=5))
            await store.apply(Batch(statuses=[("a", 4, -1), ("zz", 5, 1)]))
            got = await store.get("a")
            assert got is not None and got.status == 0
            await store.apply(Batch(statuses=[("a", 5, 1)]))
            got = await store.get("a")
            assert got is not None and got.status == 1 and got.next_time == T0
            assert await store.get("zz") is None

        run(factory, body)

    def test_batch_applies_ops_before_advances(self, factory: Factory) -> None:
        async def body(store: Store) -> None:
            await put(store, plan("a", T0, version=1))
            await store.apply(
                Batch(
                    ops={"a": plan("a", T0 + 10, version=2)},
                    advances=[Advance("a", 2, T0 + 20, 1, T0 + 10, 1)],
                    statuses=[("a", 2, -1)],
                    runs=[Run("a", T0 + 10, T0 + 11, 5, 1, -1, "boom", "shell")],
                    meta={"processed_until": str(T0 + 10)},
                )
            )
            got = await store.get("a")
            assert got is not None
            assert (got.version, got.next_time, got.current_count, got.status) == (
                2,
                T0 + 20,
                1,
                -1,
            )
            assert [r.error for r in await store.runs("a")] == ["boom"]
            assert await store.get_meta("processed_until") == str(T0 + 10)

        run(factory, body)

    def test_due_orders_by_time_then_key_and_pages_by_keyset(self, factory: Factory) -> None:
        async def body(store: Store) -> None:
            await put(
                store,
                plan("c", T0),
                plan("a", T0),
                plan("b", T0),  # three-way tie on next_time
                plan("early", T0 - 1),
                plan("late", T0 + 5),
                plan("at-bound", T0 + 10),  # excluded: before_ms is exclusive
                plan("paused", T0, paused=True),
                plan("finished", None),
            )
            expected = ["early", "a", "b", "c", "late"]
            everything = await store.due(None, T0 + 10, 100)
            assert [p.key for p in everything] == expected
            assert [p.key for p in await store.due(None, T0 + 11, 100)] == [*expected, "at-bound"]
            # Keyset paging through the ties with pages of two.
            seen: list[str] = []
            after: tuple[int, str] | None = None
            while True:
                page = await store.due(after, T0 + 10, 2)
                assert len(page) <= 2
                if not page:
                    break
                seen += [p.key for p in page]
                last = page[-1]
                assert last.next_time is not None
                after = (last.next_time, last.key)
            assert seen == expected
            assert [p.key for p in await store.due((T0, "a"), T0 + 10, 100)] == ["b", "c", "late"]
            assert [p.key for p in await store.due((T0, ""), T0 + 10, 1)] == ["a"]
            assert await store.due(None, T0 - 1, 10) == []

        run(factory, body)

    def test_due_follows_replace_pause_and_delete(self, factory: Factory) -> None:
        async def body(store: Store) -> None:
            await put(store, plan("a", T0), plan("b", T0 + 1))
            await put(store, plan("a", T0 + 2, version=2))  # moved later
            assert [p.key for p in await store.due(None, T0 + 10, 10)] == ["b", "a"]
            await put(store, plan("b", T0 + 1, version=2, paused=True))
            assert [p.key for p in await store.due(None, T0 + 10, 10)] == ["a"]
            await put(store, plan("b", T0 + 3, version=3))  # resumed
            assert [p.key for p in await store.due(None, T0 + 10, 10)] == ["a", "b"]
            await store.apply(Batch(ops={"a": None}))
            assert [p.key for p in await store.due(None, T0 + 10, 10)] == ["b"]
            await store.apply(Batch(advances=[Advance("b", 3, T0 + 50, 1, T0 + 3, 1)]))
            assert await store.due(None, T0 + 10, 10) == []
            assert [p.key for p in await store.firing_between(T0 + 50, T0 + 51, 10)] == ["b"]

        run(factory, body)

    def test_firing_between_is_start_inclusive_end_exclusive(self, factory: Factory) -> None:
        async def body(store: Store) -> None:
            await put(
                store,
                plan("before", T0 - 1),
                plan("start-b", T0),
                plan("start-a", T0),
                plan("mid", T0 + 500),
                plan("paused", T0 + 500, paused=True),
                plan("end", T0 + 1000),
                plan("none", None),
            )
            found = await store.firing_between(T0, T0 + 1000, 100)
            assert [p.key for p in found] == ["start-a", "start-b", "mid"]
            assert [p.key for p in await store.firing_between(T0, T0 + 1000, 2)] == [
                "start-a",
                "start-b",
            ]
            assert await store.firing_between(T0 + 1, T0 + 500, 10) == []

        run(factory, body)

    @pytest.mark.parametrize(
        "prefix",
        [
            "",
            "a",
            "a%",
            "a_",
            "ab",
            "é",
            "日本",
            "\ud7ff",
            "z",
            "z" + MAX_CHAR,
            MAX_CHAR,
            "🔑",
            "q",
        ],
    )
    def test_keys_and_plans_by_prefix(self, factory: Factory, prefix: str) -> None:
        expected = sorted(k for k in KEYS if k.startswith(prefix))

        async def body(store: Store) -> None:
            await put(store, *(plan(k, T0) for k in KEYS))
            assert await store.keys(prefix) == expected
            assert [p.key for p in await store.plans(prefix, limit=0)] == expected
            assert await store.keys(prefix, limit=2) == expected[:2]
            assert [p.key for p in await store.plans(prefix, limit=2)] == expected[:2]
            for i, after in enumerate(expected):
                assert await store.keys(prefix, after=after) == expected[i + 1 :]
                assert [p.key for p in await store.plans(prefix, after, 3)] == expected[
                    i + 1 : i + 4
                ]
            # An ``after`` below the prefix changes nothing; one above it ends the listing.
            assert await store.keys(prefix, after="\x01") == expected
            assert await store.keys(prefix, after=MAX_CHAR * 3) == []

        run(factory, body)

    def test_plans_default_limit_and_count(self, factory: Factory) -> None:
        async def body(store: Store) -> None:
            await put(store, *(plan(f"k{i:03d}", T0 + i) for i in range(150)))
            assert await store.count() == 150
            listed = await store.plans()
            assert [p.key for p in listed] == [f"k{i:03d}" for i in range(100)]
            assert len(await store.keys()) == 150
            assert await store.keys("k14") == [f"k14{i}" for i in range(10)]

        run(factory, body)

    def test_runs_newest_first_bounded_and_pruned(self, factory: Factory) -> None:
        async def body(store: Store) -> None:
            runs = [Run("a", T0 + i, T0 + i * 1000, 7, 1, 1, action="shell") for i in range(5)]
            await store.apply(Batch(runs=runs[:2]))
            await store.apply(
                Batch(runs=[*runs[2:], Run("b", T0, T0 + 9000, 1, 2, -1, "e", "http")])
            )
            got = await store.runs("a")
            # At most max_runs_per_key (3) are kept, newest first.
            assert [r.due_ms for r in got] == [T0 + 4, T0 + 3, T0 + 2]
            assert got[0] == runs[4]
            assert [r.due_ms for r in await store.runs("a", limit=1)] == [T0 + 4]
            assert await store.runs("b") == [Run("b", T0, T0 + 9000, 1, 2, -1, "e", "http")]
            assert await store.runs("nobody") == []
            # Retention is 2.5 s: runs started before now - 2.5 s go.
            assert await store.prune_runs(T0 + 5500) == 1  # a's run started at T0 + 2000
            assert [r.due_ms for r in await store.runs("a")] == [T0 + 4, T0 + 3]
            assert await store.prune_runs(T0 + 5500) == 0
            assert await store.prune_runs(T0 + 100_000) == 3
            assert await store.runs("a") == [] and await store.runs("b") == []

        run(factory, body, max_runs_per_key=3, run_retention_ms=2500)

    def test_meta(self, factory: Factory) -> None:
        async def body(store: Store) -> None:
            assert await store.get_meta("processed_until") is None
            await store.apply(Batch(meta={"processed_until": "123", "note": "é"}))
            await store.apply(Batch(meta={"processed_until": "456"}))
            assert await store.get_meta("processed_until") == "456"
            assert await store.get_meta("note") == "é"

        run(factory, body)

    def test_reopen_persists_everything(self, factory: Factory) -> None:
        async def write(store: Store) -> None:
            await put(store, *(plan(f"p{i}", T0 + i, params={"i": str(i)}) for i in range(20)))
            await put(store, plan("paused", T0, paused=True))
            await store.apply(
                Batch(ops={"p0": None}, advances=[Advance("p1", 1, T0 + 99, 1, T0, 1)])
            )
            await store.apply(Batch(runs=[Run("p1", T0 + 1, T0 + 2, 3, 1, 1, "", "shell")]))
            await store.apply(Batch(runs=[Run("p2", T0 + 5, T0 + 5, 1, 1, 1, "", "shell", True)]))
            await store.apply(Batch(meta={"processed_until": str(T0)}))

        async def check(store: Store) -> None:
            assert await store.count() == 20
            assert await store.get("p0") is None
            p1 = await store.get("p1")
            assert p1 is not None and p1.next_time == T0 + 99 and p1.current_count == 1
            due = await store.due(None, T0 + 100, 100)
            assert [p.key for p in due] == [f"p{i}" for i in range(2, 20)] + ["p1"]
            assert due[0].params == {"i": "2"}
            assert await store.runs("p1") == [Run("p1", T0 + 1, T0 + 2, 3, 1, 1, "", "shell")]
            # a "fire now" run stays marked manual
            assert await store.runs("p2") == [Run("p2", T0 + 5, T0 + 5, 1, 1, 1, "", "shell", True)]
            assert await store.get_meta("processed_until") == str(T0)
            assert await store.keys("paused") == ["paused"]

        run(factory, write)
        run(factory, check)

    def test_runs_keep_the_node_that_fired_them(self, factory: Factory) -> None:
        fired = [
            Run("n", T0, T0 + 1, 2, 1, 1, "", "http", False, "node-a"),
            Run("n", T0 + 5, T0 + 6, 1, 1, -1, "boom", "http", True, "node-b"),
            Run("n", T0 + 9, T0 + 9, 1, 1, 1, "", "http"),
        ]

        async def write(store: Store) -> None:
            await store.apply(Batch(runs=fired))

        async def check(store: Store) -> None:
            # newest first; a single node's run keeps "" and manual survives beside it
            assert await store.runs("n") == fired[::-1]

        run(factory, write)
        run(factory, check)

    def test_failed_batch_changes_nothing_and_the_store_keeps_working(
        self, factory: Factory
    ) -> None:
        async def body(store: Store) -> None:
            await put(store, plan("kept", T0))
            bad = plan("x", T0)
            bad.key = None  # type: ignore[assignment]
            with pytest.raises(StoreError):
                await store.apply(
                    Batch(ops={"new": plan("new", T0), "x": bad, "kept": None}, meta={"m": "1"})
                )
            assert await store.keys() == ["kept"]
            assert await store.get_meta("m") is None
            await put(store, plan("after", T0 + 1))
            assert await store.keys() == ["after", "kept"]
            assert [p.key for p in await store.due(None, T0 + 2, 10)] == ["kept", "after"]

        run(factory, body)

    def test_close_twice_is_harmless(self, factory: Factory) -> None:
        async def main() -> None:
            store = factory()
            await store.open()
            await put(store, plan("a", T0))
            await store.close()
            await store.close()
            again = factory()
            await again.open()
            assert await again.keys() == ["a"]
            assert await again.size_bytes() > 0
            await again.close()

        asyncio.run(main())

    def test_bulk_batch(self, factory: Factory) -> None:
        async def body(store: Store) -> None:
            plans = [plan(f"bulk:{i:05d}", T0 + (i * 7919) % 5000) for i in range(5000)]
            await put(store, *plans)
            assert await store.count() == 5000
            due = await store.due(None, T0 + 5000, 10_000)
            assert [(p.next_time, p.key) for p in due] == sorted(
                (p.next_time, p.key) for p in plans
            )

        run(factory, body)

    def test_runs_bounded_per_key_within_one_big_batch(self, factory: Factory) -> None:
        async def body(store: Store) -> None:
            # Many keys, each past the bound inside a single batch, in interleaved order.
            runs = [Run(f"k{i % 50:02d}", T0 + i, T0 + i, 0, 1, 1, action="x") for i in range(400)]
            await store.apply(Batch(runs=runs))
            for k in range(50):
                got = await store.runs(f"k{k:02d}")
                # the 3 newest of the 8 runs of each key, newest first
                assert [r.due_ms for r in got] == [T0 + k + 50 * j for j in (7, 6, 5)]
            await store.apply(Batch(runs=[Run("k00", T0 + 999, T0 + 999, 0, 1, -1, "e", "x")]))
            assert [r.due_ms for r in await store.runs("k00")] == [T0 + 999, T0 + 350, T0 + 300]

        run(factory, body, max_runs_per_key=3)
