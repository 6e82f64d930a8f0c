"""The v2 API and /metrics against a real forsun-box process on a real SQLite file.

Every answer is checked against the OpenAPI document's schema for its
route, method and status; the last test asserts every documented
operation was exercised.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from forsun_box.api.formats import openapi
from tests.helpers import ROOT, Server, wait_until, whole_module_selected

DOC = openapi.document()
COVERED: set[tuple[str, str]] = set()
SHELL = {"action": "shell", "params": {"cmd": "true"}}


def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    raw: bytes | None = None,
    ctype: str = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[int, str, bytes]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", ctype)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def api(
    srv: Server,
    method: str,
    template: str,
    path: str | None = None,
    body: Any = None,
    expect: int = 200,
    **kw: Any,
) -> Any:
    """One request, checked against the OpenAPI document for ``template``."""
    status, ctype, raw = request(srv.http_port, method, path or template, body, **kw)
    assert status == expect, (status, raw[:500])
    op = DOC["paths"][template][method.lower()]
    response = op["responses"][str(status)]
    media = ctype.split(";")[0]
    assert media in response["content"], (media, list(response["content"]))
    COVERED.add((template, method.lower()))
    if media == "application/x-ndjson":
        return [json.loads(line) for line in raw.decode().splitlines()]
    data = json.loads(raw)
    schema = dict(response["content"][media]["schema"])
    schema["components"] = DOC["components"]
    Draft202012Validator(schema).validate(data)
    return data


def iso_ms(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def test_openapi_document_is_served_and_valid(server: Server) -> None:
    doc = api(server, "GET", "/v2/openapi.json")
    validate(doc)
    assert doc == json.loads(json.dumps(DOC))


def test_put_creates_then_replaces(server: Server) -> None:
    tpl = "/v2/plans/{key}"
    body = {**SHELL, "schedule": {"kind": "cron", "expr": "0 9 * * *"}, "timezone": "UTC"}
    created = api(server, "PUT", tpl, "/v2/plans/put-1", body, expect=201)
    assert created["key"] == "put-1" and created["status"] == "pending"
    assert created["next_time"].endswith("T09:00:00.000Z")
    assert iso_ms(created["next_time"]) == created["next_time_ms"]
    body["schedule"]["expr"] = "30 9 * * *"
    replaced = api(server, "PUT", tpl, "/v2/plans/put-1", body, expect=200)
    assert replaced["next_time"].endswith("T09:30:00.000Z")
    assert replaced["version"] != created["version"]
    assert api(server, "GET", tpl, "/v2/plans/put-1") == replaced


def test_post_creates_and_answers_409_for_an_existing_key(server: Server) -> None:
    body = {"key": "post-1", **SHELL, "schedule": {"kind": "delay", "interval_ms": 3_600_000}}
    plan = api(server, "POST", "/v2/plans", body=body, expect=201)
    assert plan["schedule"] == {"kind": "delay", "interval_ms": 3_600_000, "count": 0}
    problem = api(server, "POST", "/v2/plans", body=body, expect=409)
    assert problem["status"] == 409 and "post-1" in problem["detail"]
    assert problem["instance"] == "/v2/plans"


def test_problem_details_and_status_codes(server: Server) -> None:
    status, ctype, _raw = request(server.http_port, "PUT", "/v2/plans/bad", raw=b"{nope")
    assert (status, ctype) == (400, "application/problem+json")
    COVERED.add(("/v2/plans/{key}", "put"))
    invalid = api(
        server,
        "PUT",
        "/v2/plans/{key}",
        "/v2/plans/bad",
        {"schedule": {"kind": "cron", "expr": "99 * * * *"}},
        expect=422,
    )
    assert invalid["code"] == 1008 and invalid["type"].endswith("invalid-value")
    never = api(
        server,
        "PUT",
        "/v2/plans/{key}",
        "/v2/plans/bad",
        {"schedule": {"kind": "at", "at": "2001-01-01T00:00:00Z"}},
        expect=422,
    )
    assert never["code"] == 1002
    api(server, "POST", "/v2/plans", body={"schedule": {"kind": "at", "at": 1}}, expect=422)
    missing = api(server, "GET", "/v2/plans/{key}", "/v2/plans/nope", expect=404)
    assert missing["code"] == 1003 and missing["title"] == "Not Found"
    api(server, "DELETE", "/v2/plans/{key}", "/v2/plans/nope", expect=404)
    api(server, "GET", "/v2/plans", "/v2/plans?limit=0", expect=400)
    status, ctype, _ = request(server.http_port, "GET", "/v2/nothing-here")
    assert (status, ctype) == (404, "application/problem+json")
    status, ctype, _ = request(server.http_port, "PATCH", "/v2/plans/x", body={})
    assert (status, ctype) == (405, "application/problem+json")


def test_every_kind_with_zones_and_bounds(server: Server) -> None:
    tpl = "/v2/plans/{key}"
    at = api(
        server,
        "PUT",
        tpl,
        "/v2/plans/k-at",
        {**SHELL, "schedule": {"kind": "at", "at": "2099-06-01T12:00:00.250Z"}},
        expect=201,
    )
    assert at["next_time"] == "2099-06-01T12:00:00.250Z"
    assert at["next_time_ms"] == 4083998400250
    unix = api(
        server,
        "PUT",
        tpl,
        "/v2/plans/k-at-ms",
        {**SHELL, "schedule": {"kind": "at", "at": 4083998400250}},
        expect=201,
    )
    assert unix["next_time"] == at["next_time"]
    cal = api(
        server,
        "PUT",
        tpl,
        "/v2/plans/k-cal",
        {
            **SHELL,
            "timezone": "Asia/Tokyo",
            "schedule": {"kind": "calendar", "second": 0, "minute": 30, "hour": 9},
        },
        expect=201,
    )
    assert cal["next_time"].endswith("T00:30:00.000Z")  # 09:30 in Tokyo
    six = api(
        server,
        "PUT",
        tpl,
        "/v2/plans/k-cron6",
        {**SHELL, "schedule": {"kind": "cron", "expr": "*/20 * * * * *", "count": 2}},
        expect=201,
    )
    assert six["next_time_ms"] % 20_000 == 0
    bounded = api(
        server,
        "PUT",
        tpl,
        "/v2/plans/k-bounded",
        {
            **SHELL,
            "start": "2099-01-01T10:00:00",
            "end": "2099-01-01T12:00:00Z",
            "schedule": {"kind": "cron", "expr": "0 * * * *"},
            "timezone": "UTC",
        },
        expect=201,
    )
    assert bounded["end"] == "2099-01-01T12:00:00.000Z"
    fires = api(server, "GET", "/v2/plans/{key}/preview", "/v2/plans/k-bounded/preview?n=5")
    assert fires["fires"] == ["2099-01-01T10:00:00.000Z", "2099-01-01T11:00:00.000Z"]


def test_jitter_and_misfire_round_trip(server: Server) -> None:
    plan = api(
        server,
        "PUT",
        "/v2/plans/{key}",
        "/v2/plans/jit",
        {
            **SHELL,
            "jitter_ms": 30_000,
            "misfire": "fire_once",
            "grace_ms": 5000,
            "start": "2099-01-01T00:00:00Z",
            "schedule": {"kind": "cron", "expr": "0 * * * *"},
        },
        expect=201,
    )
    assert (plan["jitter_ms"], plan["misfire"], plan["grace_ms"]) == (30_000, "fire_once", 5000)
    fires = api(server, "GET", "/v2/plans/{key}/preview", "/v2/plans/jit/preview?n=4")
    for k, t in enumerate(fires["fires_ms"]):
        nominal = 4_070_908_800_000 + k * 3_600_000  # 2099-01-01T00:00Z + k hours
        assert nominal <= t <= nominal + 30_000
    bad = api(
        server,
        "PUT",
        "/v2/plans/{key}",
        "/v2/plans/jit",
        {**SHELL, "misfire": "later", "schedule": {"kind": "cron", "expr": "0 * * * *"}},
        expect=422,
    )
    assert "misfire" in bad["detail"]


def test_dst_transitions_in_two_zones(server: Server) -> None:
    tpl, pre = "/v2/plans/{key}", "/v2/plans/{key}/preview"
    # New York 2099-03-08: 02:00 -> 03:00; 02:30 does not exist and fires at 03:00 EDT.
    api(
        server,
        "PUT",
        tpl,
        "/v2/plans/dst-ny",
        {
            **SHELL,
            "timezone": "America/New_York",
            "start": "2099-03-07T00:00:00",
            "schedule": {"kind": "cron", "expr": "30 2 * * *"},
        },
        expect=201,
    )
    ny = api(server, "GET", pre, "/v2/plans/dst-ny/preview?n=3")["fires"]
    assert ny == [
        "2099-03-07T07:30:00.000Z",
        "2099-03-08T07:00:00.000Z",
        "2099-03-09T06:30:00.000Z",
    ]
    # Berlin 2099-10-25: 03:00 -> 02:00; 02:30 happens twice and fires once.
    api(
        server,
        "PUT",
        tpl,
        "/v2/plans/dst-berlin",
        {
            **SHELL,
            "timezone": "Europe/Berlin",
            "start": "2099-10-24T00:00:00",
            "schedule": {"kind": "calendar", "second": 0, "minute": 30, "hour": 2},
        },
        expect=201,
    )
    berlin = api(server, "GET", pre, "/v2/plans/dst-berlin/preview?n=3")["fires"]
    assert berlin == [
        "2099-10-24T00:30:00.000Z",
        "2099-10-25T00:30:00.000Z",
        "2099-10-26T01:30:00.000Z",
    ]


def test_list_pages_by_key_and_deletes_by_prefix(server: Server) -> None:
    lines = "".join(
        json.dumps(
            {
                "key": f"page-{i:02d}",
                **SHELL,
                "schedule": {"kind": "delay", "interval_ms": 86_400_000},
            }
        )
        + "\n"
        for i in range(25)
    )
    results = api(
        server, "POST", "/v2/plans:batch", raw=lines.encode(), ctype="application/x-ndjson"
    )
    assert all(r["status"] == 200 for r in results) and len(results) == 25
    seen: list[str] = []
    after = ""
    while True:
        page = api(server, "GET", "/v2/plans", f"/v2/plans?prefix=page-&limit=10&after={after}")
        seen += [p["key"] for p in page["plans"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == [f"page-{i:02d}" for i in range(25)]
    assert api(server, "DELETE", "/v2/plans", "/v2/plans?prefix=page-1") == {
        "removed": 10,
        "prefix": "page-1",
    }
    assert len(api(server, "GET", "/v2/plans", "/v2/plans?prefix=page-")["plans"]) == 15
    api(server, "DELETE", "/v2/plans", "/v2/plans", expect=400)
    removed = api(server, "DELETE", "/v2/plans/{key}", "/v2/plans/page-00")
    assert removed["key"] == "page-00"


def test_pause_resume_fire_and_runs(server: Server) -> None:
    tpl = "/v2/plans/{key}"
    api(
        server,
        "PUT",
        tpl,
        "/v2/plans/ops",
        {**SHELL, "schedule": {"kind": "delay", "interval_ms": 3_600_000}},
        expect=201,
    )
    paused = api(server, "POST", "/v2/plans/{key}/pause", "/v2/plans/ops/pause")
    assert paused["paused"] is True
    assert api(server, "GET", tpl, "/v2/plans/ops")["paused"] is True
    resumed = api(server, "POST", "/v2/plans/{key}/resume", "/v2/plans/ops/resume")
    assert resumed["paused"] is False
    fired = api(server, "POST", "/v2/plans/{key}/fire", "/v2/plans/ops/fire")
    assert fired["result"] == "ok"
    runs = wait_until(
        lambda: api(server, "GET", "/v2/plans/{key}/runs", "/v2/plans/ops/runs?limit=5")["runs"], 15
    )
    assert runs[0]["result"] == "ok" and runs[0]["attempt"] == 1 and runs[0]["error"] is None
    api(server, "POST", "/v2/plans/{key}/pause", "/v2/plans/nope/pause", expect=404)
    api(server, "POST", "/v2/plans/{key}/fire", "/v2/plans/nope/fire", expect=404)
    api(server, "GET", "/v2/plans/{key}/preview", "/v2/plans/nope/preview", expect=404)


def test_plans_fire_on_schedule_and_history_records_them(server: Server) -> None:
    start = int(time.time() * 1000) + 3000  # (both created before it, however slowly)
    api(
        server,
        "PUT",
        "/v2/plans/{key}",
        "/v2/plans/fast",
        {
            "action": "shell",
            "params": {"cmd": "exit 3"},
            "start": start,
            "schedule": {"kind": "delay", "interval_ms": 200, "count": 2},
        },
        expect=201,
    )
    api(
        server,
        "PUT",
        "/v2/plans/{key}",
        "/v2/plans/once",
        {**SHELL, "schedule": {"kind": "at", "at": start}},
        expect=201,
    )

    def first_attempts() -> list[dict]:
        runs = api(server, "GET", "/v2/plans/{key}/runs", "/v2/plans/fast/runs")["runs"]
        firsts = [r for r in runs if r["attempt"] == 1]
        return firsts if len(firsts) == 2 else []

    runs = wait_until(first_attempts, 30)
    assert [r["due_ms"] for r in sorted(runs, key=lambda r: r["due_ms"])] == [start, start + 200]
    # no retry configured: each first attempt failed for good
    assert all(r["result"] == "failed" and r["error"] for r in runs)
    assert all(r["lateness_ms"] == r["started_ms"] - r["due_ms"] for r in runs)
    once = wait_until(
        lambda: api(server, "GET", "/v2/plans/{key}/runs", "/v2/plans/once/runs")["runs"], 15
    )
    assert once[0]["due"] == api_instant(start) and once[0]["result"] == "ok"
    # finished plans are gone; their history stays
    assert wait_until(lambda: request(server.http_port, "GET", "/v2/plans/once")[0] == 404, 15)
    text = request(server.http_port, "GET", "/metrics")[2].decode()
    assert re.search(r'forsun_box_firings_total\{action="shell",result="ok"\} [1-9]', text)


def api_instant(ms: int) -> str:
    from forsun_box.api.formats.v2_schema import format_instant

    out = format_instant(ms)
    assert out is not None
    return out


def test_batch_per_line_results(server: Server) -> None:
    lines = [
        json.dumps({"key": "b-1", **SHELL, "schedule": {"kind": "at", "at": 4083998400000}}),
        "",
        "{not json",
        json.dumps({"key": "b-2", "schedule": {"kind": "cron", "expr": "bad"}}),
        json.dumps({**SHELL, "schedule": {"kind": "at", "at": 4083998400000}}),
        json.dumps({"key": "b-1", **SHELL, "schedule": {"kind": "at", "at": 4083998401000}}),
    ]
    results = api(
        server,
        "POST",
        "/v2/plans:batch",
        raw="\n".join(lines).encode(),
        ctype="application/x-ndjson",
    )
    line_schema = {"$ref": "#/components/schemas/BatchLineResult", "components": DOC["components"]}
    for r in results:
        Draft202012Validator(line_schema).validate(r)
    assert [(r["line"], r["key"], r["status"]) for r in results] == [
        (1, "b-1", 200),
        (3, None, 400),
        (4, "b-2", 422),
        (5, None, 422),
        (6, "b-1", 200),
    ]
    # the later line with the same key wins
    assert api(server, "GET", "/v2/plans/{key}", "/v2/plans/b-1")["next_time_ms"] == 4083998401000


def test_batch_of_100000_lines_streamed(server: Server) -> None:
    line = (
        '{"key": "bulk-%06d", "action": "shell", "params": {"cmd": "true"}, '
        '"schedule": {"kind": "delay", "interval_ms": 86400000}}\n'
    )

    def body():
        for start in range(0, 100_000, 1000):
            yield "".join(line % i for i in range(start, start + 1000)).encode()

    raw = b"".join(body())
    results = api(server, "POST", "/v2/plans:batch", raw=raw, ctype="application/x-ndjson")
    assert len(results) == 100_000 and all(r["status"] == 200 for r in results)
    assert results[-1] == {"line": 100_000, "key": "bulk-099999", "status": 200}
    page = api(server, "GET", "/v2/plans", "/v2/plans?prefix=bulk-&after=bulk-099998")
    assert [p["key"] for p in page["plans"]] == ["bulk-099999"]
    assert api(server, "DELETE", "/v2/plans", "/v2/plans?prefix=bulk-")["removed"] == 100_000


def test_upcoming_counts_next_firings_per_step(server: Server) -> None:
    base = 4_102_444_800_000  # 2100-01-01T00:00:00Z
    for i, offset in enumerate((0, 1000, 61_000, 125_000)):
        api(
            server,
            "PUT",
            "/v2/plans/{key}",
            f"/v2/plans/up-{i}",
            {**SHELL, "schedule": {"kind": "at", "at": base + offset}},
            expect=201,
        )
    out = api(
        server,
        "GET",
        "/v2/upcoming",
        f"/v2/upcoming?from=2100-01-01T00:00:00Z&to={base + 180_000}&step=60000",
    )
    assert [b["count"] for b in out["buckets"]] == [2, 1, 1]
    assert out["buckets"][1]["start"] == "2100-01-01T00:01:00.000Z"
    assert out["capped"] is False
    api(server, "GET", "/v2/upcoming", f"/v2/upcoming?from={base}&to={base}", expect=400)
    api(server, "GET", "/v2/upcoming", "/v2/upcoming?from=soon", expect=400)
    default = api(server, "GET", "/v2/upcoming")
    assert len(default["buckets"]) == 60


def test_metrics_exposition(server: Server) -> None:
    status, ctype, raw = request(server.http_port, "GET", "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    text = raw.decode()
    for name in (
        "forsun_box_pending_plans",
        "forsun_box_window_plans",
        "forsun_box_firing_lateness_seconds_bucket",
        "forsun_box_store_commit_seconds_count",
        "forsun_box_api_requests_total",
        "forsun_box_legacy_api_requests_total",
        "forsun_box_inflight_firings",
    ):
        assert name in text, name
    pending = float(re.search(r"^forsun_box_pending_plans (\S+)$", text, re.M).group(1))
    assert pending >= 1
    assert re.search(
        r'forsun_box_api_requests_total\{interface="http_v2",outcome="client_error"\}'
        r" [1-9]",
        text,
    )
    commits = re.search(r"^forsun_box_store_commit_seconds_count (\S+)$", text, re.M)
    assert float(commits.group(1)) >= 1


def test_api_token_is_required_when_configured(tmp_path: Path) -> None:
    srv = Server(tmp_path, "--api-token", "s3cret").start()
    try:
        status, ctype, _raw = request(srv.http_port, "GET", "/v2/plans")
        assert (status, ctype) == (401, "application/problem+json")
        assert request(srv.http_port, "GET", "/metrics")[0] == 401
        ok = request(srv.http_port, "GET", "/v2/plans", headers={"Authorization": "Bearer s3cret"})
        assert ok[0] == 200
        assert (
            request(srv.http_port, "GET", "/v2/plans", headers={"X-Api-Token": "s3cret"})[0] == 200
        )
        assert request(srv.http_port, "GET", "/v2/plans", headers={"X-Api-Token": "nope"})[0] == 401
    finally:
        assert srv.stop() == 0


def doc_examples() -> list[str]:
    """The ``sh`` blocks of docs/API_V2.md and of the README's v2 section."""
    text = (ROOT / "docs" / "API_V2.md").read_text()
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## HTTP API v2 and metrics", 1)[1].split("\n## ", 1)[0]
    readme_blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert readme_blocks
    return re.findall(r"```sh\n(.*?)```", text, re.S) + readme_blocks


