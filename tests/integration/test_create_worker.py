"""Big v1 create bodies built in the create worker process, against real servers.

A body of 32 KiB or more goes to the worker; the answers, errors and stored
plans must be what the event loop gives for the same body (a server with
``--no-create-worker`` side by side), and the service must outlive its
worker and the worker not outlive the service.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import psutil
import pytest

from forsun_box.api.formats.bodies import WORKER_MIN_BYTES
from tests.helpers import Server
from tests.servers import unavailable

N = 600  # plans in a big body (well over WORKER_MIN_BYTES)
VOLATILE = ("next_time", "created_time")  # differ between two servers by the clock


@pytest.fixture(scope="module")
def servers(start_server: Callable[..., Server]) -> tuple[Server, Server]:
    return start_server(name="worker"), start_server("--no-create-worker", name="loop")


def _plans(prefix: str, n: int = N) -> list[dict]:
    return [
        {
            "key": f"{prefix}{i}",
            "seconds": 3600 + i,
            "count": 1 + i % 3,
            "action": "http",
            "params": {"url": f"http://127.0.0.1:9/p?i={i}", "method": "post"},
        }
        for i in range(n)
    ]


def _worker_of(server: Server) -> psutil.Process:
    assert server.proc is not None
    children = psutil.Process(server.proc.pid).children()
    assert len(children) == 1, children
    return children[0]


def _stable(plans: list[dict]) -> list[dict]:
    return [{k: v for k, v in p.items() if k not in VOLATILE} for p in plans]


def test_a_big_array_is_answered_as_the_event_loop_answers_it(servers) -> None:
    with_worker, in_loop = servers
    body = _plans("big:")
    body.append({**body[5], "seconds": 30, "method": "create"})  # big:5 again: the last wins
    assert len(str(body)) > WORKER_MIN_BYTES
    before = time.time()
    a = with_worker.ok("PUT", "/v1/plan", body)
    b = in_loop.ok("PUT", "/v1/plan", body)
    assert _stable(a) == _stable(b)
    assert [p["key"] for p in a] == [f"big:{i}" for i in range(N) if i != 5] + ["big:5"]
    five = a[-1]
    assert five["is_time_out"] is False and five["second"] == 30
    assert int(before) + 3600 <= a[0]["next_time"] <= int(time.time()) + 3600
    # stored as answered, the bookkeeping (versions, counts) in the service's process
    by_key = {p["key"]: p for p in a}
    assert with_worker.ok("GET", "/v1/plan?key=big:7") == by_key["big:7"]
    assert with_worker.ok("GET", "/v1/keys?prefix=big:") == sorted(p["key"] for p in a)
    info = with_worker.ok("GET", "/v1/info")
    assert int(info["create_timeouted_count"]) >= N - 1
    assert with_worker.ok("DELETE", "/v1/plan?key=big:7")["key"] == "big:7"


def test_a_big_crontab_body(servers) -> None:
    with_worker, in_loop = servers
    text = "".join(
        f"cron:{i} */{60 + i} * * * * * http url=http://127.0.0.1:9/c?i={i}\n" for i in range(N)
    )
    assert len(text) > WORKER_MIN_BYTES
    a = with_worker.ok("PUT", "/v1/plan", text, ctype="application/crontab")
    b = in_loop.ok("PUT", "/v1/plan", text, ctype="application/crontab")
    assert _stable(a) == _stable(b) and len(a) == N
    assert a[3]["params"] == {"url": "http://127.0.0.1:9/c?i=3"}


@pytest.mark.parametrize(
    ("spoil", "status", "errcode", "says"),
    [
        (
            lambda b: b.__setitem__(N // 2, {**b[N // 2], "action": "nope"}),
            200,
            1006,
            f"plan [{N // 2}]: unknown action",
        ),
        (
            lambda b: b.__setitem__(N - 1, {**b[N - 1], "seconds": "soon"}),
            200,
            1008,
            f"plan [{N - 1}]: second must be an integer",
        ),
        (lambda b: b.__setitem__(3, 42), 200, 1008, "plan [3]: each plan must be a JSON object"),
    ],
)
def test_a_big_body_with_one_bad_plan_stores_nothing(servers, spoil, status, errcode, says) -> None:
    with_worker, in_loop = servers
    body = _plans("bad:")
    spoil(body)
    for server in (with_worker, in_loop):
        got_status, reply = server.call("PUT", "/v1/plan", body)
        assert (got_status, reply["errcode"]) == (status, errcode), reply
        assert reply["errmsg"].startswith(says), reply
        assert server.ok("GET", "/v1/keys?prefix=bad:") == []


def test_a_big_body_that_is_not_json(servers) -> None:
    with_worker, _ = servers
    status, reply = with_worker.call("PUT", "/v1/plan", raw=b"[" + b"1," * WORKER_MIN_BYTES)
    assert status == 400 and reply["errcode"] == 1008
    assert reply["errmsg"].startswith("body is not valid JSON")


def test_the_service_outlives_its_worker(tmp_path: Path) -> None:
    server = Server(tmp_path).start()
    try:
        worker = _worker_of(server)
        # A signal to the worker alone stays there: SIGINT is ignored, and
        # nothing reaches the service's event loop (which would stop it).
        os.kill(worker.pid, signal.SIGINT)
        assert server.ok("PUT", "/v1/plan", _plans("a:"))[0]["key"] == "a:0"
        assert worker.is_running()
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        # the next big body is built in the event loop
        created = server.ok("PUT", "/v1/plan", _plans("b:"))
        assert len(created) == N
        assert server.ok("GET", f"/v1/plan?key=b:{N - 1}")["key"] == f"b:{N - 1}"
        assert "create worker process stopped" in server.log()
        assert server.proc is not None and server.proc.poll() is None
    finally:
        assert server.stop() == 0


def test_the_worker_does_not_outlive_the_service(tmp_path: Path) -> None:
    server = Server(tmp_path).start()
    worker = _worker_of(server)
    server.kill()  # -9: no stop of the worker by the service
    worker.wait(10)  # raises TimeoutExpired if it lingers
    assert not worker.is_running()


def test_a_zone_read_from_a_file_reaches_the_worker(tmp_path: Path) -> None:
    """TZ as a path gives a zone read from a file, which can't be pickled: the worker
    has the service's zone from its start instead of from each request."""
    zone_file = Path("/usr/share/zoneinfo/Asia/Tokyo")
    if not zone_file.exists():
        unavailable("no zone files on this machine (apt-get install tzdata)")
    server = Server(tmp_path, env={"TZ": str(zone_file)}).start()
    try:
        body = [
            {
                "key": f"tokyo:{i}",
                "seconds": 0,
                "minute": i % 60,
                "hour": 9,
                "action": "shell",
                "params": {"cmd": "true"},
            }
            for i in range(N)
        ]
        created = server.ok("POST", "/v1/plan", body)
        tokyo = ZoneInfo("Asia/Tokyo")
        for p in created[:61]:
            at = datetime.fromtimestamp(p["next_time"], tokyo)
            assert (at.hour, at.minute, at.second) == (9, p["minute"], 0), p
    finally:
        assert server.stop() == 0


