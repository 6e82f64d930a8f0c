"""forsun-box on PostgreSQL: create and firing rates with 1, 2 and 3 nodes beside one
sqlite node, failover time, and the lateness of plans due during a failover.

Usage (from the repository root, with the project venv)::

    .venv/bin/python bench/cluster.py            # everything, about 5 minutes
    .venv/bin/python bench/cluster.py --quick    # smaller and shorter

It starts its own PostgreSQL (initdb + pg_ctl from Debian's postgresql package, as the
``postgres`` user under root; see tests/servers.py) on a free loopback port, a firing
sink, and the forsun-box nodes, and stops every one of them by the process it started.

Configurations: ``sqlite`` (one node, the default store), ``postgres`` (one node, no
``--node-id``: a single-node store), ``cluster-N`` (N nodes with ``--node-id`` on one
database). Figures:

- create: single-plan ``PUT /v1/plan`` with wrk, 32 connections in all, spread over the
  nodes, for ``--seconds``; plans/s summed over the nodes.
- fire: a burst of plans all due in one second (created through the nodes in turn)
  calling a local HTTP sink; plans/s from the first to the last arrival, and lateness.
- failover (3 nodes, lease TTL 10 s): plans due every 50 ms for 40 s; one node is
  SIGKILLed 10 s in; the time until its partitions are owned by the others, the
  lateness of the plans due between the kill and the takeover, missed and duplicates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO)]

from harness.client import V1Client, encode  # noqa: E402
from harness.firing import running_sink  # noqa: E402
from harness.load import run_wrk  # noqa: E402
from harness.metrics import percentile  # noqa: E402
from harness.servers import BOX, HOST, Server, ServerConfig, start_server  # noqa: E402

CREATE_CONNECTIONS = 32
FAILOVER_TTL_S = 10.0


def start_node(workdir: Path, *flags: str) -> Server:
    """One forsun-box process with ``flags``; returns once /v1/ping answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = ServerConfig(peer_dir=Path(), box_python=sys.executable)
    return start_server(config, BOX, workdir=workdir, extra_args=flags)


@contextlib.contextmanager
def running_nodes(config: str, dsn: str, workdir: Path, ttl_s: float) -> Iterator[list[Server]]:
    if config == "sqlite":
        flag_sets = [[]]
    elif config == "postgres":
        flag_sets = [["--driver", "postgres", "--postgres-dsn", dsn]]
    else:
        count = int(config.split("-")[1])
        flag_sets = [
            [
                "--driver",
                "postgres",
                "--postgres-dsn",
                dsn,
                "--node-id",
                f"n{i + 1}",
                "--lease-ttl-seconds",
                str(ttl_s),
            ]
            for i in range(count)
        ]
    nodes: list[Server] = []
    try:
        for i, flags in enumerate(flag_sets):
            nodes.append(start_node(workdir / f"{config}-n{i + 1}", *flags))
        if len(nodes) > 1:
            wait_balanced(dsn, {f"n{i + 1}" for i in range(len(nodes))})
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def lease_owners(dsn: str) -> dict[int, str]:
    import asyncpg

    async def read() -> dict[int, str]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT partition, owner FROM leases WHERE lease_until > clock_timestamp()"
            )
            return {r[0]: r[1] for r in rows}
        finally:
            await conn.close()

    return asyncio.run(read())


def partitions(dsn: str) -> int:
    import asyncpg

    async def read() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM leases"))
        finally:
            await conn.close()

    return asyncio.run(read())


def wait_balanced(dsn: str, names: set[str], timeout: float = 60) -> None:
    total = partitions(dsn)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owners = lease_owners(dsn)
        if len(owners) == total and set(owners.values()) == names:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the nodes {sorted(names)} did not share the partitions in {timeout} s")


def measure_create(nodes: list[Server], seconds: float, tag: str) -> dict[str, Any]:
    per_node = max(CREATE_CONNECTIONS // len(nodes), 1)
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(lambda n: run_wrk(n.base_url, per_node, 1.0, f"warm{tag}"), nodes))
        results = list(
            pool.map(lambda n: run_wrk(n.base_url, per_node, seconds, f"c{tag}{n.pid}"), nodes)
        )
    rate = sum(r["ok"] / (r["duration_us"] / 1e6) for r in results)
    bad = sum(
        r["errcode_bad"] + r["status_bad"] + r["connect_errors"] + r["timeouts"] for r in results
    )
    return {"create_per_s": round(rate), "create_errors": bad, "connections": per_node}


def calendar_plan(key: str, due: int, sink_port: int) -> dict[str, Any]:
    tm = time.localtime(due)
    return {
        "key": key,
        "seconds": tm.tm_sec,
        "minute": tm.tm_min,
        "hour": tm.tm_hour,
        "day": tm.tm_mday,
        "month": tm.tm_mon,
        "week": -1,
        "count": 1,
        "action": "http",
        "params": {"url": f"http://{HOST}:{sink_port}/hit?key={key}&due={due}"},
    }


def sink_get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=30) as resp:
        return json.loads(resp.read())


def create_through(nodes: list[Server], plans: list[dict[str, Any]], batch: int = 2000) -> None:
    clients = [V1Client(n.http_port) for n in nodes]
    try:
        for i, start in enumerate(range(0, len(plans), batch)):
            chunk = plans[start : start + batch]
            clients[i % len(clients)].create_many("POST", encode(chunk), len(chunk))
    finally:
        for c in clients:
            c.close()


