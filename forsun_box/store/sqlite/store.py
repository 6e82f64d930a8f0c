"""The ``sqlite`` store: plans, runs and meta in one SQLite database in WAL mode.

Small writes (a create, a remove) are acknowledged once appended to the ack
log beside the database (:mod:`forsun_box.store.sqlite.acklog`) and folded
into the database some 50 ms later, many per transaction; reads see them at
once (they lay the :mod:`~forsun_box.store.sqlite.overlay` over what the
database returns).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from forsun_box.errors import StartupError, StoreError
from forsun_box.plan import Plan
from forsun_box.store.base import Batch, Run
from forsun_box.store.base import Store as _Store
from forsun_box.store.sqlite import opening, schema
from forsun_box.store.sqlite.acklog import AckLog, AckLogDamaged
from forsun_box.store.sqlite.overlay import Logged, Overlay, overlaid, widen
from forsun_box.store.sqlite.queries import (
    COLUMNS,
    COUNT_BETWEEN_SQL,
    COUNT_KEYS_BETWEEN_SQL,
    COUNT_KEYS_SQL,
    DUE_AFTER_SQL,
    DUE_FIRST_SQL,
    FIRING_BETWEEN_SQL,
    GET_SQL,
    META_SQL,
    RUNS_SQL,
    key_range_sql,
)
from forsun_box.store.sqlite.rows import (
    KEY,
    NEXT_TIME,
    PlanRow,
    Rows,
    key_from_row,
    plan_by_time,
    plan_from_row,
    plan_key,
    row_is_due,
    run_from_row,
)
from forsun_box.store.sqlite.thread import Database
from forsun_box.store.sqlite.transaction import apply_rows, checkpoint

log = logging.getLogger("forsun_box.store")

# Seconds between WAL checkpoints (taken after a commit, in the store's thread).
CHECKPOINT_INTERVAL_S = 1.0
SLOW_CHECKPOINT_S = 0.5  # a periodic checkpoint taking this long is logged
# Rows of a window refill read between two yields to the event loop (see due).
DUE_CHUNK = 250
# Batches up to this many mutations commit on the caller's thread (see apply).
INLINE_MAX_ROWS = 64
# The ack log beside the database file.
ACKLOG_SUFFIX = "-acklog"
# Logged writes wait this long to be folded in, many per transaction: the longer
# the wait, the more rows share each WAL page a fold writes (bench/RESULTS.md,
# the fold interval) ...
FOLD_DELAY_S = 0.05
# ... unless this many keys or log bytes wait: then the writer waits for the fold.
FOLD_MAX_KEYS = 20_000
FOLD_MAX_LOG_BYTES = 32 << 20
# A failed fold (a full disk) is retried after this long, or with the next write.
FOLD_RETRY_S = 1.0
# Once every logged write is folded in, the log is cut back when it is this big.
LOG_TRUNCATE_BYTES = 1 << 20


def _itself(x: Any) -> Any:
    return x


def _loggable(batch: Batch) -> bool:
    """Small, and only puts, deletes and meta (what a caller waits for)."""
    return (
        len(batch.ops) + len(batch.meta) <= INLINE_MAX_ROWS
        and not batch.advances
        and not batch.statuses
        and not batch.runs
    )


class SqliteStore(_Store):
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
        if mode not in opening.SYNCHRONOUS_MODES:
            raise ValueError(
                f"synchronous must be one of {', '.join(opening.SYNCHRONOUS_MODES)}, "
                f"got {synchronous!r}"
            )
        self.path = os.fspath(path)
        self.synchronous = mode
        self.run_retention_ms = run_retention_ms
        self.max_runs_per_key = max_runs_per_key
        self._db: Database | None = None
        self._count = 0
        self._checkpointed = 0.0
        # Small writes are acknowledged once logged (not with FULL: the log is
        # not synced per write); the overlay holds the logged ones not yet in
        # the database.
        self._log: AckLog | None = None
        self._overlay = Overlay()
        # held by whatever uses the connection across an await (the thread does
        # the work) and by every read: a fold in the thread never overlaps them
        self._lock = asyncio.Lock()
        self._fold_timer: asyncio.TimerHandle | None = None
        self._fold_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        opening.check_sqlite_version()
        opening.check_path(self.path)
        try:
            self._db = await Database.connect(self.path)
        except sqlite3.Error as e:
            raise StartupError(f"cannot open the SQLite database {self.path}: {e}") from None
        try:
            await self._prepare(self._db)
        except sqlite3.Error as e:
            await self._abandon()
            hint = ""
            if "locked" in str(e):
                # locking_mode=EXCLUSIVE: one forsun-box per database file
                hint = " (is another forsun-box running on this data directory?)"
            raise StartupError(f"cannot open the SQLite database {self.path}: {e}{hint}") from None
        except BaseException:
            # Also on StartupError: leave no connection open behind a failed start.
            await self._abandon()
            raise

    async def _prepare(self, db: Database) -> None:
        version = await db.run(opening.prepare, db.conn, self.path, self.synchronous)
        for number in range(version, schema.SCHEMA_VERSION):
            log.info("migrating %s to schema version %d", self.path, number + 1)
            await db.run(schema.migrate, db.conn, number)
        self._count = await db.run(opening.load_count, db.conn, self.path)
        await self._open_log(db)
        await db.run(opening.prove_writable, db.conn)

    async def _open_log(self, db: Database) -> None:
        """Open the ack log and fold into the database what it holds beyond it."""
        ack = AckLog(self.path + ACKLOG_SUFFIX)
        try:
            records = ack.open()
        except AckLogDamaged as e:
            raise StartupError(f"the ack log is damaged: {e}") from None
        except OSError as e:
            raise StartupError(f"cannot open the ack log {ack.path}: {e}") from None
        self._log = ack
        rows = await db.fetchall(META_SQL, (schema.ACKLOG_SEQ,))
        applied = int(rows[0][0]) if rows else 0
        fresh = [(seq, payload) for seq, payload in records if seq > applied]
        if fresh:
            log.info("folding %d logged writes into %s", len(fresh), self.path)
            try:
                merged = Rows()
                for _, payload in fresh:
                    merged.then(Rows.decode(payload))
            except (ValueError, TypeError) as e:
                raise StartupError(f"the ack log {ack.path} is damaged: {e}") from None
            merged.meta[schema.ACKLOG_SEQ] = str(fresh[-1][0])
            await db.run(self._apply_rows, db.conn, merged)
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

    async def _abandon(self) -> None:
        db, self._db = self._db, None
        self._close_log()
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                await db.close()

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
                if self._overlay.pending:
                    await self._fold(db, None)
                if self._log is not None:
                    self._log.truncate()
            except (StoreError, OSError) as e:
                # kept in the log: folded in at the next start
                log.error("%s: logged writes stay in the ack log: %s", self.path, e)
            self._close_log()
            try:
                # Fold the WAL back into the database so the file is complete on its own.
                await db.fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:
                log.warning("checkpoint of %s at close failed: %s", self.path, e)
            finally:
                await db.close()

    # -- writes ------------------------------------------------------------

    async def apply(self, batch: Batch) -> None:
        db = self._conn()
        if self._log is not None and _loggable(batch):
            self._log_batch(batch)
            if self._log_room():
                self._fold_soon()
                return
            # too much waiting: fold it in now (and make the caller wait)
            batch = Batch()
        async with self._lock:
            await self._fold(db, batch)

    def apply_now(self, batch: Batch) -> bool:
        """A caller's small write is acknowledged once in the ack log, without
        awaiting: so also while a fold runs in the store's thread."""
        if self._log is None or not _loggable(batch) or not self._log_room():
            return False
        self._conn()
        self._log_batch(batch)
        self._fold_soon()
        return True

    def _log_room(self) -> bool:
        """The overlay and the log may take more before a fold must run."""
        assert self._log is not None
        return len(self._overlay.rows) < FOLD_MAX_KEYS and self._log.size < FOLD_MAX_LOG_BYTES

    def _log_batch(self, batch: Batch) -> None:
        """Append ``batch`` to the ack log (durable from then on) and lay it over
        the database."""
        assert self._log is not None
        try:
            rows = Rows(batch)
            payload = rows.encode()
        except (ValueError, TypeError, OverflowError) as e:
            raise StoreError(f"cannot write to {self.path}: {e}") from None
        try:
            seq = self._log.append(payload)
        except OSError as e:
            raise StoreError(f"cannot write to {self.path}{ACKLOG_SUFFIX}: {e}") from None
        self._overlay.add(seq, rows, payload)

    def _fold_soon(self) -> None:
        if self._fold_timer is None and self._fold_task is None:
            self._fold_timer = asyncio.get_running_loop().call_later(FOLD_DELAY_S, self._start_fold)

    def _start_fold(self) -> None:
        self._fold_timer = None
        self._fold_task = asyncio.get_running_loop().create_task(self._fold_later())

    async def _fold_later(self) -> None:
        delay = FOLD_DELAY_S
        try:
            async with self._lock:
                db = self._db
                if db is None or not self._overlay.pending:
                    return
                try:
                    await self._fold(db, None)
                except StoreError as e:
                    # They are in the log; retried a little later.
                    log.error("%s: folding in logged writes failed: %s", self.path, e)
                    delay = FOLD_RETRY_S
        finally:
            self._fold_task = None
            if self._overlay.pending and self._db is not None and self._fold_timer is None:
                self._fold_timer = asyncio.get_running_loop().call_later(delay, self._start_fold)

    async def _fold(self, db: Database, batch: Batch | None) -> None:
        """Commit the logged writes, then ``batch``, in one transaction (lock held).

        A small commit someone waits for (a ``batch``) runs on the event loop;
        any other in the store's thread, while the loop goes on. On failure the
        logged writes stay pending (and logged); StoreError.
        """
        pending = self._overlay.take()
        if not pending and batch is None:
            return

        def merged() -> Rows:
            rows = Rows()
            for _, logged, _ in pending:
                rows.then(logged)
            if batch is not None:
                rows.then(Rows(batch))
            if pending:
                rows.meta[schema.ACKLOG_SEQ] = str(pending[-1][0])
            return rows

        size = sum(len(logged) for _, logged, _ in pending) + (len(batch) if batch else 0)
        try:
            if batch and size <= INLINE_MAX_ROWS and not (batch.advances or batch.runs):
                # A small commit (tens of microseconds) costs less than the round
                # trip to the store's thread, so it runs right here. Not firing
                # records: nobody waits on them, and their commits, big under
                # load, must not stall the event loop while it fires.
                self._apply_rows(db.conn, merged())
            else:
                # Big batches run in the store's thread, rows made there too, in
                # one hop, so the event loop keeps firing meanwhile.
                await db.run(lambda: self._apply_rows(db.conn, merged()))
        except (sqlite3.Error, ValueError, TypeError, OverflowError) as e:
            self._overlay.put_back(pending)
            raise StoreError(f"cannot write to {self.path}: {e}") from None
        except BaseException:
            # Cancelled (a stop): the commit may still finish in the thread. Kept
            # pending, the writes are folded again, which changes nothing twice.
            self._overlay.put_back(pending)
            raise
        if pending:
            self._overlay.folded(pending)
            if self._log is not None and self._log.size > LOG_TRUNCATE_BYTES:
                self._cut_log(self._overlay.pending)
        now = time.monotonic()
        if now - self._checkpointed >= CHECKPOINT_INTERVAL_S:
            self._checkpointed = now
            try:
                # PASSIVE: copies what the WAL holds into the database file (pure C,
                # the interpreter lock released), so the WAL stays small and a
                # restart's recovery short.
                frames = await db.run(checkpoint, db.conn)
            except sqlite3.Error as e:
                log.warning("checkpoint of %s failed: %s", self.path, e)
            else:
                took = time.monotonic() - now
                if took >= SLOW_CHECKPOINT_S:
                    # every commit waited meanwhile: worth knowing when writes stall
                    log.warning(
                        "checkpoint of %s took %.1f s (%d WAL frames)", self.path, took, frames
                    )

    def _cut_log(self, keep: list[Logged]) -> None:
        """Cut the folded records away, keeping those written meanwhile."""
        assert self._log is not None
        try:
            if keep:
                self._log.rewrite([(seq, payload) for seq, _, payload in keep])
            else:
                self._log.truncate()
        except OSError as e:
            log.warning("cannot cut back %s: %s", self._log.path, e)

    def _apply_rows(self, conn: sqlite3.Connection, rows: Rows) -> None:
        """Apply ``rows`` in one transaction, in the thread holding the connection; the
        plan count follows the commit (also when its caller was cancelled meanwhile)."""
        self._count = apply_rows(conn, rows, self._count, self.max_runs_per_key, self.path)

    async def prune_runs(self, now_ms: int) -> int:
        async with self._using() as db:
            try:
                return await db.run(self._prune, db.conn, now_ms - self.run_retention_ms)
            except sqlite3.Error as e:
                raise StoreError(f"cannot prune runs in {self.path}: {e}") from None

    @staticmethod
    def _prune(conn: sqlite3.Connection, before_ms: int) -> int:
        cursor = conn.execute("DELETE FROM runs WHERE started_ms < ?", (before_ms,))
        return max(cursor.rowcount, 0)

    # -- reads -------------------------------------------------------------
    #
    # Reads never wait for the logged writes to be folded in (nor fail when a
    # full disk stops that): they read the database and lay the logged writes
    # over what they read (see overlay.py).

    async def get(self, key: str) -> Plan | None:
        if self._lock.locked():
            # a fold runs in the store's thread: read after it
            async with self._lock:
                return self._get(key)
        return self._get(key)

    def _get(self, key: str) -> Plan | None:
        hit = self._overlay.rows.get(key)
        if hit is not None:
            # logged, not yet in the database
            return None if hit[1] is None else plan_from_row(None, hit[1])
        # A primary-key lookup is cheaper than a hop to the store's thread.
        db = self._conn()
        try:
            row = db.conn.execute(GET_SQL, (key,)).fetchone()
        except UnicodeEncodeError:
            return None
        except sqlite3.Error as e:
            raise StoreError(f"cannot read {self.path}: {e}") from None
        return None if row is None else plan_from_row(None, row)

    async def due(self, after: tuple[int, str] | None, before_ms: int, limit: int) -> list[Plan]:
        args: tuple[Any, ...]
        if after is None:
            sql, args = DUE_FIRST_SQL, (before_ms,)
        else:
            sql, args = DUE_AFTER_SQL, (after[0], after[1], before_ms)
        # Read on the event loop's thread, DUE_CHUNK rows at a time, yielding in
        # between. In the store's thread every row would take the interpreter
        # lock back from a busy event loop (a switch-interval wait per row): a
        # refill of tens of thousands of plans then took seconds under load. The
        # store's lock is held meanwhile, so nothing else uses the connection.
        async with self._using() as db:
            logged = dict(self._overlay.rows)
            out: list[Plan] = []
            try:
                cursor = db.conn.execute(sql, (*args, widen(limit, logged)))
                try:
                    cursor.row_factory = plan_from_row  # type: ignore[assignment]
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

        def keep(r: PlanRow) -> bool:
            return (
                row_is_due(r)
                and r[NEXT_TIME] < before_ms
                and (after is None or (r[NEXT_TIME], r[KEY]) > after)
            )

        if logged:
            out = overlaid(out, logged, limit, plan_by_time, keep)
        return out

    async def firing_between(self, start_ms: int, end_ms: int, limit: int) -> list[Plan]:
        plans, logged = await self._read(
            FIRING_BETWEEN_SQL, (start_ms, end_ms), limit, plan_from_row
        )
        if logged:
            plans = overlaid(
                plans,
                logged,
                limit,
                plan_by_time,
                lambda r: row_is_due(r) and start_ms <= r[NEXT_TIME] < end_ms,
            )
        return plans

    async def count_firing_between(self, start_ms: int, end_ms: int, limit: int) -> int:
        async with self._using() as db:
            logged = dict(self._overlay.rows)
            try:
                n = (
                    await db.fetchall(COUNT_BETWEEN_SQL, (start_ms, end_ms, widen(limit, logged)))
                )[0][0]
                if logged:
                    # rows of logged keys in the database are replaced (or gone)
                    n -= (
                        await db.fetchall(
                            COUNT_KEYS_BETWEEN_SQL, (orjson.dumps(list(logged)), start_ms, end_ms)
                        )
                    )[0][0]
            except sqlite3.Error as e:
                raise StoreError(f"cannot read {self.path}: {e}") from None
        n += sum(
            1
            for _, r in logged.values()
            if r is not None and row_is_due(r) and start_ms <= r[NEXT_TIME] < end_ms
        )
        return min(n, limit)

    async def keys(self, prefix: str = "", after: str = "", limit: int = 0) -> list[str]:
        return await self._key_range("key", key_from_row, _itself, prefix, after, limit)

    async def plans(self, prefix: str = "", after: str = "", limit: int = 100) -> list[Plan]:
        """As :meth:`Store.plans`; ``limit`` 0 (or less) means all."""
        return await self._key_range(COLUMNS, plan_from_row, plan_key, prefix, after, limit)

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
        items, logged = await self._read(sql, args[:-1], limit, factory)
        if logged:
            items = overlaid(
                items,
                logged,
                limit,
                key,
                lambda r: r[KEY].startswith(prefix) and (not after or r[KEY] > after),
                factory,
                key,
            )
        return items

    async def count(self) -> int:
        # Kept by every commit: counting 10M rows would hold the store for seconds.
        if not self._overlay.rows:
            return self._count
        async with self._using() as db:
            logged = dict(self._overlay.rows)
            try:
                stored = (await db.fetchall(COUNT_KEYS_SQL, (orjson.dumps(list(logged)),)))[0][0]
            except sqlite3.Error as e:
                raise StoreError(f"cannot read {self.path}: {e}") from None
            count = self._count
        return count - stored + sum(1 for _, r in logged.values() if r is not None)

    async def runs(self, key: str, limit: int = 50) -> list[Run]:
        async with self._using() as db:
            try:
                return await db.run(
                    _fetch_made, db.conn, RUNS_SQL, (key, limit if limit > 0 else -1), run_from_row
                )
            except UnicodeEncodeError:
                return []
            except sqlite3.Error as e:
                raise StoreError(f"cannot read {self.path}: {e}") from None

    async def get_meta(self, name: str) -> str | None:
        logged = self._overlay.meta(name)
        if logged is not None:
            return logged
        async with self._using() as db:
            try:
                rows = await db.fetchall(META_SQL, (name,))
            except UnicodeEncodeError:
                return None  # a string with no UTF-8 form (a lone surrogate) matches no name
            except sqlite3.Error as e:
                raise StoreError(f"cannot read {self.path}: {e}") from None
        return rows[0][0] if rows else None

    async def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(self.path + suffix)
        return total

    # -- helpers -----------------------------------------------------------

    def _conn(self) -> Database:
        if self._db is None:
            raise StoreError(f"the store {self.path} is not open")
        return self._db

    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[Database]:
        """The connection, under the store's lock (no fold in the thread meanwhile)."""
        async with self._lock:
            yield self._conn()

    async def _read(
        self, sql: str, args: tuple[Any, ...], limit: int, factory: Callable[[Any, Any], Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """The rows of ``sql`` (whose last parameter, after ``args``, is its row
        limit, widened) made by ``factory`` in the store's thread, and the logged
        writes as of the read."""
        async with self._using() as db:
            logged = dict(self._overlay.rows)
            try:
                items = await db.run(
                    _fetch_made, db.conn, sql, (*args, widen(limit, logged)), factory
                )
            except UnicodeEncodeError:
                return [], {}  # a string with no UTF-8 form matches no stored key
            except sqlite3.Error as e:
                raise StoreError(f"cannot read {self.path}: {e}") from None
        return items, logged


def _fetch_made(
    conn: sqlite3.Connection, sql: str, args: tuple[Any, ...], factory: Callable[[Any, Any], Any]
) -> list[Any]:
    cursor = conn.execute(sql, args)
    try:
        cursor.row_factory = factory  # type: ignore[assignment]
        return cursor.fetchall()
    finally:
        cursor.close()
