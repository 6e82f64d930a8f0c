"""A minimal keep-alive client for the v1 HTTP API, timing only the server's share."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from harness.servers import HOST

# Plans far in the future so nothing fires while load is measured (8.3 h, fits thrift's i16).
FAR_SECONDS = 30000
IDLE_URL = "http://127.0.0.1:9/never"


class ApiError(RuntimeError):
    """An answer that was not HTTP 200 with errcode 0."""


def far_plan(key: str) -> dict[str, Any]:
    """The delay-mode plan every load measurement creates: one firing, 8 h away."""
    return {
        "key": key,
        "seconds": FAR_SECONDS,
        "count": 1,
        "action": "http",
        "params": {"url": IDLE_URL},
    }


class V1Client:
    """One persistent HTTP/1.1 connection to a server's v1 API."""

    def __init__(self, port: int, timeout: float = 300.0) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=timeout)

    def close(self) -> None:
        self.conn.close()

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[float, Any]:
        """Send one request; return (seconds from send to last body byte, parsed ``data``).

        JSON parsing happens after the clock stops, so the time is the server's plus loopback.
        """
        headers = {"Content-Type": "application/json"} if body is not None else {}
        start = time.perf_counter()
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        elapsed = time.perf_counter() - start
        if resp.status != 200:
            raise ApiError(f"{method} {path}: HTTP {resp.status}: {raw[:300]!r}")
        answer = json.loads(raw)
        if answer.get("errcode") != 0:
            raise ApiError(f"{method} {path}: errcode {answer.get('errcode')}: {answer}")
        return elapsed, answer.get("data")

    def create_many(self, method: str, body: bytes, expected: int) -> tuple[float, list[Any]]:
        """PUT/POST a JSON array of plans; check every plan came back."""
        elapsed, data = self.request(method, "/v1/plan", body)
        if expected == 1 and isinstance(data, dict):
            data = [data]  # forsun answers a one-element array with the bare plan
        if not isinstance(data, list) or len(data) != expected:
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise ApiError(f"{method} /v1/plan: expected {expected} plans back, got {got}")
        return elapsed, data

    def info(self) -> dict[str, Any]:
        """The server's /v1/info map."""
        _, data = self.request("GET", "/v1/info")
        return dict(data or {})


def encode(plans: list[dict[str, Any]]) -> bytes:
    """JSON-encode a request body (compact, like most clients send)."""
    return json.dumps(plans, separators=(",", ":")).encode()
