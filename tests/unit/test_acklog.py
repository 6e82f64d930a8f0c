"""The sqlite store's ack log: its file format, and writes acknowledged before they
reach the database (visible at once, surviving kill -9, cut back on a failed write)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forsun_box.errors import StartupError, StoreError
from forsun_box.plan import Plan
from forsun_box.store.base import Advance, Batch
from forsun_box.store.sqlite import SqliteStore
from forsun_box.store.sqlite import store as sqlite_driver
from forsun_box.store.sqlite.acklog import MAGIC, AckLog, AckLogDamaged
from forsun_box.store.sqlite.rows import Rows
from tests.helpers import wait_until_async

T0 = 1_700_000_000_000
ROOT = Path(__file__).resolve().parents[2]


def plan(key: str, next_time: int | None = T0, **kw: object) -> Plan:
    p = Plan(key=key, kind="timeout", action="shell", params={"cmd": "true"}, next_time=next_time)
    for name, value in kw.items():
        setattr(p, name, value)
    return p


def db_keys(where: Path | SqliteStore) -> list[str]:
    """The keys in the database itself, not through the store (its file, or the
    connection of an open store: it holds the file exclusively)."""
    sql = "SELECT key FROM plans ORDER BY key"
    if isinstance(where, SqliteStore):
        assert where._db is not None
        return [r[0] for r in where._db.conn.execute(sql)]
    conn = sqlite3.connect(where)
    try:
        return [r[0] for r in conn.execute(sql)]
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def opened(path: str, **kw: Any) -> AsyncIterator[SqliteStore]:
    """A sqlite store at ``path``, open for the block."""
    store = SqliteStore(path, **kw)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def create(path: Path) -> None:
    """An empty database at ``path``."""

    async def body() -> None:
        async with opened(str(path)):
            pass

    asyncio.run(body())


# -- the file ------------------------------------------------------------------


def test_records_round_trip_and_numbers_continue_after_truncate(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    ack = AckLog(path)
    assert ack.open() == []
    assert [ack.append(b"one"), ack.append(b""), ack.append(b"three")] == [1, 2, 3]
    ack.close()
    again = AckLog(path)
    assert again.open() == [(1, b"one"), (2, b""), (3, b"three")]
    again.truncate()
    assert again.append(b"four") == 4
    assert again.append(b"five") == 5
    again.rewrite([(5, b"five")])  # 4 is in the database: only 5 stays
    assert again.append(b"six") == 6
    again.close()
    assert AckLog(path).open() == [(5, b"five"), (6, b"six")]
    assert sorted(os.listdir(tmp_path)) == ["log"]


def write_log(path: Path, *payloads: bytes) -> bytes:
    """A log at ``path`` holding ``payloads`` as records 1, 2, ...; its bytes."""
    ack = AckLog(str(path))
    ack.open()
    for payload in payloads:
        ack.append(payload)
    ack.close()
    return path.read_bytes()


@pytest.mark.parametrize("cut", [1, 7, 16, 20])
def test_a_record_cut_short_at_the_end_is_dropped(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "log"
    whole = write_log(path, b"kept", b"never acknowledged")
    path.write_bytes(whole[: len(MAGIC) + 16 + 4 + cut])
    again = AckLog(str(path))
    assert again.open() == [(1, b"kept")]
    assert path.stat().st_size == len(MAGIC) + 16 + 4
    assert again.append(b"next") == 2
    again.close()
    assert AckLog(str(path)).open() == [(1, b"kept"), (2, b"next")]


def test_a_torn_last_record_is_dropped_but_damage_before_the_end_stops(tmp_path: Path) -> None:
    path = tmp_path / "log"
    whole = bytearray(write_log(path, b"first", b"second"))
    torn = bytearray(whole)
    torn[-1] ^= 0xFF  # the last record's payload
    path.write_bytes(bytes(torn))
    assert AckLog(str(path)).open() == [(1, b"first")]
    damaged = bytearray(whole)
    damaged[len(MAGIC) + 16] ^= 0xFF  # the first record's payload
    path.write_bytes(bytes(damaged))
    with pytest.raises(AckLogDamaged, match="checksum"):
        AckLog(str(path)).open()
    path.write_bytes(b"SQLite format 3\x00" + bytes(whole[len(MAGIC) :]))
    with pytest.raises(AckLogDamaged, match="not an ack log"):
        AckLog(str(path)).open()


def test_a_header_cut_short_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(MAGIC[:3])
    ack = AckLog(str(path))
    assert ack.open() == []
    assert path.read_bytes() == MAGIC


# -- the store -----------------------------------------------------------------


def test_logged_writes_are_read_at_once_and_folded_in_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "plans.db"
    # no fold until the test asks for one (however slow the machine)
    monkeypatch.setattr(sqlite_driver, "FOLD_DELAY_S", 3600.0)

    async def body() -> None:
        async with opened(str(path)) as store:
            await store.apply(Batch(ops={"a": plan("a"), "b": plan("b", T0 + 1)}))
            await store.apply(Batch(ops={"b": None, "c": plan("c", T0 + 2)}))
            # acknowledged, in the log, not yet in the database file
            assert Path(str(path) + sqlite_driver.ACKLOG_SUFFIX).stat().st_size > len(MAGIC)
            assert db_keys(store) == []
            got = await store.get("a")
            assert got is not None and got.params == {"cmd": "true"} and got.next_time == T0
            assert await store.get("b") is None
            # range reads lay the logged writes over what the database holds
            assert await store.keys() == ["a", "c"]
            assert [p.key for p in await store.plans(limit=1)] == ["a"]
            assert [p.key for p in await store.due(None, T0 + 10, 10)] == ["a", "c"]
            assert [p.key for p in await store.firing_between(T0 + 1, T0 + 3, 10)] == ["c"]
            assert await store.count_firing_between(T0, T0 + 3, 10) == 2
            assert await store.count() == 2
            assert db_keys(store) == []
            # with the usual delay, the fold comes by itself a few milliseconds later
            assert store._fold_timer is not None
            store._fold_timer.cancel()
            store._fold_timer = None
            monkeypatch.setattr(sqlite_driver, "FOLD_DELAY_S", 0.005)
            await store.apply(Batch(ops={"d": plan("d", T0 + 3)}))
            assert await wait_until_async(lambda: db_keys(store), 30)
            assert db_keys(store) == ["a", "c", "d"]
            assert store._overlay.rows == {}
            assert await store.count() == 3
        assert Path(str(path) + sqlite_driver.ACKLOG_SUFFIX).stat().st_size == len(MAGIC)

    asyncio.run(body())


def test_a_write_the_database_would_refuse_is_refused_before_it_is_logged(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(str(tmp_path / "plans.db")) as store:
            size = store._log.size if store._log else 0
            for bad in (plan("x", T0 + (1 << 63)), plan("\udcff"), plan("y", created_time="1")):
                with pytest.raises(StoreError):
                    await store.apply(Batch(ops={bad.key: bad}))
            assert store._log is not None and store._log.size == size
            assert await store.keys() == []

    asyncio.run(body())


def test_full_synchronous_commits_every_write_without_the_log(tmp_path: Path) -> None:
    path = tmp_path / "plans.db"

    async def body() -> None:
        async with opened(str(path), synchronous="FULL") as store:
            await store.apply(Batch(ops={"a": plan("a")}))
            assert db_keys(store) == ["a"]

    asyncio.run(body())
    assert not Path(str(path) + sqlite_driver.ACKLOG_SUFFIX).exists()


def test_a_slow_checkpoint_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # every checkpoint counts as slow here: the message names what it copied
    monkeypatch.setattr(sqlite_driver, "SLOW_CHECKPOINT_S", 0.0)
    monkeypatch.setattr(sqlite_driver, "CHECKPOINT_INTERVAL_S", 0.0)

    async def body() -> None:
        async with opened(str(tmp_path / "plans.db"), synchronous="FULL") as store:
            await store.apply(Batch(ops={"a": plan("a")}))

    with caplog.at_level("WARNING", logger="forsun_box"):
        asyncio.run(body())
    slow = [r.getMessage() for r in caplog.records if "checkpoint of" in r.getMessage()]
    assert slow and all(" s (" in m and "WAL frames)" in m for m in slow)


def test_a_failed_fold_keeps_the_writes_and_folds_them_when_space_returns(tmp_path: Path) -> None:
    path = tmp_path / "plans.db"

    async def body() -> None:
        async with opened(str(path)) as store:
            db = store._db
            assert db is not None
            pages = next(iter(await db.fetchall("PRAGMA page_count")))[0]
            await db.fetchall(f"PRAGMA max_page_count = {pages}")
            big = {f"k{i}": plan(f"k{i}", params={"x": "y" * 300}) for i in range(40)}
            await store.apply(Batch(ops=big))  # logged: acknowledged
            too_many = {f"m{i}": plan(f"m{i}") for i in range(sqlite_driver.INLINE_MAX_ROWS + 1)}
            with pytest.raises(StoreError, match="full"):
                await store.apply(Batch(ops=too_many))  # not logged: committed with the rest
            # its fold fails (the database is full), reads still see every logged write
            assert await store.keys() == sorted(big)
            assert await store.count() == 40
            got = await store.get("k7")
            assert got is not None and got.params == {"x": "y" * 300}
            assert db_keys(store) == []
            await db.fetchall("PRAGMA max_page_count = 1073741823")
            assert await wait_until_async(
                lambda: db_keys(store), 30
            )  # the fold is retried by itself
            assert db_keys(store) == sorted(big)
            assert await store.count() == 40

    asyncio.run(body())
    assert db_keys(path) == sorted(f"k{i}" for i in range(40))


CHILD = textwrap.dedent(
    """
    import asyncio, os, resource, signal, sys, time
    sys.path.insert(0, {root!r})
    from forsun_box.plan import Plan
    from forsun_box.store.sqlite import store as driver
    from forsun_box.store.base import Advance, Batch
    from forsun_box.errors import StoreError

    driver.FOLD_DELAY_S = 3600.0  # nothing folded in: all of it only in the log

    def plan(key):
        return Plan(key=key, kind="timeout", action="shell", params={{"cmd": "true"}},
                    next_time={t0})

    async def main():
        store = driver.SqliteStore({path!r})
        await store.open()
        for i in range(50):
            await store.apply(Batch(ops={{f"k{{i:02d}}": plan(f"k{{i:02d}}")}}))
        await store.apply(Batch(ops={{"k00": None, "k01": None}}))
        if {limit}:
            # The file may grow by a little more: the next record is cut short by
            # the kernel (a short write), the one after refused.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            size = os.path.getsize({path!r} + driver.ACKLOG_SUFFIX)
            resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, resource.RLIM_INFINITY))
            for key in ("big1", "big2"):
                p = plan(key)
                p.params = {{"x": "y" * 200}}
                try:
                    await store.apply(Batch(ops={{key: p}}))
                    print("acked", key, flush=True)
                except StoreError as e:
                    print("refused", key, e, flush=True)
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
            await store.apply(Batch(ops={{"k99": plan("k99")}}))
        print("acked", flush=True)
        time.sleep(60)  # alive, acked, until the test kills it

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("limit", [False, True], ids=["plain", "short-write"])
def test_acknowledged_writes_survive_kill_9(tmp_path: Path, limit: bool) -> None:
    path = tmp_path / "plans.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(root=str(ROOT), path=str(path), t0=T0, limit=limit)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        lines = []
        for line in child.stdout:
            lines.append(line.strip())
            if line.strip() == "acked":
                break
        assert lines and lines[-1] == "acked", lines
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert db_keys(path) == []  # nothing was folded in before the kill
    expected = [f"k{i:02d}" for i in range(2, 50)]
    if limit:
        assert [ln.split()[0] for ln in lines[:2]] == ["refused", "refused"], lines
        expected.append("k99")

    async def reopen() -> None:
        async with opened(str(path)) as store:
            assert await store.keys() == expected
            assert await store.count() == len(expected)

    asyncio.run(reopen())
    assert db_keys(path) == expected


