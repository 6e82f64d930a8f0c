"""``GET /v2/cluster``: the nodes, the partitions each owns, lease ages and epochs.

On a single node (no ``node_id``) it answers ``{"mode": "single"}``.
"""

from __future__ import annotations

from forsun_box.api.http.v2 import V2Handler


class ClusterHandler(V2Handler):
    async def get(self) -> None:
        await self.run(self._get)

    async def _get(self) -> None:
        self.send(200, await self.ctx.service.cluster_status())