def test_documented_curl_examples_run_verbatim(tmp_path: Path) -> None:
    examples = doc_examples()
    assert len(examples) >= 10
    srv = Server(tmp_path).start()
    try:
        for example in examples:
            script = example.replace("127.0.0.1:9002", f"127.0.0.1:{srv.http_port}")
            done = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", script],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, (example, done.stdout, done.stderr)
            assert done.stdout.strip(), example
    finally:
        assert srv.stop() == 0


def test_batch_body_sent_in_chunks(server: Server) -> None:
    """A chunked body (no Content-Length) is read as it arrives, lines split across chunks."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    lines = "".join(
        json.dumps(
            {"key": f"chunk-{i}", **SHELL, "schedule": {"kind": "delay", "interval_ms": 60_000}}
        )
        + "\n"
        for i in range(50)
    ).encode()
    pieces = [lines[i : i + 37] for i in range(0, len(lines), 37)]
    conn.request(
        "POST",
        "/v2/plans:batch",
        body=iter(pieces),
        headers={"Content-Type": "application/x-ndjson"},
        encode_chunked=True,
    )
    resp = conn.getresponse()
    results = [json.loads(x) for x in resp.read().decode().splitlines()]
    conn.close()
    assert resp.status == 200
    assert [(r["line"], r["key"], r["status"]) for r in results] == [
        (i + 1, f"chunk-{i}", 200) for i in range(50)
    ]
    assert api(server, "DELETE", "/v2/plans", "/v2/plans?prefix=chunk-")["removed"] == 50


def test_every_documented_operation_was_exercised(request: pytest.FixtureRequest) -> None:
    # runs last in this module (pytest keeps file order): COVERED is the record
    if not whole_module_selected(request):
        pytest.skip("checks what the tests above exercised: select the whole module")
    documented = {
        (path, method)
        for path, item in DOC["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert documented - COVERED == set()
