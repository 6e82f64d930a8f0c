"""The cluster page's view of the service's cluster document (the page itself, on
real nodes: tests/integration/test_cluster_ops.py and the browser suite)."""

from __future__ import annotations

from forsun_box.api.console.cluster import cluster_view, ranges


def test_partition_runs_fold() -> None:
    assert ranges([]) == ""
    assert ranges([5]) == "5"
    assert ranges([3, 0, 1, 2, 7, 9, 10]) == "0-3, 7, 9-10"


def test_a_single_node_says_so() -> None:
    assert cluster_view({"mode": "single"}) == {"single": True}


def test_nodes_their_partitions_epochs_lease_ages_and_free_partitions() -> None:
    lease = {"address": "", "last_owner": ""}
    status = {
        "mode": "cluster",
        "node": "a",
        "partitions": 4,
        "lease_ttl_ms": 10_000,
        "database_now_ms": 0,
        "this_node": {"trusted_partitions": 2, "takeovers": 1, "step_downs": 0},
        "nodes": [
            {"node": "a", "address": "h:1", "alive_for_ms": 9_000, "partitions": [0, 1]},
            {"node": "b", "address": "h:2", "alive_for_ms": 4_000, "partitions": [2]},
        ],
        "leases": [
            {**lease, "partition": 0, "owner": "a", "epoch": 3, "expires_in_ms": 9_000},
            {**lease, "partition": 1, "owner": "a", "epoch": 5, "expires_in_ms": 7_500},
            {**lease, "partition": 2, "owner": "b", "epoch": 2, "expires_in_ms": 4_000},
            {
                **lease,
                "partition": 3,
                "owner": "",
                "last_owner": "c",
                "epoch": 7,
                "expires_in_ms": 0,
            },
        ],
    }
    view = cluster_view(status)
    a, b = view["nodes"]
    assert (a["this"], a["count"], a["partitions"], a["epochs"]) == (True, 2, "0-1", "3-5")
    assert a["renewed"] == "1.0 s to 2.5 s ago" and a["alive_for"] == "9.0 s"
    assert (b["this"], b["count"], b["epochs"], b["renewed"]) == (False, 1, "2", "6.0 s ago")
    assert (view["free_count"], view["free"]) == (1, "3")
    assert view["leases"][3] == {
        "partition": 3,
        "owner": "",
        "last_owner": "c",
        "epoch": 7,
        "age": "",
        "expires_in": "",
    }
    assert view["ttl"] == "10.0 s" and view["me"]["takeovers"] == 1
