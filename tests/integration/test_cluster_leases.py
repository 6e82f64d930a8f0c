"""Partition leases and fencing against a real PostgreSQL (tests/servers.py).

Several lease managers in one process, each with a store (and pool) of its
own, as separate nodes would have. Lease expiry is on the database's clock,
so these tests run in real time: TTLs are short and every wait is on a
condition with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import pytest

from forsun_box.cluster.leases import LeaseManager
from forsun_box.cluster.partitions import fair_share, partition_of
from forsun_box.store import Advance, Batch, Run
from forsun_box.store.postgres import PostgresStore
from forsun_box.testing.store_contract import T0, plan, put
from tests.helpers import wait_until_async

pytest_plugins = ["tests.servers"]

PARTITIONS = 32
TTL_S = 1.2


async def until(pred: Callable[[], Awaitable[bool] | bool], timeout: float, what: str) -> None:
    assert await wait_until_async(pred, timeout), f"not within {timeout} s: {what}"


@asynccontextmanager
async def node_store(dsn: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(dsn=dsn, partitions=PARTITIONS, pool_size=3)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def manager(store: PostgresStore, name: str, ttl_s: float = TTL_S) -> LeaseManager:
    return LeaseManager(
        store.lease_backend(), name, f"127.0.0.1:{9000 + ord(name[-1])}", ttl_s=ttl_s
    )


async def owners(dsn: str) -> dict[int, tuple[str, int]]:
    """partition -> (owner, epoch) of the leases unexpired on the database's clock."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT partition, owner, epoch FROM leases WHERE lease_until > clock_timestamp()"
        )
        return {r[0]: (r[1], r[2]) for r in rows}
    finally:
        await conn.close()


def disjoint_cover(managers: list[LeaseManager]) -> bool:
    seen: list[int] = []
    for m in managers:
        seen += list(m.trusted())
    return sorted(seen) == list(range(PARTITIONS))


def test_one_node_takes_every_partition(postgres_dsn: str) -> None:
    async def main() -> None:
        async with node_store(postgres_dsn) as store:
            m = manager(store, "a")
            sent = time.monotonic()
            await m.start()
            try:
                assert m.trusted() == {p: 1 for p in range(PARTITIONS)}
                assert m.counters.acquired == PARTITIONS and m.counters.takeovers == 0
                table = await store.lease_backend().leases()
                assert [(x.owner, x.epoch) for x in table] == [("a", 1)] * PARTITIONS
                assert {x.address for x in table} == {"127.0.0.1:9097"}
                # trusted until no later than the request's send time + TTL - margin
                held = m.held[0]
                assert held.trusted_until <= sent + TTL_S - m.margin_s + 0.5
                now = await store.lease_backend().now_ms()
                assert all(now < x.lease_until_ms <= now + int(TTL_S * 1000) for x in table)
                # renewal keeps them, at the same epoch
                await until(lambda: m.counters.rounds >= 4, 10, "three renewals")
                assert m.trusted() == {p: 1 for p in range(PARTITIONS)}
            finally:
                await m.stop()
            assert await owners(postgres_dsn) == {}  # released at stop

    asyncio.run(main())


def test_three_nodes_balance_to_fair_shares_and_a_graceful_stop_hands_over(
    postgres_dsn: str,
) -> None:
    async def main() -> None:
        async with (
            node_store(postgres_dsn) as sa,
            node_store(postgres_dsn) as sb,
            node_store(postgres_dsn) as sc,
        ):
            a, b, c = manager(sa, "a"), manager(sb, "b"), manager(sc, "c")
            await a.start()
            assert len(a.trusted()) == PARTITIONS  # alone at first
            await b.start()
            await c.start()
            share = fair_share(PARTITIONS, 3)
            try:
                await until(
                    lambda: (
                        disjoint_cover([a, b, c])
                        and all(len(m.trusted()) <= share for m in (a, b, c))
                    ),
                    15,
                    "fair shares covering every partition",
                )
                table = await owners(postgres_dsn)
                assert sorted(table) == list(range(PARTITIONS))
                for m in (a, b, c):
                    assert {p for p, (o, _) in table.items() if o == m.node} == set(m.trusted())
                # the moves were hand-overs, not takeovers
                assert a.counters.released > 0
                assert b.counters.takeovers == c.counters.takeovers == 0
                # a graceful stop: the others take its partitions, with a higher epoch
                given = a.trusted()
                await a.stop()
                await until(lambda: disjoint_cover([b, c]), 10, "b and c cover everything")
                for p, epoch in given.items():
                    now = b.epoch_of(p) or c.epoch_of(p)
                    assert now is not None and now > epoch
                assert b.counters.takeovers == c.counters.takeovers == 0
                assert b.live_nodes == 2 or c.live_nodes == 2
            finally:
                await b.stop()
                await c.stop()

    asyncio.run(main())


