"""forsun's HTTP API v1 (FORSUN_COMPAT §2).

Every answer is HTTP 200 with ``{"errcode", "errmsg", "data"}``; a body
that can't be parsed, or an unknown Content-Type, is HTTP 400 (with the same
JSON shape, so clients still get a message). Bodies are streamed and cut off
at the configured size limit (errcode 1009, HTTP 413).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import tornado.httpserver
import tornado.iostream
import tornado.web

from forsun_box import errors
from forsun_box.api import access, crontab
from forsun_box.api.service import ForsunService
from forsun_box.plan import Plan, to_forsun

log = logging.getLogger("forsun_box.http")


class BadRequest(Exception):
    """The request can't be understood at all: HTTP 400."""

    def __init__(self, message: str, status: int = 400, code: int = errors.INVALID_VALUE) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class BaseHandler(tornado.web.RequestHandler):
    service: ForsunService
    needs_token = True  # with api_token set (see _token_accepted)

    def initialize(  # type: ignore[override]
        self, service: ForsunService, max_body_bytes: int, api_token: str = "",
        token_scope: str = "remote",
    ) -> None:
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.api_token = api_token
        self.token_scope = token_scope
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False

    def prepare(self) -> None:
        stats = self.service.stats
        if stats is not None:
            stats.incr("http_requesting_count")
        if self.api_token and self.needs_token and not self._token_accepted():
            self.reply(None, access.UNAUTHORIZED, "a valid API token is required", status=401)
            return
        declared = self.request.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            # Refuse before reading a body we would throw away.
            self._too_large = True
            self.reply(
                None,
                errors.TOO_LARGE,
                f"request body larger than {self.max_body_bytes} bytes",
                status=413,
            )

    def _token_accepted(self) -> bool:
        # forsun's own clients send no token: loopback peers are trusted unless "always"
        if self.token_scope != "always" and access.is_loopback(self.request.remote_ip or ""):
            return True
        return access.token_ok(access.token_given(self.request.headers), self.api_token)

    def on_finish(self) -> None:
        stats = self.service.stats
        if stats is not None:
            stats.incr("http_requesting_count", -1)
            stats.incr("http_requested_count")

    def data_received(self, chunk: bytes) -> None:
        if self._too_large or self._finished:
            return
        self._size += len(chunk)
        if self._size > self.max_body_bytes:
            self._too_large = True
            self._chunks = []
        else:
            self._chunks.append(chunk)

    def body(self) -> bytes:
        if self._too_large:
            raise BadRequest(
                f"request body larger than {self.max_body_bytes} bytes",
                status=413,
                code=errors.TOO_LARGE,
            )
        return b"".join(self._chunks)

    def reply(
        self, data: Any = None, errcode: int = 0, errmsg: str = "", status: int = 200
    ) -> None:
        if errcode and self.service.stats is not None:
            self.service.stats.incr("http_requested_error_count")
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(orjson.dumps({"errcode": errcode, "errmsg": errmsg, "data": data}))

    async def run(self, fn: Any, *args: Any) -> None:
        try:
            data = await fn(*args)
        except BadRequest as e:
            self.reply(None, e.code, e.message, status=e.status)
        except errors.ForsunBoxError as e:
            self.reply(None, e.code, e.message)
        except Exception as e:
            log.exception("unexpected error in %s %s", self.request.method, self.request.path)
            self.reply(None, errors.UNKNOWN, f"unknown error: {e.__class__.__name__}")
        else:
            self.reply(data)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Tornado's own errors (e.g. 405) keep the v1 JSON shape.
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(orjson.dumps({"errcode": errors.UNKNOWN, "errmsg": self._reason, "data": None}))


def _encode_created(plans: list[Plan]) -> orjson.Fragment:
    """The answer to a many-plan create, encoded while the commit runs (see
    :meth:`~forsun_box.scheduler.Scheduler.create`)."""
    return orjson.Fragment(orjson.dumps([to_forsun(p) for p in plans]))


class PingHandler(BaseHandler):
    needs_token = False  # health probes need no secret, and it tells nothing
    async def get(self) -> None:
        async def ping() -> dict[str, Any]:
            return {}

        await self.run(ping)


