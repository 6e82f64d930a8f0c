"""``GET /v2/cluster``: the nodes, the partitions each owns, lease ages and epochs.

On a single node (no ``node_id``) it answers ``{"mode": "single"}``.
"""

from __future__ import annotations

import collections
from typing import Any

from forsun_box.api.http_v2 import V2Context, V2Handler


class ClusterHandler(V2Handler):
    def initialize(self, ctx: V2Context, node: Any = None) -> None:  # type: ignore[override]
        super().initialize(ctx)
        self.node = node

    async def get(self) -> None:
        await self.run(self._get)

    async def _get(self) -> None:
        node = self.node
        if node is None:
            self.send(200, {"mode": "single"})
            return
        backend = node.leases.backend
        now = await backend.now_ms()
        table = await backend.leases()
        nodes = await backend.nodes()
        owned: dict[str, list[int]] = collections.defaultdict(list)
        for lease in table:
            if lease.lease_until_ms > now:
                owned[lease.owner].append(lease.partition)
        c = node.leases.counters
        self.send(
            200,
            {
                "mode": "agent" if node.agent else "cluster",
                "node": node.node,
                "partitions": backend.partitions,
                "lease_ttl_ms": node.leases.ttl_ms,
                "database_now_ms": now,
                "this_node": {
                    "trusted_partitions": len(node.leases.trusted()),
                    "takeovers": c.takeovers,
                    "step_downs": c.lost,
                    "leases_acquired": c.acquired,
                    "leases_released": c.released,
                    "failed_lease_rounds": c.failed_rounds,
                    "fenced_writes_refused": node.view.refused,
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
            },
        )


def routes(ctx: V2Context, node: Any) -> list[Any]:
    """``/v2/cluster`` (to come before the v2 catch-all route)."""
    return [(r"/v2/cluster", ClusterHandler, {"ctx": ctx, "node": node})]
