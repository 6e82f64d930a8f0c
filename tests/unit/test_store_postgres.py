"""The postgres driver's own checks, against a real PostgreSQL (tests/servers.py).

The store contract itself runs in test_store_contract.py; here: the schema
and its version, start-up errors, settings, partitions fixed at creation,
values PostgreSQL can't hold, and the partition window.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from forsun_box.cluster.partitions import partition_of
from forsun_box.errors import StartupError, StoreError
from forsun_box.store import Batch
from forsun_box.store.postgres import PostgresStore
from forsun_box.store.postgres import schema as pg_schema
from forsun_box.store.postgres.store import redact
from forsun_box.testing.store_contract import T0, plan, put
from tests.helpers import free_port, wait_until_async

pytest_plugins = ["tests.servers"]


async def sql(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def test_a_new_database_gets_the_schema_partitions_and_one_lease_row_each(
    postgres_dsn: str,
) -> None:
    async def main() -> None:
        store = PostgresStore(dsn=postgres_dsn, partitions=16)
        await store.open()
        await store.close()
        version = await sql(postgres_dsn, "SELECT version FROM forsun_box_schema")
        assert [r[0] for r in version] == [pg_schema.SCHEMA_VERSION]
        leases = await sql(postgres_dsn, "SELECT partition, owner, epoch FROM leases ORDER BY 1")
        assert [tuple(r) for r in leases] == [(p, "", 0) for p in range(16)]
        # opened again with another number: the database keeps its own
        again = PostgresStore(dsn=postgres_dsn, partitions=512)
        await again.open()
        assert again.partitions == 16
        await put(again, plan("some-key", T0))
        stored = await sql(postgres_dsn, "SELECT partition FROM plans WHERE key = 'some-key'")
        assert stored[0][0] == partition_of("some-key", 16)
        assert await again.get_meta("partitions") == "16"
        await again.close()
        assert [r[0] for r in await sql(postgres_dsn, "SELECT count(*) FROM leases")] == [16]

    asyncio.run(main())


def test_nodes_starting_together_migrate_once(postgres_dsn: str) -> None:
    async def main() -> None:
        stores = [PostgresStore(dsn=postgres_dsn, partitions=8) for _ in range(4)]
        await asyncio.gather(*(s.open() for s in stores))
        await put(stores[0], plan("k", T0))
        for s in stores:
            assert await s.keys() == ["k"]
        await asyncio.gather(*(s.close() for s in stores))
        assert len(await sql(postgres_dsn, "SELECT * FROM forsun_box_schema")) == 1

    asyncio.run(main())


def test_a_newer_schema_version_stops_startup(postgres_dsn: str) -> None:
    async def main() -> None:
        store = PostgresStore(dsn=postgres_dsn)
        await store.open()
        await store.close()
        await sql(postgres_dsn, "UPDATE forsun_box_schema SET version = 99")
        with pytest.raises(StartupError) as e:
            await PostgresStore(dsn=postgres_dsn).open()
        assert (
            f"schema version 99 is newer than this forsun-box supports ({len(pg_schema.MIGRATIONS)})"
            in str(e.value)
        )

    asyncio.run(main())


def test_an_unreachable_server_stops_startup_without_showing_the_password() -> None:
    dsn = f"postgresql://u:secret@127.0.0.1:{free_port()}/db"
    with pytest.raises(StartupError) as e:
        asyncio.run(PostgresStore(dsn=dsn, connect_timeout=5).open())
    assert "cannot connect to PostgreSQL postgresql://u:***@127.0.0.1" in str(e.value)
    assert "secret" not in str(e.value)
    assert redact("postgresql://a@h/db") == "postgresql://a@h/db"


def test_a_dsn_that_does_not_parse_stops_startup() -> None:
    with pytest.raises(StartupError, match="cannot connect"):
        asyncio.run(PostgresStore(dsn="postgresql://h:notaport/db").open())


def test_a_missing_database_stops_startup(postgres_server: object) -> None:
    dsn = postgres_server.dsn("no_such_database")  # type: ignore[attr-defined]
    with pytest.raises(StartupError, match="no_such_database"):
        asyncio.run(PostgresStore(dsn=dsn).open())


def test_the_driver_is_built_from_the_config(postgres_dsn: str, tmp_path: Path) -> None:
    from forsun_box.app import make_store
    from forsun_box.config import Config

    config = Config(
        driver="postgres",
        postgres_dsn=postgres_dsn,
        postgres_pool_size=3,
        postgres_partitions=64,
        max_runs_per_key=4,
        run_retention_days=1,
        data_dir=str(tmp_path),
    )
    store = make_store(config)
    assert isinstance(store, PostgresStore)
    assert (store.dsn, store.pool_size, store.wanted_partitions) == (postgres_dsn, 3, 64)
    assert (store.max_runs_per_key, store.run_retention_ms) == (4, 86_400_000)


def test_the_settings_come_from_env_and_flags() -> None:
    from forsun_box.config import load_config

    config = load_config(
        ["--postgres-dsn", "postgresql://x@h/d", "--postgres-pool-size", "5"],
        environ={"STORE_POSTGRES_PARTITIONS": "128"},
    )
    assert (config.postgres_dsn, config.postgres_pool_size, config.postgres_partitions) == (
        "postgresql://x@h/d",
        5,
        128,
    )
    with pytest.raises(StartupError, match="postgres_pool_size"):
        load_config(["--postgres-pool-size", "0"], environ={})


def test_text_postgresql_cannot_hold_is_a_clear_error_and_changes_nothing(
    postgres_dsn: str,
) -> None:
    async def main() -> None:
        store = PostgresStore(dsn=postgres_dsn)
        await store.open()
        try:
            await put(store, plan("kept", T0))
            with pytest.raises(StoreError, match="NUL character"):
                await put(store, plan("nul\x00key", T0), plan("other", T0))
            with pytest.raises(StoreError):
                await put(store, plan("lone-\udc80", T0))
            assert await store.keys() == ["kept"]
            # reads of such keys match nothing, they don't fail
            assert await store.get("nul\x00key") is None
            assert await store.get("lone-\udc80") is None
            assert await store.keys("\x00") == []
            assert await store.runs("\udc80") == []
            assert await store.due((T0, "\x00"), T0 + 1, 10) == []
        finally:
            await store.close()

    asyncio.run(main())


def test_the_window_of_some_partitions(postgres_dsn: str) -> None:
    async def main() -> None:
        store = PostgresStore(dsn=postgres_dsn, partitions=4)
        await store.open()
        try:
            plans = [plan(f"k{i:03d}", T0 + i) for i in range(200)]
            plans.append(plan("paused", T0, paused=True))
            await store.apply(Batch(ops={p.key: p for p in plans}))
            mine = [0, 2]
            expected = [p.key for p in plans[:200] if partition_of(p.key, 4) in mine]
            got = await store.due_in_partitions(mine, None, T0 + 200, 1000)
            assert [p.key for p in got] == expected
            # keyset paging, as the engine refills its window
            seen: list[str] = []
            after = None
            while page := await store.due_in_partitions(mine, after, T0 + 150, 7):
                seen += [p.key for p in page]
                after = (page[-1].next_time, page[-1].key)
            assert seen == [k for k in expected if int(k[1:]) < 150]
            assert await store.due_in_partitions([], None, T0 + 200, 10) == []
        finally:
            await store.close()

    asyncio.run(main())


def test_a_create_batch_is_one_statement(postgres_dsn: str) -> None:
    """A batch of puts only (the usual group commit) goes out as one statement,
    whatever its size; a mixed batch is one transaction."""

    async def main() -> None:
        store = PostgresStore(dsn=postgres_dsn, pool_size=1)
        await store.open()
        try:
            statements = store._statements(
                Batch(ops={f"k{i}": plan(f"k{i}", T0 + i) for i in range(10_000)})
            )
            assert len(statements) == 1
            await store.apply(Batch(ops={f"k{i}": plan(f"k{i}", T0 + i) for i in range(10_000)}))
            assert await store.count() == 10_000
        finally:
            await store.close()

    asyncio.run(main())


def test_watching_stores_announce_each_commit_once_to_the_others(postgres_dsn: str) -> None:
    from forsun_box.cluster.base import ChangeHint

    async def main() -> None:
        a = PostgresStore(dsn=postgres_dsn, partitions=8)
        b = PostgresStore(dsn=postgres_dsn, partitions=8)
        await a.open()
        await b.open()
        heard: list[ChangeHint] = []
        released: list[str] = []
        own: list[ChangeHint] = []
        try:
            await a.watch("a", own.append, released.append, lambda: None)
            await b.watch("b", heard.append, released.append, lambda: None)
            batch = Batch(ops={"x": plan("x", T0 + 5), "y": plan("y", T0 + 2), "gone": None})
            # announced in the same statement: a create batch stays one round trip
            assert len(a._statements(Batch(ops={"x": plan("x", T0)}))) == 1
            assert len(a._statements(batch)) == 3  # a delete, the puts, the hint
            await a.apply(batch)
            await a.apply(Batch(ops={f"bulk{i:04d}": plan(f"bulk{i:04d}", T0) for i in range(900)}))
            await a.apply(Batch(meta={"m": "1"}))  # no API write: no hint

            await wait_until_async(lambda: len(heard) >= 2, 30)
            assert heard[0] == ChangeHint("a", ("x", "y", "gone"), T0 + 2)
            # too many keys to name: the hint says so
            assert heard[1] == ChangeHint("a", None, T0)
            assert len(heard) == 2 and own == []  # a node does not hear itself
            await b.lease_backend().release("b", {})  # nothing held: nothing announced
            leases = a.lease_backend()
            await leases.heartbeat("a", "i1", "", 5000)
            got = await leases.acquire("a", "", 5000, 2)
            assert await leases.release("a", {g.lease.partition: g.lease.epoch for g in got}) == 2
            await wait_until_async(lambda: released, 30)
            assert released == ["a"]
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())
