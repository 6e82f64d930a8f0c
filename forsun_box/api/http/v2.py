"""The v2 JSON API (``/v2``) and ``/metrics``.

Plans are keyed by the client's key. Errors are RFC 7807
``application/problem+json`` with a proper HTTP status; the forsun error
code travels in the ``code`` member. Shapes are in
:mod:`forsun_box.api.formats.v2_schema`, the OpenAPI document in
:mod:`forsun_box.api.formats.openapi`; docs/API_V2.md shows every route.

Status codes: 400 a body or query that can't be read, 401 a missing or
wrong API token (when one is configured), 404 no such plan or route, 409
the key exists (``POST /v2/plans``), 413 a body or batch over its limit,
422 a well-formed definition that is invalid or would never fire, 503 the
store failed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
import tornado.escape
import tornado.web

from forsun_box import errors
from forsun_box.api import security
from forsun_box.api.formats import openapi, v2_schema
from forsun_box.api.service import ForsunService
from forsun_box.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from forsun_box.metrics import Metrics
from forsun_box.plan import Plan

log = logging.getLogger("forsun_box.http")

PROBLEM_TYPE = "urn:forsun-box:problem:"
JSON = "application/json"
MAX_LIST_LIMIT = 1000
MAX_PREVIEW = 1000
MAX_RUNS = 1000
MAX_UPCOMING_STEPS = 1440
UPCOMING_COUNT_LIMIT = 10_000_000
DELETE_CHUNK = 1000
BATCH_CHUNK = 5000

# forsun error code -> (HTTP status, problem slug)
_STATUS = {
    errors.TIME_NEVER_ARRIVES: (422, "time-never-arrives"),
    errors.NOT_FOUND: (404, "not-found"),
    errors.STORE_ERROR: (503, "store-error"),
    errors.REMOVE_ERROR: (404, "not-found"),
    errors.UNKNOWN_ACTION: (422, "unknown-action"),
    errors.MISSING_ARGUMENT: (422, "missing-argument"),
    errors.INVALID_VALUE: (422, "invalid-value"),
    errors.TOO_LARGE: (413, "too-large"),
}
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    """An answer other than success, as RFC 7807 problem details."""

    def __init__(self, status: int, detail: str, slug: str = "", code: int = 0) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug or _TITLES.get(status, "error").lower().replace(" ", "-")
        self.code = code

    @classmethod
    def from_error(cls, e: errors.ForsunBoxError) -> Problem:
        status, slug = _STATUS.get(e.code, (500, "internal-error"))
        return cls(status, e.message, slug, e.code)

    def body(self, instance: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": PROBLEM_TYPE + self.slug,
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if self.code:
            out["code"] = self.code
        return out


@dataclass
class V2Context:
    """What every v2 handler shares."""

    service: ForsunService
    metrics: Metrics
    max_body_bytes: int
    api_token: str = ""
    create_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class V2Handler(tornado.web.RequestHandler):
    """Base: auth, size-limited body, JSON and problem answers, request metrics."""

    ctx: V2Context
    body_limit: int = 0  # 0: ctx.max_body_bytes

    def initialize(self, ctx: V2Context) -> None:  # type: ignore[override]
        self.ctx = ctx
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False

    @property
    def service(self) -> ForsunService:
        return self.ctx.service

    def limit(self) -> int:
        return self.body_limit or self.ctx.max_body_bytes

    def prepare(self) -> None:
        request = self.request
        if not security.authorized(request.remote_ip or "", request.headers, self.ctx.api_token):
            self.problem(Problem(401, security.UNAUTHORIZED_MESSAGE))
            return
        declared = self.request.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.limit():
            self.problem(
                Problem(
                    413,
                    f"request body larger than {self.limit()} bytes",
                    "too-large",
                    errors.TOO_LARGE,
                )
            )

    def data_received(self, chunk: bytes) -> Any:
        if self._too_large or self._finished:
            return None
        self._size += len(chunk)
        if self._size > self.limit():
            self._too_large = True
            self._chunks = []
        else:
            self._chunks.append(chunk)
        return None

    def json_body(self) -> Any:
        if self._too_large:
            raise Problem(
                413, f"request body larger than {self.limit()} bytes", "too-large", errors.TOO_LARGE
            )
        raw = b"".join(self._chunks) or self.request.body
        ctype = self.request.headers.get("Content-Type", JSON).split(";", 1)[0].strip().lower()
        if ctype not in (JSON, "", "application/x-www-form-urlencoded", "text/json"):
            raise Problem(400, f"unsupported Content-Type: {ctype} (send {JSON})")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise Problem(400, f"body is not valid JSON: {e}") from None

    def send(self, status: int, data: Any, content_type: str = JSON) -> None:
        self.set_status(status)
        self.set_header("Content-Type", content_type)
        self.finish(data if isinstance(data, bytes) else orjson.dumps(data))

    def problem(self, p: Problem) -> None:
        self.set_status(p.status)
        self.set_header("Content-Type", "application/problem+json")
        self.finish(orjson.dumps(p.body(self.request.path)))

    def on_finish(self) -> None:
        status = self.get_status()
        outcome = "ok" if status < 400 else "client_error" if status < 500 else "server_error"
        self.ctx.metrics.api_request("http_v2", outcome)

    async def run(self, fn: Any, *args: Any) -> None:
        try:
            await fn(*args)
        except Problem as p:
            self.problem(p)
        except errors.ForsunBoxError as e:
            self.problem(Problem.from_error(e))
        except Exception as e:
            log.exception("unexpected error in %s %s", self.request.method, self.request.path)
            self.problem(
                Problem(
                    500,
                    f"unexpected error: {e.__class__.__name__}",
                    "internal-error",
                    errors.UNKNOWN,
                )
            )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # tornado's own errors (405, malformed request) keep the problem shape.
        self.problem(Problem(status_code, self._reason))

    # -- query helpers ---------------------------------------------------------

    def int_arg(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            v = int(raw)
        except ValueError:
            raise Problem(400, f"{name} must be an integer, got {raw!r}") from None
        if not lo <= v <= hi:
            raise Problem(400, f"{name} must be between {lo} and {hi}")
        return v

    def instant_arg(self, name: str, default: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            return v2_schema.parse_instant(raw, name, self.service.tz)
        except errors.InvalidValue as e:
            raise Problem(400, e.message) from None

    def build(self, obj: Any, key: str | None) -> Plan:
        service = self.service
        return v2_schema.build_v2_plan(
            obj,
            key=key,
            now_ms=service.now_ms(),
            default_tz=service.tz,
            known_actions=service.known_actions(),
            limits=service.limits,
        )

    async def exists(self, key: str) -> bool:
        if not key:
            return False
        try:
            await self.service.get(key)
        except errors.PlanNotFound:
            return False
        return True


@tornado.web.stream_request_body
class PlansHandler(V2Handler):
    """``/v2/plans``: list (keyset paging), create (409 if the key exists), delete by prefix."""

    async def get(self) -> None:
        async def list_() -> None:
            prefix = self.get_query_argument("prefix", "") or ""
            after = self.get_query_argument("after", "") or ""
            limit = self.int_arg("limit", 100, 1, MAX_LIST_LIMIT)
            plans = await self.service.plans(prefix, after, limit + 1)
            more = len(plans) > limit
            plans = plans[:limit]
            self.send(
                200,
                {
                    "plans": [v2_schema.plan_to_v2(p) for p in plans],
                    "next_after": plans[-1].key if more and plans else None,
                },
            )

        await self.run(list_)

    async def post(self) -> None:
        async def create() -> None:
            plan = self.build(self.json_body(), None)
            # Held across the check and the commit: two racing creates can't both win.
            async with self.ctx.create_lock:
                if await self.exists(plan.key):
                    raise Problem(409, f"a plan with key {plan.key!r} exists", "conflict")
                created = await self.service.create([plan])
            self.set_header("Location", f"/v2/plans/{tornado.escape.url_escape(plan.key, False)}")
            self.send(201, v2_schema.plan_to_v2(created[0]))

        await self.run(create)

    async def delete(self) -> None:
        async def delete_prefix() -> None:
            prefix = self.get_query_argument("prefix", "") or ""
            if not prefix:
                raise Problem(400, "prefix is required (deleting every plan is not offered)")
            service = self.service
            removed = 0
            after = ""
            while True:
                keys = await service.key_page(prefix, after, DELETE_CHUNK)
                if not keys:
                    break
                after = keys[-1]
                # Concurrent removals share group commits.
                results = await asyncio.gather(
                    *(service.remove(k) for k in keys), return_exceptions=True
                )
                for r in results:
                    if isinstance(r, errors.PlanNotFound):
                        continue  # removed meanwhile
                    if isinstance(r, BaseException):
                        raise r
                    removed += 1
            self.send(200, {"removed": removed, "prefix": prefix})

        await self.run(delete_prefix)


@tornado.web.stream_request_body
class PlanHandler(V2Handler):
    """``/v2/plans/{key}``: read, upsert, delete one plan."""

    async def get(self, key: str) -> None:
        async def get() -> None:
            self.send(200, v2_schema.plan_to_v2(await self.service.get(key)))

        await self.run(get)

    async def put(self, key: str) -> None:
        async def upsert() -> None:
            plan = self.build(self.json_body(), key)
            existed = await self.exists(key)
            created = await self.service.create([plan])
            self.send(200 if existed else 201, v2_schema.plan_to_v2(created[0]))

        await self.run(upsert)

    async def delete(self, key: str) -> None:
        async def delete() -> None:
            self.send(200, v2_schema.plan_to_v2(await self.service.remove(key)))

        await self.run(delete)


class PlanOpHandler(V2Handler):
    """``POST /v2/plans/{key}/pause|resume|fire``."""

    async def post(self, key: str, op: str) -> None:
        async def change() -> None:
            service = self.service
            if op == "fire":
                started = service.now_ms()
                status = await service.fire(key)
                self.send(
                    200,
                    {
                        "key": key,
                        "result": "ok" if status == 1 else "failed",
                        "started": v2_schema.format_instant(started),
                        "started_ms": started,
                    },
                )
                return
            plan = await (service.pause(key) if op == "pause" else service.resume(key))
            self.send(200, v2_schema.plan_to_v2(plan))

        await self.run(change)


class RunsHandler(V2Handler):
    """``GET /v2/plans/{key}/runs?limit=``: newest first; history outlives the plan."""

    async def get(self, key: str) -> None:
        async def runs() -> None:
            limit = self.int_arg("limit", 50, 1, MAX_RUNS)
            rows = await self.service.runs(key, limit)
            self.send(200, {"key": key, "runs": [v2_schema.run_to_v2(r) for r in rows]})

        await self.run(runs)


class PreviewHandler(V2Handler):
    """``GET /v2/plans/{key}/preview?n=5``: the next n firings (count and end honoured)."""

    async def get(self, key: str) -> None:
        async def preview() -> None:
            n = self.int_arg("n", 5, 1, MAX_PREVIEW)
            plan = await self.service.get(key)
            fires = plan.upcoming(n, self.service.tz)
            self.send(
                200,
                {
                    "key": key,
                    "paused": plan.paused,
                    "fires": [v2_schema.format_instant(t) for t in fires],
                    "fires_ms": fires,
                },
            )

        await self.run(preview)


class UpcomingHandler(V2Handler):
    """``GET /v2/upcoming?from=&to=&step=``: plans whose next firing falls in each step."""

    async def get(self) -> None:
        async def upcoming() -> None:
            service = self.service
            now = service.now_ms()
            start = self.instant_arg("from", now)
            end = self.instant_arg("to", start + 3_600_000)
            step = self.int_arg("step", 60_000, 1000, 366 * 86_400_000)
            if end <= start:
                raise Problem(400, "to must be after from")
            steps = -(-(end - start) // step)
            if steps > MAX_UPCOMING_STEPS:
                raise Problem(400, f"more than {MAX_UPCOMING_STEPS} steps: widen step")
            buckets = []
            capped = False
            for i in range(steps):
                lo = start + i * step
                hi = min(lo + step, end)
                n = await service.count_firing_between(lo, hi, UPCOMING_COUNT_LIMIT)
                capped = capped or n >= UPCOMING_COUNT_LIMIT
                buckets.append({"start": v2_schema.format_instant(lo), "start_ms": lo, "count": n})
            self.send(
                200,
                {
                    "from": v2_schema.format_instant(start),
                    "from_ms": start,
                    "to": v2_schema.format_instant(end),
                    "to_ms": end,
                    "step_ms": step,
                    "buckets": buckets,
                    "capped": capped,
                },
            )

        await self.run(upcoming)


class OpenAPIHandler(V2Handler):
    async def get(self) -> None:
        self.send(200, openapi.document_bytes())


class MetricsHandler(V2Handler):
    """``GET /metrics`` in Prometheus' text format."""

    async def get(self) -> None:
        async def metrics() -> None:
            await self.ctx.metrics.refresh(self.service)
            self.send(200, self.ctx.metrics.render(), METRICS_CONTENT_TYPE)

        await self.run(metrics)

    def on_finish(self) -> None:
        pass  # scrapes are not API requests


class V2NotFound(V2Handler):
    def prepare(self) -> None:
        self.problem(Problem(404, f"no such endpoint: {self.request.path}"))
