"""The ``sqlite`` store: one SQLite database file in WAL mode, through aiosqlite.

Layout (schema version 3, see :data:`MIGRATIONS`):

- ``plans``: one row per plan, one column per :class:`~forsun_box.plan.Plan`
  field (``params`` as JSON text, booleans as 0/1, ``next_time`` NULL when
  finished). The key is the primary key, so prefix listings are key-range
  scans. A partial index on ``(next_time, key)`` holding only unpaused plans
  with a next firing serves the engine's window queries.
- ``runs``: run history, bounded per key on insert and by age in
  :meth:`SqliteStore.prune_runs`.
- ``meta``: small name/value pairs (e.g. ``processed_until``, the plan
  count, the last ack-log record folded in).

Small writes (a create, a remove) are acknowledged once appended to the ack
log beside the database (:mod:`forsun_box.store.acklog`) and folded into the
database some 50 ms later, many per transaction; reads see them at
once (they lay the logged writes over what the database returns).

The schema version lives in ``PRAGMA user_version``; :data:`MIGRATIONS` are
applied in order, each in its own transaction, when the store opens.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import itertools
import logging
import operator
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import aiosqlite
import orjson

from forsun_box.errors import StartupError, StoreError
from forsun_box.plan import Plan
from forsun_box.store.acklog import AckLog, AckLogDamaged
from forsun_box.store.base import Batch, Run, Store

log = logging.getLogger("forsun_box.store")

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL")
MAX_CODE_POINT = 0x10FFFF
BUSY_TIMEOUT_MS = 5000
# Page cache per connection. Bulk writes touch pages all over the key and
# next-time b-trees; a roomy cache keeps them from re-reading the file.
CACHE_KIB = 64 * 1024

# Oldest SQLite with the JSON functions and ->> built in.
MIN_SQLITE = (3, 38, 0)
# Seconds between WAL checkpoints (taken after a commit, in aiosqlite's thread).
CHECKPOINT_INTERVAL_S = 1.0
SLOW_CHECKPOINT_S = 0.5  # a periodic checkpoint taking this long is logged
# Databases up to this size get a full quick_check at start-up (see _check_pages).
FULL_CHECK_MAX_BYTES = 64 << 20
# Start-up probes of larger databases: both ends of every table and index.
_PROBES = tuple(
    f"SELECT {col} FROM {table} {where} ORDER BY {order} LIMIT 1"
    for table, col, where, orders in (
        ("plans", "key", "", ("rowid", "rowid DESC", "key", "key DESC")),
        (
            "plans",
            "key",
            "WHERE paused = 0 AND next_time IS NOT NULL",
            ("next_time, key", "next_time DESC, key DESC"),
        ),
        ("runs", "id", "", ("id", "id DESC")),  # id is the rowid
        ("runs", "id", "", ("key, id", "key DESC, id DESC")),
        ("runs", "id", "", ("started_ms", "started_ms DESC")),
        ("meta", "name", "", ("name", "name DESC")),
    )
    for order in orders
)

# Numbered migrations: MIGRATIONS[i] takes the schema from version i to i + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE plans (
        key TEXT PRIMARY KEY NOT NULL,
        kind TEXT NOT NULL,
        action TEXT NOT NULL,
        params TEXT NOT NULL,
        second INTEGER NOT NULL,
        minute INTEGER NOT NULL,
        hour INTEGER NOT NULL,
        day INTEGER NOT NULL,
        month INTEGER NOT NULL,
        week INTEGER NOT NULL,
        count INTEGER NOT NULL,
        cron TEXT NOT NULL,
        interval_ms INTEGER NOT NULL,
        anchor_ms INTEGER NOT NULL,
        timezone TEXT NOT NULL,
        end_ms INTEGER NOT NULL,
        next_time INTEGER,
        current_count INTEGER NOT NULL,
        last_timeout INTEGER NOT NULL,
        status INTEGER NOT NULL,
        created_time INTEGER NOT NULL,
        paused INTEGER NOT NULL,
        version INTEGER NOT NULL
    );
    CREATE INDEX plans_due ON plans (next_time, key)
        WHERE paused = 0 AND next_time IS NOT NULL;
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        due_ms INTEGER NOT NULL,
        started_ms INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        result INTEGER NOT NULL,
        error TEXT NOT NULL,
        action TEXT NOT NULL
    );
    CREATE INDEX runs_key ON runs (key, id);
    CREATE INDEX runs_started ON runs (started_ms);
    CREATE TABLE meta (
        name TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    );
    """,
    # 2: per-plan jitter and misfire policy
    """
    ALTER TABLE plans ADD COLUMN jitter_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE plans ADD COLUMN misfire TEXT NOT NULL DEFAULT '';
    ALTER TABLE plans ADD COLUMN grace_ms INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: runs started by "fire now" are marked
    """
    ALTER TABLE runs ADD COLUMN manual INTEGER NOT NULL DEFAULT 0;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

