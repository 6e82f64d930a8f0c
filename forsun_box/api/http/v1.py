"""forsun's HTTP API v1 (FORSUN_COMPAT §2).

Every answer is HTTP 200 with ``{"errcode", "errmsg", "data"}``; a body
that can't be parsed, or an unknown Content-Type, is HTTP 400 (with the same
JSON shape, so clients still get a message). Creates (``PUT``/``POST
/v1/plan``) are served by :class:`CreateDelegate` straight from tornado's
HTTP connection, their bodies streamed and cut off at the configured size
limit (errcode 1009, HTTP 413); the other endpoints are RequestHandlers.
The server and its router are :mod:`forsun_box.api.http.server`.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from http.client import responses
from typing import Any, Protocol

import orjson
import tornado.web
from tornado.httputil import HTTPHeaders, HTTPMessageDelegate, HTTPServerRequest, ResponseStartLine

from forsun_box import errors
from forsun_box.api import security
from forsun_box.api.formats.bodies import BadRequest
from forsun_box.api.service import ForsunService
from forsun_box.plan import to_forsun

log = logging.getLogger("forsun_box.http")
_access_log = logging.getLogger("tornado.access")


JSON_TYPE = "application/json; charset=utf-8"


def envelope(data: Any = None, errcode: int = 0, errmsg: str = "") -> bytes:
    """forsun's answer: ``{"errcode", "errmsg", "data"}``; an error's data is ``{}``, as forsun's."""
    if data is None:
        data = {}
    return orjson.dumps({"errcode": errcode, "errmsg": errmsg, "data": data})