def _ndjson(server: Server, raw: bytes) -> list[dict]:
    status, reply = server.call("POST", "/v2/plans:batch", raw=raw, ctype="application/x-ndjson")
    assert status == 200, reply
    if isinstance(reply, dict):  # one line: urllib's caller parsed it whole
        return [reply]
    return [json.loads(line) for line in reply.splitlines()]


def test_a_big_v2_batch_is_answered_as_the_event_loop_answers_it(servers) -> None:
    """Lines of a v2 NDJSON batch are built in the worker too, a chunk at a time."""
    with_worker, in_loop = servers
    lines = [
        json.dumps(
            {
                "key": f"nd:{i}",
                "action": "shell",
                "params": {"cmd": "true"},
                "schedule": {"kind": "delay", "interval_ms": 60_000 + i},
            }
        )
        for i in range(N)
    ]
    lines[10] = "{not json"
    lines[20] = json.dumps({"key": "nd:bad", "schedule": {"kind": "cron", "expr": "bad"}})
    lines[30] = json.dumps(
        {
            "key": "nd:1",
            "action": "shell",
            "params": {"cmd": "false"},
            "schedule": {"kind": "at", "at": 4083998400000},
        }
    )  # nd:1 again
    raw = ("\n".join(lines) + "\n").encode()
    assert len(raw) > WORKER_MIN_BYTES
    a, b = _ndjson(with_worker, raw), _ndjson(in_loop, raw)
    assert a == b
    assert len(a) == N
    failed = {r["line"]: (r["key"], r["status"]) for r in a if r["status"] != 200}
    assert failed == {11: (None, 400), 21: ("nd:bad", 422)}
    assert a[10]["problem"]["detail"].startswith("line is not valid JSON")
    # the later line with the same key wins
    status, plan = with_worker.call("GET", "/v2/plans/nd:1")
    assert status == 200 and plan["params"] == {"cmd": "false"}, plan
