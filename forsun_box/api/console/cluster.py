"""The console's cluster page: the nodes, the partitions each owns, lease ages,
epochs and takeovers, from the service's ``/v2/cluster`` document (a single
node says so)."""

from __future__ import annotations

from typing import Any

import tornado.web

from forsun_box.api.console.base import ConsoleHandler


def ranges(partitions: list[int]) -> str:
    """``0-15, 32, 40-41``: sorted partition numbers with runs folded."""
    out: list[str] = []
    nums = sorted(partitions)
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ", ".join(out)


def seconds(ms: int) -> str:
    """``2.4 s``: lease ages and expiries, which are seconds long."""
    return f"{max(ms, 0) / 1000:.1f} s"


def _ago(ages: list[int]) -> str:
    if not ages:
        return ""
    lo, hi = seconds(min(ages)), seconds(max(ages))
    return f"{lo} ago" if lo == hi else f"{lo} to {hi} ago"


def _span(values: list[int]) -> str:
    if not values:
        return ""
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def cluster_view(status: dict[str, Any]) -> dict[str, Any]:
    """What the page shows, from :meth:`ForsunService.cluster_status`'s document.

    Per node: its partitions, the epochs of their leases and the age of the
    oldest and newest of them (time since their last renewal: the TTL less
    what is left of it). Partitions whose lease ran out show as free.
    """
    if status.get("mode") == "single":
        return {"single": True}
    ttl = int(status["lease_ttl_ms"])
    by_owner: dict[str, list[dict[str, Any]]] = {}
    free = []
    for lease in status["leases"]:
        if lease["owner"]:
            by_owner.setdefault(lease["owner"], []).append(lease)
        else:
            free.append(lease["partition"])
    nodes = []
    for n in status["nodes"]:
        held = by_owner.get(n["node"], [])
        ages = [max(ttl - lease["expires_in_ms"], 0) for lease in held]
        nodes.append(
            {
                "node": n["node"],
                "address": n["address"],
                "this": n["node"] == status["node"],
                "count": len(held),
                "partitions": ranges([lease["partition"] for lease in held]),
                "epochs": _span([lease["epoch"] for lease in held]),
                "renewed": _ago(ages),
                "alive_for": seconds(n["alive_for_ms"]),
            }
        )
    leases = [
        {
            "partition": lease["partition"],
            "owner": lease["owner"],
            "last_owner": lease["last_owner"],
            "epoch": lease["epoch"],
            "age": seconds(ttl - lease["expires_in_ms"]) if lease["owner"] else "",
            "expires_in": seconds(lease["expires_in_ms"]) if lease["owner"] else "",
        }
        for lease in status["leases"]
    ]
    return {
        "single": False,
        "mode": status["mode"],
        "node": status["node"],
        "partitions": status["partitions"],
        "ttl": seconds(ttl),
        "me": status["this_node"],
        "nodes": nodes,
        "free": ranges(free),
        "free_count": len(free),
        "leases": leases,
    }


class ClusterHandler(ConsoleHandler):
    """``GET /cluster``."""

    @tornado.web.authenticated
    async def get(self) -> None:
        view = cluster_view(await self.console.service.cluster_status())
        self.page("cluster.html", view=view, active="cluster")


def routes(kw: dict[str, Any]) -> list[Any]:
    return [(r"/cluster", ClusterHandler, kw)]
