"""Which node fired a run, and the epoch in the firing id: the dispatcher's
records and ids, the stores reading records written before the field was
there (sqlite and postgres migrations, redis records, mem snapshots), the v2
run shape and ``info``."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import orjson

from forsun_box.actions import Action, register_action
from forsun_box.actions.base import ActionSettings
from forsun_box.api.formats import v2_schema
from forsun_box.dispatcher import Dispatcher
from forsun_box.plan import Plan
from forsun_box.stats import Stats
from forsun_box.store import Batch, Run
from forsun_box.store import redis as redis_store
from forsun_box.store.memory import MemoryStore
from forsun_box.store.postgres import PostgresStore
from forsun_box.store.postgres import schema as pg_schema
from forsun_box.store.sqlite import SqliteStore
from forsun_box.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION
from forsun_box.testing import FakeClock

pytest_plugins = ["tests.servers"]

T0 = 1_767_225_600_000


class Seen(Action):
    ids: ClassVar[list[str]] = []

    async def execute(self) -> None:
        Seen.ids.append(self.firing_id)


register_action("seen-id", Seen)


def _dispatcher(runs: list[Run]) -> Dispatcher:
    return Dispatcher(ActionSettings(), FakeClock(T0), runs.append, lambda *a: None, Stats())


def test_a_single_node_fires_under_epoch_0_and_records_no_node() -> None:
    runs: list[Run] = []
    Seen.ids = []
    d = _dispatcher(runs)
    plan = Plan(key="k", kind="at", action="seen-id", params={}, version=1)
    assert asyncio.run(d.run(plan, T0)) == 1
    assert Seen.ids == [f"0:{T0}:k"]
    assert [r.node_id for r in runs] == [""]


def test_a_cluster_node_fires_under_the_partition_epoch_and_records_itself() -> None:
    runs: list[Run] = []
    Seen.ids = []
    d = _dispatcher(runs)
    d.node_id = "node-a"
    epochs = {"k1": "7", "k2": "12"}
    d.epoch_of = lambda p: epochs[p.key]

    async def main() -> None:
        for key in ("k1", "k2"):
            plan = Plan(key=key, kind="at", action="seen-id", params={}, version=1)
            assert await d.run(plan, T0) == 1

    asyncio.run(main())
    assert Seen.ids == [f"7:{T0}:k1", f"12:{T0}:k2"]
    assert [(r.key, r.node_id) for r in runs] == [("k1", "node-a"), ("k2", "node-a")]


class Ready:
    def __init__(self, fid: str) -> None:
        self.fid = fid
        self.discarded = False

    def start(self, done: Any) -> None:
        Seen.ids.append(self.fid)
        asyncio.get_running_loop().call_soon(done, None)

    def discard(self) -> None:
        self.discarded = True


class Preparing(Action):
    made: ClassVar[list[Ready]] = []

    def prepare(self) -> Ready:
        ready = Ready(self.firing_id)
        Preparing.made.append(ready)
        return ready

    async def execute(self) -> None:
        raise AssertionError("a preparing action is started, not executed")


register_action("preparing-id", Preparing)


def test_a_firing_prepared_under_an_older_epoch_is_made_again() -> None:
    Seen.ids = []
    Preparing.made = []
    d = _dispatcher([])
    epoch = {"now": "3"}
    d.epoch_of = lambda p: epoch["now"]
    plan = Plan(key="k", kind="at", action="preparing-id", params={}, version=1)

    async def main() -> None:
        assert d.prepare([(plan, T0)]) == 1
        epoch["now"] = "5"  # lost and taken back before the instant
        result = d.start_firing(plan, T0)
        assert not isinstance(result, int)
        assert await result == 1

    asyncio.run(main())
    first, second = Preparing.made
    assert first.discarded and not second.discarded
    assert Seen.ids == [f"5:{T0}:k"]


def test_sqlite_migrates_a_version_3_database_its_runs_fired_by_no_node(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    con = sqlite3.connect(path)
    for script in MIGRATIONS[:3]:
        con.executescript(script)
    con.execute(
        "INSERT INTO runs (key, due_ms, started_ms, duration_ms, attempt, result, error, "
        "action, manual) VALUES ('old', 1, 2, 3, 1, 1, '', 'shell', 1)"
    )
    con.execute("PRAGMA user_version = 3")
    con.commit()
    con.close()

    async def body() -> list[Run]:
        store = SqliteStore(str(path))
        await store.open()
        try:
            await store.apply(Batch(runs=[Run("old", 5, 6, 1, 1, 1, "", "shell", False, "b")]))
            return await store.runs("old")
        finally:
            await store.close()

    assert asyncio.run(body()) == [
        Run("old", 5, 6, 1, 1, 1, "", "shell", False, "b"),
        Run("old", 1, 2, 3, 1, 1, "", "shell", True, ""),
    ]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


def test_postgres_migrates_a_version_2_database_its_runs_fired_by_no_node(
    postgres_dsn: str,
) -> None:
    async def main() -> list[Run]:
        store = PostgresStore(dsn=postgres_dsn, partitions=8)
        await store.open()
        await store.close()
        conn = await asyncpg.connect(postgres_dsn)
        try:
            await conn.execute("ALTER TABLE runs DROP COLUMN node_id")
            await conn.execute("UPDATE forsun_box_schema SET version = 2")
            await conn.execute(
                "INSERT INTO runs (key, due_ms, started_ms, duration_ms, attempt, result, "
                "error, action, manual) VALUES ('old', 1, 2, 3, 1, 1, '', 'shell', true)"
            )
        finally:
            await conn.close()
        again = PostgresStore(dsn=postgres_dsn, partitions=8)
        await again.open()
        try:
            await again.apply(Batch(runs=[Run("old", 5, 6, 1, 1, 1, "", "shell", False, "b")]))
            return await again.runs("old")
        finally:
            await again.close()

    assert asyncio.run(main()) == [
        Run("old", 5, 6, 1, 1, 1, "", "shell", False, "b"),
        Run("old", 1, 2, 3, 1, 1, "", "shell", True, ""),
    ]
    assert pg_schema.SCHEMA_VERSION == 3


def test_redis_run_records_of_every_age_read_back() -> None:
    old8 = orjson.dumps([2, "k", 1, 3, 1, 1, "", "shell"])
    old9 = orjson.dumps([2, "k", 1, 3, 1, 1, "", "shell", 1])
    assert redis_store._load_run(old8) == Run("k", 1, 2, 3, 1, 1, "", "shell", False, "")
    assert redis_store._load_run(old9) == Run("k", 1, 2, 3, 1, 1, "", "shell", True, "")
    for run in (
        Run("k", 1, 2, 3, 1, 1, "", "shell", False, "a"),
        Run("k", 1, 2, 3, 1, 1, "", "shell", True, "a"),
        Run("k", 1, 2, 3, 1, 1, "", "shell", True, ""),
        Run("k", 1, 2, 3, 1, 1, "", "shell"),
    ):
        assert redis_store._load_run(redis_store._run_json(run)) == run
    # a single node's records keep their old shape
    assert len(orjson.loads(redis_store._run_json(Run("k", 1, 2, 3, 1, 1, "", "shell")))) == 8


def test_a_mem_snapshot_written_before_node_ids_reads_them_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "mem.snapshot"

    async def write() -> None:
        store = MemoryStore(str(path))
        await store.open()
        await store.apply(Batch(runs=[Run("k", 1, 2, 3, 1, 1, "", "shell", True, "a")]))
        await store.close()

    asyncio.run(write())
    # rewrite it as an older version did: no node_id field in the header or the records
    lines = path.read_bytes().splitlines()
    header = orjson.loads(lines[0])
    assert header["run_fields"][-1] == "node_id"
    header["run_fields"] = header["run_fields"][:-1]
    out = [orjson.dumps(header)]
    for line in lines[1:]:
        record = orjson.loads(line)
        out.append(orjson.dumps(record[:-1] if record[0] == "r" else record))
    path.write_bytes(b"\n".join(out) + b"\n")

    async def read() -> list[Run]:
        store = MemoryStore(str(path))
        await store.open()
        try:
            return await store.runs("k")
        finally:
            await store.close()

    assert asyncio.run(read()) == [Run("k", 1, 2, 3, 1, 1, "", "shell", True, "")]


def test_v2_runs_name_the_node() -> None:
    assert v2_schema.run_to_v2(Run("k", 1, 2, 3, 1, 1, "", "shell", False, "a"))["node_id"] == "a"
    assert v2_schema.run_to_v2(Run("k", 1, 2, 3, 1, 1, "", "shell"))["node_id"] is None