@tornado.web.stream_request_body
class PlanHandler(BaseHandler):
    async def get(self) -> None:
        async def get() -> dict[str, Any]:
            return to_forsun(await self.service.get(self.get_query_argument("key", None)))

        await self.run(get)

    async def delete(self) -> None:
        async def delete() -> dict[str, Any]:
            return to_forsun(await self.service.remove(self.get_query_argument("key", None)))

        await self.run(delete)

    async def put(self) -> None:
        await self.run(self._create, True)

    async def post(self) -> None:
        await self.run(self._create, False)

    async def _create(self, is_time_out: bool) -> Any:
        body = self.body()
        ctype = self.request.headers.get("Content-Type", "application/json")
        mime = ctype.split(";", 1)[0].strip().lower()
        service = self.service
        # curl -d sends a form type by default; forsun's clients rely on JSON being assumed.
        if mime in ("application/json", "text/json", "", "application/x-www-form-urlencoded"):
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError as e:
                raise BadRequest(f"body is not valid JSON: {e}") from None
            if isinstance(parsed, list):
                plans = []
                known = service.known_actions()
                now_ms = service.scheduler.clock.now_ms()
                for i, obj in enumerate(parsed):
                    try:
                        # forsun lets each element of an array pick its mode
                        mode = obj.get("method") if isinstance(obj, dict) else None
                        timeout = _ARRAY_MODES.get(mode, is_time_out) if mode else is_time_out
                        plans.append(service.from_v1(obj, timeout, known, now_ms))
                    except errors.ForsunBoxError as e:
                        raise errors.ForsunBoxError(f"plan [{i}]: {e.message}", e.code) from None
                return await service.create_prepared(plans, _encode_created)
            if not isinstance(parsed, dict):
                raise BadRequest("body must be a JSON object or an array of objects")
            created = await service.create([service.from_v1(parsed, is_time_out)])
            return to_forsun(created[0])
        if mime == "application/crontab":
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest("crontab body is not UTF-8") from None
            lines = crontab.parse_body(text)
            if not lines:
                raise errors.MissingArgument("plan")
            known = service.known_actions()
            now_ms = service.scheduler.clock.now_ms()
            plans = [service.from_line(line, known, now_ms) for line in lines]
            return await service.create_prepared(plans, _encode_created)
        raise BadRequest(f"unsupported Content-Type: {ctype}")


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
            return to_forsun(await op(key))

        await self.run(change)


_ARRAY_MODES = {"create": False, "createTimeout": True}


class TimeHandler(BaseHandler):
    async def get(self) -> None:
        async def at() -> dict[str, Any]:
            raw = self.get_query_argument("timestamp", "0") or "0"
            try:
                ts = int(raw)
            except ValueError:
                raise errors.InvalidValue(f"timestamp must be an integer, got {raw!r}") from None
            now = self.service.scheduler.clock.now_ms() // 1000
            if ts <= 0:
                ts = now
            plans = await self.service.at_second(ts)
            return {"current_timestamp": now, "plans": [to_forsun(p) for p in plans]}

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
        self.finish(
            orjson.dumps(
                {
                    "errcode": errors.UNKNOWN,
                    "errmsg": f"no such endpoint: {self.request.path}",
                    "data": None,
                }
            )
        )


def routes(
    service: ForsunService, max_body_bytes: int, api_token: str = "", token_scope: str = "remote"
) -> list[Any]:
    """The v1 routes; with ``api_token`` set, see :mod:`forsun_box.api.access` for who needs it."""
    kw = {"service": service, "max_body_bytes": max_body_bytes, "api_token": api_token,
          "token_scope": token_scope}
    return [
        (r"/v1/ping", PingHandler, kw),
        (r"/v1/plan", PlanHandler, kw),
        (r"/v1/plan/pause", PauseHandler, kw),
        (r"/v1/plan/resume", PauseHandler, {**kw, "resume": True}),
        (r"/v1/time", TimeHandler, kw),
        (r"/v1/keys", KeysHandler, kw),
        (r"/v1/info", InfoHandler, kw),
    ]


class CountingHTTPServer(tornado.httpserver.HTTPServer):
    """HTTPServer that keeps forsun's http_connecting/connected counters."""

    stats: Any = None
    max_connections = 0  # 0: no limit
    open_connections = 0
    refused_connections = 0

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple[Any, ...]) -> None:
        if self.max_connections and self.open_connections >= self.max_connections:
            self.refused_connections += 1
            log.warning("HTTP connection from %s refused: %d connections open (the limit)",
                        address[0] if address else "?", self.open_connections)
            stream.close()
            return
        self.open_connections += 1
        stats = self.stats
        if stats is not None:
            stats.incr("http_connecting_count")
            stats.incr("http_connected_count")
        super().handle_stream(stream, address)

    def on_close(self, server_conn: Any) -> None:
        self.open_connections -= 1
        if self.stats is not None:
            self.stats.incr("http_connecting_count", -1)
        super().on_close(server_conn)
