"""A cluster node: the engine fires only the partitions this node holds leases on.

:class:`PartitionedStore` is the engine's view of a :class:`ClusterStore`:
its window holds the plans of the partitions this node trusts, and the
firing's writes are fenced by the epochs it holds. :class:`ClusterNode`
runs the lease manager, checks the lease before every firing (the engine's
gate), and keeps the window in step with what the other nodes write:

- a hint per commit of another node (the keys it wrote) drops those keys
  from the window and reads the window again from the earliest next
  firing written;
- partitions newly trusted (taken over, handed over, trusted again after
  the database came back) make the window read again from the start, so
  their overdue plans fire at once;
- a full re-read every :data:`RESCAN_S` is the safety net for a lost hint.

An ``agent`` node (forsun's ``server_mode = AGENT``) takes no lease: it
serves every API and stores, and never fires.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any

from forsun_box.cluster.base import ChangeHint, ClusterStore
from forsun_box.cluster.leases import LeaseManager
from forsun_box.config import Config
from forsun_box.errors import StartupError
from forsun_box.plan import Plan
from forsun_box.store.base import Batch, Run, Store

log = logging.getLogger("forsun_box.cluster")

#: seconds between two full re-reads of the window (the safety net for hints)
RESCAN_S = 10.0
_FROM_START = -(1 << 62)  # a rescan request that reads the window from its start


class PartitionedStore(Store):
    """The engine's store on a cluster node; everything but the window and the
    firing writes goes straight to the shared store."""

    name = "partitioned"

    def __init__(self, inner: Store, leases: LeaseManager, node: str) -> None:
        if not isinstance(inner, ClusterStore):
            raise TypeError(f"the {inner.name} store cannot back a cluster")
        self.inner = inner
        self.cluster: ClusterStore = inner
        self.leases = leases
        self.node = node
        #: firing writes refused because the lease had moved on
        self.refused = 0

    async def open(self) -> None:
        """The shared store is opened (and closed) by its owner."""

    async def close(self) -> None:
        """See :meth:`open`."""

    async def apply(self, batch: Batch) -> None:
        if not (batch.advances or batch.statuses or batch.runs):
            await self.inner.apply(batch)
            return
        # The epochs held, trusted or not: the database decides, in the transaction.
        result = await self.cluster.apply_fenced(batch, self.node, self.leases.epochs())
        self.refused += result.refused

    async def due(self, after: tuple[int, str] | None, before_ms: int, limit: int) -> list[Plan]:
        partitions = sorted(self.leases.trusted())
        return await self.cluster.due_in_partitions(partitions, after, before_ms, limit)

    async def get(self, key: str) -> Plan | None:
        return await self.inner.get(key)

    async def firing_between(self, start_ms: int, end_ms: int, limit: int) -> list[Plan]:
        return await self.inner.firing_between(start_ms, end_ms, limit)

    async def count_firing_between(self, start_ms: int, end_ms: int, limit: int) -> int:
        return await self.inner.count_firing_between(start_ms, end_ms, limit)

    async def keys(self, prefix: str = "", after: str = "", limit: int = 0) -> list[str]:
        return await self.inner.keys(prefix, after, limit)

    async def plans(self, prefix: str = "", after: str = "", limit: int = 100) -> list[Plan]:
        return await self.inner.plans(prefix, after, limit)

    async def count(self) -> int:
        return await self.inner.count()

    async def runs(self, key: str, limit: int = 50) -> list[Run]:
        return await self.inner.runs(key, limit)

    async def get_meta(self, name: str) -> str | None:
        return await self.inner.get_meta(name)

    async def prune_runs(self, now_ms: int) -> int:
        return await self.inner.prune_runs(now_ms)

    async def size_bytes(self) -> int:
        return await self.inner.size_bytes()


class ClusterNode:
    """Leases, the firing gate and window upkeep of one node (see the module)."""

    def __init__(
        self,
        store: Store,
        node: str,
        address: str,
        *,
        ttl_s: float,
        agent: bool = False,
        rescan_s: float = RESCAN_S,
    ) -> None:
        if not isinstance(store, ClusterStore):
            raise TypeError(f"the {store.name} store cannot back a cluster")
        self.cluster: ClusterStore = store
        self.node = node
        self.agent = agent
        self.rescan_s = rescan_s
        self.leases = LeaseManager(
            store.lease_backend(),
            node,
            address,
            ttl_s=ttl_s,
            on_change=self._on_change,
            before_release=self._drain,
        )
        self.view = PartitionedStore(store, self.leases, node)
        self.scheduler: Any = None
        self._want: int | None = None  # earliest rescan start asked for (_FROM_START: all)
        self._forget: set[str] | None = set()  # keys to drop first (None: every plan)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: partition -> when this node began to fire it again after an outage (ms)
        self._outage_until: dict[int, int] = {}

    async def status(self) -> dict[str, Any]:
        """``/v2/cluster``'s document: the nodes, the partitions each owns, lease ages
        and epochs, on the database's clock."""
        backend = self.leases.backend
        now = await backend.now_ms()
        table = await backend.leases()
        nodes = await backend.nodes()
        owned: dict[str, list[int]] = collections.defaultdict(list)
        for lease in table:
            if lease.lease_until_ms > now:
                owned[lease.owner].append(lease.partition)
        c = self.leases.counters
        return {
            "mode": "agent" if self.agent else "cluster",
            "node": self.node,
            "partitions": backend.partitions,
            "lease_ttl_ms": self.leases.ttl_ms,
            "database_now_ms": now,
            "this_node": {
                "trusted_partitions": len(self.leases.trusted()),
                "takeovers": c.takeovers,
                "step_downs": c.lost,
                "leases_acquired": c.acquired,
                "leases_released": c.released,
                "failed_lease_rounds": c.failed_rounds,
                "fenced_writes_refused": self.view.refused,
            },
            "nodes": [
                {
                    "node": n.node,
                    "address": n.address,
                    "alive_for_ms": n.alive_until_ms - now,
                    "partitions": sorted(owned.get(n.node, [])),
                }
                for n in nodes
            ],
            "leases": [
                {
                    "partition": lease.partition,
                    "owner": lease.owner if lease.lease_until_ms > now else "",
                    "last_owner": lease.owner,
                    "address": lease.address,
                    "epoch": lease.epoch,
                    "expires_in_ms": max(lease.lease_until_ms - now, 0),
                }
                for lease in table
            ],
        }

    def may_fire(self, plan: Plan) -> bool:
        """The engine's gate: fire only under a lease this node trusts right now."""
        return self.leases.epoch_of(self.cluster.partition_of(plan.key)) is not None

    def firing_epoch(self, plan: Plan) -> str:
        """The first part of ``plan``'s firing ids on this node: the epoch of its
        partition's lease that the firing's writes are fenced with ("0" when this
        node holds no lease on it, e.g. a "fire now" on a node that doesn't own it)."""
        epoch = self.leases.held_epoch(self.cluster.partition_of(plan.key))
        return "0" if epoch is None else str(epoch)

    async def start_leases(self) -> None:
        """Take this node's first share (before the engine reads its first window)."""
        if not self.agent:
            await self.leases.start()

    async def attach(self, scheduler: Any) -> None:
        """Keep ``scheduler``'s window in step with the cluster from now on."""
        self.scheduler = scheduler
        scheduler.gate = self.may_fire
        scheduler.catchup_since = self.catchup_since
        await self.cluster.watch(self.node, self._on_hint, self._on_release, self._on_gap)
        self._task = asyncio.get_running_loop().create_task(
            self._upkeep(), name=f"forsun-box cluster {self.node}"
        )

    async def _drain(self, partitions: set[int]) -> None:
        """Wait (a third of the TTL at most) until the firings under way in
        ``partitions`` committed their writes: handed over with one still
        running, its write would be refused and the new owner fire it again."""
        scheduler = self.scheduler
        if scheduler is None:
            return
        part = self.cluster.partition_of
        deadline = asyncio.get_running_loop().time() + self.leases.ttl_s / 3
        while any(part(k) in partitions for k in scheduler.inflight_keys()):
            if asyncio.get_running_loop().time() >= deadline:
                log.warning(
                    "%s: handing partitions over with firings still running "
                    "(they may fire again on the new owner)",
                    self.node,
                )
                return
            await asyncio.sleep(0.01)

    # -- events ---------------------------------------------------------------

    def catchup_since(self, key: str) -> int:
        """When this node began to fire ``key``'s partition again after an outage
        (ms; 0 when it did not): plans due before then fire under the catch-up
        policy, as after a downtime of the node itself."""
        outages = self._outage_until
        if not outages:
            return 0
        return outages.get(self.cluster.partition_of(key), 0)

    def _on_change(self, gained: set[int], lost: set[int]) -> None:
        if gained:
            now = (
                int(time.time() * 1000) if self.scheduler is None else self.scheduler.clock.now_ms()
            )
            outages = self.leases.after_outage
            for p in gained:
                if p in outages:
                    self._outage_until[p] = now
                else:
                    self._outage_until.pop(p, None)
            self._request(_FROM_START)

    def _on_hint(self, hint: ChangeHint) -> None:
        if hint.keys is None:
            # every plan is dropped: all of them must be read again, not only the new
            self._forget = None
            self._request(_FROM_START)
            return
        if self._forget is not None:
            self._forget.update(hint.keys)
        self._request(hint.from_ms)

    def _on_release(self, node: str) -> None:
        if not self.agent:
            self.leases.poke()

    def _on_gap(self) -> None:
        self._forget = None
        self._request(_FROM_START)

    def _request(self, from_ms: int | None) -> None:
        if from_ms is not None:
            self._want = from_ms if self._want is None else min(self._want, from_ms)
        self._wake.set()

    async def _upkeep(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.rescan_s)
            if not self._wake.is_set():
                self._want = _FROM_START  # the periodic safety net
            self._wake.clear()
            forget, self._forget = self._forget, set()
            want, self._want = self._want, None
            try:
                if forget is None or forget:
                    await self.scheduler.forget(None if forget is None else sorted(forget))
                if want is not None:
                    await self.scheduler.rescan(None if want == _FROM_START else want)
            except Exception as e:  # the next round (or the safety net) tries again
                log.warning("%s: keeping the window in step failed: %s", self.node, e)

    async def stop(self) -> None:
        """Release the leases at once (the engine stopped firing) and stop listening."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.leases.stop()
        await self.cluster.unwatch()


def make_cluster_node(config: Config, store: Store) -> ClusterNode:
    """The cluster node the settings ask for (``node_id`` set) on the open ``store``.

    Raises StartupError when the store can't back a cluster.
    """
    if not isinstance(store, ClusterStore):
        raise StartupError(
            f"--node-id needs a store that can back a cluster (--driver postgres); "
            f"the {config.driver} store cannot"
        )
    address = config.cluster_address or config.http_bind
    agent = config.server_mode.strip().upper() == "AGENT"
    if agent:
        log.info(
            "%s: agent node (server_mode = AGENT): serves and stores, never fires", config.node_id
        )
    return ClusterNode(store, config.node_id, address, ttl_s=config.lease_ttl_seconds, agent=agent)
