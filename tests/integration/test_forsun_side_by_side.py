"""The same HTTP v1 requests, valid and invalid, sent to real forsun 0.1.4 and to
forsun-box: the answers are the same (HTTP status, errcode, data) apart from
what naturally differs (times, forsun's fixed Chinese error messages) and the
deliberate differences docs/COMPAT.md lists, each asserted here as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.forsun_peer import TOOL_ENV, Forsund
from tests.helpers import Server

pytest_plugins = ["tests.forsun_peer"]

JSON = "application/json"
CRONTAB = "application/crontab"
TIMES = ("next_time", "created_time", "last_timeout", "current_timestamp")

# (name, method, path, body, content type); run in order against both servers
CASES: list[tuple[str, str, str, Any, str | None]] = [
    ("ping", "GET", "/v1/ping", None, None),
    (
        "put full",
        "PUT",
        "/v1/plan",
        {
            "key": "a1",
            "seconds": 30,
            "minute": 0,
            "hour": 0,
            "day": 0,
            "month": 0,
            "count": 2,
            "action": "shell",
            "params": {"cmd": "true"},
        },
        JSON,
    ),
    ("put sparse", "PUT", "/v1/plan", {"key": "a2", "seconds": 30, "count": 1}, JSON),
    ("put empty type", "PUT", "/v1/plan", {"key": "a3", "seconds": 90}, ""),
    (
        "post calendar",
        "POST",
        "/v1/plan",
        {"key": "c1", "seconds": 0, "minute": 32, "hour": 16, "params": {"cmd": "true"}},
        JSON,
    ),
    (
        "post http",
        "POST",
        "/v1/plan",
        {"key": "c2", "seconds": 5, "action": "http", "params": {"url": "http://127.0.0.1:9/"}},
        JSON,
    ),
    ("replace", "PUT", "/v1/plan", {"key": "a3", "seconds": 120, "count": 3}, JSON),
    (
        "array",
        "PUT",
        "/v1/plan",
        [{"key": "m1", "seconds": 30}, {"key": "m2", "seconds": 40, "count": 1}],
        JSON,
    ),
    (
        "crontab",
        "POST",
        "/v1/plan",
        "k1 */40 * * * * * shell 'cmd=true'\nk2 0 10 3 * * * http \"url='http://127.0.0.1:9/'\"",
        CRONTAB,
    ),
    ("get", "GET", "/v1/plan?key=a1", None, None),
    ("get missing", "GET", "/v1/plan?key=nope", None, None),
    ("get empty key", "GET", "/v1/plan?key=", None, None),
    ("get no key", "GET", "/v1/plan", None, None),
    ("delete", "DELETE", "/v1/plan?key=a2", None, None),
    ("delete again", "DELETE", "/v1/plan?key=a2", None, None),
    ("delete missing", "DELETE", "/v1/plan?key=nope", None, None),
    ("delete empty key", "DELETE", "/v1/plan?key=", None, None),
    ("delete no key", "DELETE", "/v1/plan", None, None),
    # before the cases where one of the two stores a plan the other refuses
    ("keys prefix", "GET", "/v1/keys?prefix=a", None, None),
    ("keys star", "GET", "/v1/keys?prefix=a*", None, None),
    ("keys none", "GET", "/v1/keys?prefix=zzz", None, None),
    ("keys all", "GET", "/v1/keys", None, None),
    ("time now", "GET", "/v1/time", None, None),
    ("time zero", "GET", "/v1/time?timestamp=0", None, None),
    ("time negative", "GET", "/v1/time?timestamp=-5", None, None),
    ("time bad", "GET", "/v1/time?timestamp=abc", None, None),
    # {c1}: the next time of plan c1 (a calendar plan: the same on both)
    ("time of a plan", "GET", "/v1/time?timestamp={c1}", None, None),
    ("unknown action", "PUT", "/v1/plan", {"key": "e", "seconds": 5, "action": "nope"}, JSON),
    (
        "past instant",
        "POST",
        "/v1/plan",
        {"key": "e", "seconds": 0, "minute": 0, "hour": 0, "day": 1, "month": 1},
        JSON,
    ),
    ("zero interval", "PUT", "/v1/plan", {"key": "e", "seconds": 0}, JSON),
    ("no time", "PUT", "/v1/plan", {"key": "e"}, JSON),
    ("empty array", "PUT", "/v1/plan", [], JSON),
    ("not json", "PUT", "/v1/plan", "not json", JSON),
    ("unknown type", "PUT", "/v1/plan", "x", "text/plain"),
    ("bad crontab", "POST", "/v1/plan", "garbage", CRONTAB),
    ("non-integer field", "PUT", "/v1/plan", {"key": "e", "seconds": "soon"}, JSON),
    ("params not object", "PUT", "/v1/plan", {"key": "e", "seconds": 5, "params": "cmd"}, JSON),
    ("empty key", "PUT", "/v1/plan", {"key": "", "seconds": 30}, JSON),
    ("unknown path", "GET", "/v1/nosuch", None, None),
]

#: the deliberate differences (docs/COMPAT.md): case -> (forsun's (status, errcode),
#: forsun-box's (status, errcode)); errcode None: an HTML page, not forsun's JSON
DIFFERENCES: dict[str, tuple[tuple[int, int | None], tuple[int, int | None]]] = {
    # an empty (or curl's default form) Content-Type: forsun refuses the body,
    # forsun-box reads it as JSON
    "put empty type": ((400, None), (200, 0)),
    # forsun fails on the absent query argument (unknown error); forsun-box names it
    "get no key": ((200, 1001), (200, 1007)),
    "delete no key": ((200, 1001), (200, 1007)),
    # forsun stores a plan with no interval (it fires at once, then never ends)
    "zero interval": ((200, 0), (200, 1002)),
    "no time": ((200, 0), (200, 1002)),
    # forsun fails on its own missing argument; forsun-box creates nothing, successfully
    "empty array": ((200, 1001), (200, 0)),
    # forsun answers tornado's HTML error page; forsun-box its JSON envelope
    "not json": ((400, None), (400, 1008)),
    "unknown type": ((400, None), (400, 1008)),
    "unknown path": ((404, None), (404, 1001)),
    # forsun: HTTP 400 page; forsun-box names the line and field that are wrong
    "bad crontab": ((400, None), (200, 1007)),
    # forsun fails on the value (unknown error); forsun-box says which field is invalid
    "non-integer field": ((200, 1001), (200, 1008)),
    "params not object": ((200, 1001), (200, 1008)),
    # forsun fails; forsun-box generates a key (FORSUN_COMPAT: an empty key gets one)
    "empty key": ((200, 1001), (200, 0)),
}


def _mask(value: Any) -> Any:
    """Times that differ by nature become their type's name; keys lists are sorted."""
    if isinstance(value, dict):
        return {k: type(v).__name__ if k in TIMES else _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_mask(v) for v in value]
        return sorted(items) if all(isinstance(v, str) for v in items) else items
    return value


