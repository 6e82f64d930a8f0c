"""What operators and receivers see of a cluster, against real node processes on
one PostgreSQL (tests/servers.py): firing ids carry the lease epoch the firing
was fenced under, runs and ``info`` name the node that fired, and the console's
cluster page shows the nodes, partitions, lease ages, epochs and takeovers."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from bs4 import BeautifulSoup

from forsun_box.cluster.partitions import partition_of
from tests.helpers import Server, Sink, wait_until
from tests.integration.test_cluster_nodes import PARTITIONS, balanced, hook, node, owners

pytest_plugins = ["tests.servers"]


def firing_ids(sink: Sink) -> dict[str, list[str]]:
    """key -> the X-Forsun-Firing-Id headers of its firings."""
    out: dict[str, list[str]] = {}
    with sink.cond:
        for _, path, headers in sink.hits:
            out.setdefault(path.lstrip("/"), []).append(headers["X-Forsun-Firing-Id"])
    return out


def page(srv: Server, path: str) -> BeautifulSoup:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}{path}", timeout=10) as resp:
        assert resp.status == 200
        return BeautifulSoup(resp.read().decode(), "html.parser")


def test_the_console_cluster_page_shows_nodes_partitions_epochs_and_takeovers(
    tmp_path: Path, postgres_dsn: str
) -> None:
    nodes = {n: node(tmp_path, postgres_dsn, n) for n in ("n1", "n2")}
    try:
        for srv in nodes.values():
            srv.start()
        assert wait_until(lambda: balanced(postgres_dsn, set(nodes)), 60), owners(postgres_dsn)
        n1 = nodes["n1"]
        assert page(n1, "/").select_one("#nav-cluster")["href"] == "/cluster"
        soup = page(n1, "/cluster")
        assert soup.select_one("#this-node").get_text(strip=True) == "n1"
        assert soup.select_one("#live-nodes").get_text(strip=True) == "2"
        rows = {tr["data-node"]: tr for tr in soup.select("#nodes tbody tr")}
        assert set(rows) == {"n1", "n2"}
        table = owners(postgres_dsn)
        for name, tr in rows.items():
            mine = [p for p, (o, _) in table.items() if o == name]
            assert tr.select_one(".count").get_text() == str(len(mine))
            epochs = sorted({e for o, e in table.values() if o == name})
            shown = tr.select_one(".epochs").get_text()
            assert shown == (str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}")
        assert "this node" in rows["n1"].get_text()
        assert len(soup.select("#leases tbody tr")) == PARTITIONS
        assert soup.select_one("#takeovers").get_text() == "0"
        # n2 dies: n1 takes its share over, and the page counts the takeovers
        nodes["n2"].kill()
        assert wait_until(lambda: balanced(postgres_dsn, {"n1"}), 60), owners(postgres_dsn)
        soup = page(n1, "/cluster")
        assert [tr["data-node"] for tr in soup.select("#nodes tbody tr")] == ["n1"]
        assert soup.select_one("#takeovers").get_text() == str(
            PARTITIONS - int(rows["n1"].select_one(".count").get_text())
        )
        assert soup.select_one("#trusted").get_text() == str(PARTITIONS)
    finally:
        for srv in nodes.values():
            if srv.proc is not None:
                srv.stop()


def test_firing_ids_carry_the_lease_epoch_and_runs_name_the_node(
    tmp_path: Path, postgres_dsn: str
) -> None:
    sink = Sink()
    nodes = {n: node(tmp_path, postgres_dsn, n) for n in ("n1", "n2")}
    try:
        for srv in nodes.values():
            srv.start()
        assert wait_until(lambda: balanced(postgres_dsn, set(nodes)), 60), owners(postgres_dsn)
        # n2 stops gracefully: n1 takes its partitions at the next epoch
        assert nodes["n2"].stop() == 0
        assert wait_until(lambda: balanced(postgres_dsn, {"n1"}), 60), owners(postgres_dsn)
        table = owners(postgres_dsn)
        # n1 took them all (epoch 1), handed n2 its share and took that back
        epochs = {epoch for _, epoch in table.values()}
        assert len(epochs) == 2 and 1 in epochs, table
        keys = [f"k{i}" for i in range(24)]
        n1 = nodes["n1"]
        for key in keys:
            n1.ok("PUT", "/v1/plan", hook(sink, key, 1))
        assert wait_until(lambda: set(firing_ids(sink)) >= set(keys), 60), firing_ids(sink)
        ids = firing_ids(sink)
        epochs_seen = set()
        for key in keys:
            [fid] = ids[key]
            epoch, due_ms, fired_key = fid.split(":", 2)
            assert fired_key == key and int(due_ms) > 0
            assert int(epoch) == table[partition_of(key, PARTITIONS)][1], (key, fid)
            epochs_seen.add(int(epoch))
        assert epochs_seen == epochs  # both kinds of partition fired
        # the run history and info name the node
        assert n1.ok("GET", "/v1/info")["node_id"] == "n1"

        def runs_of(key: str) -> list[dict[str, object]]:
            status, reply = n1.call("GET", f"/v2/plans/{key}/runs")
            assert status == 200, reply
            return reply["runs"]  # type: ignore[no-any-return]

        assert wait_until(lambda: all(runs_of(k) for k in keys), 60)
        assert {r["node_id"] for k in keys for r in runs_of(k)} == {"n1"}
        # and so does the console's run table
        soup = page(n1, f"/plan?key={keys[0]}")
        assert [td.get_text() for td in soup.select("#runs td.node")] == ["n1"]
        assert "Node" in [th.get_text() for th in soup.select("#runs th")]
    finally:
        for srv in nodes.values():
            if srv.proc is not None:
                srv.stop()
        sink.close()


def test_a_single_node_fires_under_epoch_0(tmp_path: Path) -> None:
    sink = Sink()
    srv = Server(tmp_path / "single")
    try:
        srv.start()
        srv.ok("PUT", "/v1/plan", hook(sink, "solo", 1))
        assert wait_until(lambda: "solo" in firing_ids(sink), 60)
        [fid] = firing_ids(sink)["solo"]
        assert fid.startswith("0:") and fid.endswith(":solo")
        assert srv.ok("GET", "/v1/info")["node_id"] == ""
        # the console links no cluster page, and the page says it is a single node
        assert page(srv, "/").select_one("#nav-cluster") is None
        assert page(srv, "/cluster").select_one("#single-node") is not None
        assert wait_until(lambda: srv.call("GET", "/v2/plans/solo/runs")[1]["runs"], 60)
        [run] = srv.call("GET", "/v2/plans/solo/runs")[1]["runs"]
        assert run["node_id"] is None and run["result"] == "ok"
        assert "Node" not in [
            th.get_text() for th in page(srv, "/plan?key=solo").select("#runs th")
        ]
    finally:
        if srv.proc is not None:
            srv.stop()
        sink.close()
