"""``POST /v2/plans:batch``: NDJSON plan definitions, streamed, answered per line.

Each non-blank line is one v2 plan definition (the key in the body) and is
upserted, like ``PUT /v2/plans/{key}``. The body is read as it arrives, its
lines built (parsed and validated: in the create worker of
:mod:`~forsun_box.api.formats.bodies` when they are many) and committed in chunks,
so a request of 100,000 lines never sits whole in memory. The answer
(``application/x-ndjson``) has one line per non-blank input line, in order:
``{"line": n, "key": k, "status": 200}`` or ``{"line": n, "key": k|null,
"status": 4xx|5xx, "problem": {...}}``. A line
with a key that an earlier line of the same request also names is committed
after it, so the last definition wins. Lines past the per-request plan
limit get status 413 and are not stored.
"""

from __future__ import annotations

import asyncio

import orjson
import tornado.web

from forsun_box import errors
from forsun_box.api.formats import bodies
from forsun_box.api.http.v2 import BATCH_CHUNK, Problem, V2Handler
from forsun_box.plan import Plan

NDJSON = "application/x-ndjson"
#: chunks handed to the engine and not yet committed, per request
MAX_COMMITS_IN_FLIGHT = 2
#: lines built at a time (small enough for building the next ones to overlap taking these on)
BUILD_CHUNK = 1000
#: chunks of lines being built (in the create worker) and not yet taken on, per request
MAX_BUILDS_IN_FLIGHT = 4
#: bytes one line may average before the request is refused
BYTES_PER_LINE = 4096


@tornado.web.stream_request_body
class BatchHandler(V2Handler):
    """Streams NDJSON plans into the engine; see the module docstring."""

    def prepare(self) -> None:
        self.max_lines = self.service.max_plans_per_request
        self.body_limit = max(self.ctx.max_body_bytes, self.max_lines * BYTES_PER_LINE)
        super().prepare()
        if not self._finished:
            self.request.connection.set_max_body_size(self.body_limit)  # type: ignore[union-attr]
        self._buf = b""
        self._skipping = False  # inside a line longer than the per-line limit
        self._line_no = 0
        self._seen = 0
        self._raw: list[tuple[int, bytes]] = []  # lines read, not yet built
        self._builds: list[asyncio.Future[list[bodies.LineResult]]] = []
        self._pending: list[tuple[int, Plan]] = []
        self._pending_keys: set[str] = set()
        self._results: list[tuple[int, bytes]] = []
        self._known = self.service.known_actions()
        self._commits: list[asyncio.Future[None]] = []

    async def data_received(self, chunk: bytes) -> None:  # type: ignore[override]
        if self._finished:
            return
        buf = self._buf + chunk
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            await self._line(buf[start:nl])
            start = nl + 1
        self._buf = buf[start:]
        if len(self._buf) > self.ctx.max_body_bytes:
            self._skipping = True
            self._buf = b""

    async def _line(self, raw: bytes) -> None:
        self._line_no += 1
        if self._skipping:
            self._skipping = False
            self._fail(
                None,
                Problem(
                    413,
                    f"line longer than {self.ctx.max_body_bytes} bytes",
                    "too-large",
                    errors.TOO_LARGE,
                ),
            )
            return
        raw = raw.strip()
        if not raw:
            return
        self._seen += 1
        if self._seen > self.max_lines:
            self._fail(
                None,
                Problem(
                    413,
                    f"more than {self.max_lines} plans in one request",
                    "too-large",
                    errors.TOO_LARGE,
                ),
            )
            return
        self._raw.append((self._line_no, raw))
        if len(self._raw) >= BUILD_CHUNK:
            await self._build()

    async def _build(self, drain: bool = False) -> None:
        """Start building the plans of the lines read so far (in the create worker when
        they are many), and take the built ones on in order: reading and building the
        next lines overlaps handing these to the engine. At most
        MAX_BUILDS_IN_FLIGHT are outstanding; ``drain`` takes them all."""
        if self._raw:
            raw, self._raw = self._raw, []
            service = self.service
            self._builds.append(
                asyncio.ensure_future(
                    self.service.worker.build_lines(
                        bodies.Lines(
                            raw,
                            service.now_ms(),
                            service.tz,
                            self.service.limits,
                            self._known,
                        )
                    )
                )
            )
        while self._builds and (drain or len(self._builds) > MAX_BUILDS_IN_FLIGHT):
            await self._take(await self._builds.pop(0))

    async def _take(self, built: list[bodies.LineResult]) -> None:
        """Built lines: failures answered, plans handed on in chunks of BATCH_CHUNK."""
        for result in built:
            if len(result) != 2:
                line_no, key, code, message = result  # type: ignore[misc]
                self._fail(
                    key,
                    Problem(400, message)
                    if code == 0
                    else Problem.from_error(errors.ForsunBoxError(message, code)),
                    line_no,
                )
                continue
            line_no, plan = result  # type: ignore[misc]
            if plan.key in self._pending_keys or len(self._pending) >= BATCH_CHUNK:
                await self._flush()
            self._pending.append((line_no, plan))
            self._pending_keys.add(plan.key)

    def _fail(self, key: str | None, p: Problem, line_no: int = 0) -> None:
        line_no = line_no or self._line_no
        self._results.append(
            (
                line_no,
                orjson.dumps(
                    {
                        "line": line_no,
                        "key": key,
                        "status": p.status,
                        "problem": p.body(self.request.path),
                    }
                ),
            )
        )

    async def _flush(self) -> None:
        """Hand the pending chunk to the engine without waiting for its commit.

        Parsing the next chunk overlaps the commit of this one (big commits run
        in the store's thread); at most MAX_COMMITS_IN_FLIGHT are outstanding,
        and the engine commits them in the order they were handed over.
        """
        pending, self._pending = self._pending, []
        self._pending_keys = set()
        if not pending:
            return
        self._commits.append(asyncio.ensure_future(self._commit(pending)))
        while len(self._commits) > MAX_COMMITS_IN_FLIGHT:
            await self._commits.pop(0)

    async def _drain(self) -> None:
        while self._commits:
            await self._commits.pop(0)

    async def _commit(self, pending: list[tuple[int, Plan]]) -> None:
        try:
            await self.service.upsert([p for _, p in pending])
        except errors.ForsunBoxError as e:
            problem = Problem.from_error(e)
            for line_no, plan in pending:
                self._results.append(
                    (
                        line_no,
                        orjson.dumps(
                            {
                                "line": line_no,
                                "key": plan.key,
                                "status": problem.status,
                                "problem": problem.body(self.request.path),
                            }
                        ),
                    )
                )
            return
        for line_no, plan in pending:
            self._results.append(
                (line_no, orjson.dumps({"line": line_no, "key": plan.key, "status": 200}))
            )

    async def post(self) -> None:
        async def finish() -> None:
            if self._buf.strip() or self._skipping:
                await self._line(self._buf)
                self._buf = b""
            await self._build(drain=True)
            await self._flush()
            await self._drain()
            self._results.sort(key=lambda r: r[0])
            self.send(200, b"".join(r + b"\n" for _, r in self._results), NDJSON)

        await self.run(finish)
