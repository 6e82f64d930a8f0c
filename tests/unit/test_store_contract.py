"""The store contract (forsun_box.testing.store_contract) run against every built-in
driver, plus driver-specific checks.

The contract tests go through the public :class:`~forsun_box.store.base.Store`
interface only, so any new driver can be added to :func:`factory` below.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from forsun_box.errors import StartupError, StoreError
from forsun_box.plan import Plan
from forsun_box.store import DRIVERS, Advance, Batch, Run, Store
from forsun_box.store.memory import MemoryStore, read_snapshot
from forsun_box.store.postgres import PostgresStore
from forsun_box.store.redis import RedisStore
from forsun_box.store.sqlite import SqliteStore
from forsun_box.store.sqlite import opening as sqlite_opening
from forsun_box.store.sqlite import queries as sqlite_queries
from forsun_box.store.sqlite import schema as sqlite_schema
from forsun_box.store.sqlite import store as sqlite_driver
from forsun_box.store.sqlite.schema import MIGRATIONS
from forsun_box.testing.store_contract import T0, Factory, StoreContract, plan, put, run
from tests.helpers import wait_until_async

# real redis-server and PostgreSQL fixtures for the redis and postgres drivers
pytest_plugins = ["tests.servers"]


def make_factory(driver: str, tmp_path: Path, redis_port: int = 0, dsn: str = "") -> Factory:
    # A namespace of its own per test: a real server is shared by the session.
    namespace = f"contract-{tmp_path.name}"

    def make(**kwargs: Any) -> Store:
        if driver == "sqlite":
            return SqliteStore(str(tmp_path / "plans.db"), **kwargs)
        if driver == "redis":
            return RedisStore(port=redis_port, prefix=namespace, **kwargs)
        if driver == "postgres":
            return PostgresStore(dsn=dsn, **kwargs)
        kwargs.setdefault("snapshot_interval_s", 3600.0)
        return MemoryStore(str(tmp_path / "plans.snapshot"), **kwargs)

    return make


@pytest.fixture(params=["sqlite", "mem", "redis", "postgres"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """Builds a store of the driver under test; calling it again reopens the same data.

    ``redis`` and ``postgres`` run against real servers (tests/servers.py), the
    latter in a fresh database per test: skipped when not installed, a failure
    under CI.
    """
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        return make_factory("redis", tmp_path, server.port)
    if request.param == "postgres":
        return make_factory("postgres", tmp_path, dsn=request.getfixturevalue("postgres_dsn"))
    return make_factory(request.param, tmp_path)


class TestStoreContract(StoreContract):
    """The whole contract, once per driver of :func:`factory`."""


def test_registered_driver_names() -> None:
    assert DRIVERS["sqlite"] is SqliteStore and SqliteStore.name == "sqlite"
    assert DRIVERS["mem"] is MemoryStore and MemoryStore.name == "mem"
    assert DRIVERS["redis"] is RedisStore and RedisStore.name == "redis"
    assert DRIVERS["postgres"] is PostgresStore and PostgresStore.name == "postgres"


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
    # when the state was taken (what a crash keeps: every change acknowledged before it)
    assert 0 < header["taken_ms"] <= header["written_ms"] <= time.time() * 1000
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
            snapshot = await wait_until_async(lambda: b"periodic-key" in path.read_bytes(), 10)
            assert snapshot, "no snapshot within 10 s"
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
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION
