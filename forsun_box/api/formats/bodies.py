"""Create bodies (HTTP v1 JSON and crontab, v2 NDJSON lines) made into plans, in the event
loop or a worker.

A bulk create spends most of its time on Python work that needs nothing of
the running service: parsing the body, validating every plan, encoding the
answer. :func:`build` does that work from a :class:`Body` (the request and
the few facts of the service it needs) and nothing else, so it can run in
another process; :func:`build_lines` does the same for the lines of a v2
batch. :class:`Worker` keeps one such process: big bodies are
built there while the event loop goes on firing and answering, and only
the finished plans come back (each as a tuple of its fields, far cheaper to
carry across than the objects), with the answer already encoded.

Only the engine's own bookkeeping (versions, the in-flight set, the window)
and the commit stay in the service's process, so a plan created through the
worker is the same as one created in the loop: same validation, same
answer, same errors.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import dataclasses
import gc
import itertools
import logging
import multiprocessing
import operator
import os
import signal
import sys
from collections.abc import Mapping
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from forsun_box import errors
from forsun_box.api.formats import crontab
from forsun_box.api.formats.v2_schema import build_v2_plan
from forsun_box.plan import Limits, Plan, build_forsun_plan, to_forsun

log = logging.getLogger("forsun_box.http")

# Bodies at least this big go to the worker (about 150 plans); smaller ones
# take less time to build than the round trip to the other process.
WORKER_MIN_BYTES = 32 * 1024
# The worker's young-generation collection threshold (CPython's default: 700).
WORKER_GC_YOUNG = 50_000
JSON_TYPES = ("application/json", "text/json", "", "application/x-www-form-urlencoded")
CRONTAB_TYPE = "application/crontab"
# forsun lets each element of a JSON array pick its mode
ARRAY_MODES = {"create": False, "createTimeout": True}

_plan_fields = operator.attrgetter(*(f.name for f in dataclasses.fields(Plan)))


class BadRequest(Exception):
    """A body that can't be read at all: HTTP 400 (or ``status``) with errcode ``code``."""

    def __init__(self, message: str, status: int = 400, code: int = errors.INVALID_VALUE) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class Body:
    """One create request and what of the service building its plans needs."""

    body: bytes
    content_type: str
    is_time_out: bool  # PUT (forsun's createTimeout) rather than POST (create)
    now_ms: int  # the instant all of the request's plans are created at
    # the service's zone (calendar plans); None in the worker, which has it from its start
    # (a zone read from a file, as /etc/localtime can be, can't be pickled)
    tz: ZoneInfo | None
    limits: Limits
    known_actions: frozenset[str]
    max_plans: int


def media_type(content_type: str) -> str:
    """``json`` or ``crontab`` for a create's Content-Type; BadRequest for any other."""
    mime = content_type.split(";", 1)[0].strip().lower()
    # curl -d sends a form type by default; forsun's clients rely on JSON being assumed.
    if mime in JSON_TYPES:
        return "json"
    if mime == CRONTAB_TYPE:
        return "crontab"
    raise BadRequest(f"unsupported Content-Type: {content_type}")


def build(req: Body) -> tuple[list[Plan], bytes]:
    """The plans of ``req`` (one per key: a key's last definition wins) and the
    answer's ``data`` encoded (the plan, or the list of them for an array or a
    crontab body). Raises ForsunBoxError or BadRequest; nothing is created."""
    if media_type(req.content_type) == "json":
        try:
            parsed = orjson.loads(req.body)
        except orjson.JSONDecodeError as e:
            raise BadRequest(f"body is not valid JSON: {e}") from None
        if isinstance(parsed, dict):
            plans = v1_plans([parsed], req, None, numbered=False)
            return plans, orjson.dumps(to_forsun(plans[0]))
        if not isinstance(parsed, list):
            raise BadRequest("body must be a JSON object or an array of objects")
        plans = v1_plans(parsed, req, ARRAY_MODES)
    else:
        try:
            text = req.body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("crontab body is not UTF-8") from None
        lines = crontab.parse_body(text)
        if not lines:
            raise errors.MissingArgument("plan")
        plans = line_plans(lines, req)
    plans = one_per_key(plans, req.max_plans)
    return plans, orjson.dumps([to_forsun(p) for p in plans])