# Plan fields in declaration order; the column order of ``plans``.
_COLUMNS = (
    "key, kind, action, params, second, minute, hour, day, month, week, count, cron, "
    "interval_ms, anchor_ms, timezone, end_ms, next_time, current_count, last_timeout, "
    "status, created_time, paused, version, jitter_ms, misfire, grace_ms"
)
# One row's parameters in a multi-row INSERT; rows per statement (26 x 256 parameters,
# well under SQLite's limit of 32,766).
_PLAN_MARKS = "(" + ", ".join("?" * 26) + ")"
PLAN_CHUNK = 256
_DELETE = "DELETE FROM plans WHERE key = ?"
# meta row holding the number of plans, kept in step by every commit
PLAN_COUNT = "plan_count"
# meta row holding the sequence number of the last ack-log record in the database
ACKLOG_SEQ = "acklog_seq"
_STATUS = "UPDATE plans SET status = ? WHERE key = ? AND version = ?"
# Keep only the newest N (?2) runs of each key of a JSON array (?1), in one
# statement: per key, the subquery (the id of the N+1-th newest) is NULL, so
# nothing is deleted, while the key has at most N runs. One statement instead
# of one per key: the whole trim runs in SQLite without the GIL.
_TRIM_RUNS = (
    "DELETE FROM runs WHERE id IN (SELECT r.id FROM json_each(?1) AS j "
    "JOIN runs AS r ON r.key = j.value WHERE r.id <= "
    "(SELECT id FROM runs WHERE key = j.value ORDER BY id DESC LIMIT 1 OFFSET ?2))"
)
_run_row = operator.attrgetter(
    "key", "due_ms", "started_ms", "duration_ms", "attempt", "result", "error", "action", "manual"
)
_run_key = operator.attrgetter("key")
_advance_row = operator.attrgetter(
    "next_time", "current_count", "last_timeout", "status", "key", "version"
)
_finish_row = operator.attrgetter("key", "version")


def _status_row(s: tuple[str, int, int]) -> tuple[int, str, int]:
    return (s[2], s[0], s[1])


# The firing side writes in few statements over many rows, never one
# statement per row: executemany takes the GIL back after every row, and
# while the event loop thread is busy firing, each of those takes waits for
# the interpreter's switch interval. Rows go in as one JSON array (read by
# json_each) or as multi-row VALUES lists, so a whole batch runs in SQLite
# with the GIL released.
_ADVANCE_MANY = (
    "UPDATE plans SET next_time = j.value ->> 0, current_count = j.value ->> 1, "
    "last_timeout = j.value ->> 2, status = j.value ->> 3 FROM json_each(?) AS j "
    "WHERE plans.key = j.value ->> 4 AND plans.version = j.value ->> 5"
)
_FINISH_MANY = (
    "DELETE FROM plans WHERE rowid IN (SELECT p.rowid FROM json_each(?) AS j "
    "JOIN plans AS p ON p.key = j.value ->> 0 AND p.version = j.value ->> 1)"
)
_RUN_COLUMNS = "key, due_ms, started_ms, duration_ms, attempt, result, error, action, manual"
# Rows per multi-row INSERT of runs (9 parameters each, far below SQLite's limit).
RUN_CHUNK = 256


@functools.lru_cache(maxsize=2 * PLAN_CHUNK)
def _write_plans_sql(verb: str, rows: int) -> str:
    return f"{verb} INTO plans ({_COLUMNS}) VALUES " + ", ".join([_PLAN_MARKS] * rows)


def _write_plans(conn: sqlite3.Connection, verb: str, rows: list[tuple[Any, ...]]) -> None:
    """Write plan rows with ``verb`` (INSERT OR IGNORE / OR REPLACE), PLAN_CHUNK per statement.

    One statement per row (executemany) takes the interpreter lock back after
    every row's step; while the event loop runs Python, each take waits for
    the loop's switch interval, and a bulk commit in this thread crawls. A
    multi-row statement binds a chunk at once, then steps without the lock.
    """
    for lo in range(0, len(rows), PLAN_CHUNK):
        chunk = rows[lo : lo + PLAN_CHUNK]
        conn.execute(_write_plans_sql(verb, len(chunk)), list(itertools.chain.from_iterable(chunk)))


@functools.lru_cache(maxsize=RUN_CHUNK)
def _insert_runs_sql(rows: int) -> str:
    return f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES " + ", ".join(
        ["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows
    )


def _insert_runs(conn: sqlite3.Connection, runs: list[Run]) -> None:
    """Insert ``runs`` in order (ids follow), RUN_CHUNK rows per statement."""
    params = list(itertools.chain.from_iterable(map(_run_row, runs)))
    width = 9
    for lo in range(0, len(runs), RUN_CHUNK):
        n = min(RUN_CHUNK, len(runs) - lo)
        conn.execute(_insert_runs_sql(n), params[lo * width : (lo + n) * width])


def _apply_advances(conn: sqlite3.Connection, advances: list[Any]) -> int:
    """Post-firing updates: moved plans are updated, finished ones deleted.

    Returns how many rows the updates changed (the caller counts deletions
    from the connection's change counter)."""
    moved: list[Any] = []
    finished: list[Any] = []
    for a in advances:
        (finished if a.next_time is None else moved).append(a)
    updated = 0
    if moved:
        before = conn.total_changes
        conn.execute(_ADVANCE_MANY, (orjson.dumps(list(map(_advance_row, moved))),))
        updated = conn.total_changes - before
    if finished:
        conn.execute(_FINISH_MANY, (orjson.dumps(list(map(_finish_row, finished))),))
    return updated


_META = "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)"
# The window queries repeat the partial index's condition so the planner may use it.
_DUE_WHERE = "paused = 0 AND next_time IS NOT NULL"
DUE_FIRST_SQL = (
    f"SELECT {_COLUMNS} FROM plans WHERE {_DUE_WHERE} AND next_time < ? "
    "ORDER BY next_time, key LIMIT ?"
)
# A row-value comparison keeps keyset paging a single range of the index.
DUE_AFTER_SQL = (
    f"SELECT {_COLUMNS} FROM plans WHERE {_DUE_WHERE} "
    "AND (next_time, key) > (?, ?) AND next_time < ? ORDER BY next_time, key LIMIT ?"
)
FIRING_BETWEEN_SQL = (
    f"SELECT {_COLUMNS} FROM plans WHERE {_DUE_WHERE} "
    "AND next_time >= ? AND next_time < ? ORDER BY next_time, key LIMIT ?"
)