def test_a_dead_node_is_taken_over_after_its_lease_and_stopped_trusting_first(
    postgres_dsn: str,
) -> None:
    async def main() -> None:
        ttl = 6.0  # renewals every 2 s: a takeover waiting for one would show
        async with node_store(postgres_dsn) as sa, node_store(postgres_dsn) as sb:
            a, b = manager(sa, "a", ttl), manager(sb, "b", ttl)
            await a.start()
            await b.start()
            await until(lambda: disjoint_cover([a, b]) and len(b.trusted()) > 0, 15, "two shares")
            lost_by_a = a.trusted()
            trust_ends = max(a.held[p].trusted_until for p in lost_by_a)
            await a.halt()  # a stops renewing, as if killed: nothing released
            await until(lambda: len(b.trusted()) == PARTITIONS, ttl * 2 + 5, "b takes all")
            taken_at = time.monotonic()
            # a had stopped trusting every lease before b could take one
            assert all(a.epoch_of(p) is None for p in lost_by_a)
            assert trust_ends < taken_at
            # ... and b took them right after they expired (trust ends a margin before),
            # not at its next renewal
            assert taken_at - (trust_ends + a.margin_s) < 1.2
            assert b.counters.takeovers == len(lost_by_a)
            for p, epoch in lost_by_a.items():
                assert b.epoch_of(p) == epoch + 1
            # a comes back (SIGCONT): its first round finds every lease gone
            await a.round()
            assert a.held == {} and a.counters.lost == len(lost_by_a)
            await b.stop()

    asyncio.run(main())


def test_fenced_writes_apply_under_the_current_epoch_only(postgres_dsn: str) -> None:
    async def main() -> None:
        async with node_store(postgres_dsn) as sa, node_store(postgres_dsn) as sb:
            keys = [f"fence:{i}" for i in range(40)]
            await put(sa, *(plan(k, T0, version=1) for k in keys))
            a = manager(sa, "a")
            await a.start()
            epochs_a = a.trusted()
            firing = Batch(
                advances=[Advance(k, 1, T0 + 1000, 1, T0, 1) for k in keys[:20]],
                statuses=[(k, 1, -1) for k in keys[20:30]],
                runs=[Run(k, T0, T0 + 5, 1, 1, 1, "", "shell") for k in keys[:5]],
            )
            result = await sa.apply_fenced(firing, "a", epochs_a)
            assert result.refused == 0 and result.lost == set()
            moved = await sa.get(keys[0])
            assert moved is not None and moved.next_time == T0 + 1000
            # a pauses past its TTL; b takes everything over
            await a.halt()
            b = manager(sb, "b")

            async def b_took_all() -> bool:
                await b.round()
                return len(b.trusted()) == PARTITIONS

            await until(b_took_all, TTL_S * 2 + 5, "b takes over")
            # a wakes up and writes with the epochs it had: every firing write is refused
            late = Batch(
                ops={"api-write": plan("api-write", T0 + 7)},
                advances=[Advance(k, 1, T0 + 2000, 2, T0 + 1000, 1) for k in keys[:20]],
                statuses=[(k, 1, 1) for k in keys[20:30]],
                runs=[Run(keys[0], T0 + 1000, T0 + 1001, 1, 1, 1, "", "shell")],
            )
            refused = await sa.apply_fenced(late, "a", epochs_a)
            assert refused.refused == 31
            assert refused.lost == {partition_of(k, PARTITIONS) for k in keys[:30]}
            assert sa.fenced_refused == 31
            for k in keys[:20]:
                p = await sb.get(k)
                assert p is not None and p.next_time == T0 + 1000 and p.current_count == 1
            status = await sb.get(keys[20])
            assert status is not None and status.status == -1
            assert len(await sb.runs(keys[0])) == 1
            # the API write in the same batch is not a firing write: it applies
            assert await sb.get("api-write") is not None
            # b's writes under its own epochs go through
            ok = await sb.apply_fenced(late, "b", b.trusted())
            assert ok.refused == 0
            p = await sb.get(keys[0])
            assert p is not None and p.next_time == T0 + 2000
            # a write for a partition the writer never held is refused too
            mine = {q: e for q, e in b.trusted().items() if q != partition_of(keys[1], PARTITIONS)}
            part = await sb.apply_fenced(
                Batch(advances=[Advance(keys[1], 1, T0 + 3000, 3, T0, 1)]), "b", mine
            )
            assert part.refused == 1
            await b.stop()

    asyncio.run(main())