def test_a_damaged_log_stops_startup(tmp_path: Path) -> None:
    path = tmp_path / "plans.db"
    create(path)
    log_path = Path(str(path) + sqlite_driver.ACKLOG_SUFFIX)
    ack = AckLog(str(log_path))
    ack.open()
    ack.append(b"not json")
    ack.append(b"[[], {}]")
    ack.close()
    with pytest.raises(StartupError, match="ack log"):
        asyncio.run(SqliteStore(str(path)).open())
    os.remove(log_path)


KEYS = st.sampled_from([f"{p}{i}" for p in ("a", "ab", "b") for i in range(4)])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), KEYS, st.integers(0, 9), st.booleans()),
        st.tuples(st.just("del"), KEYS, st.just(0), st.just(False)),
        st.tuples(st.just("fold"), st.just(""), st.just(0), st.just(False)),
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=OPS,
    limit=st.integers(1, 6),
    prefix=st.sampled_from(["", "a", "ab", "b"]),
    after=st.sampled_from(["", "a1", "ab2", "b0"]),
)
def test_reads_over_logged_writes_match_a_model(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    ops: list[tuple[str, str, int, bool]],
    limit: int,
    prefix: str,
    after: str,
) -> None:
    """Whatever mix of folded and logged writes, reads answer as if all were stored."""
    monkeypatch.setattr(sqlite_driver, "FOLD_DELAY_S", 3600.0)
    path = tmp_path_factory.mktemp("model") / "plans.db"

    async def body() -> None:
        model: dict[str, Plan] = {}
        async with opened(str(path)) as store:
            for op, key, t, paused in ops:
                if op == "put":
                    model[key] = plan(key, T0 + t, paused=paused)
                    await store.apply(Batch(ops={key: model[key].copy()}))
                elif op == "del":
                    model.pop(key, None)
                    await store.apply(Batch(ops={key: None}))
                else:
                    async with store._lock:
                        assert store._db is not None
                        await store._fold(store._db, None)
            keys = sorted(k for k in model if k.startswith(prefix) and (not after or k > after))
            assert await store.keys(prefix, after, limit) == keys[:limit]
            assert await store.keys(prefix, after) == keys
            assert [p.key for p in await store.plans(prefix, after, limit)] == keys[:limit]
            due = sorted((p.next_time, p.key) for p in model.values() if not p.paused)
            got = await store.due(None, T0 + 5, limit)
            assert [(p.next_time, p.key) for p in got] == [d for d in due if d[0] < T0 + 5][:limit]
            if got:
                last = (got[-1].next_time, got[-1].key)
                rest = await store.due(last, T0 + 10, 100)
                assert [(p.next_time, p.key) for p in rest] == [d for d in due if d > last]
            between = [d for d in due if T0 + 2 <= d[0] < T0 + 7]
            got = await store.firing_between(T0 + 2, T0 + 7, limit)
            assert [(p.next_time, p.key) for p in got] == between[:limit]
            assert await store.count_firing_between(T0 + 2, T0 + 7, limit) == min(
                len(between), limit
            )
            assert await store.count() == len(model)
            for key in model:
                assert await store.get(key) == model[key]
        async with opened(str(path)) as again:
            assert await again.keys() == sorted(model)
            assert await again.count() == len(model)

    asyncio.run(body())


