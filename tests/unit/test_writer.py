"""The group-commit writer: typed mutations, one transaction, the commit callback."""

from __future__ import annotations

import asyncio

import pytest

from forsun_box.errors import StoreError
from forsun_box.plan import Plan
from forsun_box.store.base import Advance, Batch, Run
from forsun_box.store.memory import MemoryStore
from forsun_box.writer import Delete, Mutation, Puts, SetMeta, SetStatus, Writer, batch_of

T0 = 1_700_000_000_000


def plan(key: str) -> Plan:
    return Plan(key, "at", anchor_ms=T0 + 1000, next_time=T0 + 1000, version=1)


def test_batch_of_places_each_mutation_by_its_type() -> None:
    a, b = plan("a"), plan("b")
    adv = Advance("c", 3, None, 1, T0, 1)
    run = Run("c", T0, T0, 1, 1, 1)
    batch = batch_of(
        [Puts([a, b]), Delete("a"), SetStatus("b", 1, -1), SetMeta("processed_until", "5")],
        [(adv, None)],
        [run],
    )
    assert batch == Batch(
        ops={"a": None, "b": b},  # the last operation per key wins
        advances=[adv],
        statuses=[("b", 1, -1)],
        runs=[run],
        meta={"processed_until": "5"},
    )


class FailingStore(MemoryStore):
    async def apply(self, batch: Batch) -> None:
        raise StoreError("disk full")


@pytest.mark.parametrize("fails", [False, True])
def test_commits_share_a_transaction_and_report_what_committed(fails: bool) -> None:
    seen: list[tuple[list[Mutation], bool]] = []

    async def main() -> None:
        store = FailingStore(path=None) if fails else MemoryStore(path=None)
        await store.open()
        writer = Writer(store, asyncio.Lock(), lambda m, _a, ok: seen.append((m, ok)), 100)
        writer.start()
        # the first commits alone, in its caller's turn; the two after it share one
        tasks = [
            asyncio.create_task(writer.commit(m))
            for m in (Puts([plan("a")]), Delete("a"), Puts([plan("b")]))
        ]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await writer.close()
        if fails:
            assert all(isinstance(r, StoreError) for r in results)
            assert await store.keys() == []
        else:
            assert results == [None, None, None]
            assert await store.keys() == ["b"]
            assert writer.commits == 2

    asyncio.run(main())
    assert [ok for _, ok in seen] == [not fails, not fails]
    assert [m for m, _ in seen] == [
        [Puts([plan("a")])],
        [Delete("a"), Puts([plan("b")])],
    ]


class _Sizes(MemoryStore):
    """Records (run records, carried a caller's mutation) of every commit."""

    def __init__(self) -> None:
        super().__init__(path=None)
        self.sizes: list[tuple[int, bool]] = []

    async def apply(self, batch: Batch) -> None:
        self.sizes.append((len(batch.runs), bool(batch.ops)))
        await super().apply(batch)


def test_a_caller_waits_behind_few_firing_records_and_the_rest_follow() -> None:
    from forsun_box.writer import FIRING_BATCH, URGENT_FIRING_BATCH

    store = _Sizes()

    async def main() -> None:
        await store.open()
        writer = Writer(store, asyncio.Lock(), lambda m, _a, ok: None, 100)
        # a burst's records are queued before the writer runs, then a create waits
        backlog = 2 * FIRING_BATCH + 100
        assert backlog > URGENT_FIRING_BATCH
        for i in range(backlog):
            writer.submit_run(Run(f"k{i}", T0, T0, 1, 1, 1))
        waiting = writer.submit(Puts([plan("new")]), True)
        writer.start()
        assert waiting is not None
        await asyncio.wait_for(waiting, 5)
        await writer.close()

    asyncio.run(main())
    sizes = store.sizes
    # the caller's commit came first, with few records; the rest in full slices after it
    assert sizes[0] == (0, True)
    assert sizes[1:] == [(FIRING_BATCH, False), (FIRING_BATCH, False), (100, False)]


