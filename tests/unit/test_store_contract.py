"""The store contract, run against every built-in driver, plus driver-specific checks.

The contract tests go through the public :class:`~forsun_box.store.base.Store`
interface only, so any new driver can be added to :data:`DRIVERS` below.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from forsun_box.errors import StartupError, StoreError
from forsun_box.plan import Plan
from forsun_box.store import DRIVERS, Advance, Batch, Run, Store
from forsun_box.store.memory import MemoryStore, read_snapshot
from forsun_box.store.redis import RedisStore
from forsun_box.store.sqlite import SqliteStore
from forsun_box.store.sqlite import opening as sqlite_opening
from forsun_box.store.sqlite import queries as sqlite_queries
from forsun_box.store.sqlite import schema as sqlite_schema
from forsun_box.store.sqlite import store as sqlite_driver
from forsun_box.store.sqlite.schema import MIGRATIONS

# the redis_server fixture (a real redis-server) for the redis driver
pytest_plugins = ["tests.servers"]

T0 = 1_700_000_000_000
MAX_CHAR = chr(0x10FFFF)

Factory = Callable[..., Store]


def make_factory(driver: str, tmp_path: Path, redis_port: int = 0) -> Factory:
    # A namespace of its own per test: a real server is shared by the session.
    namespace = f"contract-{tmp_path.name}"

    def make(**kwargs: Any) -> Store:
        if driver == "sqlite":
            return SqliteStore(str(tmp_path / "plans.db"), **kwargs)
        if driver == "redis":
            return RedisStore(port=redis_port, prefix=namespace, **kwargs)
        kwargs.setdefault("snapshot_interval_s", 3600.0)
        return MemoryStore(str(tmp_path / "plans.snapshot"), **kwargs)

    return make


@pytest.fixture(params=["sqlite", "mem", "redis"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """Builds a store of the driver under test; calling it again reopens the same data.

    ``redis`` runs against a real redis-server (tests/servers.py): skipped when
    it is not installed, a failure under CI.
    """
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        return make_factory("redis", tmp_path, server.port)
    return make_factory(request.param, tmp_path)


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


def test_registered_driver_names() -> None:
    assert DRIVERS["sqlite"] is SqliteStore and SqliteStore.name == "sqlite"
    assert DRIVERS["mem"] is MemoryStore and MemoryStore.name == "mem"
    assert DRIVERS["redis"] is RedisStore and RedisStore.name == "redis"


# -- contract ---------------------------------------------------------------


def test_put_get_replace_delete(factory: Factory) -> None:
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


def test_every_field_round_trips_and_survives_reopen(factory: Factory) -> None:
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


def test_stored_plans_are_not_shared_with_the_caller(factory: Factory) -> None:
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


def test_advances_apply_only_to_the_current_version(factory: Factory) -> None:
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


def test_statuses_apply_only_to_the_current_version(factory: Factory) -> None:
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


def test_batch_applies_ops_before_advances(factory: Factory) -> None:
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
        assert (got.version, got.next_time, got.current_count, got.status) == (2, T0 + 20, 1, -1)
        assert [r.error for r in await store.runs("a")] == ["boom"]
        assert await store.get_meta("processed_until") == str(T0 + 10)

    run(factory, body)


def test_due_orders_by_time_then_key_and_pages_by_keyset(factory: Factory) -> None:
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


def test_due_follows_replace_pause_and_delete(factory: Factory) -> None:
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


def test_firing_between_is_start_inclusive_end_exclusive(factory: Factory) -> None:
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


@pytest.mark.parametrize(
    "prefix",
    ["", "a", "a%", "a_", "ab", "é", "日本", "\ud7ff", "z", "z" + MAX_CHAR, MAX_CHAR, "🔑", "q"],
)
def test_keys_and_plans_by_prefix(factory: Factory, prefix: str) -> None:
    expected = sorted(k for k in KEYS if k.startswith(prefix))

    async def body(store: Store) -> None:
        await put(store, *(plan(k, T0) for k in KEYS))
        assert await store.keys(prefix) == expected
        assert [p.key for p in await store.plans(prefix, limit=0)] == expected
        assert await store.keys(prefix, limit=2) == expected[:2]
        assert [p.key for p in await store.plans(prefix, limit=2)] == expected[:2]
        for i, after in enumerate(expected):
            assert await store.keys(prefix, after=after) == expected[i + 1 :]
            assert [p.key for p in await store.plans(prefix, after, 3)] == expected[i + 1 : i + 4]
        # An ``after`` below the prefix changes nothing; one above it ends the listing.
        assert await store.keys(prefix, after="\x01") == expected
        assert await store.keys(prefix, after=MAX_CHAR * 3) == []

    run(factory, body)


def test_plans_default_limit_and_count(factory: Factory) -> None:
    async def body(store: Store) -> None:
        await put(store, *(plan(f"k{i:03d}", T0 + i) for i in range(150)))
        assert await store.count() == 150
        listed = await store.plans()
        assert [p.key for p in listed] == [f"k{i:03d}" for i in range(100)]
        assert len(await store.keys()) == 150
        assert await store.keys("k14") == [f"k14{i}" for i in range(10)]

    run(factory, body)


def test_runs_newest_first_bounded_and_pruned(factory: Factory) -> None:
    async def body(store: Store) -> None:
        runs = [Run("a", T0 + i, T0 + i * 1000, 7, 1, 1, action="shell") for i in range(5)]
        await store.apply(Batch(runs=runs[:2]))
        await store.apply(Batch(runs=[*runs[2:], Run("b", T0, T0 + 9000, 1, 2, -1, "e", "http")]))
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


def test_meta(factory: Factory) -> None:
    async def body(store: Store) -> None:
        assert await store.get_meta("processed_until") is None
        await store.apply(Batch(meta={"processed_until": "123", "note": "é"}))
        await store.apply(Batch(meta={"processed_until": "456"}))
        assert await store.get_meta("processed_until") == "456"
        assert await store.get_meta("note") == "é"

    run(factory, body)


def test_reopen_persists_everything(factory: Factory) -> None:
    async def write(store: Store) -> None:
        await put(store, *(plan(f"p{i}", T0 + i, params={"i": str(i)}) for i in range(20)))
        await put(store, plan("paused", T0, paused=True))
        await store.apply(Batch(ops={"p0": None}, advances=[Advance("p1", 1, T0 + 99, 1, T0, 1)]))
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


def test_failed_batch_changes_nothing_and_the_store_keeps_working(factory: Factory) -> None:
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


def test_close_twice_is_harmless(factory: Factory) -> None:
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


def test_bulk_batch(factory: Factory) -> None:
    async def body(store: Store) -> None:
        plans = [plan(f"bulk:{i:05d}", T0 + (i * 7919) % 5000) for i in range(5000)]
        await put(store, *plans)
        assert await store.count() == 5000
        due = await store.due(None, T0 + 5000, 10_000)
        assert [(p.next_time, p.key) for p in due] == sorted((p.next_time, p.key) for p in plans)

    run(factory, body)


# -- sqlite -----------------------------------------------------------------


def sqlite_open(path: Path) -> SqliteStore:
    store = SqliteStore(str(path))
    asyncio.run(store.open())
    return store


def sqlite_fill(path: Path, *plans: Plan) -> None:
    """Store ``plans`` in a SQLite database at ``path`` and close it."""

    async def fill() -> None:
        store = SqliteStore(str(path))
        await store.open()
        await put(store, *plans)
        await store.close()

    asyncio.run(fill())


def test_sqlite_rejects_an_unknown_synchronous_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore(str(tmp_path / "x.db"), synchronous="SOMETIMES")
    assert SqliteStore(str(tmp_path / "x.db"), synchronous="full").synchronous == "FULL"


def test_sqlite_newer_schema_version_stops_startup(tmp_path: Path) -> None:
    path = tmp_path / "plans.db"
    asyncio.run(sqlite_open(path).close())
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StartupError) as e:
        sqlite_open(path)
    supported = len(sqlite_schema.MIGRATIONS)
    assert (
        f"database schema version 99 is newer than this forsun-box supports ({supported})"
        in str(e.value)
    )


def test_sqlite_garbage_file_stops_startup(tmp_path: Path) -> None:
    path = tmp_path / "plans.db"
    path.write_bytes(b"this is not a database\n" * 300)
    with pytest.raises(StartupError) as e:
        sqlite_open(path)
    assert str(path) in str(e.value)
    assert "not a database" in str(e.value)
    assert path.read_bytes() == b"this is not a database\n" * 300  # left untouched


def test_sqlite_damaged_database_stops_startup(tmp_path: Path) -> None:
    path = tmp_path / "plans.db"

    sqlite_fill(path, *(plan(f"k{i:05d}", T0 + i, params={"p": "x" * 200}) for i in range(2000)))
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(3 * page, len(data) - page, 7 * page):
        data[offset + 100 : offset + 400] = os.urandom(300)  # scribble over b-tree pages
    path.write_bytes(bytes(data))
    with pytest.raises(StartupError) as e:
        sqlite_open(path)
    assert str(path) in str(e.value)


def test_sqlite_unusable_paths_stop_startup(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(StartupError, match="directory"):
        sqlite_open(tmp_path / "a-directory")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StartupError, match="a-file"):
        sqlite_open(blocker / "plans.db")


def test_sqlite_unwritable_directory_stops_startup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, where permissions don't bite; pretend the directory is read-only.
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode)
    )
    with pytest.raises(StartupError, match="not writable"):
        sqlite_open(tmp_path / "plans.db")


def test_sqlite_full_disk_fails_the_batch_and_the_store_recovers(tmp_path: Path) -> None:
    async def body() -> None:
        store = SqliteStore(str(tmp_path / "plans.db"))
        await store.open()
        try:
            await put(store, plan("kept", T0))
            db = store._db
            assert db is not None
            pages = await db.fetchall("PRAGMA page_count")
            # Cap the file just above its size: a big batch then hits "database or disk is full".
            await db.fetchall(f"PRAGMA max_page_count = {next(iter(pages))[0] + 2}")
            big = [plan(f"big{i}", T0, params={"x": "y" * 500}) for i in range(200)]
            with pytest.raises(StoreError, match="full"):
                await put(store, *big)
            assert await store.keys() == ["kept"]
            await db.fetchall("PRAGMA max_page_count = 1073741823")
            await put(store, *big)
            assert await store.count() == 201
        finally:
            await store.close()

    asyncio.run(body())


def test_sqlite_creates_the_schema_and_checkpoints_at_close(tmp_path: Path) -> None:
    path = tmp_path / "data" / "plans.db"

    async def body() -> None:
        store = SqliteStore(str(path))
        await store.open()
        await put(store, plan("a", T0))
        assert await store.size_bytes() > 0
        await store.close()

    asyncio.run(body())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(sqlite_schema.MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"plans", "runs", "meta"} <= tables
    wal = Path(str(path) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_sqlite_queries_use_the_indexes(tmp_path: Path) -> None:
    path = tmp_path / "plans.db"
    asyncio.run(sqlite_open(path).close())
    with sqlite3.connect(path) as conn:

        def plan_of(sql: str, args: tuple[Any, ...]) -> str:
            return " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))

        for sql, args in [
            (sqlite_queries.DUE_FIRST_SQL, (T0, 10)),
            (sqlite_queries.DUE_AFTER_SQL, (T0, "a", T0 + 1, 10)),
            (sqlite_queries.FIRING_BETWEEN_SQL, (T0, T0 + 1, 10)),
        ]:
            used = plan_of(sql, args)
            assert "USING INDEX plans_due" in used and "TEMP B-TREE" not in used, used
        for columns in ("key", "*"):
            sql, args = sqlite_queries.key_range_sql(columns, "ab%", "", 10)
            used = plan_of(sql, args)
            assert "sqlite_autoindex_plans_1 (key>? AND key<?)" in used, used
            assert "TEMP B-TREE" not in used, used


# -- mem --------------------------------------------------------------------


def mem_open(path: Path, **kwargs: Any) -> MemoryStore:
    store = MemoryStore(str(path), **kwargs)
    asyncio.run(store.open())
    return store


def write_good_snapshot(path: Path) -> bytes:
    async def body() -> None:
        store = MemoryStore(str(path))
        await store.open()
        await put(store, *(plan(f"k{i}", T0 + i, params={"i": str(i)}) for i in range(10)))
        await store.apply(Batch(runs=[Run("k1", T0, T0, 1, 1, 1)], meta={"m": "v"}))
        await store.close()

    asyncio.run(body())
    return path.read_bytes()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: b"\x00\xff garbage" + data, "not a forsun-box mem snapshot"),
        (lambda data: b"", "empty"),
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[: data.rindex(b'["end"]')], "truncated"),
        (lambda data: data.replace(b'"version":1', b'"version":7', 1), "version 7"),
        (lambda data: data.replace(b'["p","k3"', b'["p",,"k3"', 1), "line"),
        (lambda data: data.replace(b'["p","k3"', b'["x","k3"', 1), "line"),
        (lambda data: data.replace(b'"plans":10', b'"plans":11', 1), "header says"),
    ],
    ids=[
        "garbage",
        "empty",
        "cut-mid-line",
        "cut-at-line",
        "version",
        "bad-json",
        "bad-tag",
        "count",
    ],
)
def test_mem_unreadable_snapshot_stops_startup(
    tmp_path: Path, damage: Callable[[bytes], bytes], reason: str
) -> None:
    path = tmp_path / "plans.snapshot"
    damaged = damage(write_good_snapshot(path))
    path.write_bytes(damaged)
    with pytest.raises(StartupError) as e:
        mem_open(path)
    assert str(path) in str(e.value)
    assert reason in str(e.value)
    assert path.read_bytes() == damaged  # never replaced by an empty store


def test_mem_snapshot_format_has_a_versioned_header(tmp_path: Path) -> None:
    import orjson

    path = tmp_path / "plans.snapshot"
    lines = write_good_snapshot(path).splitlines()
    header = orjson.loads(lines[0])
    assert header["format"] == "forsun-box-mem" and header["version"] == 1
    assert (header["plans"], header["runs"], header["meta"]) == (10, 1, 1)
    assert orjson.loads(lines[-1]) == ["end"]
    assert not (tmp_path / "plans.snapshot.tmp").exists()


def test_mem_missing_snapshot_is_an_empty_store(tmp_path: Path) -> None:
    async def body() -> None:
        store = MemoryStore(str(tmp_path / "sub" / "new.snapshot"))
        await store.open()
        assert await store.count() == 0
        await store.close()

    asyncio.run(body())
    assert (tmp_path / "sub" / "new.snapshot").exists()


def test_mem_without_path_keeps_nothing(tmp_path: Path) -> None:
    async def body() -> None:
        store = MemoryStore(None)
        await store.open()
        await put(store, plan("a", T0))
        assert await store.keys() == ["a"]
        assert await store.size_bytes() == 0
        await store.close()
        again = MemoryStore(None)
        await again.open()
        assert await again.count() == 0
        await again.close()

    asyncio.run(body())
    assert list(tmp_path.iterdir()) == []


def test_mem_unusable_path_stops_startup(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StartupError, match="a-file"):
        mem_open(blocker / "plans.snapshot")
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(StartupError, match="a-directory"):
        mem_open(tmp_path / "a-directory")


def test_mem_snapshots_periodically(tmp_path: Path) -> None:
    path = tmp_path / "plans.snapshot"

    async def body() -> None:
        store = MemoryStore(str(path), snapshot_interval_s=0.05)
        await store.open()
        try:
            await put(store, plan("periodic-key", T0))
            deadline = time.monotonic() + 10
            while b"periodic-key" not in path.read_bytes():
                assert time.monotonic() < deadline, "no snapshot within 10 s"
                await asyncio.sleep(0.02)
            # What was written periodically reads back on its own.
            plans, _, _ = read_snapshot(str(path))
            assert [p.key for p in plans] == ["periodic-key"]
        finally:
            await store.close()

    asyncio.run(body())


# -- redis ------------------------------------------------------------------


@pytest.fixture
def redis_port(request: pytest.FixtureRequest) -> int:
    return int(request.getfixturevalue("redis_server").port)


def test_redis_namespaces_are_per_server_id_and_locked(redis_port: int, tmp_path: Path) -> None:
    prefix = f"nodes-{tmp_path.name}"

    async def main() -> None:
        node1 = RedisStore(port=redis_port, prefix=prefix, server_id=1)
        await node1.open()
        try:
            twin = RedisStore(port=redis_port, prefix=prefix, server_id=1)
            with pytest.raises(StartupError, match="in use by another forsun-box node"):
                await twin.open()
            node2 = RedisStore(port=redis_port, prefix=prefix, server_id=2)
            await node2.open()
            await put(node1, plan("only-on-1", T0))
            assert await node2.keys() == [] and await node2.due(None, T0 + 1, 10) == []
            assert await node1.keys() == ["only-on-1"]
            await node2.close()
        finally:
            await node1.close()
        # released at close: the next node with that id starts
        again = RedisStore(port=redis_port, prefix=prefix, server_id=1)
        await again.open()
        assert await again.keys() == ["only-on-1"]
        await again.close()

    asyncio.run(main())


def test_redis_lock_of_a_dead_local_process_is_taken_over(redis_port: int, tmp_path: Path) -> None:
    import socket
    import subprocess

    import redis as redis_sync

    dead = subprocess.Popen(["true"])
    dead.wait()
    prefix = f"stale-{tmp_path.name}"
    redis_sync.Redis(port=redis_port).set(
        f"{prefix}:0:owner", f"{socket.gethostname()}:{dead.pid}:x", px=60_000
    )
    store = RedisStore(port=redis_port, prefix=prefix)

    async def main() -> None:
        await store.open()
        await store.close()

    asyncio.run(main())


def test_redis_unreachable_server_stops_startup() -> None:
    from tests.helpers import free_port

    store = RedisStore(port=free_port(), connect_timeout=2)
    with pytest.raises(StartupError, match=r"cannot use the redis 127\.0\.0\.1"):
        asyncio.run(store.open())


def test_redis_driver_is_built_from_the_config(redis_port: int, tmp_path: Path) -> None:
    from forsun_box.app import make_store
    from forsun_box.config import Config

    config = Config(
        driver="redis",
        store_redis_port=redis_port,
        store_redis_db=2,
        store_redis_prefix="cfg",
        store_redis_server_id=7,
        max_runs_per_key=4,
        run_retention_days=1,
        data_dir=str(tmp_path),
    )
    store = make_store(config)
    assert isinstance(store, RedisStore)
    assert (store.port, store.db, store.base, store.max_runs_per_key) == (redis_port, 2, "cfg:7", 4)
    assert store.run_retention_ms == 86_400_000


def test_redis_large_batches_are_chunked_in_one_transaction(
    redis_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from forsun_box.store import redis as redis_driver

    monkeypatch.setattr(redis_driver, "APPLY_CHUNK_ARGS", 25)  # a few operations per call

    async def body(store: Store) -> None:
        await put(store, *(plan(f"c{i:02d}", T0 + i) for i in range(20)))
        await store.apply(
            Batch(
                ops={"c00": None, "c01": plan("c01", T0 + 100, version=2)},
                advances=[Advance("c02", 1, T0 + 50, 1, T0, 1), Advance("c03", 1, None, 1, T0, 1)],
                statuses=[("c04", 1, -1)],
                runs=[Run("c05", T0, T0, 1, 1, 1)],
                meta={"processed_until": "9"},
            )
        )
        assert await store.count() == 18
        due = [p.key for p in await store.due(None, T0 + 1000, 100)]
        assert due == [f"c{i:02d}" for i in range(4, 20)] + ["c02", "c01"]
        c04 = await store.get("c04")
        assert c04 is not None and c04.status == -1
        assert len(await store.runs("c05")) == 1
        assert await store.get_meta("processed_until") == "9"

    run(make_factory("redis", tmp_path, redis_port), body)


def test_sqlite_startup_probes_use_an_index_each(tmp_path: Path) -> None:
    """Above the full-check size, start-up reads only both ends of each b-tree:
    no probe may scan or sort a table (that would cost seconds at 10M plans)."""
    import sqlite3

    path = tmp_path / "plans.db"
    asyncio.run(sqlite_open(path).close())  # creates the schema
    conn = sqlite3.connect(path)
    try:
        for probe in sqlite_opening.PROBES:
            plan_rows = conn.execute("EXPLAIN QUERY PLAN " + probe).fetchall()
            detail = " ".join(str(r[-1]) for r in plan_rows)
            # in b-tree order, LIMIT 1 stops at the first row; a sort would read them all
            assert "TEMP B-TREE" not in detail, (probe, detail)
            if "WHERE" in probe:  # a filter must come from the partial index, not a scan
                assert "INDEX plans_due" in detail, (probe, detail)
    finally:
        conn.close()


def test_sqlite_large_damaged_database_is_caught_by_the_probes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "plans.db"

    sqlite_fill(path, *(plan(f"k{i:05d}", T0 + i, params={"p": "x" * 200}) for i in range(2000)))
    # every database counts as large: the probes run instead of quick_check
    monkeypatch.setattr(sqlite_opening, "FULL_CHECK_MAX_BYTES", 0)
    asyncio.run(sqlite_open(path).close())  # an intact database passes the probes
    data = bytearray(path.read_bytes())
    page = 4096
    last = len(data) // page - 1
    data[last * page : (last + 1) * page] = os.urandom(page)  # the last page: a b-tree's end
    data[2 * page : 3 * page] = os.urandom(page)
    path.write_bytes(bytes(data))
    with pytest.raises(StartupError) as e:
        sqlite_open(path)
    assert str(path) in str(e.value)


def test_sqlite_plan_count_is_kept_exact_by_every_commit(tmp_path: Path) -> None:
    """count() is answered from a number every commit keeps (a count(*) of 10M rows
    would hold the store for seconds): it must match the table through inserts,
    replacements, removals, finishing and moving advances, a failed commit and a reopen."""
    path = tmp_path / "plans.db"

    def real_count() -> int:
        conn = sqlite3.connect(path)
        try:
            return int(conn.execute("SELECT count(*) FROM plans").fetchone()[0])
        finally:
            conn.close()

    async def scenario() -> list[int]:
        seen = []
        store = SqliteStore(str(path))
        await store.open()
        await put(store, *(plan(f"k{i}", T0 + i, version=1) for i in range(10)))
        seen.append(await store.count())  # 10 new
        await put(store, plan("k1", T0, version=2), plan("k2", T0, version=2), plan("n1", T0))
        seen.append(await store.count())  # 2 replaced, 1 new: 11
        batch = Batch()
        batch.ops["k3"] = None
        batch.ops["missing"] = None
        batch.advances.append(Advance("k4", 1, None, 1, T0, 0))  # finished: deleted
        batch.advances.append(Advance("k5", 1, T0 + 9, 1, T0, 0))  # moved: stays
        batch.advances.append(Advance("k6", 99, None, 1, T0, 0))  # stale version: no-op
        await store.apply(batch)
        seen.append(await store.count())  # 11 - 2 = 9
        bad = Batch()
        bad.ops["zz"] = None
        bad.ops["k7"] = None
        bad.ops["new"] = plan("new", T0)
        bad.ops["new"].kind = None  # type: ignore[assignment]  # NOT NULL: the commit fails
        with pytest.raises(StoreError):
            await store.apply(bad)
        seen.append(await store.count())  # rolled back: still 9
        await store.close()
        reopened = SqliteStore(str(path))
        await reopened.open()
        seen.append(await reopened.count())
        await reopened.close()
        return seen

    assert asyncio.run(scenario()) == [10, 11, 9, 9, 9]
    assert real_count() == 9


def test_sqlite_plan_count_of_a_database_without_one_is_counted_once(tmp_path: Path) -> None:
    path = tmp_path / "plans.db"

    sqlite_fill(path, *(plan(f"k{i}", T0 + i) for i in range(7)))
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM meta WHERE name = 'plan_count'")  # as an older version left it
    conn.commit()
    conn.close()
    store = SqliteStore(str(path))

    async def count() -> int:
        await store.open()
        try:
            return await store.count()
        finally:
            await store.close()

    assert asyncio.run(count()) == 7


def test_runs_bounded_per_key_within_one_big_batch(factory: Factory) -> None:
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


@pytest.mark.parametrize(("interval", "copied"), [(0.0, True), (3600.0, False)])
def test_sqlite_wal_is_checkpointed_by_the_store_not_by_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: float, copied: bool
) -> None:
    """SQLite's automatic checkpoint would run inside whichever commit crosses the
    threshold, possibly on the event loop; the store checkpoints after commits, at
    most every CHECKPOINT_INTERVAL_S, in the store's thread."""
    monkeypatch.setattr(sqlite_driver, "CHECKPOINT_INTERVAL_S", interval)
    path = tmp_path / "plans.db"

    async def scenario() -> int:
        store = SqliteStore(str(path))
        await store.open()
        try:
            empty = path.stat().st_size
            for n in range(40):  # ~2 MB of WAL: past SQLite's own 1000-page threshold
                await put(
                    store, *(plan(f"k{n}-{i}", T0 + i, params={"p": "x" * 400}) for i in range(100))
                )
            return path.stat().st_size - empty
        finally:
            await store.close()

    grown = asyncio.run(scenario())
    assert (grown > 1_000_000) is copied


