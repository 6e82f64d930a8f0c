"""Several forsun-box node processes on one PostgreSQL (tests/servers.py) share the
firing by partition leases: creates on any node fire once, a SIGKILLed node's
share is taken over after its lease expires, a SIGSTOPped node stops firing, and a
graceful stop hands its partitions over at once.

Bounds on how long these take leave room for a slow or busy machine: they tell a
takeover that follows the expiry from one that never comes, and a hand-over from a
wait for the expiry (with the logs' word for it). The failover time itself is
measured by the cluster benchmark (bench/RESULTS.md)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import signal
import time
from pathlib import Path

import asyncpg

from forsun_box.cluster.partitions import partition_of
from tests.helpers import Server, Sink, wait_until

pytest_plugins = ["tests.servers"]

TTL_S = 2.0
PARTITIONS = 64


def node(tmp_path: Path, dsn: str, name: str, *extra: str) -> Server:
    return Server(
        tmp_path / name,
        "--driver",
        "postgres",
        "--postgres-dsn",
        dsn,
        "--node-id",
        name,
        "--lease-ttl-seconds",
        str(TTL_S),
        *extra,
        env={"STORE_POSTGRES_PARTITIONS": str(PARTITIONS)},
    )


def owners(dsn: str) -> dict[int, tuple[str, int]]:
    """partition -> (owner, epoch) of the leases unexpired on the database's clock."""

    async def read() -> dict[int, tuple[str, int]]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT partition, owner, epoch FROM leases WHERE lease_until > clock_timestamp()"
            )
            return {r[0]: (r[1], r[2]) for r in rows}
        finally:
            await conn.close()

    return asyncio.run(read())


def logs(dsn: str, nodes: dict[str, Server]) -> str:
    """The leases and the end of every node's log, for a failure's message."""
    tails = "".join(f"\n--- {name}:\n{srv.log()[-2000:]}" for name, srv in nodes.items())
    return f"{owners(dsn)}{tails}"


def balanced(dsn: str, names: set[str]) -> bool:
    table = owners(dsn)
    return len(table) == PARTITIONS and {o for o, _ in table.values()} == names


def hook(sink: Sink, key: str, seconds: int) -> dict[str, object]:
    return {
        "key": key,
        "seconds": seconds,
        "count": 1,
        "action": "http",
        "params": {"url": sink.url(f"/{key}")},
    }


def fired(sink: Sink) -> collections.Counter[str]:
    with sink.cond:
        return collections.Counter(h[1].lstrip("/") for h in sink.hits)


def test_a_killed_node_is_taken_over_and_every_plan_fires_once(
    tmp_path: Path, postgres_dsn: str
) -> None:
    sink = Sink()
    nodes = {n: node(tmp_path, postgres_dsn, n) for n in ("n1", "n2", "n3")}
    try:
        for srv in nodes.values():
            srv.start()
        assert wait_until(lambda: balanced(postgres_dsn, set(nodes)), 60), logs(postgres_dsn, nodes)
        keys = []
        for name, srv in nodes.items():
            # an array a node: all acknowledged at once, none due before the kill
            mine = [f"{name}-{i}" for i in range(60)]
            srv.ok("PUT", "/v1/plan", [hook(sink, key, 3 + i % 4) for i, key in enumerate(mine)])
            keys += mine
        before = owners(postgres_dsn)
        dead = {p for p, (o, _) in before.items() if o == "n2"}
        assert dead
        nodes["n2"].kill()
        killed_at = time.monotonic()
        assert wait_until(
            lambda: all(owners(postgres_dsn).get(p, ("n2", 0))[0] != "n2" for p in dead), 60
        ), logs(postgres_dsn, nodes)
        took = time.monotonic() - killed_at
        assert took <= 3 * TTL_S + 2, f"takeover took {took:.1f} s"
        after = owners(postgres_dsn)
        assert all(after[p][1] > before[p][1] for p in dead)
        # every plan fires, the dead node's too; nothing was in flight at the kill
        assert wait_until(lambda: set(fired(sink)) >= set(keys), 60), set(keys) - set(fired(sink))
        time.sleep(0.5)  # a duplicate would arrive right behind
        counts = fired(sink)
        assert [k for k in keys if counts[k] != 1] == []
        took_over = [srv.log() for name, srv in nodes.items() if name != "n2"]
        assert any("took over" in text and "from n2" in text for text in took_over)
        # started again under its name, n2 takes a share again
        nodes["n2"] = node(tmp_path, postgres_dsn, "n2").start()
        assert wait_until(lambda: balanced(postgres_dsn, set(nodes)), 60), logs(postgres_dsn, nodes)
    finally:
        for srv in nodes.values():
            if srv.proc is not None:
                srv.stop()
        sink.close()