def one_per_key(plans: list[Plan], max_plans: int) -> list[Plan]:
    """``plans`` with a key given twice kept once, as last defined; 1009 past ``max_plans``."""
    if len(plans) > max_plans:
        raise errors.TooLarge(f"more than {max_plans} plans in one request")
    if len(plans) < 2:
        return plans
    seen: dict[str, int] = {}
    for i, p in enumerate(plans):
        seen[p.key] = i
    if len(seen) != len(plans):
        plans = [p for i, p in enumerate(plans) if seen[p.key] == i]
    return plans


def v1_plans(
    objs: list[Any], req: Body, modes: Mapping[Any, bool] | None, numbered: bool = True
) -> list[Plan]:
    """The plans of v1 JSON objects (input field ``seconds``, plural).

    An element naming a ``method`` found in ``modes`` takes that mode instead
    of the request's. An error names the element at fault (when ``numbered``).
    """
    is_time_out, now_ms, tz, limits = req.is_time_out, req.now_ms, _zone(req), req.limits
    known = req.known_actions
    out: list[Plan] = []
    append = out.append
    for i, obj in enumerate(objs):
        try:
            if not isinstance(obj, dict):
                raise errors.InvalidValue("each plan must be a JSON object")
            get = obj.get
            timeout = is_time_out
            if modes:
                mode = get("method")
                if type(mode) is str:
                    timeout = modes.get(mode, is_time_out)
            second = get("seconds")
            if second is None:
                second = get("second")  # be lenient with the answer's spelling
            append(
                build_forsun_plan(
                    get("key"),
                    timeout,
                    second,
                    get("minute"),
                    get("hour"),
                    get("day"),
                    get("month"),
                    get("week"),
                    get("count"),
                    get("action"),
                    get("params"),
                    now_ms,
                    tz,
                    known,
                    limits,
                )
            )
        except errors.ForsunBoxError as e:
            if not numbered:
                raise
            raise errors.ForsunBoxError(f"plan [{i}]: {e.message}", e.code) from None
    return out