def test_the_log_is_cut_back_under_a_steady_stream_of_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_driver, "LOG_TRUNCATE_BYTES", 16 << 10)
    path = tmp_path / "plans.db"

    async def body() -> int:
        async with opened(str(path)) as store:
            assert store._log is not None
            size = store._log.size
            cut = False
            n = 0
            deadline = time.monotonic() + 10
            # A steady stream, never a pause, until the log was cut back while
            # writes kept coming (bounded: fails after 10 s). Cutting back only when
            # nothing is pending would wait for a pause that never comes.
            while not cut and time.monotonic() < deadline:
                await store.apply(Batch(ops={f"k{n}": plan(f"k{n}", T0 + n)}))
                n += 1
                await asyncio.sleep(0)
                cut = store._log.size < size and store._overlay.pending != []
                size = store._log.size
            assert cut, f"not cut back while writes came in ({n} writes, {size} bytes)"
            assert await store.count() == n
            return n

    n = asyncio.run(body())
    assert len(db_keys(path)) == n


def test_a_fold_cancelled_in_flight_keeps_the_logged_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop cancels a caller while its fold runs in the thread: the logged writes it
    carried stay pending, and are in the database after the close."""
    monkeypatch.setattr(sqlite_driver, "FOLD_DELAY_S", 3600.0)
    path = tmp_path / "plans.db"

    async def body() -> None:
        async with opened(str(path)) as store:
            for i in range(10):
                await store.apply(Batch(ops={f"k{i}": plan(f"k{i}")}))
            big = {f"big{i}": plan(f"big{i}") for i in range(sqlite_driver.INLINE_MAX_ROWS + 1)}
            task = asyncio.create_task(store.apply(Batch(ops=big)))
            await asyncio.sleep(0)  # the fold (logged writes + big) is in the thread now
            assert store._overlay.pending == [] and store._lock.locked()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert [seq for seq, _, _ in store._overlay.pending] == list(range(1, 11))
            assert await store.keys("k") == [f"k{i}" for i in range(10)]

    asyncio.run(body())
    assert [k for k in db_keys(path) if k.startswith("k")] == [f"k{i}" for i in range(10)]


def test_a_write_acked_at_once_while_a_fold_runs_is_kept_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``apply_now`` while a fold of firing records runs in the store's thread: acked
    at once, read at once, ordered after the fold, and still in the log once the
    fold has cut the log back (what a crash then replays)."""
    monkeypatch.setattr(sqlite_driver, "FOLD_DELAY_S", 3600.0)
    monkeypatch.setattr(sqlite_driver, "LOG_TRUNCATE_BYTES", 0)
    path = tmp_path / "plans.db"
    in_thread, go = threading.Event(), threading.Event()

    class Held(SqliteStore):
        def _apply_rows(self, conn: sqlite3.Connection, rows: Rows) -> None:
            if rows.advances:
                in_thread.set()
                go.wait(10)
            super()._apply_rows(conn, rows)

    async def body() -> None:
        store = Held(str(path))
        await store.open()
        try:
            await store.apply(Batch(ops={"x": plan("x", version=1), "old": plan("old")}))
            fired = Advance("x", 1, T0 + 5, 1, T0, 1)
            task = asyncio.create_task(store.apply(Batch(advances=[fired])))
            assert await asyncio.to_thread(in_thread.wait, 10)
            assert store._lock.locked() and store._overlay.pending == []
            # a caller's write goes in the log at once; firing records never do
            assert not store.apply_now(Batch(advances=[fired]))
            replaced = plan("x", T0 + 99, version=2)
            assert store.apply_now(Batch(ops={"x": replaced, "y": plan("y"), "old": None}))
            assert store._get("x") == replaced and store._get("old") is None
            go.set()
            await task
            assert db_keys(store) == ["old", "x"]  # the fold had only what came before
            assert await store.get("x") == replaced
            assert await store.keys() == ["x", "y"]
            logged = tmp_path / "copy.log"
            logged.write_bytes(Path(str(path) + sqlite_driver.ACKLOG_SUFFIX).read_bytes())
            assert [seq for seq, _ in AckLog(str(logged)).open()] == [2]
        finally:
            go.set()
            await store.close()
        async with opened(str(path)) as again:
            assert await again.keys() == ["x", "y"]
            assert await again.get("x") == replaced

    asyncio.run(body())


def test_full_folds_in_what_a_normal_run_left_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restarted with synchronous FULL after a crash in NORMAL: nothing logged is lost."""
    path = tmp_path / "plans.db"
    create(path)
    log_path = Path(str(path) + sqlite_driver.ACKLOG_SUFFIX)
    rows = Rows(Batch(ops={"a": plan("a"), "b": plan("b")}))
    write_log(log_path, rows.encode())

    async def body() -> None:
        async with opened(str(path), synchronous="FULL") as store:
            assert store._log is None
            assert await store.keys() == ["a", "b"]

    asyncio.run(body())
    assert not log_path.exists()
    assert db_keys(path) == ["a", "b"]
