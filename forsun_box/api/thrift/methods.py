"""forsun's Thrift methods (and forsun-box's additions) as calls of the service.

Each method takes the decoded ``*_args`` struct of the generated code and
returns what its ``*_result`` carries as ``success``; errors are raised as
:class:`~forsun_box.errors.ForsunBoxError`, which the server
(:mod:`forsun_box.api.thrift.server`) turns into the answer the IDL declares.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from forsun_box import errors
from forsun_box.api.service import ForsunService
from forsun_box.api.thrift.structs import I16_MAX, clamp, plan_struct, run_struct
from forsun_box.plan import AT, CRON
from forsun_box.thrift.forsun import Forsun
from forsun_box.thrift.forsun.ttypes import ForsunPlan, ForsunRun

log = logging.getLogger("forsun_box.thrift")

DEFAULT_RUNS = 50
MAX_RUNS = 1000
DEFAULT_PREVIEW = 5
MAX_PREVIEW = 1000

Handler = Callable[[Any], Awaitable[Any]]
#: a method's (args class, result class, handler, declares ForsunPlanError)
Method = tuple[Any, Any, Handler, bool]


class ForsunMethods:
    """The Thrift methods of one :class:`ForsunService`."""

    def __init__(self, service: ForsunService) -> None:
        self.service = service

    def table(self) -> dict[str, Method]:
        """Method name -> :data:`Method`, for the server's dispatch."""
        return {
            "ping": (Forsun.ping_args, Forsun.ping_result, self.ping, False),
            "create": (Forsun.create_args, Forsun.create_result, self.create, True),
            "createTimeout": (
                Forsun.createTimeout_args,
                Forsun.createTimeout_result,
                self.create_timeout,
                True,
            ),
            "remove": (Forsun.remove_args, Forsun.remove_result, self.remove, True),
            "get": (Forsun.get_args, Forsun.get_result, self.get, True),
            "getCurrent": (
                Forsun.getCurrent_args,
                Forsun.getCurrent_result,
                self.get_current,
                False,
            ),
            "getTime": (Forsun.getTime_args, Forsun.getTime_result, self.get_time, False),
            "getKeys": (Forsun.getKeys_args, Forsun.getKeys_result, self.get_keys, False),
            "forsun_call": (
                Forsun.forsun_call_args,
                Forsun.forsun_call_result,
                self.forsun_call,
                False,
            ),
            "info": (Forsun.info_args, Forsun.info_result, self.info, False),
            # forsun-box additions (new methods; forsun's are unchanged)
            "pause": (Forsun.pause_args, Forsun.pause_result, self.pause, True),
            "resume": (Forsun.resume_args, Forsun.resume_result, self.resume, True),
            "fire": (Forsun.fire_args, Forsun.fire_result, self.fire, True),
            "getRuns": (Forsun.getRuns_args, Forsun.getRuns_result, self.get_runs, True),
            "preview": (Forsun.preview_args, Forsun.preview_result, self.preview, True),
            "createCron": (
                Forsun.createCron_args,
                Forsun.createCron_result,
                self.create_cron,
                True,
            ),
            "createAt": (Forsun.createAt_args, Forsun.createAt_result, self.create_at, True),
        }

    async def ping(self, args: Any) -> int:
        return 0

    async def create(self, args: Any) -> ForsunPlan:
        service = self.service
        plan = service.build_args(
            args.key,
            False,
            args.second,
            args.minute,
            args.hour,
            args.day,
            args.month,
            args.week,
            0,
            args.action,
            args.params,
        )
        return plan_struct((await service.create([plan]))[0], service.tz)

    async def create_timeout(self, args: Any) -> ForsunPlan:
        service = self.service
        count = args.count
        plan = service.build_args(
            args.key,
            True,
            args.second,
            args.minute,
            args.hour,
            args.day,
            args.month,
            args.week,
            1 if count is None else count,
            args.action,
            args.params,
        )
        return plan_struct((await service.create([plan]))[0], service.tz)

    async def remove(self, args: Any) -> ForsunPlan:
        return plan_struct(await self.service.remove(args.key), self.service.tz)

    async def get(self, args: Any) -> ForsunPlan:
        return plan_struct(await self.service.get(args.key), self.service.tz)

    def _now_s(self) -> int:
        return self.service.now_ms() // 1000

    async def get_current(self, args: Any) -> list[ForsunPlan]:
        tz = self.service.tz
        return [plan_struct(p, tz) for p in await self.service.at_second(self._now_s())]

    async def get_time(self, args: Any) -> list[ForsunPlan]:
        ts = args.timestamp or 0
        if ts <= 0:
            ts = self._now_s()
        tz = self.service.tz
        return [plan_struct(p, tz) for p in await self.service.at_second(ts)]

    async def get_keys(self, args: Any) -> list[str]:
        return await self.service.keys(args.prefix or "")

    async def forsun_call(self, args: Any) -> None:
        # forsun-box is not itself a target of the thrift action; accept the call.
        log.debug("forsun_call key=%s ts=%s params=%s", args.key, args.ts, args.params)
        return None

    async def info(self, args: Any) -> dict[str, str]:
        return await self.service.info()

    # ------------------------------------------------------------------ additions

    async def pause(self, args: Any) -> ForsunPlan:
        return plan_struct(await self.service.pause(args.key), self.service.tz)

    async def resume(self, args: Any) -> ForsunPlan:
        return plan_struct(await self.service.resume(args.key), self.service.tz)

    async def fire(self, args: Any) -> int:
        return clamp(await self.service.fire(args.key), I16_MAX)

    async def get_runs(self, args: Any) -> list[ForsunRun]:
        limit = args.limit or 0
        limit = DEFAULT_RUNS if limit <= 0 else min(limit, MAX_RUNS)
        runs = await self.service.runs(args.key, limit)
        return [run_struct(r) for r in runs]

    async def preview(self, args: Any) -> list[int]:
        n = args.n or 0
        n = DEFAULT_PREVIEW if n <= 0 else min(n, MAX_PREVIEW)
        plan = await self.service.get(args.key)
        return plan.upcoming(n, self.service.tz)

    async def create_cron(self, args: Any) -> ForsunPlan:
        if not args.cron:
            raise errors.MissingArgument("cron")
        plan = self.service.build_kind(
            kind=CRON,
            key=args.key,
            fields={},
            count=args.count or 0,
            action=args.action,
            params=args.params,
            cron=args.cron,
            timezone=args.timezone or "",
        )
        return plan_struct((await self.service.create([plan]))[0], self.service.tz)

    async def create_at(self, args: Any) -> ForsunPlan:
        if args.at_ms is None:
            raise errors.MissingArgument("at_ms")
        plan = self.service.build_kind(
            kind=AT,
            key=args.key,
            fields={},
            action=args.action,
            params=args.params,
            at_ms=args.at_ms,
        )
        return plan_struct((await self.service.create([plan]))[0], self.service.tz)