# counted on the partial index alone, and never past the limit
COUNT_BETWEEN_SQL = (
    f"SELECT count(*) FROM (SELECT 1 FROM plans WHERE {_DUE_WHERE} "
    "AND next_time >= ? AND next_time < ? LIMIT ?)"
)
# how many of a JSON array of keys are stored (and of those, firing in a range)
COUNT_KEYS_SQL = "SELECT count(*) FROM plans WHERE key IN (SELECT value FROM json_each(?))"
COUNT_KEYS_BETWEEN_SQL = f"{COUNT_KEYS_SQL} AND {_DUE_WHERE} AND next_time >= ? AND next_time < ?"
_KEY_OF = operator.attrgetter("key")
_PLAN_BY_TIME = operator.attrgetter("next_time", "key")


def _plan_row(p: Plan, _dumps: Any = orjson.dumps) -> tuple[Any, ...]:
    return (
        p.key,
        p.kind,
        p.action,
        _dumps(p.params).decode(),
        p.second,
        p.minute,
        p.hour,
        p.day,
        p.month,
        p.week,
        p.count,
        p.cron,
        p.interval_ms,
        p.anchor_ms,
        p.timezone,
        p.end_ms,
        p.next_time,
        p.current_count,
        p.last_timeout,
        p.status,
        p.created_time,
        1 if p.paused else 0,
        p.version,
        p.jitter_ms,
        p.misfire,
        p.grace_ms,
    )


_row_texts = operator.itemgetter(0, 1, 2, 3, 11, 14, 24)
_row_ints = operator.itemgetter(4, 5, 6, 7, 8, 9, 10, 12, 13, 15, 17, 18, 19, 20, 21, 22, 23, 25)
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _check_row(row: tuple[Any, ...]) -> None:
    """Raise ValueError/TypeError where SQLite would refuse ``row`` (it is logged
    before it reaches the database, so it must not fail there)."""
    "".join(_row_texts(row))  # TypeError unless every text column is a str
    ints = _row_ints(row)
    nxt = row[16]
    if nxt is not None:
        ints = (*ints, nxt)
    if min(ints) < _INT64[0] or max(ints) > _INT64[1]:
        raise OverflowError("an integer field is out of SQLite's 64-bit range")


def _loggable(batch: Batch) -> bool:
    """Small, and only puts, deletes and meta (what a caller waits for)."""
    return (
        len(batch.ops) + len(batch.meta) <= INLINE_MAX_ROWS
        and not batch.advances
        and not batch.statuses
        and not batch.runs
    )


class _Rows:
    """A batch as database rows: what one transaction applies."""

    __slots__ = ("ops", "advances", "statuses", "runs", "meta")

    def __init__(self, batch: Batch | None = None) -> None:
        # key -> plan row to insert or replace, or None to delete
        self.ops: dict[str, tuple[Any, ...] | None] = {}
        self.advances: list[Any] = []
        self.statuses: list[tuple[str, int, int]] = []
        self.runs: list[Run] = []
        self.meta: dict[str, str] = {}
        if batch is not None:
            self.ops = {k: None if p is None else _plan_row(p) for k, p in batch.ops.items()}
            self.advances = batch.advances
            self.statuses = batch.statuses
            self.runs = batch.runs
            self.meta = batch.meta

    def __len__(self) -> int:
        return (
            len(self.ops)
            + len(self.advances)
            + len(self.statuses)
            + len(self.runs)
            + len(self.meta)
        )

    def encode(self) -> bytes:
        """The ack-log payload; raises where the database would refuse a row."""
        for row in self.ops.values():
            if row is not None:
                _check_row(row)
        return orjson.dumps([list(self.ops.items()), self.meta])

    @classmethod
    def decode(cls, payload: bytes) -> _Rows:
        ops, meta = orjson.loads(payload)
        rows = cls()
        rows.ops = {k: None if r is None else tuple(r) for k, r in ops}
        rows.meta = meta
        return rows

    def then(self, later: _Rows) -> None:
        """Fold ``later`` in: its mutations apply after these.

        A put replaces the whole row and a delete removes it, so per key only
        the last of them matters; advances and status changes match a plan
        version, and apply after the puts and deletes (see _apply_sync)."""
        self.ops.update(later.ops)
        self.meta.update(later.meta)
        self.advances = self.advances + later.advances
        self.statuses = self.statuses + later.statuses
        self.runs = self.runs + later.runs


def _plan_factory(_cursor: Any, r: tuple[Any, ...], _loads: Any = orjson.loads) -> Plan:
    # Used as a cursor row factory, so rows become Plans in aiosqlite's thread.
    return Plan(
        r[0],
        r[1],
        r[2],
        _loads(r[3]),
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        r[9],
        r[10],
        r[11],
        r[12],
        r[13],
        r[14],
        r[15],
        r[16],
        r[17],
        r[18],
        r[19],
        r[20],
        r[21] != 0,
        r[22],
        r[23],
        r[24],
        r[25],
    )


def _key_factory(_cursor: Any, r: tuple[Any, ...]) -> str:
    return r[0]  # type: ignore[no-any-return]


def _itself(x: Any) -> Any:
    return x


def _run_factory(_cursor: Any, r: tuple[Any, ...]) -> Run:
    return Run(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]))