def _shape(status: int, body: Any) -> tuple[int, int | None]:
    return status, body.get("errcode") if isinstance(body, dict) else None


@pytest.fixture(scope="module")
def box(start_server: Callable[..., Server]) -> Server:
    return start_server(name="box-v1", env=TOOL_ENV)


@pytest.fixture(scope="module")
def answers(forsund: Forsund, box: Server) -> dict[str, tuple[tuple[int, Any], tuple[int, Any]]]:
    """Every case sent to forsun, then to forsun-box, in order."""
    out: dict[str, tuple[tuple[int, Any], tuple[int, Any]]] = {}
    for name, method, path, body, ctype in CASES:
        if "{c1}" in path:
            path = path.format(c1=out["post calendar"][1][1]["data"]["next_time"])
        out[name] = (
            forsund.call(method, path, body, ctype=ctype),
            box.call(method, path, body, ctype=ctype),
        )
    return out


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_same_answer_as_forsun(name: str, answers: dict[str, Any]) -> None:
    (f_status, f_body), (b_status, b_body) = answers[name]
    if name in DIFFERENCES:
        assert (_shape(f_status, f_body), _shape(b_status, b_body)) == DIFFERENCES[name]
        if isinstance(b_body, dict) and b_body.get("errcode"):
            assert b_body["errmsg"] and b_body["data"] == {}
        return
    assert b_status == f_status
    assert isinstance(f_body, dict) and isinstance(b_body, dict), (f_body, b_body)
    assert b_body["errcode"] == f_body["errcode"]
    if f_body["errcode"]:
        # forsun's messages are fixed Chinese strings; forsun-box's say what was wrong
        assert b_body["errmsg"] and f_body["errmsg"]
        assert b_body["data"] == f_body["data"] == {}
        return
    assert b_body["errmsg"] == f_body["errmsg"] == ""
    assert _mask(b_body["data"]) == _mask(f_body["data"])
    # the same fields in the same order, the same types (created_time a float)
    assert _types(b_body["data"]) == _types(f_body["data"])
    if name == "time of a plan":
        assert [p["key"] for p in b_body["data"]["plans"]] == ["c1"]


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return [(k, _types(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_types(v) for v in value[:1]]
    return type(value).__name__


def test_every_difference_is_a_case() -> None:
    assert set(DIFFERENCES) <= {c[0] for c in CASES}
