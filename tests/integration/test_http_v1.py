"""forsun's HTTP v1 API against a real forsun-box process on a real SQLite file."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from tests.helpers import Server, Sink, wait_until

PLAN_FIELDS = {
    "key",
    "second",
    "minute",
    "hour",
    "day",
    "month",
    "week",
    "status",
    "count",
    "is_time_out",
    "next_time",
    "current_count",
    "last_timeout",
    "created_time",
    "action",
    "params",
}


def delay(key: str, seconds: int = 3600, **kw):
    body = {
        "key": key,
        "seconds": seconds,
        "minute": 0,
        "hour": 0,
        "day": 0,
        "month": 0,
        "count": 1,
        "action": "shell",
        "params": {"cmd": "true"},
    }
    body.update(kw)
    return body


def test_ping(server: Server) -> None:
    assert server.call("GET", "/v1/ping") == (200, {"errcode": 0, "errmsg": "", "data": {}})


def test_put_creates_delay_plan_with_forsun_shape(server: Server) -> None:
    before = int(time.time())
    plan = server.ok("PUT", "/v1/plan", delay("shape", seconds=5))
    assert set(plan) == PLAN_FIELDS
    assert plan["key"] == "shape"
    assert plan["is_time_out"] is True
    assert plan["second"] == 5 and plan["minute"] == 0
    assert plan["count"] == 1 and plan["current_count"] == 0
    assert before + 5 <= plan["next_time"] <= int(time.time()) + 5
    assert plan["params"] == {"cmd": "true"}
    assert plan["status"] == 0 and plan["last_timeout"] == 0
    assert before <= plan["created_time"] <= int(time.time())


def test_post_creates_calendar_plan_and_get_reads_it(server: Server) -> None:
    plan = server.ok(
        "POST",
        "/v1/plan",
        {
            "key": "daily",
            "seconds": 0,
            "minute": 32,
            "hour": 16,
            "action": "shell",
            "params": {"cmd": "date"},
        },
    )
    assert plan["is_time_out"] is False
    assert (plan["day"], plan["month"], plan["week"]) == (-1, -1, -1)
    lt = time.localtime(plan["next_time"])
    assert (lt.tm_hour, lt.tm_min, lt.tm_sec) == (16, 32, 0)
    assert 0 < plan["next_time"] - time.time() <= 86400 + 3600
    assert server.ok("GET", "/v1/plan?key=daily") == plan


def test_defaults_when_fields_missing(server: Server) -> None:
    plan = server.ok("POST", "/v1/plan", {"key": "defaults", "seconds": 7})
    assert plan["action"] == "shell" and plan["params"] == {} and plan["count"] == 0
    assert (plan["minute"], plan["hour"], plan["day"], plan["month"], plan["week"]) == (-1,) * 5
    assert time.localtime(plan["next_time"]).tm_sec == 7


def test_no_content_type_means_json(server: Server) -> None:
    plan = server.ok("PUT", "/v1/plan", delay("noctype"), ctype=None)
    assert plan["key"] == "noctype"
    # what `curl -d` sends without -H
    plan = server.ok(
        "PUT", "/v1/plan", delay("formtype"), ctype="application/x-www-form-urlencoded"
    )
    assert plan["key"] == "formtype"


def test_empty_key_gets_generated_key(server: Server) -> None:
    a = server.ok("PUT", "/v1/plan", delay(""))
    b = server.ok("PUT", "/v1/plan", delay(""))
    assert a["key"] and b["key"] and a["key"] != b["key"]
    assert server.ok("GET", f"/v1/plan?key={a['key']}")["key"] == a["key"]


def test_same_key_replaces(server: Server) -> None:
    server.ok("PUT", "/v1/plan", delay("replace", seconds=100))
    server.ok("PUT", "/v1/plan", delay("replace", seconds=200, params={"cmd": "echo 2"}))
    got = server.ok("GET", "/v1/plan?key=replace")
    assert got["second"] == 200 and got["params"] == {"cmd": "echo 2"}
    assert server.ok("GET", "/v1/keys?prefix=replace") == ["replace"]


def test_delete_returns_removed_plan_then_not_found(server: Server) -> None:
    server.ok("PUT", "/v1/plan", delay("gone"))
    removed = server.ok("DELETE", "/v1/plan?key=gone")
    assert removed["key"] == "gone"
    status, reply = server.call("GET", "/v1/plan?key=gone")
    assert status == 200 and reply["errcode"] == 1003 and reply["data"] == {}


def test_json_array_creates_many(server: Server) -> None:
    plans = server.ok("PUT", "/v1/plan", [delay(f"arr:{i}", seconds=1000 + i) for i in range(50)])
    assert [p["key"] for p in plans] == [f"arr:{i}" for i in range(50)]
    assert server.ok("GET", "/v1/keys?prefix=arr:") == sorted(f"arr:{i}" for i in range(50))


def test_json_array_elements_may_choose_their_mode(server: Server) -> None:
    plans = server.ok(
        "PUT",
        "/v1/plan",
        [
            {"key": "mode:cal", "seconds": 5, "minute": 4, "method": "create"},
            {"key": "mode:delay", "seconds": 5, "method": "createTimeout"},
            {"key": "mode:default", "seconds": 5},
            {"key": "mode:odd", "seconds": 5, "method": ["create"]},  # not a name: no choice
            {"key": "mode:unknown", "seconds": 5, "method": "remove"},
        ],
    )
    modes = {p["key"]: p["is_time_out"] for p in plans}
    assert modes == {
        "mode:cal": False,
        "mode:delay": True,
        "mode:default": True,
        "mode:odd": True,
        "mode:unknown": True,
    }


def test_json_array_with_one_bad_plan_stores_nothing(server: Server) -> None:
    body = [delay("atomic:1"), delay("atomic:2", action="nope")]
    status, reply = server.call("PUT", "/v1/plan", body)
    assert status == 200 and reply["errcode"] == 1006
    assert "[1]" in reply["errmsg"]
    assert server.ok("GET", "/v1/keys?prefix=atomic:") == []


def test_crontab_body(server: Server) -> None:
    body = (
        "# comment\n"
        "ct1 */5/2 * * * * * shell 'cmd=echo hi'\n"
        "ct2 0 32 16 * * * http \"url='http://127.0.0.1:9/x?a=1&b=2'\"\n"
        "ct3 * * * * * * sh ls -l\n"
    )
    plans = server.ok("PUT", "/v1/plan", body, ctype="application/crontab")
    by_key = {p["key"]: p for p in plans}
    assert by_key["ct1"]["is_time_out"] is True
    assert by_key["ct1"]["second"] == 5 and by_key["ct1"]["count"] == 2
    assert by_key["ct1"]["params"] == {"cmd": "echo hi"}
    assert by_key["ct2"]["is_time_out"] is False and by_key["ct2"]["hour"] == 16
    assert by_key["ct2"]["action"] == "http"
    assert by_key["ct2"]["params"] == {"url": "http://127.0.0.1:9/x?a=1&b=2"}
    assert by_key["ct3"]["action"] == "shell" and by_key["ct3"]["params"] == {"cmd": "ls -l"}


def test_keys_by_prefix(server: Server) -> None:
    for k in ("kp:a", "kp:b", "kq:c"):
        server.ok("PUT", "/v1/plan", delay(k))
    assert server.ok("GET", "/v1/keys?prefix=kp:") == ["kp:a", "kp:b"]
    assert "kq:c" in server.ok("GET", "/v1/keys")


def test_time_lists_plans_firing_at_a_second(server: Server) -> None:
    plan = server.ok("PUT", "/v1/plan", delay("at-second", seconds=4000))
    data = server.ok("GET", f"/v1/time?timestamp={plan['next_time']}")
    assert "at-second" in [p["key"] for p in data["plans"]]
    assert abs(data["current_timestamp"] - time.time()) < 5
    data = server.ok("GET", f"/v1/time?timestamp={plan['next_time'] + 1}")
    assert "at-second" not in [p["key"] for p in data["plans"]]
    now = server.ok("GET", "/v1/time")
    assert abs(now["current_timestamp"] - time.time()) < 5


def test_info_has_forsun_fields(server: Server) -> None:
    info = server.ok("GET", "/v1/info")
    required = [
        "python_version",
        "forsun_version",
        "start_time",
        "cpu_user",
        "cpu_system",
        "mem_rss",
        "mem_vms",
        "current_time",
        "stores",
        "current_store",
        "actions",
        "bind_port",
        "http_bind_port",
        "extensions",
        "connecting_count",
        "connected_count",
        "requesting_count",
        "requested_count",
        "requested_error_count",
        "http_connecting_count",
        "http_connected_count",
        "http_requesting_count",
        "http_requested_count",
        "http_requested_error_count",
        "created_count",
        "create_timeouted_count",
        "removed_count",
        "plan_count",
        "timeout_handling_count",
        "timeout_handled_count",
        "action_executing_count",
        "action_executed_count",
        "action_executed_error_count",
        "action_retried_count",
    ]
    missing = [f for f in required if f not in info]
    assert not missing
    assert all(isinstance(v, str) for v in info.values())
    assert int(info["mem_rss"]) > 1_000_000
    assert info["current_store"] == "sqlite"
    assert {"shell", "http"} <= set(info["actions"].split(";"))
    assert int(info["http_requested_count"]) > 0
    assert int(info["plan_count"]) >= 1


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("PUT", "/v1/plan", {"key": "e", "seconds": 0}, 1002),  # zero interval
        ("PUT", "/v1/plan", {"key": "e"}, 1002),  # no time at all
        ("GET", "/v1/plan?key=does-not-exist", None, 1003),
        ("DELETE", "/v1/plan?key=does-not-exist", None, 1003),
        ("PUT", "/v1/plan", {"key": "e", "seconds": 5, "action": "nope"}, 1006),
        ("GET", "/v1/plan", None, 1007),
        ("DELETE", "/v1/plan?key=", None, 1007),
        ("POST", "/v1/plan", {"key": "e", "seconds": 75}, 1008),
        ("POST", "/v1/plan", {"key": "e", "seconds": 0, "month": 13}, 1008),
        ("PUT", "/v1/plan", {"key": "e", "seconds": "soon"}, 1008),
        ("PUT", "/v1/plan", {"key": "e", "seconds": 5, "count": -1}, 1008),
        ("PUT", "/v1/plan", {"key": "e", "seconds": 5, "params": "cmd"}, 1008),
        ("PUT", "/v1/plan", {"key": "e", "seconds": 5, "params": {"a": {"b": 1}}}, 1008),
        ("PUT", "/v1/plan", {"key": 5, "seconds": 5}, 1008),
        ("GET", "/v1/time?timestamp=abc", None, 1007),
        ("PUT", "/v1/plan", {"key": "k" * 300, "seconds": 5}, 1009),
        ("PUT", "/v1/plan", {"key": "e", "seconds": 5, "params": {"cmd": "x" * 70000}}, 1009),
    ],
)
def test_error_codes(server: Server, method: str, path: str, body, code: int) -> None:
    status, reply = server.call(method, path, body)
    assert status == 200, reply
    assert reply["errcode"] == code, reply
    assert reply["errmsg"]
    assert reply["data"] == {}  # forsun's error data


def test_missing_argument_names_it(server: Server) -> None:
    _, reply = server.call("GET", "/v1/plan")
    assert reply["errcode"] == 1007 and "key" in reply["errmsg"]


def test_calendar_instant_in_the_past_is_1002(server: Server) -> None:
    # an instant of this year already past (v1's calendar fields name no year):
    # two days ago, or in the first two days of the year, half-way since New Year
    now = time.time()
    new_year = time.mktime((time.localtime(now).tm_year, 1, 1, 0, 0, 0, 0, 0, -1))
    t = time.localtime(max(now - 86400 * 2, new_year + (now - new_year) / 2))
    body = {
        "key": "past",
        "seconds": t.tm_sec,
        "minute": t.tm_min,
        "hour": t.tm_hour,
        "day": t.tm_mday,
        "month": t.tm_mon,
    }
    _, reply = server.call("POST", "/v1/plan", body)
    assert reply["errcode"] == 1002


def test_unparseable_body_is_400(server: Server) -> None:
    status, reply = server.call("PUT", "/v1/plan", "{not json")
    assert status == 400 and reply["errcode"] == 1008 and "JSON" in reply["errmsg"]
    status, reply = server.call("PUT", "/v1/plan", "42")
    assert status == 400


def test_unknown_content_type_is_400(server: Server) -> None:
    status, reply = server.call("PUT", "/v1/plan", "key=x", ctype="text/plain")
    assert status == 400 and "Content-Type" in reply["errmsg"]


def test_bad_crontab_line_names_the_line(server: Server) -> None:
    status, reply = server.call(
        "PUT", "/v1/plan", "ok1 */5 * * * * * shell ls\nbad x", ctype="application/crontab"
    )
    assert status == 200 and reply["errcode"] == 1007  # missing argument: minute
    assert "line 2" in reply["errmsg"]
    assert server.ok("GET", "/v1/keys?prefix=ok1") == []


def test_body_over_limit_is_refused_with_message(tmp_path) -> None:
    srv = Server(tmp_path, "--max-body-bytes", "1000").start()
    try:
        status, reply = srv.call("PUT", "/v1/plan", [delay(f"big{i}") for i in range(100)])
        assert status == 413 and reply["errcode"] == 1009
        assert "1000 bytes" in reply["errmsg"]
        assert srv.ok("GET", "/v1/ping") == {}
    finally:
        srv.stop()


def _chunked_put(port: int, parts: list[bytes]) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "PUT",
            "/v1/plan",
            body=iter(parts),
            encode_chunked=True,
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_streamed_body_is_cut_off_at_the_limit(tmp_path) -> None:
    # no Content-Length to refuse up front: the limit applies while the body streams in
    srv = Server(tmp_path, "--max-body-bytes", "1000").start()
    try:
        body = json.dumps([delay(f"chunk{i}") for i in range(30)]).encode()[:1500] + b"]"
        # (beyond twice the limit, tornado itself drops the connection)
        status, reply = _chunked_put(
            srv.http_port, [body[i : i + 300] for i in range(0, len(body), 300)]
        )
        assert status == 413 and reply["errcode"] == 1009
        assert srv.ok("GET", "/v1/keys?prefix=chunk") == []
        small = json.dumps(delay("chunk-ok")).encode()
        status, reply = _chunked_put(srv.http_port, [small[:10], small[10:]])
        assert status == 200 and reply["data"]["key"] == "chunk-ok"
    finally:
        srv.stop()


def test_create_answer_headers_and_keep_alive(server: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        for key in ("ka-1", "ka-2"):  # one connection, two creates
            conn.request(
                "PUT",
                "/v1/plan",
                body=json.dumps(delay(key)),
                headers={"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            reply = json.loads(resp.read())
            assert resp.status == 200 and reply["data"]["key"] == key
            assert resp.getheader("Content-Type") == "application/json; charset=utf-8"
            assert resp.getheader("Date", "").endswith(" GMT")
            assert not resp.will_close
    finally:
        conn.close()
    # logged as tornado logs the requests of its handlers (at INFO, as the tests run)
    assert "200 PUT /v1/plan (127.0.0.1)" in server.log()
    assert "GET /v1/ping (127.0.0.1)" in server.log()


def test_client_leaving_mid_request_is_counted_and_harmless(server: Server) -> None:
    before = int(server.ok("GET", "/v1/info")["http_requested_count"])
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as s:
        # headers and half the body, then gone
        s.sendall(
            b'PUT /v1/plan HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"key": "left-early"'
        )
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as s:
        # a whole request, gone before its answer: the plan is still created
        body = json.dumps(delay("left-after")).encode()
        s.sendall(
            b"PUT /v1/plan HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
    created = wait_until(
        lambda: server.call("GET", "/v1/plan?key=left-after")[1]["errcode"] == 0, 10
    )
    assert created, "the whole request's plan was not created"

    def settled() -> dict | None:
        info = server.ok("GET", "/v1/info")  # this request is the one in flight
        done = int(info["http_requested_count"]) - before
        return info if int(info["http_requesting_count"]) == 1 and done >= 4 else None

    assert wait_until(settled, 10), server.ok("GET", "/v1/info")
    assert server.call("GET", "/v1/plan?key=left-early")[1]["errcode"] == 1003


def test_unknown_path_and_method(server: Server) -> None:
    status, reply = server.call("GET", "/v1/nothing")
    assert status == 404 and reply["errcode"] == 1001
    status, reply = server.call("PATCH", "/v1/plan", {"key": "x"})
    assert status == 405 and reply["errcode"] == 1001


def test_bad_input_never_corrupts_stored_plans(server: Server) -> None:
    keep = server.ok("PUT", "/v1/plan", delay("precious", seconds=9999))
    for bad, code in (
        ({"key": "precious", "seconds": "x"}, 1008),  # invalid value
        ({"key": "precious", "action": "nope", "seconds": 4}, 1006),  # unknown action
    ):
        _, reply = server.call("PUT", "/v1/plan", bad)
        assert reply["errcode"] == code, reply
    assert server.ok("GET", "/v1/plan?key=precious") == keep


# --------------------------------------------------------------------------- firing


def test_shell_plan_fires(server: Server, tmp_path) -> None:
    out = tmp_path / "fired"
    server.ok(
        "PUT",
        "/v1/plan",
        delay("fire-shell", seconds=1, params={"cmd": f"echo $FORSUN_TIMESTAMP >> {out}"}),
    )
    # the shell creates the file (>>) before echo writes the line: wait for the line
    assert wait_until(lambda: out.exists() and out.read_text().endswith("\n"), 10)
    assert abs(int(out.read_text().split()[0]) - time.time()) < 10
    # A finished one-shot plan is gone; its firing was counted.
    assert wait_until(
        lambda: server.call("GET", "/v1/plan?key=fire-shell")[1]["errcode"] == 1003, 5
    )
    info = server.ok("GET", "/v1/info")
    assert int(info["action_executed_count"]) >= 1


def test_http_plan_fires_at_its_instant(server: Server) -> None:
    """Fired at the due instant, never early, and not a tick late: lateness well under a
    second. (How late, 2-5 ms here, is for the benchmarks: a busy machine adds its own.)"""
    sink = Sink()
    try:
        lateness = []
        for i in range(3):
            now = time.time()
            target = int(now) + 3  # ahead however slowly the create lands
            lt = time.localtime(target)
            server.ok(
                "POST",
                "/v1/plan",
                {
                    "key": f"precise{i}",
                    "seconds": lt.tm_sec,
                    "minute": lt.tm_min,
                    "hour": lt.tm_hour,
                    "count": 1,
                    "action": "http",
                    "params": {"url": sink.url(f"/p{i}"), "method": "post", "body": "x"},
                },
            )
            hits = sink.wait_for(i + 1, timeout=5)
            assert len(hits) == i + 1
            arrival, path, headers = hits[-1]
            assert path == f"/p{i}"
            assert {k.lower(): v for k, v in headers.items()}.get("x-forsun-timestamp") == str(
                target
            )
            lateness.append(arrival - target * 1000)
        assert all(0 <= ms <= 300 for ms in lateness), lateness
    finally:
        sink.close()


def test_firings_carry_their_idempotency_key(server: Server, tmp_path) -> None:
    """X-Forsun-Firing-Id on http, FORSUN_FIRING_ID for shell: ``0:DUE_MS:KEY``."""
    sink = Sink()
    out = tmp_path / "shell-id"
    try:
        target = int(time.time()) + 3
        lt = time.localtime(target)
        when = {"seconds": lt.tm_sec, "minute": lt.tm_min, "hour": lt.tm_hour, "count": 1}
        server.ok(
            "POST",
            "/v1/plan",
            [
                {"key": "id-h", **when, "action": "http", "params": {"url": sink.url("/id")}},
                {
                    "key": "id-s",
                    **when,
                    "action": "shell",
                    "params": {
                        "cmd": f'printf "%s" "$FORSUN_FIRING_ID" > {out}.tmp; mv {out}.tmp {out}'
                    },
                },
            ],
        )
        hits = sink.wait_for(1, timeout=8)
        assert len(hits) == 1
        headers = {k.lower(): v for k, v in hits[0][2].items()}
        assert headers["x-forsun-firing-id"] == f"0:{target * 1000}:id-h"
        assert wait_until(out.exists, timeout=8)
        assert out.read_text() == f"0:{target * 1000}:id-s"
    finally:
        sink.close()


def test_repeating_plan_keeps_count_and_status(server: Server) -> None:
    sink = Sink()
    try:
        server.ok(
            "PUT",
            "/v1/plan",
            {
                "key": "rep",
                "seconds": 2,
                "count": 3,
                "action": "http",
                "params": {"url": sink.url("/rep")},
            },
        )
        hits = sink.wait_for(2, timeout=30)
        assert len(hits) >= 2

        def second() -> dict | None:  # its record may trail its request by a moment
            plan = server.ok("GET", "/v1/plan?key=rep")
            return plan if plan["current_count"] == 2 else None

        mid = wait_until(second, 1.8)  # before the third, two seconds after the second
        assert mid is not None and mid["status"] == 1, mid
        hits = sink.wait_for(3, timeout=30)
        assert len(hits) == 3
        # exactly count firings: a fourth, if any, would come within the plan's interval
        assert len(sink.wait_for(4, timeout=2.5)) == 3
        _, reply = server.call("GET", "/v1/plan?key=rep")
        assert reply["errcode"] == 1003
    finally:
        sink.close()


def test_failed_http_sets_status_failed(server: Server) -> None:
    sink = Sink()
    try:
        server.ok(
            "PUT",
            "/v1/plan",
            {
                "key": "fails",
                "seconds": 1,
                "count": 0,
                "action": "http",
                "params": {"url": "http://127.0.0.1:9/closed"},
            },
        )

        def failed() -> dict | None:
            plan = server.ok("GET", "/v1/plan?key=fails")
            return plan if plan["current_count"] >= 1 and plan["status"] == -1 else None

        plan = wait_until(failed, 8)
        assert plan is not None and plan["status"] == -1 and plan["last_timeout"] > 0
        server.ok("DELETE", "/v1/plan?key=fails")
    finally:
        sink.close()