def line_plans(lines: list[crontab.PlanLine], req: Body) -> list[Plan]:
    """The plans of parsed crontab lines."""
    now_ms, tz, limits, known = req.now_ms, _zone(req), req.limits, req.known_actions
    out: list[Plan] = []
    for line in lines:
        get = line.fields.get
        out.append(
            build_forsun_plan(
                line.key,
                line.is_time_out,
                get("second"),
                get("minute"),
                get("hour"),
                get("day"),
                get("month"),
                get("week"),
                line.count,
                line.action,
                line.params,
                now_ms,
                tz,
                known,
                limits,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class Lines:
    """Lines of a v2 NDJSON batch (``(line number, text)``) and what building needs."""

    lines: list[tuple[int, bytes]]
    now_ms: int
    tz: ZoneInfo | None  # as in Body
    limits: Limits
    known_actions: frozenset[str]

    def size(self) -> int:
        return sum(len(raw) for _, raw in self.lines)


# What build_lines gives for a line: (line number, plan) or, for a line at fault,
# (line number, its key if it names one, forsun's error code or 0 for unreadable JSON,
# message).
LineResult = tuple[int, Plan] | tuple[int, str | None, int, str]


def build_lines(req: Lines) -> list[LineResult]:
    """The plan of each line of a v2 batch, or why it has none (see LineResult)."""
    tz = _zone(req)
    out: list[LineResult] = []
    for line_no, raw in req.lines:
        key = None
        try:
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                out.append((line_no, None, 0, f"line is not valid JSON: {e}"))
                continue
            if isinstance(obj, dict) and isinstance(obj.get("key"), str):
                key = obj["key"]
            out.append(
                (
                    line_no,
                    build_v2_plan(
                        obj,
                        key=None,
                        now_ms=req.now_ms,
                        default_tz=tz,
                        known_actions=req.known_actions,
                        limits=req.limits,
                    ),
                )
            )
        except errors.ForsunBoxError as e:
            out.append((line_no, key, e.code, e.message))
    return out


# ---------------------------------------------------------------------------- the worker

_worker_zone = ZoneInfo("UTC")  # in the worker process: the service's zone, set at its start


def _zone(req: Body | Lines) -> ZoneInfo:
    return _worker_zone if req.tz is None else req.tz


def _build_in_worker(req: Body) -> tuple[Any, ...]:
    """:func:`build` in the worker process: ``(True, plan tuples, answer)``,
    or ``(False, HTTP status, errcode, message)`` for a request at fault."""
    try:
        plans, data = build(req)
    except BadRequest as e:
        return False, e.status, e.code, e.message
    except errors.ForsunBoxError as e:
        return False, 200, e.code, e.message
    return True, list(map(_plan_fields, plans)), data


def _build_lines_in_worker(req: Lines) -> list[tuple[Any, ...]]:
    """:func:`build_lines` in the worker process, plans as tuples of their fields."""
    return [
        (r[0], _plan_fields(r[1])) if len(r) == 2 else r  # type: ignore[misc]
        for r in build_lines(req)
    ]


def _worker_started(parent: int, zone: ZoneInfo) -> None:
    """Set up the worker process (forked from ``parent``, the service, whose zone is
    ``zone``): signals are the service's business, not its own."""
    global _worker_zone
    _worker_zone = zone
    # A signal caught here must not reach the service's event loop through the
    # wake-up descriptor inherited with the fork; Ctrl-C in a terminal reaches the
    # whole process group, and the service stops its worker itself.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # The objects of a request live until its answer and form no cycles: the
    # collector's passes over them are wasted work. What the fork brought along
    # is never garbage either; frozen, no pass looks at it again.
    gc.freeze()
    gc.set_threshold(WORKER_GC_YOUNG, 20, 100)
    if sys.platform.startswith("linux"):
        # die with the service, even when it is killed (-9)
        PR_SET_PDEATHSIG = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)  # the service went before the line above took effect


class Worker:
    """One process building big create bodies (see the module docstring).

    Forked when the service starts, before any thread of its own runs (a fork
    copies only the forking thread; a lock another thread held would stay
    held in the child). If the process dies, bodies are built in the event
    loop from then on, and the service says so in its log.
    """

    def __init__(self) -> None:
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def start(self, zone: ZoneInfo) -> None:
        """Fork the worker (the service's zone is ``zone``). If that fails, the service
        goes on without it, and says so."""
        try:
            pool = concurrent.futures.ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_worker_started,
                initargs=(os.getpid(), zone),
            )  # a fork passes them on as they are
            pool.submit(int).result()  # forks now: before the service starts any thread
        except (OSError, BrokenProcessPool) as e:
            log.warning(
                "cannot start the create worker process (%s): create bodies are "
                "built in the event loop",
                e,
            )
            return
        self._pool = pool
        log.info("create worker process %s started", self.pid())

    def pid(self) -> int | None:
        """The worker's process id (None when not running)."""
        pool = self._pool
        if pool is None:
            return None
        return next(iter(pool._processes), None)

    async def build(self, req: Body) -> tuple[list[Plan], bytes]:
        """As :func:`build`; in the worker when there is one and the body is big."""
        if self._pool is None or len(req.body) < WORKER_MIN_BYTES:
            return build(req)
        done = await self._run(_build_in_worker, dataclasses.replace(req, tz=None))
        if done is None:
            return build(req)
        if not done[0]:
            _, status, code, message = done
            if status != 200:
                raise BadRequest(message, status, code)
            raise errors.ForsunBoxError(message, code)
        _, rows, data = done
        return list(itertools.starmap(Plan, rows)), data

    async def build_lines(self, req: Lines) -> list[LineResult]:
        """As :func:`build_lines`; in the worker when there is one and the lines are many."""
        if self._pool is None or req.size() < WORKER_MIN_BYTES:
            return build_lines(req)
        done = await self._run(_build_lines_in_worker, dataclasses.replace(req, tz=None))
        if done is None:
            return build_lines(req)
        return [(r[0], Plan(*r[1])) if len(r) == 2 else r for r in done]

    async def _run(self, fn: Any, req: Any) -> Any:
        """``fn(req)`` in the worker; None if the worker has stopped (it is then let go)."""
        pool = self._pool
        assert pool is not None
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, req)
        except BrokenProcessPool:
            if self._pool is pool:
                log.error(
                    "the create worker process stopped: create bodies are built in "
                    "the event loop from now on"
                )
                self._pool = None
                pool.shutdown(wait=False)
            return None

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