def test_firings_missed_during_a_takeover_catch_up_under_the_policy(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """A plan every 200 ms on a node that is killed: the new owner fires the ones its
    lease's expiry made nobody fire once (the default catch-up policy, fire_once), as
    after a downtime of a node itself, then goes on every 200 ms."""
    sink = Sink()
    nodes = {n: node(tmp_path, postgres_dsn, n) for n in ("n1", "n2")}
    try:
        for srv in nodes.values():
            srv.start()
        assert wait_until(lambda: balanced(postgres_dsn, set(nodes)), 60), logs(postgres_dsn, nodes)
        table = owners(postgres_dsn)
        key = next(
            k
            for k in (f"every-{i}" for i in itertools.count())
            if table[partition_of(k, PARTITIONS)][0] == "n2"
        )
        body = {
            "action": "http",
            "params": {"url": sink.url(f"/{key}")},
            "schedule": {"kind": "delay", "interval_ms": 200, "count": 0},
        }
        status, reply = nodes["n1"].call("PUT", f"/v2/plans/{key}", body)
        assert status == 201, reply
        assert wait_until(lambda: fired(sink)[key] >= 3, 30)  # n2 fires it
        killed_at = time.time() * 1000
        nodes["n2"].kill()

        def dues(since_ms: float = 0) -> list[int]:
            """Due instants of the firings that arrived from ``since_ms`` on, as they came."""
            with sink.cond:
                hits = [h for h in sink.hits if h[0] >= since_ms]
            ids = [{k.lower(): v for k, v in h[2].items()}["x-forsun-firing-id"] for h in hits]
            return [int(i.split(":")[1]) for i in ids]

        last_before = max(dues())
        # n2 is gone by then; its lease runs out over a second later
        new_owner = killed_at + 500
        assert wait_until(lambda: len(dues(new_owner)) >= 5, 60), logs(postgres_dsn, nodes)
        after = dues(new_owner)
        # one firing for all those missed (the first, or the last n2 fired if the kill
        # came before its record), then every 200 ms from then on
        assert after[0] in (last_before, last_before + 200), (last_before, after)
        assert after[1] - after[0] >= 1000, after  # (fire_all would fire each one missed)
        assert all(b - a == 200 for a, b in itertools.pairwise(after[1:])), after
        assert any("misfire: firing " + key in srv.log() for srv in nodes.values()), logs(
            postgres_dsn, nodes
        )
    finally:
        for srv in nodes.values():
            if srv.proc is not None:
                srv.stop()
        sink.close()


def test_a_graceful_stop_hands_over_at_once(tmp_path: Path, postgres_dsn: str) -> None:
    nodes = {n: node(tmp_path, postgres_dsn, n) for n in ("n1", "n2")}
    try:
        for srv in nodes.values():
            srv.start()
        assert wait_until(lambda: balanced(postgres_dsn, set(nodes)), 60), logs(postgres_dsn, nodes)
        # what operators see: /v2/cluster and the metrics
        status, view = nodes["n1"].call("GET", "/v2/cluster")
        assert status == 200, view
        assert (view["mode"], view["node"], view["partitions"]) == ("cluster", "n1", PARTITIONS)
        shares = {n["node"]: n["partitions"] for n in view["nodes"]}
        assert set(shares) == {"n1", "n2"}
        assert sorted(shares["n1"] + shares["n2"]) == list(range(PARTITIONS))
        assert view["this_node"]["trusted_partitions"] == len(shares["n1"])
        assert all(0 <= lease["expires_in_ms"] <= TTL_S * 1000 for lease in view["leases"])
        status, text = nodes["n1"].call("GET", "/metrics")
        assert f"forsun_box_cluster_partitions_owned {float(len(shares['n1']))}" in text
        assert "forsun_box_cluster_fenced_writes_refused_total 0.0" in text
        assert nodes["n1"].stop() == 0
        stopped_at = time.monotonic()
        assert wait_until(lambda: balanced(postgres_dsn, {"n2"}), 30), logs(postgres_dsn, nodes)
        took = time.monotonic() - stopped_at
        assert took < 2 * TTL_S, f"hand-over took {took:.2f} s"
        assert "released" in nodes["n1"].log()
        assert "handed over by n1" in nodes["n2"].log()
    finally:
        for srv in nodes.values():
            srv.stop()


def test_a_paused_node_steps_down_and_nothing_fires_twice(
    tmp_path: Path, postgres_dsn: str
) -> None:
    sink = Sink()
    nodes = {n: node(tmp_path, postgres_dsn, n) for n in ("n1", "n2")}
    try:
        for srv in nodes.values():
            srv.start()
        assert wait_until(lambda: balanced(postgres_dsn, set(nodes)), 60), logs(postgres_dsn, nodes)
        keys = [f"p-{i}" for i in range(60)]
        for n, name in enumerate(("n2", "n1")):
            nodes[name].ok(
                "PUT",
                "/v1/plan",
                [hook(sink, key, 4 + i % 3) for i, key in enumerate(keys) if i % 2 == n],
            )
        paused = nodes["n1"]
        assert paused.proc is not None
        os.kill(paused.proc.pid, signal.SIGSTOP)
        try:
            # n2 takes everything while n1 sleeps past its TTL, and fires its plans
            assert wait_until(lambda: balanced(postgres_dsn, {"n2"}), 30), logs(postgres_dsn, nodes)
            assert wait_until(lambda: set(fired(sink)) >= set(keys), 60)
        finally:
            os.kill(paused.proc.pid, signal.SIGCONT)
        # n1 wakes up: it steps down instead of firing what its window still holds
        assert wait_until(lambda: "stepping down" in paused.log(), 30), paused.log()[-3000:]
        time.sleep(1.0)  # a firing from the stale window would arrive within it
        counts = fired(sink)
        assert [k for k in keys if counts[k] != 1] == []
        # and the pair shares the partitions again
        assert wait_until(lambda: balanced(postgres_dsn, set(nodes)), 60), logs(postgres_dsn, nodes)
    finally:
        for srv in nodes.values():
            srv.stop()
        sink.close()


def test_plans_written_on_any_node_reach_their_owner_at_once(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """An agent node (server_mode = AGENT) serves and stores but never fires; what it
    writes reaches the owner by a hint, long before the periodic re-read: a create
    fires on time, a remove never fires."""
    sink = Sink()
    conf = tmp_path / "agent.conf"
    conf.write_text("server_mode = AGENT\n")
    worker = node(tmp_path, postgres_dsn, "worker")
    agent = node(tmp_path, postgres_dsn, "agent", "--conf", str(conf))
    try:
        worker.start()
        agent.start()
        assert wait_until(lambda: balanced(postgres_dsn, {"worker"}), 60), owners(postgres_dsn)
        keys = [f"a-{i}" for i in range(30)]
        created = agent.ok("PUT", "/v1/plan", [hook(sink, k, 2) for k in keys])
        doomed = agent.ok("PUT", "/v1/plan", hook(sink, "removed", 2))
        agent.ok("DELETE", "/v1/plan?key=removed")
        assert wait_until(lambda: set(fired(sink)) >= set(keys), 30)
        due = {p["key"]: p["next_time"] for p in created}
        with sink.cond:
            late = [at / 1000 - due[path.lstrip("/")] for at, path, _ in sink.hits]
        assert max(late) < 5, late  # the safety-net re-read is every 10 s
        time.sleep(max(doomed["next_time"] + 1.0 - time.time(), 0))  # past its due time
        assert "removed" not in fired(sink)
        status, view = agent.call("GET", "/v2/cluster")
        assert status == 200
        assert view["mode"] == "agent" and view["this_node"]["trusted_partitions"] == 0
        assert "never fires" in agent.log()
    finally:
        agent.stop()
        worker.stop()
        sink.close()


def test_node_id_on_a_store_that_cannot_cluster_stops_startup(tmp_path: Path) -> None:
    srv = Server(tmp_path, "--node-id", "n1")
    srv.start(wait=False)
    assert srv.proc is not None and srv.proc.wait(30) != 0
    assert "--node-id needs a store that can back a cluster (--driver postgres)" in srv.log()
    assert "Traceback" not in srv.log()


def test_a_node_killed_under_a_load_of_creates_loses_no_acknowledged_plan(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """Creates keep arriving on all three nodes while plans fire; one node is SIGKILLed
    in the middle: every plan any node acknowledged fires, the dead node's included,
    and a plan fires twice only if it was firing at the kill."""
    import threading

    sink = Sink()
    nodes = {n: node(tmp_path, postgres_dsn, n) for n in ("n1", "n2", "n3")}
    acked: list[str] = []
    stop = threading.Event()

    def load(name: str) -> None:
        srv = nodes[name]
        i = 0
        while not stop.is_set():
            key = f"{name}-{i}"
            i += 1
            try:
                status, reply = srv.call("PUT", "/v1/plan", hook(sink, key, 1 + i % 3), timeout=5)
            except OSError:
                continue  # the killed node: refused, never acknowledged
            if status == 200 and reply["errcode"] == 0:
                acked.append(key)

    try:
        for srv in nodes.values():
            srv.start()
        assert wait_until(lambda: balanced(postgres_dsn, set(nodes)), 60), logs(postgres_dsn, nodes)
        loaders = [threading.Thread(target=load, args=(n,), daemon=True) for n in nodes]
        for t in loaders:
            t.start()
        assert wait_until(lambda: len(fired(sink)) >= 30, 60)  # plans are firing
        killed_at = time.time() * 1000
        nodes["n2"].kill()
        time.sleep(TTL_S + 2)  # creates go on while the others take n2's share
        stop.set()
        for t in loaders:
            t.join(10)
        assert any(k.startswith("n2-") for k in acked)
        assert wait_until(lambda: set(fired(sink)) >= set(acked), 60), sorted(
            set(acked) - set(fired(sink))
        )[:20]
        time.sleep(0.5)  # a duplicate would arrive right behind
        counts = fired(sink)
        twice = [k for k in acked if counts[k] > 1]
        # at least once: a repeat only for a firing in flight when n2 died
        with sink.cond:
            first = {}
            for at, path, _ in sink.hits:
                first.setdefault(path.lstrip("/"), at)
        assert all(-2000 <= first[k] - killed_at <= 500 for k in twice), twice
        assert len(twice) <= 5, twice
    finally:
        stop.set()
        for srv in nodes.values():
            if srv.proc is not None:
                srv.stop()
        sink.close()


def test_a_bulk_write_elsewhere_keeps_the_owners_window_on_time(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """A batch too big to name its keys in a hint makes the owner drop and re-read its
    whole window: plans already in it still fire on time."""
    sink = Sink()
    conf = tmp_path / "agent.conf"
    conf.write_text("server_mode = AGENT\n")
    worker = node(tmp_path, postgres_dsn, "worker")
    agent = node(tmp_path, postgres_dsn, "agent", "--conf", str(conf))
    try:
        worker.start()
        agent.start()
        assert wait_until(lambda: balanced(postgres_dsn, {"worker"}), 60), owners(postgres_dsn)
        soon = worker.ok("PUT", "/v1/plan", [hook(sink, f"soon-{i}", 3) for i in range(20)])
        far = [
            {"key": f"bulk-{i:05d}", "seconds": 3600, "action": "shell", "params": {}}
            for i in range(2000)
        ]
        agent.ok("PUT", "/v1/plan", far)
        assert wait_until(lambda: len(fired(sink)) >= 20, 30)
        due = {p["key"]: p["next_time"] for p in soon}
        with sink.cond:
            late = [at / 1000 - due[path.lstrip("/")] for at, path, _ in sink.hits]
        assert max(late) < 5, late  # not left for the periodic re-read, 10 s later
    finally:
        agent.stop()
        worker.stop()
        sink.close()
