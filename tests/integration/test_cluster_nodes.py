"""Several forsun-box node processes on one PostgreSQL (tests/servers.py) share the
firing by partition leases: creates on any node fire once, a SIGKILLed node's
share is taken over within TTL + 2 s, a SIGSTOPped node stops firing, and a
graceful stop hands its partitions over at once."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from pathlib import Path

import asyncpg

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
        assert wait_until(lambda: balanced(postgres_dsn, set(nodes)), 20), owners(postgres_dsn)
        keys = []
        for i in range(60):
            for name, srv in nodes.items():
                key = f"{name}-{i}"
                srv.ok("PUT", "/v1/plan", hook(sink, key, 3 + i % 4))
                keys.append(key)
        before = owners(postgres_dsn)
        dead = {p for p, (o, _) in before.items() if o == "n2"}
        assert dead
        nodes["n2"].kill()
        killed_at = time.monotonic()
        assert wait_until(
            lambda: all(owners(postgres_dsn).get(p, ("n2", 0))[0] != "n2" for p in dead), 15
        )
        took = time.monotonic() - killed_at
        assert took <= TTL_S + 2, f"takeover took {took:.1f} s"
        after = owners(postgres_dsn)
        assert all(after[p][1] > before[p][1] for p in dead)
        # every plan fires, the dead node's too; nothing was in flight at the kill
        assert wait_until(lambda: set(fired(sink)) >= set(keys), 20), set(keys) - set(fired(sink))
        time.sleep(0.5)  # a duplicate would arrive right behind
        counts = fired(sink)
        assert [k for k in keys if counts[k] != 1] == []
        took_over = [srv.log() for name, srv in nodes.items() if name != "n2"]
        assert any("took over" in text and "from n2" in text for text in took_over)
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
        assert wait_until(lambda: balanced(postgres_dsn, set(nodes)), 20), owners(postgres_dsn)
        assert nodes["n1"].stop() == 0
        stopped_at = time.monotonic()
        assert wait_until(lambda: balanced(postgres_dsn, {"n2"}), 5)
        took = time.monotonic() - stopped_at
        assert took < 1.0, f"hand-over took {took:.2f} s"
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
        assert wait_until(lambda: balanced(postgres_dsn, set(nodes)), 20), owners(postgres_dsn)
        keys = [f"p-{i}" for i in range(60)]
        for i, key in enumerate(keys):
            nodes["n1" if i % 2 else "n2"].ok("PUT", "/v1/plan", hook(sink, key, 4 + i % 3))
        paused = nodes["n1"]
        assert paused.proc is not None
        os.kill(paused.proc.pid, signal.SIGSTOP)
        try:
            # n2 takes everything while n1 sleeps past its TTL, and fires its plans
            assert wait_until(lambda: balanced(postgres_dsn, {"n2"}), TTL_S + 5)
            assert wait_until(lambda: set(fired(sink)) >= set(keys), 20)
        finally:
            os.kill(paused.proc.pid, signal.SIGCONT)
        # n1 wakes up: it steps down instead of firing what its window still holds
        assert wait_until(lambda: "stepping down" in paused.log(), 10), paused.log()[-3000:]
        time.sleep(1.0)
        counts = fired(sink)
        assert [k for k in keys if counts[k] != 1] == []
        # and the pair shares the partitions again
        assert wait_until(lambda: balanced(postgres_dsn, set(nodes)), 15)
    finally:
        for srv in nodes.values():
            srv.stop()
        sink.close()