def collect(sink_port: int, total: int, deadline: float) -> list[list[Any]]:
    while time.time() < deadline:
        if sink_get(sink_port, "/count")["count"] >= total:
            time.sleep(1.0)  # a duplicate would arrive right behind
            break
        time.sleep(0.2)
    return list(sink_get(sink_port, "/dump"))


def measure_fire(nodes: list[Server], burst: int) -> dict[str, Any]:
    with running_sink(max_seconds=300) as sink_port:
        due = int(time.time()) + 8
        plans = [calendar_plan(f"burst-{i}", due, sink_port) for i in range(burst)]
        create_through(nodes, plans)
        if time.time() >= due:
            raise RuntimeError("the burst was still being created when it came due")
        arrivals = collect(sink_port, burst, due + 120)
    first: dict[str, int] = {}
    for key, at_ms in arrivals:
        first.setdefault(key, at_ms)
    times = sorted(first.values())
    late = sorted(t - due * 1000 for t in times)
    span_s = (times[-1] - due * 1000) / 1000 if times else 0.0
    return {
        "fire_per_s": round(len(times) / span_s) if span_s > 0 else None,
        "fire_p50_ms": percentile(late, 50),
        "fire_p99_ms": percentile(late, 99),
        "fire_missed": burst - len(first),
        "fire_duplicates": len(arrivals) - len(first),
    }


def measure_failover(nodes: list[Server], dsn: str) -> dict[str, Any]:
    every_ms, span_s, kill_after_s = 50, 40, 10
    with running_sink(max_seconds=300) as sink_port:
        start_ms = (int(time.time()) + 6) * 1000
        count = span_s * 1000 // every_ms
        plans = []
        due_ms: dict[str, int] = {}
        for i in range(count):
            key = f"fo-{i}"
            at = start_ms + i * every_ms
            due_ms[key] = at
            plans.append(
                {
                    "key": key,
                    "action": "http",
                    "params": {"url": f"http://{HOST}:{sink_port}/hit?key={key}"},
                    "schedule": {"kind": "at", "at": at},
                }
            )
        for i, start in enumerate(range(0, count, 500)):
            node = nodes[i % len(nodes)]
            body = "".join(json.dumps(p) + "\n" for p in plans[start : start + 500]).encode()
            req = urllib.request.Request(
                node.base_url + "/v2/plans:batch",
                data=body,
                method="POST",
                headers={"Content-Type": "application/x-ndjson"},
            )
            with urllib.request.urlopen(req, timeout=60) as resp:
                resp.read()
        victim = nodes[1]
        owned = {p for p, o in lease_owners(dsn).items() if o == "n2"}
        time.sleep(max(start_ms / 1000 + kill_after_s - time.time(), 0))
        victim.proc.send_signal(signal.SIGKILL)
        killed_ms = time.time() * 1000
        victim.proc.wait(10)
        while True:
            owners = lease_owners(dsn)
            if all(owners.get(p, "n2") != "n2" for p in owned):
                break
            time.sleep(0.05)
        took_s = (time.time() * 1000 - killed_ms) / 1000
        arrivals = collect(sink_port, count, start_ms / 1000 + span_s + 60)
    first: dict[str, int] = {}
    for key, at_ms in arrivals:
        first.setdefault(key, at_ms)
    during = sorted(
        first[k] - due_ms[k] for k in first if killed_ms <= due_ms[k] <= killed_ms + took_s * 1000
    )
    others = sorted(
        first[k] - due_ms[k]
        for k in first
        if not killed_ms <= due_ms[k] <= killed_ms + took_s * 1000 + 2000
    )
    return {
        "failover_s": round(took_s, 2),
        "during_failover_plans": len(during),
        "during_failover_late_max_ms": during[-1] if during else None,
        "during_failover_late_p50_ms": percentile(during, 50),
        "outside_failover_late_p99_ms": percentile(others, 99),
        "missed": count - len(first),
        "duplicates": len(arrivals) - len(first),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    seconds = 3.0 if args.quick else 10.0
    burst = 2_000 if args.quick else 10_000
    configs = args.only or ["sqlite", "postgres", "cluster-1", "cluster-2", "cluster-3"]
    from tests.servers import start_postgres

    try:
        pg = start_postgres()
    except BaseException as e:  # pytest's skip/fail outcomes carry the reason
        print(f"cannot start PostgreSQL: {e}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    results: dict[str, Any] = {}
    try:
        for config in configs:
            database = pg.create_database()
            dsn = pg.dsn(database)
            with running_nodes(config, dsn, workdir, FAILOVER_TTL_S) as nodes:
                row = measure_create(nodes, seconds, config)
            with running_nodes(config, pg.dsn(pg.create_database()), workdir, FAILOVER_TTL_S) as n:
                row.update(measure_fire(n, burst))
            if config == "cluster-3":
                fo_dsn = pg.dsn(pg.create_database())
                with running_nodes(config, fo_dsn, workdir, FAILOVER_TTL_S) as n:
                    row.update(measure_failover(n, fo_dsn))
            results[config] = row
            print(config, json.dumps(row), flush=True)
    finally:
        pg.stop()
        shutil.rmtree(pg.workdir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    out = args.json or REPO / "bench" / "out" / f"cluster-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
