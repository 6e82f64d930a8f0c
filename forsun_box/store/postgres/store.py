"""The ``postgres`` store: plans, runs, meta and the cluster's leases in PostgreSQL.

The schema is in :mod:`.schema`, the row encoding and the set-based
statements in :mod:`.rows`, the lease table's operations in :mod:`.leases`.

A batch is one transaction. A batch that needs one statement (the usual
create batch: only puts) is sent alone, one round trip, committed by
PostgreSQL's implicit transaction; a mixed batch runs its statements in
order in an explicit transaction. Durability is the server's: with
``synchronous_commit = on`` (the default) a commit is on the primary's
disk when answered, and on a synchronous standby too when one is set up.

Several nodes may use one database: API writes (create, remove) from any
node go straight to it, and the firing side's writes go through
:meth:`PostgresStore.apply_fenced`, conditioned on the lease epoch of each
plan's partition (see :mod:`forsun_box.cluster`). Once a node
:meth:`~PostgresStore.watch` es, each batch of API writes carries one
NOTIFY for the other nodes (:mod:`.hints`), in the same statement when the
batch is one.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import asyncpg

from forsun_box.cluster.base import ChangeHint, ClusterStore, FenceResult
from forsun_box.cluster.partitions import DEFAULT_PARTITIONS, MAX_PARTITIONS, partition_of
from forsun_box.config import Config
from forsun_box.errors import StartupError, StoreError
from forsun_box.plan import Plan
from forsun_box.store.base import Batch, Run, Store
from forsun_box.store.keys import prefix_upper_bound
from forsun_box.store.postgres import hints, rows
from forsun_box.store.postgres.leases import PostgresLeases
from forsun_box.store.postgres.schema import migrate

log = logging.getLogger("forsun_box.store")

DAY_MS = 86_400_000
T = TypeVar("T")
# errors of the connection or the server (a refused statement, a lost connection)
DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    asyncio.TimeoutError,
)
# ... and of a value that can't be sent (a wrong type, an integer past 64 bits)
WRITE_ERRORS: tuple[type[BaseException], ...] = (
    *DB_ERRORS,
    TypeError,
    ValueError,
    OverflowError,
)
_DUE_WHERE = "NOT paused AND next_time IS NOT NULL"
_SELECT = f"SELECT {rows.COLUMNS} FROM plans"
DUE_FIRST_SQL = f"{_SELECT} WHERE {_DUE_WHERE} AND next_time < $1 ORDER BY next_time, key LIMIT $2"
DUE_AFTER_SQL = (
    f"{_SELECT} WHERE {_DUE_WHERE} AND (next_time, key) > ($1, $2) AND next_time < $3 "
    "ORDER BY next_time, key LIMIT $4"
)
FIRING_BETWEEN_SQL = (
    f"{_SELECT} WHERE {_DUE_WHERE} AND next_time >= $1 AND next_time < $2 "
    "ORDER BY next_time, key LIMIT $3"
)
COUNT_BETWEEN_SQL = (
    f"SELECT count(*) FROM (SELECT 1 FROM plans WHERE {_DUE_WHERE} "
    "AND next_time >= $1 AND next_time < $2 LIMIT $3) AS t"
)
# A node's window: the plans of the partitions it owns.
PARTITION_DUE_SQL = (
    f"{_SELECT} WHERE {_DUE_WHERE} AND partition = ANY($1::integer[]) "
    "AND (next_time, key) > ($2, $3) AND next_time < $4 ORDER BY next_time, key LIMIT $5"
)
# Held until the fenced transaction commits: a takeover (FOR UPDATE SKIP
# LOCKED) passes these partitions by until then.
FENCE_SQL = (
    "SELECT partition FROM leases WHERE partition = ANY($1::integer[]) "
    "AND owner = $2 AND epoch = (($3::bigint[]))[array_position($1::integer[], partition)] "
    "FOR SHARE"
)
_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")
# the lowest instant a bigint column holds: ``after`` None in a partition window
_MIN_MS = -(1 << 63)


def redact(dsn: str) -> str:
    """The DSN with its password (if any) replaced, fit for a log line."""
    return _PASSWORD.sub(r"\1***@", dsn)


def _setting(config: Config | None, name: str, default: Any) -> Any:
    return getattr(config, name, default) if config is not None else default


def _readable(*texts: str) -> bool:
    """Whether every text can be sent to PostgreSQL at all.

    A string with the NUL character or a lone surrogate can't be stored, so
    no stored row matches it: reads answer nothing instead of an error.
    """
    for t in texts:
        if "\x00" in t:
            return False
        try:
            t.encode()
        except UnicodeEncodeError:
            return False
    return True


class PostgresStore(Store, ClusterStore):
    """The store contract on PostgreSQL through an asyncpg pool."""

    name = "postgres"

    def __init__(
        self,
        config: Config | None = None,
        *,
        dsn: str | None = None,
        pool_size: int | None = None,
        partitions: int | None = None,
        run_retention_ms: int | None = None,
        max_runs_per_key: int | None = None,
        connect_timeout: float = 10.0,
        command_timeout: float = 60.0,
    ) -> None:
        """Settings come from ``config`` (the service's Config: ``postgres_*``,
        ``run_retention_days``, ``max_runs_per_key``); keyword arguments override."""

        def pick(value: Any, name: str, default: Any) -> Any:
            return value if value is not None else _setting(config, name, default)

        self.dsn = str(pick(dsn, "postgres_dsn", ""))
        self.pool_size = max(1, int(pick(pool_size, "postgres_pool_size", 8)))
        wanted = int(pick(partitions, "postgres_partitions", DEFAULT_PARTITIONS))
        if not 1 <= wanted <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be 1-{MAX_PARTITIONS}, got {wanted}")
        self.wanted_partitions = wanted
        #: the database's partition count, known once open
        self.partitions = wanted
        if run_retention_ms is None:
            run_retention_ms = int(_setting(config, "run_retention_days", 7) * DAY_MS)
        self.run_retention_ms = run_retention_ms
        self.max_runs_per_key = max(1, int(pick(max_runs_per_key, "max_runs_per_key", 100)))
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        #: firing writes refused by the epoch check since open
        self.fenced_refused = 0
        self._pool: asyncpg.Pool | None = None
        self._leases: PostgresLeases | None = None
        # a cluster node's name once it watches: its API writes are announced
        self._announce_as: str | None = None
        self._listener: hints.Listener | None = None

    @property
    def where(self) -> str:
        return f"PostgreSQL {redact(self.dsn) or '(PG* environment)'}"

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        try:
            pool = await asyncpg.create_pool(
                self.dsn or None,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
            )
        except WRITE_ERRORS as e:  # ValueError: a DSN that doesn't parse
            raise StartupError(f"cannot connect to {self.where}: {e}") from None
        try:
            async with pool.acquire() as conn:
                self.partitions = await migrate(conn, self.wanted_partitions, self.where)
        except StartupError:
            await pool.close()
            raise
        except DB_ERRORS as e:
            await pool.close()
            raise StartupError(f"cannot prepare {self.where}: {e}") from None
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool
        self._leases = PostgresLeases(pool, self.partitions, self.where)

    async def close(self) -> None:
        """Close the pool (waiting for statements in progress). Safe to call twice."""
        await self.unwatch()
        pool, self._pool = self._pool, None
        self._leases = None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self.command_timeout)
        except DB_ERRORS as e:
            log.warning("closing the connections to %s: %s", self.where, e)
            pool.terminate()

    def lease_backend(self) -> PostgresLeases:
        """The lease table of this database (open the store first)."""
        if self._leases is None:
            raise StoreError(f"the {self.where} store is not open")
        return self._leases

    def partition_of(self, key: str) -> int:
        """The partition of ``key`` in this database."""
        return partition_of(key, self.partitions)

    async def watch(
        self,
        node: str,
        on_change: Callable[[ChangeHint], None],
        on_release: Callable[[str], None],
        on_gap: Callable[[], None],
    ) -> None:
        listener = hints.Listener(
            self.dsn, node, on_change, on_release, on_gap, self.connect_timeout
        )
        try:
            await listener.start()
        except DB_ERRORS as e:
            raise StoreError(f"cannot listen for hints on {self.where}: {e}") from None
        self._listener = listener
        self._announce_as = node

    async def unwatch(self) -> None:
        self._announce_as = None
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()

    # -- writes ------------------------------------------------------------

    def _statements(self, batch: Batch, fenced: Callable[[str], bool] | None = None) -> list[Any]:
        """The batch as (sql, args) in the contract's order; raises on a value
        that can't be sent. ``fenced`` filters the firing writes by key."""
        out: list[tuple[str, list[Any]]] = []
        puts = [p for p in batch.ops.values() if p is not None]
        deletes = [k for k, p in batch.ops.items() if p is None]
        if deletes:
            out.append((rows.DELETE_PLANS, [deletes]))
        if puts:
            out.append((rows.UPSERT_PLANS, rows.plan_columns(puts, self.partition_of)))
        advances, statuses, runs = batch.advances, batch.statuses, batch.runs
        if fenced is not None:
            advances = [a for a in advances if fenced(a.key)]
            statuses = [s for s in statuses if fenced(s[0])]
            runs = [r for r in runs if fenced(r.key)]
        moved = [a for a in advances if a.next_time is not None]
        finished = [a for a in advances if a.next_time is None]
        if moved:
            out.append((rows.ADVANCE_PLANS, rows.advance_columns(moved)))
        if finished:
            out.append(
                (rows.FINISH_PLANS, [[a.key for a in finished], [a.version for a in finished]])
            )
        if statuses:
            out.append(
                (
                    rows.SET_STATUSES,
                    [[s[0] for s in statuses], [s[1] for s in statuses], [s[2] for s in statuses]],
                )
            )
        if runs:
            out.append((rows.INSERT_RUNS, rows.run_columns(runs)))
            keys = list(dict.fromkeys(r.key for r in runs))
            out.append((rows.TRIM_RUNS, [keys, self.max_runs_per_key]))
        if batch.meta:
            out.append((rows.UPSERT_META, [list(batch.meta), list(batch.meta.values())]))
        if batch.ops and self._announce_as is not None:
            # delivered to the other nodes only if the transaction commits
            payload = hints.change_payload(self._announce_as, batch.ops)
            if len(out) == 1:
                # still one statement (a create batch): the write in a WITH clause
                sql, args = out[0]
                n = len(args)
                out[0] = (
                    f"WITH w AS ({sql}) SELECT pg_notify(${n + 1}, ${n + 2})",
                    [*args, hints.CHANGES, payload],
                )
            else:
                out.append(("SELECT pg_notify($1, $2)", [hints.CHANGES, payload]))
        return out

    async def apply(self, batch: Batch) -> None:
        try:
            statements = self._statements(batch)
        except (TypeError, ValueError, AttributeError) as e:
            raise StoreError(f"cannot store the batch: {e}") from None
        if not statements:
            return
        pool = self._conn()
        try:
            if len(statements) == 1:
                # one statement is its own transaction: one round trip
                sql, args = statements[0]
                await pool.execute(sql, *args)
                return
            async with pool.acquire() as conn, conn.transaction():
                for sql, args in statements:
                    await conn.execute(sql, *args)
        except WRITE_ERRORS as e:
            raise StoreError(f"cannot write to {self.where}: {_why(e)}") from None

    async def apply_fenced(
        self, batch: Batch, owner: str, epochs: Mapping[int, int]
    ) -> FenceResult:
        part = self.partition_of
        touched = {part(a.key) for a in batch.advances}
        touched.update(part(s[0]) for s in batch.statuses)
        touched.update(part(r.key) for r in batch.runs)
        result = FenceResult()
        pool = self._conn()
        try:
            async with pool.acquire() as conn, conn.transaction():
                held = [p for p in touched if p in epochs]
                valid: set[int] = set()
                if held:
                    found = await conn.fetch(FENCE_SQL, held, owner, [epochs[p] for p in held])
                    valid = {r[0] for r in found}
                result.lost = touched - valid
                try:
                    statements = self._statements(batch, lambda key: part(key) in valid)
                except (TypeError, ValueError, AttributeError) as e:
                    raise StoreError(f"cannot store the batch: {e}") from None
                for sql, args in statements:
                    await conn.execute(sql, *args)
        except WRITE_ERRORS as e:
            raise StoreError(f"cannot write to {self.where}: {_why(e)}") from None
        if result.lost:
            lost = result.lost
            result.refused = (
                sum(1 for a in batch.advances if part(a.key) in lost)
                + sum(1 for s in batch.statuses if part(s[0]) in lost)
                + sum(1 for r in batch.runs if part(r.key) in lost)
            )
            self.fenced_refused += result.refused
            log.warning(
                "%s: %d firing writes refused: the lease of partitions %s moved on",
                owner,
                result.refused,
                ", ".join(map(str, sorted(lost)[:10])) + (" ..." if len(lost) > 10 else ""),
            )
        return result

    async def prune_runs(self, now_ms: int) -> int:
        status = await self._write(
            lambda pool: pool.execute(
                "DELETE FROM runs WHERE started_ms < $1", now_ms - self.run_retention_ms
            ),
            "prune runs in",
        )
        return int(str(status).rsplit(" ", 1)[-1])

    # -- reads -------------------------------------------------------------

    async def get(self, key: str) -> Plan | None:
        if not _readable(key):
            return None
        row = await self._read(lambda pool: pool.fetchrow(f"{_SELECT} WHERE key = $1", key))
        return None if row is None else rows.plan_from_row(row)

    async def due(self, after: tuple[int, str] | None, before_ms: int, limit: int) -> list[Plan]:
        if limit <= 0:
            return []
        if after is None:
            found = await self._read(lambda pool: pool.fetch(DUE_FIRST_SQL, before_ms, limit))
        else:
            if not _readable(after[1]):
                return []
            found = await self._read(
                lambda pool: pool.fetch(DUE_AFTER_SQL, after[0], after[1], before_ms, limit)
            )
        return [rows.plan_from_row(r) for r in found]

    async def due_in_partitions(
        self,
        partitions: list[int],
        after: tuple[int, str] | None,
        before_ms: int,
        limit: int,
    ) -> list[Plan]:
        """As :meth:`due`, only the plans of ``partitions`` (a node's window)."""
        if limit <= 0 or not partitions:
            return []
        low = (_MIN_MS, "") if after is None else after
        if not _readable(low[1]):
            return []
        found = await self._read(
            lambda pool: pool.fetch(PARTITION_DUE_SQL, partitions, low[0], low[1], before_ms, limit)
        )
        return [rows.plan_from_row(r) for r in found]

    async def firing_between(self, start_ms: int, end_ms: int, limit: int) -> list[Plan]:
        if limit <= 0:
            return []
        found = await self._read(
            lambda pool: pool.fetch(FIRING_BETWEEN_SQL, start_ms, end_ms, limit)
        )
        return [rows.plan_from_row(r) for r in found]

    async def count_firing_between(self, start_ms: int, end_ms: int, limit: int) -> int:
        if limit <= 0:
            return 0
        n = await self._read(lambda pool: pool.fetchval(COUNT_BETWEEN_SQL, start_ms, end_ms, limit))
        return int(n)

    def _key_range(
        self, columns: str, prefix: str, after: str, limit: int
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if after and after >= prefix:
            args.append(after)
            clauses.append(f"key > ${len(args)}")
        elif prefix:
            args.append(prefix)
            clauses.append(f"key >= ${len(args)}")
        upper = prefix_upper_bound(prefix)
        if upper is not None:
            args.append(upper)
            clauses.append(f"key < ${len(args)}")
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        sql = f"SELECT {columns} FROM plans{where} ORDER BY key"
        if limit > 0:
            args.append(limit)
            sql += f" LIMIT ${len(args)}"
        return sql, args

    async def keys(self, prefix: str = "", after: str = "", limit: int = 0) -> list[str]:
        if not _readable(prefix, after):
            return []
        sql, args = self._key_range("key", prefix, after, limit)
        found = await self._read(lambda pool: pool.fetch(sql, *args))
        return [r[0] for r in found]

    async def plans(self, prefix: str = "", after: str = "", limit: int = 100) -> list[Plan]:
        """As :meth:`Store.plans`; ``limit`` 0 (or less) means all."""
        if not _readable(prefix, after):
            return []
        sql, args = self._key_range(rows.COLUMNS, prefix, after, limit)
        found = await self._read(lambda pool: pool.fetch(sql, *args))
        return [rows.plan_from_row(r) for r in found]

    async def count(self) -> int:
        n = await self._read(lambda pool: pool.fetchval("SELECT count(*) FROM plans"))
        return int(n)

    async def runs(self, key: str, limit: int = 50) -> list[Run]:
        if not _readable(key):
            return []
        sql = f"SELECT {rows.RUN_COLUMNS} FROM runs WHERE key = $1 ORDER BY id DESC"
        if limit > 0:
            found = await self._read(lambda pool: pool.fetch(sql + " LIMIT $2", key, limit))
        else:
            found = await self._read(lambda pool: pool.fetch(sql, key))
        return [rows.run_from_row(r) for r in found]

    async def get_meta(self, name: str) -> str | None:
        if not _readable(name):
            return None
        value = await self._read(
            lambda pool: pool.fetchval("SELECT value FROM meta WHERE name = $1", name)
        )
        return None if value is None else str(value)

    async def size_bytes(self) -> int:
        """Bytes of the driver's tables and their indexes."""
        try:
            n = await self._conn().fetchval(
                "SELECT sum(pg_total_relation_size(c)) FROM unnest("
                "ARRAY['plans', 'runs', 'meta', 'leases', 'nodes']::regclass[]) AS c"
            )
        except DB_ERRORS:
            return 0
        return int(n or 0)

    # -- helpers -----------------------------------------------------------

    def _conn(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"the {self.where} store is not open")
        return self._pool

    async def _read(self, query: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        try:
            return await query(self._conn())
        except DB_ERRORS as e:
            raise StoreError(f"cannot read {self.where}: {_why(e)}") from None

    async def _write(self, query: Callable[[asyncpg.Pool], Awaitable[T]], what: str) -> T:
        try:
            return await query(self._conn())
        except WRITE_ERRORS as e:
            raise StoreError(f"cannot {what} {self.where}: {_why(e)}") from None


def _why(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if "0x00" in text:
        return "PostgreSQL text cannot hold the NUL character"
    return text
