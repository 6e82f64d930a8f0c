"""The HTTP server: its router and the connection counters and cap.

One tornado server carries HTTP v1, v2, ``/metrics`` and the console.
:class:`Router` sends v1 creates (``PUT``/``POST /v1/plan``) straight to
:class:`~forsun_box.api.http.v1.CreateDelegate`, the hot path, and every
other request to the tornado application.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import tornado.httpserver
import tornado.iostream
import tornado.routing
import tornado.web
from tornado.httputil import HTTPMessageDelegate, HTTPServerRequest

from forsun_box.api.http.v1 import CreateDelegate
from forsun_box.api.service import ForsunService
from forsun_box.stats import Stats

log = logging.getLogger("forsun_box.http")


class Router(tornado.routing.Router):
    """The HTTP server's entry: v1 creates go to :class:`CreateDelegate`, the
    rest to ``app`` (its handlers, the v2 API, the console)."""

    def __init__(
        self,
        app: tornado.web.Application,
        service: ForsunService,
        max_body_bytes: int,
        api_token: str = "",
        token_scope: str = "remote",
    ) -> None:
        self.application = app
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.api_token = api_token
        self.token_scope = token_scope
        self.tasks: set[asyncio.Task[Any]] = set()  # creates under way (kept referenced)

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> HTTPMessageDelegate:
        if request.path == "/v1/plan" and request.method in ("PUT", "POST"):
            return CreateDelegate(self, request)
        return self.application.find_handler(request, **kwargs)


class CountingHTTPServer(tornado.httpserver.HTTPServer):
    """HTTPServer that keeps forsun's http_connecting/connected counters."""

    stats: Stats | None = None
    max_connections = 0  # 0: no limit
    open_connections = 0
    refused_connections = 0

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple[Any, ...]) -> None:
        if self.max_connections and self.open_connections >= self.max_connections:
            self.refused_connections += 1
            log.warning(
                "HTTP connection from %s refused: %d connections open (the limit)",
                address[0] if address else "?",
                self.open_connections,
            )
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