class SqliteStore(Store):
    """Plans, runs and meta in one SQLite database (WAL mode)."""

    name = "sqlite"

    def __init__(
        self,
        path: str,
        synchronous: str = "NORMAL",
        run_retention_ms: int = 7 * 86400 * 1000,
        max_runs_per_key: int = 100,
    ) -> None:
        """``synchronous`` is SQLite's durability level: OFF, NORMAL or FULL
        (FULL survives power loss; NORMAL survives a crash of the process)."""
        mode = str(synchronous).upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ValueError(
                f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, got {synchronous!r}"
            )
        self.path = os.fspath(path)
        self.synchronous = mode
        self.run_retention_ms = run_retention_ms
        self.max_runs_per_key = max_runs_per_key
        self._db: aiosqlite.Connection | None = None
        self._count = 0
        self._checkpointed = 0.0
        # Small writes acknowledged once logged (not with FULL: the log is not
        # synced per write), and the logged ones not yet in the database:
        # (seq, rows, record payload) oldest first, and per key (seq, row or None).
        self._log: AckLog | None = None
        self._pending: list[tuple[int, _Rows, bytes]] = []
        self._overlay: dict[str, tuple[int, tuple[Any, ...] | None]] = {}
        # held by whatever uses the connection across an await (the thread does
        # the work) and by every read: a fold in the thread never overlaps them
        self._lock = asyncio.Lock()
        self._fold_timer: asyncio.TimerHandle | None = None
        self._fold_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            # the firing side's set-based statements use json_each and ->>
            raise StartupError(
                f"SQLite {sqlite3.sqlite_version} is too old: the sqlite store needs "
                f"{'.'.join(map(str, MIN_SQLITE))} or newer (the executable carries its own)"
            )
        self._check_path()
        try:
            # check_same_thread=False: small transactions and point reads run on the
            # caller's thread (see apply); the engine never overlaps two calls.
            self._db = await aiosqlite.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise StartupError(f"cannot open the SQLite database {self.path}: {e}") from None
        try:
            await self._prepare()
        except sqlite3.Error as e:
            await self._abandon()
            hint = ""
            if "locked" in str(e):
                # locking_mode=EXCLUSIVE: one forsun-box per database file
                hint = " (is another forsun-box running on this data directory?)"
            raise StartupError(f"cannot open the SQLite database {self.path}: {e}{hint}") from None
        except BaseException:
            # Also on StartupError: an open connection's thread would keep the process alive.
            await self._abandon()
            raise

    def _check_path(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise StartupError(f"cannot create the data directory {directory}: {e}") from None
        if os.path.isdir(self.path):
            raise StartupError(f"the database path {self.path} is a directory")
        # WAL mode needs to create the -wal and -shm files beside the database.
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StartupError(f"the data directory {directory} is not writable")
        if os.path.exists(self.path) and not os.access(self.path, os.R_OK | os.W_OK):
            raise StartupError(f"the database {self.path} is not readable and writable")

    async def _prepare(self) -> None:
        db = self._db
        assert db is not None
        version = list(await db.execute_fetchall("PRAGMA user_version"))[0][0]
        if version > SCHEMA_VERSION:
            raise StartupError(
                f"{self.path}: database schema version {version} is newer than this "
                f"forsun-box supports ({SCHEMA_VERSION})"
            )
        await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = list(await db.execute_fetchall("PRAGMA journal_mode = WAL"))[0][0]
        if str(mode).lower() != "wal":
            raise StartupError(f"{self.path}: cannot switch the database to WAL mode ({mode})")
        await db.execute(f"PRAGMA synchronous = {self.synchronous}")
        await db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        # One process owns the file: no shared-memory locking per transaction
        # (cheaper commits), and a second forsun-box on the same data directory
        # is refused at start instead of firing every plan twice.
        await db.execute("PRAGMA locking_mode = EXCLUSIVE")
        # Checkpoints are run by apply(), in aiosqlite's thread: left to SQLite, the
        # commit that crosses the WAL threshold checkpoints, possibly on the event loop.
        await db.execute("PRAGMA wal_autocheckpoint = 0")
        await self._check_pages(db)
        for number in range(version, SCHEMA_VERSION):
            await self._migrate(number)
        await self._load_count(db)
        await self._open_log(db)
        # Prove the file is writable now rather than at the first client's request.
        # (a write statement, even one touching no row, needs a writable file).
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute("DELETE FROM meta WHERE 0")
        finally:
            await db.execute("ROLLBACK")

    async def _check_pages(self, db: aiosqlite.Connection) -> None:
        """Stop start-up on a damaged file instead of failing mid-service.

        Up to FULL_CHECK_MAX_BYTES, ``quick_check`` reads every page. Above
        that, reading every page costs seconds to minutes (random reads of a
        file that is not in the page cache), so start-up probes the first and
        last entries of every table and index instead -- a root-to-leaf path
        through each b-tree -- and the full check is left to an operator
        (``PRAGMA quick_check`` with the service stopped).
        """
        try:
            size = os.path.getsize(self.path)
        except OSError:
            size = 0
        if size <= FULL_CHECK_MAX_BYTES:
            problems = [r[0] for r in await db.execute_fetchall("PRAGMA quick_check")]
        else:
            log.info(
                "%s is %d MB: probing its b-trees instead of a full check", self.path, size >> 20
            )
            problems = []
            for sql in _PROBES:
                try:
                    await db.execute_fetchall(sql)
                except sqlite3.DatabaseError as e:
                    problems.append(f"{e} (reading: {sql})")
        if problems and problems != ["ok"]:
            shown = "; ".join(str(p) for p in problems[:5])
            raise StartupError(f"the SQLite database {self.path} is damaged: {shown}")

    async def _load_count(self, db: aiosqlite.Connection) -> None:
        """The plan count from meta; counted once (and stored) when it isn't there."""
        rows = list(
            await db.execute_fetchall("SELECT value FROM meta WHERE name = ?", (PLAN_COUNT,))
        )
        if rows:
            self._count = int(rows[0][0])
            return
        log.info("counting the plans of %s (once)", self.path)
        self._count = list(await db.execute_fetchall("SELECT count(*) FROM plans"))[0][0]
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute(_META, (PLAN_COUNT, str(self._count)))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def _open_log(self, db: aiosqlite.Connection) -> None:
        """Open the ack log and fold into the database what it holds beyond it."""
        ack = AckLog(self.path + ACKLOG_SUFFIX)
        try:
            records = ack.open()
        except AckLogDamaged as e:
            raise StartupError(f"the ack log is damaged: {e}") from None
        except OSError as e:
            raise StartupError(f"cannot open the ack log {ack.path}: {e}") from None
        self._log = ack
        rows = list(
            await db.execute_fetchall("SELECT value FROM meta WHERE name = ?", (ACKLOG_SEQ,))
        )
        applied = int(rows[0][0]) if rows else 0
        fresh = [(seq, payload) for seq, payload in records if seq > applied]
        if fresh:
            log.info("folding %d logged writes into %s", len(fresh), self.path)
            try:
                merged = _Rows()
                for _, payload in fresh:
                    merged.then(_Rows.decode(payload))
            except (ValueError, TypeError) as e:
                raise StartupError(f"the ack log {ack.path} is damaged: {e}") from None
            merged.meta[ACKLOG_SEQ] = str(fresh[-1][0])
            await db._execute(self._apply_sync, db._conn, merged)
        ack.seq = max(ack.seq, applied)
        if records:
            ack.truncate()
        if self.synchronous == "FULL":
            # every write is committed (and synced) before its answer: no log,
            # once what a run with another mode left in it is folded in
            self._log = None
            ack.close()
            try:
                os.remove(ack.path)
            except OSError as e:
                raise StartupError(f"cannot remove the ack log {ack.path}: {e}") from None

    async def _migrate(self, number: int) -> None:
        db = self._db
        assert db is not None
        log.info("migrating %s to schema version %d", self.path, number + 1)
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(MIGRATIONS[number]):
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {number + 1}")
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def _abandon(self) -> None:
        db, self._db = self._db, None
        self._close_log()
        if db is not None:
            try:
                await db.close()
            except sqlite3.Error:
                pass

    def _close_log(self) -> None:
        if self._fold_timer is not None:
            self._fold_timer.cancel()
            self._fold_timer = None
        if self._log is not None:
            self._log.close()
            self._log = None

    async def close(self) -> None:
        """Fold in the logged writes, checkpoint the WAL into the database file and
        close. Safe to call twice."""
        if self._db is None:
            return
        async with self._lock:
            db, self._db = self._db, None
            try:
                if self._pending:
                    await self._fold(db, None)
                if self._log is not None:
                    self._log.truncate()
            except (StoreError, OSError) as e:
                # kept in the log: folded in at the next start
                log.error("%s: logged writes stay in the ack log: %s", self.path, e)
            self._close_log()
            try:
                # Fold the WAL back into the database so the file is complete on its own.
                await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:
                log.warning("checkpoint of %s at close failed: %s", self.path, e)
            finally:
                await db.close()

    # -- writes ------------------------------------------------------------

    async def apply(self, batch: Batch) -> None:
        db = self._conn()
        if self._log is not None and _loggable(batch):
            try:
                rows = _Rows(batch)
                payload = rows.encode()
            except (ValueError, TypeError, OverflowError) as e:
                raise StoreError(f"cannot write to {self.path}: {e}") from None
            try:
                seq = self._log.append(payload)
            except OSError as e:
                raise StoreError(f"cannot write to {self.path}{ACKLOG_SUFFIX}: {e}") from None
            self._pending.append((seq, rows, payload))
            overlay = self._overlay
            for key, row in rows.ops.items():
                overlay[key] = (seq, row)
            if len(overlay) < FOLD_MAX_KEYS and self._log.size < FOLD_MAX_LOG_BYTES:
                if self._fold_timer is None and self._fold_task is None:
                    self._fold_timer = asyncio.get_running_loop().call_later(
                        FOLD_DELAY_S, self._start_fold
                    )
                return
            # too much waiting: fold it in now (and make the caller wait)
            batch = Batch()
        async with self._lock:
            await self._fold(db, batch)

    def _start_fold(self) -> None:
        self._fold_timer = None
        self._fold_task = asyncio.get_running_loop().create_task(self._fold_later())

    async def _fold_later(self) -> None:
        delay = FOLD_DELAY_S
        try:
            async with self._lock:
                db = self._db
                if db is None or not self._pending:
                    return
                try:
                    await self._fold(db, None)
                except StoreError as e:
                    # They are in the log; retried a little later.
                    log.error("%s: folding in logged writes failed: %s", self.path, e)
                    delay = FOLD_RETRY_S
        finally:
            self._fold_task = None
            if self._pending and self._db is not None and self._fold_timer is None:
                self._fold_timer = asyncio.get_running_loop().call_later(delay, self._start_fold)

    async def _fold(self, db: aiosqlite.Connection, batch: Batch | None) -> None:
        """Commit the logged writes, then ``batch``, in one transaction (lock held).

        A small commit someone waits for (a ``batch``) runs on the event loop;
        any other in aiosqlite's thread, while the loop goes on. On failure the
        logged writes stay pending (and logged); StoreError.
        """
        pending, self._pending = self._pending, []
        if not pending and batch is None:
            return

        def merged() -> _Rows:
            rows = _Rows()
            for _, logged, _ in pending:
                rows.then(logged)
            if batch is not None:
                rows.then(_Rows(batch))
            if pending:
                rows.meta[ACKLOG_SEQ] = str(pending[-1][0])
            return rows

        size = sum(len(logged) for _, logged, _ in pending) + (len(batch) if batch else 0)
        try:
            if batch and size <= INLINE_MAX_ROWS and not (batch.advances or batch.runs):
                # A small commit (tens of microseconds) costs less than the round
                # trip to aiosqlite's thread, so it runs right here. Not firing
                # records: nobody waits on them, and their commits, big under
                # load, must not stall the event loop while it fires.
                self._apply_sync(db._conn, merged())
            else:
                # Big batches run in aiosqlite's thread, rows made there too, in one
                # hop, so the event loop keeps firing meanwhile.
                await db._execute(lambda: self._apply_sync(db._conn, merged()))
        except (sqlite3.Error, ValueError, TypeError, OverflowError) as e:
            self._pending[:0] = pending
            raise StoreError(f"cannot write to {self.path}: {e}") from None
        except BaseException:
            # Cancelled (a stop): the commit may still finish in the thread. Kept
            # pending, the writes are folded again, which changes nothing twice.
            self._pending[:0] = pending
            raise
        if pending:
            done = pending[-1][0]
            overlay = self._overlay
            for _, logged, _ in pending:
                for key in logged.ops:
                    hit = overlay.get(key)
                    if hit is not None and hit[0] <= done:
                        del overlay[key]
            if self._log is not None and self._log.size > LOG_TRUNCATE_BYTES:
                # cut the folded records away: keep those written meanwhile
                try:
                    if self._pending:
                        self._log.rewrite([(seq, payload) for seq, _, payload in self._pending])
                    else:
                        self._log.truncate()
                except OSError as e:
                    log.warning("cannot cut back %s: %s", self._log.path, e)
        now = time.monotonic()
        if now - self._checkpointed >= CHECKPOINT_INTERVAL_S:
            self._checkpointed = now
            try:
                # PASSIVE: copies what the WAL holds into the database file (pure C,
                # the interpreter lock released), so the WAL stays small and a
                # restart's recovery short.
                frames = await db._execute(_checkpoint, db._conn)
            except sqlite3.Error as e:
                log.warning("checkpoint of %s failed: %s", self.path, e)
            else:
                took = time.monotonic() - now
                if took >= SLOW_CHECKPOINT_S:
                    # every commit waited meanwhile: worth knowing when writes stall
                    log.warning(
                        "checkpoint of %s took %.1f s (%d WAL frames)", self.path, took, frames
                    )

    def _apply_sync(self, conn: sqlite3.Connection, batch: _Rows) -> None:
        """Apply ``batch`` in one transaction; runs in the connection's thread."""
        rows = [r for r in batch.ops.values() if r is not None]
        deletes = [(k,) for k, r in batch.ops.items() if r is None]
        count = self._count
        conn.execute("BEGIN IMMEDIATE")
        try:
            if deletes:
                before = conn.total_changes
                conn.executemany(_DELETE, deletes)
                count -= conn.total_changes - before
            if rows:
                # New keys are inserted and counted; when some keys existed,
                # the batch is written again, replacing them (rare: bulk loads
                # and fresh timeouts are new keys).
                before = conn.total_changes
                _write_plans(conn, "INSERT OR IGNORE", rows)
                added = conn.total_changes - before
                count += added
                if added < len(rows):
                    _write_plans(conn, "INSERT OR REPLACE", rows)
            if batch.advances:
                before = conn.total_changes
                moved = _apply_advances(conn, batch.advances)
                count -= conn.total_changes - before - moved
            if batch.statuses:
                conn.executemany(_STATUS, map(_status_row, batch.statuses))
            if batch.runs:
                _insert_runs(conn, batch.runs)
                keys = orjson.dumps(list(dict.fromkeys(map(_run_key, batch.runs))))
                conn.execute(_TRIM_RUNS, (keys, max(self.max_runs_per_key, 1)))
            if batch.meta:
                conn.executemany(_META, list(batch.meta.items()))
            if count != self._count:
                conn.execute(_META, (PLAN_COUNT, str(count)))
            conn.execute("COMMIT")
            self._count = count
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as e:
                    log.error("rollback on %s failed: %s", self.path, e)
            raise

    async def prune_runs(self, now_ms: int) -> int:
        async with self._using() as db:
            try:
                cursor = await db.execute(
                    "DELETE FROM runs WHERE started_ms < ?", (now_ms - self.run_retention_ms,)
                )
                return max(cursor.rowcount, 0)
            except sqlite3.Error as e:
                raise StoreError(f"cannot prune runs in {self.path}: {e}") from None

    # -- reads -------------------------------------------------------------
    #
    # Reads never wait for the logged writes to be folded in (nor fail when a
    # full disk stops that): they read the database and lay the logged writes
    # over what they read (see _overlaid).

    async def get(self, key: str) -> Plan | None:
        if self._lock.locked():
            # a fold runs in aiosqlite's thread: read after it
            async with self._lock:
                return self._get(key)
        return self._get(key)

    def _get(self, key: str) -> Plan | None:
        hit = self._overlay.get(key)
        if hit is not None:
            # logged, not yet in the database
            return None if hit[1] is None else _plan_factory(None, hit[1])
        # A primary-key lookup is cheaper than a hop to aiosqlite's thread.
        db = self._conn()
        try:
            row = db._conn.execute(_GET_SQL, (key,)).fetchone()
        except UnicodeEncodeError:
            return None
        except sqlite3.Error as e:
            raise StoreError(f"cannot read {self.path}: {e}") from None
        return None if row is None else _plan_factory(None, row)

    async def due(self, after: tuple[int, str] | None, before_ms: int, limit: int) -> list[Plan]:
        args: tuple[Any, ...]
        if after is None:
            sql, args = DUE_FIRST_SQL, (before_ms,)
        else:
            sql, args = DUE_AFTER_SQL, (after[0], after[1], before_ms)
        # Read on the event loop's thread, DUE_CHUNK rows at a time, yielding in
        # between. In aiosqlite's thread every row would take the GIL back from
        # a busy event loop (a switch-interval wait per row): a refill of tens
        # of thousands of plans then took seconds under load. The store's lock
        # is held meanwhile, so nothing else uses the connection.
        async with self._using() as db:
            overlay = dict(self._overlay)
            out: list[Plan] = []
            try:
                cursor = db._conn.execute(sql, (*args, _widen(limit, overlay)))
                try:
                    cursor.row_factory = _plan_factory  # type: ignore[assignment]
                    while True:
                        chunk = cursor.fetchmany(DUE_CHUNK)
                        out.extend(chunk)
                        if len(chunk) < DUE_CHUNK:
                            break
                        await asyncio.sleep(0)
                finally:
                    cursor.close()
            except UnicodeEncodeError:
                return []
            except sqlite3.Error as e:
                raise StoreError(f"cannot read {self.path}: {e}") from None
        if overlay:
            out = _overlaid(
                out,
                overlay,
                limit,
                _PLAN_BY_TIME,
                lambda r: (
                    r[21] == 0
                    and r[16] is not None
                    and r[16] < before_ms
                    and (after is None or (r[16], r[0]) > after)
                ),
            )
        return out

    async def firing_between(self, start_ms: int, end_ms: int, limit: int) -> list[Plan]:
        plans, overlay = await self._read(
            FIRING_BETWEEN_SQL, (start_ms, end_ms), limit, _plan_factory
        )
        if overlay:
            plans = _overlaid(
                plans,
                overlay,
                limit,
                _PLAN_BY_TIME,
                lambda r: r[21] == 0 and r[16] is not None and start_ms <= r[16] < end_ms,
            )
        return plans

    async def count_firing_between(self, start_ms: int, end_ms: int, limit: int) -> int:
        async with self._using() as db:
            overlay = dict(self._overlay)
            try:
                n = list(
                    await db.execute_fetchall(
                        COUNT_BETWEEN_SQL, (start_ms, end_ms, _widen(limit, overlay))
                    )
                )[0][0]
                if overlay:
                    # rows of logged keys in the database are replaced (or gone)
                    n -= list(
                        await db.execute_fetchall(
                            COUNT_KEYS_BETWEEN_SQL, (orjson.dumps(list(overlay)), start_ms, end_ms)
                        )
                    )[0][0]
            except sqlite3.Error as e:
                raise StoreError(f"cannot read {self.path}: {e}") from None
        n += sum(
            1
            for _, r in overlay.values()
            if r is not None and r[21] == 0 and r[16] is not None and start_ms <= r[16] < end_ms
        )
        return min(n, limit)

    async def keys(self, prefix: str = "", after: str = "", limit: int = 0) -> list[str]:
        return await self._key_range("key", _key_factory, _itself, prefix, after, limit)

    async def plans(self, prefix: str = "", after: str = "", limit: int = 100) -> list[Plan]:
        """As :meth:`Store.plans`; ``limit`` 0 (or less) means all."""
        return await self._key_range(_COLUMNS, _plan_factory, _KEY_OF, prefix, after, limit)

    async def _key_range(
        self,
        columns: str,
        factory: Callable[[Any, Any], Any],
        key: Callable[[Any], str],
        prefix: str,
        after: str,
        limit: int,
    ) -> list[Any]:
        """Keys or plans (``factory``; ``key`` tells an item's key, their order)."""
        sql, args = key_range_sql(columns, prefix, after, limit)
        items, overlay = await self._read(sql, args[:-1], limit, factory)
        if overlay:
            items = _overlaid(
                items,
                overlay,
                limit,
                key,
                lambda r: r[0].startswith(prefix) and (not after or r[0] > after),
                factory,
                key,
            )
        return items

    async def count(self) -> int:
        # Kept by every commit: counting 10M rows would hold the store for seconds.
        if not self._overlay:
            return self._count
        async with self._using() as db:
            overlay = dict(self._overlay)
            try:
                stored = list(
                    await db.execute_fetchall(COUNT_KEYS_SQL, (orjson.dumps(list(overlay)),))
                )[0][0]
            except sqlite3.Error as e:
                raise StoreError(f"cannot read {self.path}: {e}") from None
            count = self._count
        return count - stored + sum(1 for _, r in overlay.values() if r is not None)

    async def runs(self, key: str, limit: int = 50) -> list[Run]:
        async with self._using() as db:
            try:
                async with db.execute(
                    f"SELECT {_RUN_COLUMNS} FROM runs WHERE key = ? ORDER BY id DESC LIMIT ?",
                    (key, limit if limit > 0 else -1),
                ) as cursor:
                    cursor.row_factory = _run_factory  # type: ignore[assignment]
                    return list(await cursor.fetchall())  # type: ignore[arg-type]
            except UnicodeEncodeError:
                return []
            except sqlite3.Error as e:
                raise StoreError(f"cannot read {self.path}: {e}") from None

    async def get_meta(self, name: str) -> str | None:
        for _, logged, _ in reversed(self._pending):
            if name in logged.meta:
                return logged.meta[name]
        rows = await self._fetch("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    async def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return total

    # -- helpers -----------------------------------------------------------

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError(f"the store {self.path} is not open")
        return self._db

    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, under the store's lock (no fold in the thread meanwhile)."""
        async with self._lock:
            yield self._conn()

    async def _fetch(self, sql: str, args: Iterable[Any]) -> list[Any]:
        async with self._using() as db:
            try:
                return list(await db.execute_fetchall(sql, tuple(args)))
            except UnicodeEncodeError:
                return []  # a string with no UTF-8 form (a lone surrogate) matches no stored key
            except sqlite3.Error as e:
                raise StoreError(f"cannot read {self.path}: {e}") from None

    async def _read(
        self, sql: str, args: tuple[Any, ...], limit: int, factory: Callable[[Any, Any], Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """The rows of ``sql`` (whose last parameter, after ``args``, is its row
        limit, widened) made by ``factory`` in aiosqlite's thread, and the logged
        writes as of the read."""
        async with self._using() as db:
            overlay = dict(self._overlay)
            try:
                async with db.execute(sql, (*args, _widen(limit, overlay))) as cursor:
                    cursor.row_factory = factory  # type: ignore[assignment]
                    items = list(await cursor.fetchall())
            except UnicodeEncodeError:
                return [], {}  # a string with no UTF-8 form matches no stored key
            except sqlite3.Error as e:
                raise StoreError(f"cannot read {self.path}: {e}") from None
        return items, overlay


def _widen(limit: int, overlay: dict[str, Any]) -> int:
    """A read's row limit, raised so that dropping the rows of logged keys still
    leaves ``limit`` of them (``limit`` 0 or less: -1, no limit)."""
    return limit + len(overlay) if limit > 0 else -1


def _overlaid(
    items: list[Any],
    overlay: dict[str, Any],
    limit: int,
    order: Callable[[Any], Any],
    keep: Callable[[Any], bool],
    factory: Callable[[Any, Any], Any] = _plan_factory,
    key: Callable[[Any], str] = _KEY_OF,
) -> list[Any]:
    """The first ``limit`` (all if 0 or less) of ``items`` read from the database
    (in ``order``, made by ``factory``) with the logged writes over them.

    Items of logged keys are dropped (replaced or deleted since); logged plan
    rows that ``keep`` accepts come in, in order (few: no sort of the whole
    read, which may be a window refill of tens of thousands). The read was
    widened (_widen): even with every logged key dropped, its items fill
    ``limit``, so a logged row past its last one never makes the cut ahead of
    an unread row.
    """
    out = [x for x in items if key(x) not in overlay]
    for _, row in overlay.values():
        if row is not None and keep(row):
            bisect.insort(out, factory(None, row), key=order)
    return out[:limit] if limit > 0 else out


_GET_SQL = f"SELECT {_COLUMNS} FROM plans WHERE key = ?"
# Rows of a window refill read between two yields to the event loop (see due).
DUE_CHUNK = 250
# Batches up to this many mutations commit on the caller's thread (see apply).
INLINE_MAX_ROWS = 64
# The ack log beside the database file (see forsun_box.store.acklog).
ACKLOG_SUFFIX = "-acklog"
# Logged writes wait this long to be folded in, many per transaction (a fold's
# commit costs about a WAL page a row at 5 ms under 10,000 creates/s, a few rows
# per page at 50 ms: 20 -> 12 us of the store thread's time a Thrift create)...
FOLD_DELAY_S = 0.05
# ... unless this many keys or log bytes wait: then the writer waits for the fold.
FOLD_MAX_KEYS = 20_000
FOLD_MAX_LOG_BYTES = 32 << 20
# A failed fold (a full disk) is retried after this long, or with the next write.
FOLD_RETRY_S = 1.0
# Once every logged write is folded in, the log is cut back when it is this big.
LOG_TRUNCATE_BYTES = 1 << 20


def _checkpoint(conn: sqlite3.Connection) -> int:
    """Copy the WAL into the database file; how many WAL frames it holds copied."""
    _busy, _frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(copied)


def key_range_sql(columns: str, prefix: str, after: str, limit: int) -> tuple[str, tuple[Any, ...]]:
    """SELECT ``columns`` of the plans whose key starts with ``prefix`` and is > ``after``.

    A key range (never LIKE, whose wildcards ``%`` and ``_`` could be in a
    prefix) so the primary key index serves it.
    """
    clauses: list[str] = []
    args: list[Any] = []
    if after and after >= prefix:
        clauses.append("key > ?")
        args.append(after)
    elif prefix:
        clauses.append("key >= ?")
        args.append(prefix)
    upper = prefix_upper_bound(prefix)
    if upper is not None:
        clauses.append("key < ?")
        args.append(upper)
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    args.append(limit if limit > 0 else -1)
    return f"SELECT {columns} FROM plans{where} ORDER BY key LIMIT ?", tuple(args)


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix``.

    None when there is no such bound (an empty prefix, or one made only of
    U+10FFFF). SQLite compares keys as UTF-8 bytes, which orders them by code
    point as Python does. Surrogates can't be stored (they have no UTF-8 form),
    so an increment that lands on one skips to U+E000.
    """
    head = prefix.rstrip(chr(MAX_CODE_POINT))
    if not head:
        return None
    nxt = ord(head[-1]) + 1
    if 0xD800 <= nxt <= 0xDFFF:
        nxt = 0xE000
    return head[:-1] + chr(nxt)


def _split_sql(script: str) -> list[str]:
    # Migration scripts hold no semicolons inside literals, so a plain split is exact;
    # executing statements one by one keeps them inside our own transaction
    # (executescript would commit first).
    return [s.strip() for s in script.split(";") if s.strip()]
