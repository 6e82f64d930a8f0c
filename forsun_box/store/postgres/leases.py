"""The lease table and the node table of a postgres database.

Every expiry is computed and compared on the database's clock
(``clock_timestamp()``), so the nodes' clocks may disagree: a node only
ever measures how long ago *it* sent a request (see
:mod:`forsun_box.cluster.leases`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import asyncpg

from forsun_box.cluster.base import Acquisition, Lease, LeaseBackend, Node
from forsun_box.errors import StoreError
from forsun_box.store.postgres import hints

_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)
# ms since the epoch; 0 for a free lease (-infinity)
_MS = "CASE WHEN isfinite({0}) THEN (extract(epoch FROM {0}) * 1000)::bigint ELSE 0 END"
_UNTIL = _MS.format("lease_until")
_NOW = _MS.format("clock_timestamp()")
_TTL = "clock_timestamp() + $ttl * interval '1 millisecond'"

# The row of another live instance under the same name is left alone: ``me`` is
# then empty and the node missing from the answer.
HEARTBEAT_SQL = (
    "WITH me AS (INSERT INTO nodes (node, instance, address, alive_until) VALUES ($1, $4, $2, "
    + _TTL.replace("$ttl", "$3")
    + ") ON CONFLICT (node) DO UPDATE SET instance = EXCLUDED.instance, "
    "address = EXCLUDED.address, alive_until = EXCLUDED.alive_until "
    "WHERE nodes.instance = EXCLUDED.instance OR nodes.alive_until <= clock_timestamp() "
    "RETURNING node, address, alive_until) "
    # the statement's snapshot can't see the row it writes: ``me`` adds it
    f"SELECT node, address, {_MS.format('alive_until')} FROM me UNION ALL "
    f"SELECT node, address, {_MS.format('alive_until')} FROM nodes "
    "WHERE alive_until > clock_timestamp() AND node <> $1 ORDER BY 1"
)
NODES_SQL = (
    f"SELECT node, address, {_MS.format('alive_until')} FROM nodes "
    "WHERE alive_until > clock_timestamp() ORDER BY node"
)
LEAVE_SQL = "DELETE FROM nodes WHERE node = $1 AND instance = $2"
# Free (-infinity) or expired leases, taken with a higher epoch. SKIP LOCKED:
# rows another node is taking, or that a fenced write holds, are passed by.
ACQUIRE_SQL = (
    "UPDATE leases AS l SET owner = $1, address = $2, epoch = l.epoch + 1, "
    f"lease_until = {_TTL.replace('$ttl', '$3')} FROM ("
    "SELECT partition, owner, lease_until = '-infinity' AS released FROM leases "
    "WHERE lease_until <= clock_timestamp() ORDER BY partition LIMIT $4 "
    "FOR UPDATE SKIP LOCKED) AS old WHERE l.partition = old.partition "
    f"RETURNING l.partition, l.owner, l.address, l.epoch, {_MS.format('l.lease_until')}, "
    "old.owner, old.released"
)
RENEW_SQL = (
    f"UPDATE leases AS l SET lease_until = {_TTL.replace('$ttl', '$4')}, address = $2 "
    "FROM unnest($3::integer[], $5::bigint[]) AS h(partition, epoch) "
    "WHERE l.partition = h.partition AND l.epoch = h.epoch AND l.owner = $1 "
    f"RETURNING l.partition, l.owner, l.address, l.epoch, {_MS.format('l.lease_until')}"
)
# ... and tell the other nodes (forsun_box.store.postgres.hints), in the same statement
RELEASE_SQL = (
    "WITH r AS (UPDATE leases AS l SET lease_until = '-infinity' "
    "FROM unnest($2::integer[], $3::bigint[]) AS h(partition, epoch) "
    "WHERE l.partition = h.partition AND l.epoch = h.epoch AND l.owner = $1 RETURNING 1) "
    f"SELECT count(*), pg_notify('{hints.LEASES}', $1) FROM r"
)
LEASES_SQL = f"SELECT partition, owner, address, epoch, {_UNTIL} FROM leases ORDER BY partition"


def _ms(value: Any) -> int:
    return 0 if value is None else int(value)


def _lease(r: Any) -> Lease:
    return Lease(r[0], r[1], r[2], r[3], _ms(r[4]))


class PostgresLeases(LeaseBackend):
    """:class:`~forsun_box.cluster.base.LeaseBackend` on the ``leases`` and ``nodes`` tables."""

    def __init__(self, pool: asyncpg.Pool, partitions: int, where: str) -> None:
        self.pool = pool
        self.partitions = partitions
        self.where = where

    async def _run(self, what: str, method: str, sql: str, *args: Any) -> Any:
        try:
            return await getattr(self.pool, method)(sql, *args)
        except _DB_ERRORS as e:
            raise StoreError(f"cannot {what} in {self.where}: {e}") from None

    async def heartbeat(self, node: str, instance: str, address: str, ttl_ms: int) -> list[Node]:
        found = await self._run(
            "announce the node", "fetch", HEARTBEAT_SQL, node, address, ttl_ms, instance
        )
        return [Node(r[0], r[1], _ms(r[2])) for r in found]

    async def nodes(self) -> list[Node]:
        found = await self._run("read the nodes", "fetch", NODES_SQL)
        return [Node(r[0], r[1], _ms(r[2])) for r in found]

    async def leave(self, node: str, instance: str) -> None:
        await self._run("remove the node", "execute", LEAVE_SQL, node, instance)

    async def acquire(self, node: str, address: str, ttl_ms: int, limit: int) -> list[Acquisition]:
        if limit <= 0:
            return []
        found = await self._run("take leases", "fetch", ACQUIRE_SQL, node, address, ttl_ms, limit)
        return [Acquisition(_lease(r), r[5], bool(r[6])) for r in found]

    async def renew(
        self, node: str, address: str, held: Mapping[int, int], ttl_ms: int
    ) -> list[Lease]:
        if not held:
            return []
        found = await self._run(
            "renew leases",
            "fetch",
            RENEW_SQL,
            node,
            address,
            list(held),
            ttl_ms,
            list(held.values()),
        )
        return [_lease(r) for r in found]

    async def release(self, node: str, held: Mapping[int, int]) -> int:
        if not held:
            return 0
        released = await self._run(
            "release leases", "fetchval", RELEASE_SQL, node, list(held), list(held.values())
        )
        return int(released)

    async def leases(self) -> list[Lease]:
        return [_lease(r) for r in await self._run("read the leases", "fetch", LEASES_SQL)]

    async def now_ms(self) -> int:
        return int(await self._run("read the clock", "fetchval", f"SELECT {_NOW}"))
