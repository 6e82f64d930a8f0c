"""The firing sink: a tornado process that records when each plan's HTTP action arrives.

Run as a script: ``python sink.py --port N``. Any request to ``/hit?key=K`` is recorded as
(key, arrival ms); ``GET /count`` answers the number recorded, ``GET /dump`` all of them as
JSON ``[[key, arrival_ms], ...]``. It stops by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import tornado.httpserver
import tornado.netutil
import tornado.web

ARRIVALS: list[tuple[str, int]] = []


class HitHandler(tornado.web.RequestHandler):
    """Records one arrival; accepts every method an http action may use."""

    def _hit(self) -> None:
        # stamp first: the time we want is when the request reached us, not when we answered
        now_ms = time.time_ns() // 1_000_000
        ARRIVALS.append((self.get_query_argument("key", ""), now_ms))
        self.finish("ok")

    get = post = put = delete = head = patch = _hit  # type: ignore[assignment]


class CountHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish({"count": len(ARRIVALS)})


class DumpHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(ARRIVALS))


async def serve(port: int, max_seconds: float) -> None:
    app = tornado.web.Application(
        [(r"/hit", HitHandler), (r"/count", CountHandler), (r"/dump", DumpHandler)],
        log_function=lambda handler: None,  # no access log: it would cost time per arrival
    )
    # a deep backlog: a burst of due plans opens many connections at once
    sockets = tornado.netutil.bind_sockets(port, address="127.0.0.1", backlog=4096)
    server = tornado.httpserver.HTTPServer(app, idle_connection_timeout=60)
    server.add_sockets(sockets)
    await asyncio.sleep(max_seconds)
    server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    try:
        import uvloop  # a cheaper loop leaves more of the 2 cores to the server under test
    except ImportError:
        asyncio.run(serve(args.port, args.max_seconds))
    else:
        uvloop.run(serve(args.port, args.max_seconds))


if __name__ == "__main__":
    main()
