"""Restarts, kill -9, downtime catch-up and unreadable data, on real processes."""

from __future__ import annotations

import time

import pytest

from tests.helpers import Server, Sink, wait_until


def far(key: str, seconds: int = 3600, **kw):
    body = {
        "key": key,
        "seconds": seconds,
        "count": 1,
        "action": "shell",
        "params": {"cmd": "true", "n": key},
    }
    body.update(kw)
    return body


@pytest.mark.parametrize("driver", ["sqlite", "mem"])
def test_restart_keeps_every_plan(tmp_path, driver: str) -> None:
    srv = Server(tmp_path, "--driver", driver).start()
    created = srv.ok("PUT", "/v1/plan", [far(f"keep:{i}", 3600 + i) for i in range(300)])
    cal = srv.ok(
        "POST",
        "/v1/plan",
        {
            "key": "keep:cal",
            "seconds": 1,
            "minute": 2,
            "hour": 3,
            "action": "shell",
            "params": {"cmd": "x"},
        },
    )
    assert srv.stop() == 0
    srv = Server(tmp_path, "--driver", driver)
    srv.start()
    try:
        keys = srv.ok("GET", "/v1/keys?prefix=keep:")
        assert len(keys) == 301
        for p in [*created[::37], cal]:
            assert srv.ok("GET", f"/v1/plan?key={p['key']}") == p
    finally:
        srv.stop()


def test_kill_9_right_after_create_loses_nothing(tmp_path) -> None:
    srv = Server(tmp_path).start()
    acked = []
    for i in range(20):
        acked.append(srv.ok("PUT", "/v1/plan", far(f"k9:{i}"))["key"])
    acked += [p["key"] for p in srv.ok("PUT", "/v1/plan", [far(f"k9b:{i}") for i in range(500)])]
    srv.ok("DELETE", "/v1/plan?key=k9:0")
    srv.kill()
    srv = Server(tmp_path).start()
    try:
        keys = set(srv.ok("GET", "/v1/keys?prefix=k9"))
        assert keys == set(acked) - {"k9:0"}
    finally:
        srv.stop()


@pytest.mark.parametrize(("policy", "expect_fire"), [("fire_once", True), ("skip", False)])
def test_plan_due_during_downtime(tmp_path, policy: str, expect_fire: bool) -> None:
    sink = Sink()
    try:
        srv = Server(tmp_path, "--catchup", policy).start()
        down = srv.ok(
            "PUT",
            "/v1/plan",
            {
                "key": "down",
                "seconds": 5,
                "count": 1,
                "action": "http",
                "params": {"url": sink.url("/down")},
            },
        )
        srv.ok(
            "PUT",
            "/v1/plan",
            {
                "key": "later",
                "seconds": 3600,
                "count": 1,
                "action": "http",
                "params": {"url": sink.url("/later")},
            },
        )
        assert srv.stop() == 0
        assert sink.hits == []
        # the plan comes due while the service is down
        time.sleep(max(0.0, down["next_time"] + 0.5 - time.time()))
        srv = Server(tmp_path, "--catchup", policy).start()
        try:
            hits = sink.wait_for(1, timeout=30 if expect_fire else 1.5)
            assert [h[1] for h in hits] == (["/down"] if expect_fire else [])
            assert wait_until(
                lambda: srv.call("GET", "/v1/plan?key=down")[1]["errcode"] == 1003, 30
            )
            assert srv.ok("GET", "/v1/plan?key=later")["key"] == "later"
        finally:
            srv.stop()
    finally:
        sink.close()


def test_repeating_plan_catch_up_fires_once_then_resumes(tmp_path) -> None:
    sink = Sink()
    try:
        srv = Server(tmp_path).start()
        srv.ok(
            "PUT",
            "/v1/plan",
            {
                "key": "every",
                "seconds": 1,
                "count": 0,
                "action": "http",
                "params": {"url": sink.url("/e")},
            },
        )
        sink.wait_for(1, timeout=30)
        srv.kill()
        n = len(sink.hits)
        time.sleep(3)  # real downtime: some three firings come due while it is dead
        restart_s = int(time.time())
        srv = Server(tmp_path).start()
        try:
            # fire_once: one catch-up firing for the ~3 missed ones, then one per
            # second on the plan's grid again (which may fall right after it); judged by
            # the due second each firing carries, not by when it arrived
            hits = sink.wait_for(n + 4, timeout=30)
            dues = [int(h[2]["X-Forsun-Timestamp"]) for h in hits[n:]]
            assert len(dues) >= 4 and len(set(dues)) == len(dues), dues
            assert len([d for d in dues if d < restart_s]) == 1, (restart_s, dues)
            grid = sorted(d for d in dues if d >= restart_s)
            assert grid == list(range(grid[0], grid[0] + len(grid))), (restart_s, dues)
        finally:
            srv.stop()
    finally:
        sink.close()


def test_unreadable_snapshot_stops_startup(tmp_path) -> None:
    snap = tmp_path / "forsun-box.mem"
    snap.write_bytes(b"\x00\x01garbage that is not a snapshot\n")
    srv = Server(tmp_path, "--driver", "mem", "--driver-mem-store-file", str(snap))
    srv.start(wait=False)
    assert srv.proc is not None
    assert srv.proc.wait(60) == 1
    out = srv.log()
    assert str(snap) in out
    assert "Traceback" not in out
    assert snap.read_bytes().startswith(b"\x00\x01garbage")  # never replaced


def test_corrupt_database_stops_startup(tmp_path) -> None:
    db = tmp_path / "forsun-box.db"
    db.write_bytes(b"this is not a database" * 100)
    srv = Server(tmp_path)
    srv.start(wait=False)
    assert srv.proc is not None
    assert srv.proc.wait(60) == 1
    out = srv.log()
    assert str(db) in out and "Traceback" not in out


def test_sigterm_stops_cleanly_and_quickly(tmp_path) -> None:
    srv = Server(tmp_path).start()
    srv.ok("PUT", "/v1/plan", far("t"))
    t0 = time.monotonic()
    assert srv.stop(timeout=10) == 0
    assert time.monotonic() - t0 < 10


def test_second_server_on_the_same_database_is_refused(tmp_path) -> None:
    first = Server(tmp_path).start()
    try:
        first.ok("PUT", "/v1/plan", far("owned"))
        second = Server(tmp_path)
        second.log_path = tmp_path / "second.log"
        second.start(wait=False)
        assert second.proc is not None
        assert second.proc.wait(30) == 1
        assert "another forsun-box" in second.log()
        assert first.ok("GET", "/v1/plan?key=owned")["key"] == "owned"
    finally:
        first.stop()