def test_a_fenced_write_in_progress_holds_a_takeover_off(postgres_dsn: str) -> None:
    """The lease rows a fenced transaction checked stay locked until it commits:
    a node taking expired leases passes them by instead of changing the epoch
    under a write that already passed the check."""

    async def main() -> None:
        async with node_store(postgres_dsn) as sa, node_store(postgres_dsn) as sb:
            a = manager(sa, "a", ttl_s=0.5)
            await a.start()
            await a.halt()
            conn = await asyncpg.connect(postgres_dsn)
            try:
                async with conn.transaction():
                    # what apply_fenced does first, in its transaction
                    locked = await conn.fetch(
                        "SELECT partition FROM leases WHERE partition = ANY($1::integer[]) "
                        "AND owner = 'a' FOR SHARE",
                        [0, 1],
                    )
                    assert [r[0] for r in locked] == [0, 1]
                    await until(
                        lambda: _expired(postgres_dsn), 5, "a's leases expire on the database clock"
                    )
                    b = manager(sb, "b")
                    await b.round()
                    assert set(b.trusted()) == set(range(2, PARTITIONS))
                # committed: the next round takes the rest
                await b.round()
                assert set(b.trusted()) == set(range(PARTITIONS))
                await b.stop()
            finally:
                await conn.close()

    asyncio.run(main())


async def _expired(dsn: str) -> bool:
    return await owners(dsn) == {}


def test_a_node_cut_off_from_the_database_stops_trusting_its_leases(postgres_dsn: str) -> None:
    async def main() -> None:
        async with node_store(postgres_dsn) as sa:
            a = manager(sa, "a")
            await a.start()
            assert len(a.trusted()) == PARTITIONS
            cut = time.monotonic()
            sa._conn().terminate()  # every connection gone; new ones are refused by the pool
            await until(lambda: a.counters.failed_rounds >= 1, 30, "a failed round")
            # trust ran out by its own reckoning: within a TTL of the last renewal sent
            # before the cut, however late the failed round noticed
            trusted_until = max(h.trusted_until for h in a.held.values())
            assert trusted_until <= cut + TTL_S
            await until(lambda: a.trusted() == {}, 30, "trust runs out")
            assert len(a.held) == PARTITIONS  # kept: renewed if the database comes back in time
            await a.halt()

    asyncio.run(main())


def test_two_processes_under_one_node_name(postgres_dsn: str) -> None:
    """A second process started with a live node's name refuses to start; once the
    first is gone (killed: its announcement expires) the name is free again."""
    from forsun_box.errors import StartupError

    async def main() -> None:
        async with node_store(postgres_dsn) as s1, node_store(postgres_dsn) as s2:
            first = manager(s1, "a")
            await first.start()
            twin = manager(s2, "a")
            with pytest.raises(StartupError, match="another forsun-box is running as node 'a'"):
                await twin.start()
            assert twin.trusted() == {} and twin.held == {}
            assert len(first.trusted()) == PARTITIONS  # untouched by the twin
            await first.halt()  # killed: nothing released, the announcement expires
            again = manager(s2, "a")
            # it waits for the twin's announcement to expire, then starts
            await asyncio.wait_for(again.start(), 30)
            await until(lambda: len(again.trusted()) == PARTITIONS, 30, "the name's leases")
            await again.stop()

    asyncio.run(main())
