"""Prometheus series of a cluster node, read from it at each scrape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class ClusterCollector(Collector):
    """Partitions owned, live nodes, takeovers, step-downs, failed lease rounds, fenced
    writes refused and firings the gate held back, of one :class:`ClusterNode`."""

    def __init__(self, node: Any, scheduler: Any) -> None:
        self.node = node
        self.scheduler = scheduler

    def collect(self) -> Iterator[Any]:
        leases = self.node.leases
        c = leases.counters
        yield GaugeMetricFamily(
            "forsun_box_cluster_partitions_owned",
            "Partitions whose lease this node holds and trusts",
            value=len(leases.trusted()),
        )
        yield GaugeMetricFamily(
            "forsun_box_cluster_live_nodes",
            "Live nodes seen at the last lease round",
            value=leases.live_nodes,
        )
        for name, doc, value in (
            ("takeovers", "Partitions taken from a node whose lease ran out", c.takeovers),
            ("leases_acquired", "Partition leases taken (takeovers and hand-overs)", c.acquired),
            ("leases_released", "Partition leases given up (balancing, stop)", c.released),
            ("step_downs", "Partition leases found taken by another node", c.lost),
            ("lease_round_failures", "Lease rounds that failed (database errors)", c.failed_rounds),
            (
                "fenced_writes_refused",
                "Firing writes refused because the partition's epoch had moved",
                self.node.view.refused,
            ),
            (
                "gated_firings",
                "Firings not run because the lease was no longer trusted",
                getattr(self.scheduler, "gated", 0),
            ),
        ):
            yield CounterMetricFamily(f"forsun_box_cluster_{name}", doc, value=value)

    def describe(self) -> Iterator[Any]:
        return iter(())