class BaseHandler(tornado.web.RequestHandler):
    service: ForsunService
    needs_token = True  # with api_token set (see security.authorized)

    def initialize(  # type: ignore[override]
        self,
        service: ForsunService,
        max_body_bytes: int,
        api_token: str = "",
        token_scope: str = "remote",
    ) -> None:
        self.service = service  # (max_body_bytes: only creates take a body, CreateDelegate)
        self.api_token = api_token
        self.token_scope = token_scope

    def prepare(self) -> None:
        stats = self.service.stats
        if stats is not None:
            stats.incr("http_requesting_count")
        request = self.request
        if self.needs_token and not security.authorized(
            request.remote_ip or "", request.headers, self.api_token, self.token_scope
        ):
            self.reply(None, security.UNAUTHORIZED, security.UNAUTHORIZED_MESSAGE, status=401)

    def on_finish(self) -> None:
        stats = self.service.stats
        if stats is not None:
            stats.incr("http_requesting_count", -1)
            stats.incr("http_requested_count")

    def reply(
        self, data: Any = None, errcode: int = 0, errmsg: str = "", status: int = 200
    ) -> None:
        if errcode and self.service.stats is not None:
            self.service.stats.incr("http_requested_error_count")
        self.set_status(status)
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(envelope(data, errcode, errmsg))

    async def run(self, fn: Any, *args: Any) -> None:
        status, errcode, errmsg, data = await answer(fn, *args)
        self.reply(data, errcode, errmsg, status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Tornado's own errors (e.g. 405) keep the v1 JSON shape.
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(envelope(None, errors.UNKNOWN, self._reason))


async def answer(fn: Any, *args: Any) -> tuple[int, int, str, Any]:
    """``(HTTP status, errcode, errmsg, data)`` of ``await fn(*args)``."""
    try:
        data = await fn(*args)
    except BadRequest as e:
        return e.status, e.code, e.message, None
    except errors.ForsunBoxError as e:
        return 200, e.code, e.message, None
    except Exception as e:
        log.exception("unexpected error in %s", getattr(fn, "__qualname__", fn))
        return 200, errors.UNKNOWN, f"unknown error: {e.__class__.__name__}", None
    return 200, 0, "", data


class PingHandler(BaseHandler):
    needs_token = False  # health probes need no secret, and it tells nothing

    async def get(self) -> None:
        async def ping() -> dict[str, Any]:
            return {}

        await self.run(ping)


class PlanHandler(BaseHandler):
    """GET and DELETE; PUT and POST (creates) go to :class:`CreateDelegate`."""

    async def get(self) -> None:
        async def get() -> dict[str, Any]:
            return to_forsun(
                await self.service.get(self.get_query_argument("key", None)),
                self.service.tz,
            )

        await self.run(get)

    async def delete(self) -> None:
        async def delete() -> dict[str, Any]:
            return to_forsun(
                await self.service.remove(self.get_query_argument("key", None)),
                self.service.tz,
            )

        await self.run(delete)


async def create(service: ForsunService, body: bytes, ctype: str, is_time_out: bool) -> Any:
    """``PUT`` (``is_time_out``) or ``POST /v1/plan`` with ``body`` of type ``ctype``."""
    return orjson.Fragment(await service.create_from_body(body, ctype, is_time_out))


class CreateRoute(Protocol):
    """What a create needs of the server that routed it (the server's router)."""

    service: ForsunService
    max_body_bytes: int
    api_token: str
    token_scope: str
    tasks: set[asyncio.Task[Any]]  # creates under way (kept referenced)


class CreateDelegate(HTTPMessageDelegate):
    """``PUT`` and ``POST /v1/plan`` served without a RequestHandler.

    A create is forsun's hot path, and tornado's RequestHandler machinery
    (handler object, default headers, output transforms, flush) costs per
    request about a third of what the create itself costs. This delegate
    reads the body (cut off at the size limit: errcode 1009, HTTP 413),
    calls :func:`create` and writes the same answer, counters included.
    """

    __slots__ = ("_answered", "_chunks", "_request", "_router", "_size", "_too_large")

    def __init__(self, router: CreateRoute, request: HTTPServerRequest) -> None:
        self._router = router
        self._request = request
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._answered = False

    def headers_received(self, start_line: Any, headers: HTTPHeaders) -> None:
        router = self._router
        if router.service.stats is not None:
            router.service.stats.incr("http_requesting_count")
        request = self._request
        if not security.authorized(
            request.remote_ip or "", headers, router.api_token, router.token_scope
        ):
            self._answer(401, security.UNAUTHORIZED, security.UNAUTHORIZED_MESSAGE)
            return
        declared = headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > router.max_body_bytes:
            self._too_large = True  # refused before reading a body we would throw away
            self._answer(
                413, errors.TOO_LARGE, f"request body larger than {router.max_body_bytes} bytes"
            )

    def data_received(self, chunk: bytes) -> None:
        if self._too_large or self._answered:
            return
        self._size += len(chunk)
        if self._size > self._router.max_body_bytes:
            self._too_large = True
            self._chunks = []
        else:
            self._chunks.append(chunk)

    def finish(self) -> None:
        if self._answered:
            return
        if self._too_large:
            self._answer(
                413,
                errors.TOO_LARGE,
                f"request body larger than {self._router.max_body_bytes} bytes",
            )
            return
        request = self._request
        tasks = self._router.tasks
        task = asyncio.ensure_future(
            self._create(
                b"".join(self._chunks),
                request.headers.get("Content-Type", "application/json"),
                request.method == "PUT",
            )
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _create(self, body: bytes, content_type: str, put: bool) -> None:
        # answered in the task's own last step, not a turn of the loop later
        status, errcode, errmsg, data = await answer(
            create, self._router.service, body, content_type, put
        )
        self._answer(status, errcode, errmsg, data)

    def on_connection_close(self) -> None:
        if not self._answered:  # the client left before its answer
            self._answered = True
            self._count_finished()

    def _answer(self, status: int, errcode: int, errmsg: str, data: Any = None) -> None:
        if self._answered:
            return
        self._answered = True
        stats = self._router.service.stats
        if errcode and stats is not None:
            stats.incr("http_requested_error_count")
        self._count_finished()
        conn = self._request.connection
        if conn is None:
            return
        body = envelope(data, errcode, errmsg)
        conn.write_headers(
            ResponseStartLine("HTTP/1.1", status, responses.get(status, "Unknown")),
            HTTPHeaders(
                {"Content-Type": JSON_TYPE, "Content-Length": str(len(body)), "Date": _http_date()}
            ),
            body,
        )
        conn.finish()
        if _access_log.isEnabledFor(logging.INFO):  # as tornado logs its handlers' requests
            request = self._request
            level = logging.INFO if status < 400 else logging.WARNING
            _access_log.log(
                level,
                "%d %s %s (%s) %.2fms",
                status,
                request.method,
                request.uri,
                request.remote_ip,
                1000.0 * request.request_time(),
            )

    def _count_finished(self) -> None:
        stats = self._router.service.stats
        if stats is not None:
            stats.incr("http_requesting_count", -1)
            stats.incr("http_requested_count")


_date = (0, "")


def _http_date() -> str:
    """The Date header, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True))
    return _date[1]


class PauseHandler(BaseHandler):
    """``POST /v1/plan/pause?key=K`` and ``/v1/plan/resume?key=K`` (forsun-box additions)."""

    def initialize(  # type: ignore[override]
        self, service: ForsunService, max_body_bytes: int, resume: bool = False, **kw: Any
    ) -> None:
        super().initialize(service, max_body_bytes, **kw)
        self.resume = resume

    async def post(self) -> None:
        async def change() -> dict[str, Any]:
            key = self.get_query_argument("key", None)
            op = self.service.resume if self.resume else self.service.pause
            return to_forsun(await op(key), self.service.tz)

        await self.run(change)


class TimeHandler(BaseHandler):
    async def get(self) -> None:
        async def at() -> dict[str, Any]:
            raw = self.get_query_argument("timestamp", "0") or "0"
            try:
                ts = int(raw)
            except ValueError:
                # forsun's code for a timestamp it can't read (its "argument required")
                raise errors.ForsunBoxError(
                    f"timestamp must be an integer, got {raw!r}", code=errors.MISSING_ARGUMENT
                ) from None
            now = self.service.now_ms() // 1000
            if ts == 0:
                ts = now
            plans = await self.service.at_second(ts)
            return {
                "plans": [to_forsun(p, self.service.tz) for p in plans],
                "current_timestamp": now,
            }  # forsun's order

        await self.run(at)


class KeysHandler(BaseHandler):
    async def get(self) -> None:
        async def keys() -> list[str]:
            return await self.service.keys(self.get_query_argument("prefix", "") or "")

        await self.run(keys)


class InfoHandler(BaseHandler):
    async def get(self) -> None:
        await self.run(self.service.info)


class NotFoundHandler(BaseHandler):
    async def prepare(self) -> None:  # type: ignore[override]
        self.set_status(404)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(envelope({}, errors.UNKNOWN, f"no such endpoint: {self.request.path}"))


def routes(
    service: ForsunService, max_body_bytes: int, api_token: str = "", token_scope: str = "remote"
) -> list[Any]:
    """The v1 routes; with ``api_token`` set, see :mod:`forsun_box.api.security` for who needs it."""
    kw = {
        "service": service,
        "max_body_bytes": max_body_bytes,
        "api_token": api_token,
        "token_scope": token_scope,
    }
    return [
        (r"/v1/ping", PingHandler, kw),
        (r"/v1/plan", PlanHandler, kw),
        (r"/v1/plan/pause", PauseHandler, kw),
        (r"/v1/plan/resume", PauseHandler, {**kw, "resume": True}),
        (r"/v1/time", TimeHandler, kw),
        (r"/v1/keys", KeysHandler, kw),
        (r"/v1/info", InfoHandler, kw),
    ]
