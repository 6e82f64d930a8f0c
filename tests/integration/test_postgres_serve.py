"""forsun-box served on ``--driver postgres``, end to end, on real processes and a real
PostgreSQL (tests/servers.py): creates over v1 fire, a restart keeps every plan,
kill -9 keeps every acknowledged change, and the settings reach the driver from
the flag and from the environment."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from tests.helpers import Server, Sink, wait_until

pytest_plugins = ["tests.servers"]


def far(key: str, seconds: int = 3600) -> dict[str, object]:
    return {
        "key": key,
        "seconds": seconds,
        "count": 1,
        "action": "shell",
        "params": {"cmd": "true"},
    }


def hook(sink: Sink, key: str, seconds: int, count: int = 1) -> dict[str, object]:
    return {
        "key": key,
        "seconds": seconds,
        "count": count,
        "action": "http",
        "params": {"url": sink.url(f"/{key}")},
    }


def stored_keys(dsn: str, prefix: str) -> set[str]:
    async def read() -> set[str]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT key FROM plans WHERE key LIKE $1", prefix + "%")
            return {r[0] for r in rows}
        finally:
            await conn.close()

    return asyncio.run(read())


def pg_server(tmp_path: Path, dsn: str, *extra: str) -> Server:
    return Server(tmp_path, "--driver", "postgres", "--postgres-dsn", dsn, *extra)


def test_plans_fire_and_survive_a_restart(tmp_path: Path, postgres_dsn: str) -> None:
    sink = Sink()
    srv = pg_server(tmp_path, postgres_dsn).start()
    try:
        # every plan in the database: what v1 answered is what is stored
        srv.ok("PUT", "/v1/plan", hook(sink, "soon", 1, count=2))
        far_plans = srv.ok("PUT", "/v1/plan", [far(f"keep:{i}", 3600 + i) for i in range(300)])
        assert stored_keys(postgres_dsn, "keep:") == {p["key"] for p in far_plans}
        hits = sink.wait_for(2, timeout=15)
        assert [h[1] for h in hits[:2]] == ["/soon", "/soon"]
        # the second firing was the last: the plan is gone, its runs stay
        assert wait_until(lambda: srv.call("GET", "/v1/plan?key=soon")[1]["errcode"] == 1003, 10)
        status, runs = srv.call("GET", "/v2/plans/soon/runs")
        assert status == 200, runs
        assert [r["result"] for r in runs["runs"]] == ["ok", "ok"]
        assert srv.stop() == 0
        srv = pg_server(tmp_path, postgres_dsn).start()
        assert len(srv.ok("GET", "/v1/keys?prefix=keep:")) == 300
        for p in far_plans[::37]:
            assert srv.ok("GET", f"/v1/plan?key={p['key']}") == p
        # a plan due while the service was down fires after the restart (catch-up)
        srv.ok("PUT", "/v1/plan", hook(sink, "late", 2))
        assert srv.stop() == 0
        srv = pg_server(tmp_path, postgres_dsn)
        # the DSN from the environment this time
        srv.extra = []
        srv.env = {"STORE_DRIVER": "postgres", "STORE_POSTGRES_DSN": postgres_dsn}
        srv.start()
        assert any(h[1] == "/late" for h in sink.wait_for(3, timeout=15))
    finally:
        srv.stop()
        sink.close()


def test_kill_9_keeps_every_acknowledged_change(tmp_path: Path, postgres_dsn: str) -> None:
    srv = pg_server(tmp_path, postgres_dsn).start()
    acked = [srv.ok("PUT", "/v1/plan", far(f"k9:{i}"))["key"] for i in range(20)]
    acked += [p["key"] for p in srv.ok("PUT", "/v1/plan", [far(f"k9b:{i}") for i in range(500)])]
    srv.ok("DELETE", "/v1/plan?key=k9:0")
    srv.kill()
    assert stored_keys(postgres_dsn, "k9") == set(acked) - {"k9:0"}
    srv = pg_server(tmp_path, postgres_dsn).start()
    try:
        assert set(srv.ok("GET", "/v1/keys?prefix=k9")) == set(acked) - {"k9:0"}
    finally:
        srv.stop()


def test_an_unreachable_database_stops_startup_with_a_message(tmp_path: Path) -> None:
    from tests.helpers import free_port

    srv = pg_server(tmp_path, f"postgresql://u:pw@127.0.0.1:{free_port()}/x")
    srv.start(wait=False)
    assert srv.proc is not None
    code = srv.proc.wait(30)
    assert code != 0
    log = srv.log()
    assert "cannot connect to PostgreSQL postgresql://u:***@127.0.0.1" in log
    assert "Traceback" not in log and ":pw@" not in log