def test_a_barrier_waits_for_every_record_queued_before_it() -> None:
    from forsun_box.writer import FIRING_BATCH

    async def main() -> tuple[int, int]:
        store = MemoryStore(path=None)
        await store.open()
        committed: list[int] = []
        writer = Writer(store, asyncio.Lock(), lambda m, a, ok: committed.append(len(a)), 100, 60.0)
        backlog = 3 * FIRING_BATCH + 7
        for i in range(backlog):
            writer.submit_advance(Advance(f"k{i}", 1, None, 1, T0, 1), None)
        writer.start()
        # its own commit carries none of them; it returns once they all committed,
        # though the writer would linger 60 s over firing records alone
        await asyncio.wait_for(writer.barrier(SetMeta("processed_until", "1")), 5)
        done = sum(committed)
        await writer.close()
        return done, backlog

    done, backlog = asyncio.run(main())
    assert done == backlog


def test_callers_that_keep_coming_never_starve_a_burst_of_records() -> None:
    from forsun_box.writer import FIRING_BATCH

    async def main() -> tuple[int, int, int]:
        store = MemoryStore(path=None)
        await store.open()
        committed: list[int] = []
        writer = Writer(store, asyncio.Lock(), lambda m, a, ok: committed.append(len(a)), 100)
        backlog = 3 * FIRING_BATCH
        for i in range(backlog):
            writer.submit_advance(Advance(f"k{i}", 1, None, 1, T0, 1), None)
        writer.start()
        # one caller always waiting, as under steady API load
        rounds = 0
        while sum(committed) < backlog and rounds < 20:
            waiting = writer.submit(Puts([plan(f"p{rounds}")]), True)
            assert waiting is not None
            await asyncio.wait_for(waiting, 5)
            rounds += 1
        await writer.close()
        return sum(committed), backlog, rounds

    done, backlog, rounds = asyncio.run(main())
    assert done == backlog and rounds <= 4  # a slice of records between two callers' commits


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_records_held_during_a_burst_commit_after_it_and_callers_meanwhile() -> None:
    async def main() -> list[tuple[int, bool]]:
        store = _Sizes()
        await store.open()
        writer = Writer(store, asyncio.Lock(), lambda m, _a, ok: None, 100)
        writer.start()
        writer.hold_records(60.0)
        for i in range(300):
            writer.submit_run(Run(f"k{i}", T0, T0, 1, 1, 1))
        await _turns(20)
        assert store.sizes == []  # held: nothing committed
        # a caller's mutation commits meanwhile, without the records
        waiting = writer.submit(Puts([plan("new")]), True)
        assert waiting is not None
        await asyncio.wait_for(waiting, 5)
        await _turns(20)
        assert store.sizes == [(0, True)]
        writer.release_records()
        await asyncio.wait_for(writer.barrier(SetMeta("processed_until", "1")), 5)
        await writer.close()
        return store.sizes

    sizes = asyncio.run(main())
    assert sum(n for n, _ in sizes) == 300


@pytest.mark.parametrize("ends_by", ["time", "count", "count later", "barrier", "close"])
def test_a_hold_on_records_ends_by_itself(ends_by: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import forsun_box.writer as writer_module

    monkeypatch.setattr(writer_module, "HOLD_MAX_RECORDS", 50)

    async def main() -> int:
        store = _Sizes()
        await store.open()
        writer = Writer(store, asyncio.Lock(), lambda m, _a, ok: None, 100)
        writer.start()
        writer.hold_records(0.05 if ends_by == "time" else 60.0)
        n = 50 if ends_by.startswith("count") else 10
        for i in range(n):
            if ends_by == "count later" and i == 10:
                await _turns(20)  # (the writer waits on the hold meanwhile)
                assert store.sizes == []
            writer.submit_run(Run(f"k{i}", T0, T0, 1, 1, 1))
        if ends_by == "barrier":
            await asyncio.wait_for(writer.barrier(SetMeta("processed_until", "1")), 5)
        elif ends_by == "close":
            await asyncio.wait_for(writer.close(), 5)
        else:
            deadline = asyncio.get_running_loop().time() + 30
            while sum(k for k, _ in store.sizes) < n:
                assert asyncio.get_running_loop().time() < deadline, store.sizes
                await asyncio.sleep(0.01)
        await writer.close()
        return sum(k for k, _ in store.sizes)

    assert asyncio.run(main()) == (50 if ends_by.startswith("count") else 10)