def test_sqlite_too_old_stops_startup_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_opening.sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite_opening.sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(StartupError, match=r"SQLite 3\.31\.1 is too old.*3\.38\.0"):
        sqlite_open(tmp_path / "plans.db")
    assert not (tmp_path / "plans.db").exists()  # nothing created


def test_sqlite_migrates_a_version_2_database_keeping_its_runs(tmp_path: Path) -> None:
    # A database written before runs were marked manual: its runs read as scheduled.
    path = tmp_path / "v2.db"
    con = sqlite3.connect(path)
    con.executescript(MIGRATIONS[0])
    con.executescript(MIGRATIONS[1])
    con.execute(
        "INSERT INTO runs (key, due_ms, started_ms, duration_ms, attempt, result, error, action)"
        " VALUES ('old', 1, 2, 3, 1, 1, '', 'shell')"
    )
    con.execute("PRAGMA user_version = 2")
    con.commit()
    con.close()

    async def body() -> list[Run]:
        store = SqliteStore(str(path))
        await store.open()
        try:
            await store.apply(Batch(runs=[Run("old", 5, 6, 1, 1, 1, "", "shell", True)]))
            return await store.runs("old")
        finally:
            await store.close()

    assert asyncio.run(body()) == [
        Run("old", 5, 6, 1, 1, 1, "", "shell", True),
        Run("old", 1, 2, 3, 1, 1, "", "shell", False),
    ]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
