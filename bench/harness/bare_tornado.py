"""The bare-handler baseline for the create rate: tornado, uvloop, nothing else.

``PUT /v1/plan`` parses the JSON body with the same codec forsun-box uses and answers
an errcode-0 envelope echoing the plan, as forsun-box does, without validating, storing
or scheduling anything; ``GET /ping`` answers for the readiness check. What forsun-box
does on top (validation, the durable commit, the window) is the difference between the
two rates.

    python bench/harness/bare_tornado.py --port N
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
import tornado.httpserver
import tornado.netutil
import tornado.web


class PlanHandler(tornado.web.RequestHandler):
    def put(self) -> None:
        plan = orjson.loads(self.request.body)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"errcode": 0, "errmsg": "", "data": plan}))

    def get(self) -> None:
        self.finish(b'{"errcode":0,"errmsg":"","data":""}')


async def serve(port: int) -> None:
    app = tornado.web.Application(
        [(r"/v1/plan", PlanHandler), (r"/ping", PlanHandler)], log_function=lambda h: None
    )
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(tornado.netutil.bind_sockets(port, address="127.0.0.1", backlog=1024))
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    import uvloop

    uvloop.run(serve(ap.parse_args().port))


if __name__ == "__main__":
    main()
