"""The one place where forsun's wire shapes become engine calls.

HTTP v1 (JSON and crontab bodies), v2, Thrift and the web console all build
plans, change them and read status through :class:`ForsunService`, so a
field means the same thing on every interface; no other module of
:mod:`forsun_box.api` reaches the engine (``tests/unit/test_api_layers.py``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import psutil

from forsun_box import __version__, errors
from forsun_box.actions import action_names
from forsun_box.actions.base import ACTIONS, ALIASES
from forsun_box.api.formats.bodies import Body, Worker, one_per_key
from forsun_box.cluster.node import ClusterNode
from forsun_box.plan import CALENDAR, DELAY, Limits, Plan, build_forsun_plan, build_plan
from forsun_box.scheduler import Scheduler
from forsun_box.stats import Stats
from forsun_box.store.base import Run


@dataclass
class ServiceInfo:
    """Facts about the running service that ``info`` reports."""

    store_name: str = "sqlite"
    stores: Iterable[str] = ("sqlite", "mem")
    bind_port: str = ""
    http_bind_port: str = ""
    server_mode: str = "TIMER"
    #: the cluster node this is ("" on a single node)
    node_id: str = ""
    extensions: Callable[[], Iterable[str]] = field(default=lambda: ())
    extra: Callable[[], Mapping[str, Any]] = field(default=lambda: {})
    extension_errors: Callable[[], Iterable[str]] = field(default=lambda: ())


class ForsunService:
    """forsun's operations (create, createTimeout, remove, get, time, keys, info)."""

    def __init__(
        self,
        scheduler: Scheduler,
        actions: Callable[[], Iterable[str]],
        limits: Limits,
        info: ServiceInfo,
        stats: Stats | None,
        max_plans_per_request: int = 100_000,
        worker: Worker | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.actions = actions
        self.limits = limits
        self.info_facts = info
        self.stats = stats
        self.max_plans_per_request = max_plans_per_request
        # builds create bodies (v1) and batch lines (v2); in another process once started
        # (see forsun_box.api.formats.bodies)
        self.worker = worker or Worker()
        self.start_time = time.time()
        self._process = psutil.Process(os.getpid())
        self._known: frozenset[str] = frozenset()
        self._known_stamp: tuple[int, int] = (-1, -1)
        #: this node's part in a cluster (``node_id`` set), else None
        self.cluster: ClusterNode | None = None

    # ------------------------------------------------------------------ cluster

    @property
    def clustered(self) -> bool:
        """Whether this service is a cluster node (``--node-id``)."""
        return self.cluster is not None

    async def cluster_status(self) -> dict[str, Any]:
        """The cluster's nodes, partitions and leases (``{"mode": "single"}`` alone)."""
        if self.cluster is None:
            return {"mode": "single"}
        return await self.cluster.status()

    # ------------------------------------------------------------------ building

    def build(
        self,
        *,
        key: Any,
        is_time_out: bool,
        fields: Mapping[str, Any],
        count: Any = 0,
        action: Any = "shell",
        params: Any = None,
        known_actions: frozenset[str] | None = None,
    ) -> Plan:
        """Validate one forsun plan definition; raises ForsunBoxError.

        ``fields`` maps forsun's time field names (second ... week) to values;
        a missing or null field is -1. ``known_actions`` lets a caller building
        many plans look the action names up once.
        """
        get = fields.get
        return self._build(
            key,
            is_time_out,
            get("second"),
            get("minute"),
            get("hour"),
            get("day"),
            get("month"),
            get("week"),
            count,
            action,
            params,
            known_actions,
        )

    def build_args(
        self,
        key: Any,
        is_time_out: bool,
        second: Any,
        minute: Any,
        hour: Any,
        day: Any,
        month: Any,
        week: Any,
        count: Any,
        action: Any,
        params: Any,
    ) -> Plan:
        """As :meth:`build`, with the time fields as arguments (a missing one is None)."""
        return self._build(
            key, is_time_out, second, minute, hour, day, month, week, count, action, params, None
        )

    def _build(
        self,
        key: Any,
        is_time_out: bool,
        second: Any,
        minute: Any,
        hour: Any,
        day: Any,
        month: Any,
        week: Any,
        count: Any,
        action: Any,
        params: Any,
        known_actions: frozenset[str] | None,
    ) -> Plan:
        return build_forsun_plan(
            key,
            is_time_out,
            second,
            minute,
            hour,
            day,
            month,
            week,
            count,
            action,
            params,
            self.scheduler.clock.now_ms(),
            self.scheduler.tz,
            known_actions or self.known_actions(),
            self.limits,
        )

    def build_kind(
        self,
        *,
        kind: str,
        key: Any,
        fields: Mapping[str, Any],
        count: Any = 0,
        action: Any = "shell",
        params: Any = None,
        cron: str = "",
        at_ms: int | None = None,
        timezone: str = "",
    ) -> Plan:
        """Validate a plan of any schedule kind (delay, calendar, cron, at).

        Delay and calendar go through :meth:`build`, so their fields mean what
        they mean on forsun's APIs; cron and at add their own fields.
        """
        if kind in (DELAY, CALENDAR) and not timezone:
            return self.build(
                key=key,
                is_time_out=kind == DELAY,
                fields=fields,
                count=count,
                action=action,
                params=params,
            )
        if key is None or key == "":
            key = self.scheduler.new_key()
        elif not isinstance(key, str):
            raise errors.InvalidValue("key must be a string")
        get = fields.get
        time_fields: dict[str, Any] = {
            f: (-1 if get(f) is None else get(f))
            for f in ("second", "minute", "hour", "day", "month", "week")
        }
        return build_plan(
            key=key,
            kind=kind,
            now_ms=self.scheduler.clock.now_ms(),
            default_tz=self.scheduler.tz,
            action=action or "shell",
            params=params,
            count=0 if count is None else count,
            known_actions=self.known_actions(),
            limits=self.limits,
            cron=cron,
            at_ms=at_ms,
            timezone=timezone,
            **time_fields,
        )

    def known_actions(self) -> frozenset[str]:
        """Action names (and aliases) plans may use; cached while the registry is unchanged."""
        # (the registry's dicts are changed in place, never rebound: imported once)
        stamp = (len(ACTIONS), len(ALIASES))
        if stamp != self._known_stamp:
            self._known = frozenset(self.actions())
            self._known_stamp = stamp
        return self._known

    # ------------------------------------------------------------------ operations

    async def create(self, plans: list[Plan]) -> list[Plan]:
        return await self.scheduler.create(one_per_key(plans, self.max_plans_per_request))

    async def upsert(self, plans: list[Plan]) -> list[Plan]:
        """Hand built plans to the engine as they are (a v2 batch chunk, which keeps
        its own per-line answers): no request limit, no folding of repeated keys."""
        return await self.scheduler.create(plans)

    async def create_from_body(self, body: bytes, content_type: str, is_time_out: bool) -> bytes:
        """Create the plans of an HTTP v1 body (JSON or crontab); the answer's data,
        encoded. Big bodies are built in the create worker, when there is one."""
        req = Body(
            body,
            content_type,
            is_time_out,
            self.scheduler.clock.now_ms(),
            self.scheduler.tz,
            self.limits,
            self.known_actions(),
            self.max_plans_per_request,
        )
        plans, data = await self.worker.build(req)
        await self.scheduler.create(plans)
        return data

    async def remove(self, key: Any) -> Plan:
        # a key that isn't there is forsun's 1003 (plan not found), raised before any
        # remove; 1005 stays for a remove the store failed
        return await self.scheduler.remove(self._key(key))

    async def get(self, key: Any) -> Plan:
        return await self.scheduler.get(self._key(key))

    async def at_second(self, timestamp: int) -> list[Plan]:
        start = timestamp * 1000
        return await self.scheduler.firing_between(start, start + 1000)

    async def pause(self, key: Any) -> Plan:
        """Stop ``key`` firing until resumed (forsun-box addition)."""
        return await self.scheduler.pause(self._key(key))

    async def resume(self, key: Any) -> Plan:
        """Let a paused plan fire again from its next occurrence after now."""
        return await self.scheduler.resume(self._key(key))

    async def fire(self, key: Any) -> int:
        """Run ``key``'s action once now, outside its schedule; returns its status.

        Answered once the run's record is committed, so a ``runs`` asked right
        after shows it.
        """
        status = await self.scheduler.fire_now(self._key(key))
        await self.scheduler.flush()
        return status

    async def runs(self, key: Any, limit: int = 50) -> list[Run]:
        """``key``'s most recent runs, newest first (at most ``limit``).

        The history outlives the plan (a finished one-shot keeps its runs), so
        a key with no plan answers its runs, or none, rather than an error.
        """
        return await self.scheduler.runs(self._key(key), limit)

    # ------------------------------------------------------------------ reading

    @property
    def tz(self) -> ZoneInfo:
        """The service's default time zone (a plan without a zone fires in it)."""
        return self.scheduler.tz

    def now_ms(self) -> int:
        """Now, in unix ms, from the engine's clock."""
        return int(self.scheduler.clock.now_ms())

    async def key_page(self, prefix: str, after: str, limit: int) -> list[str]:
        """Up to ``limit`` keys starting with ``prefix``, in key order after ``after``."""
        return await self.scheduler.keys(prefix, after, limit)

    async def plans(self, prefix: str = "", after: str = "", limit: int = 100) -> list[Plan]:
        """Up to ``limit`` plans whose key starts with ``prefix``, in key order after ``after``."""
        return await self.scheduler.plans(prefix, after, limit)

    async def firing_between(self, start_ms: int, end_ms: int, limit: int = 100_000) -> list[Plan]:
        """Unpaused plans whose next firing is in ``[start_ms, end_ms)``, soonest first."""
        return await self.scheduler.firing_between(start_ms, end_ms, limit)

    async def count_firing_between(self, start_ms: int, end_ms: int, limit: int) -> int:
        """How many plans :meth:`firing_between` would give, counted up to ``limit``."""
        return await self.scheduler.count_firing_between(start_ms, end_ms, limit)

    async def plan_count(self) -> int:
        """How many plans are stored."""
        return await self.scheduler.count()

    def window_size(self) -> int:
        """Plans in the engine's window (due soon, held in memory)."""
        return self.scheduler.window_size()

    def inflight_count(self) -> int:
        """Firings under way."""
        return self.scheduler.inflight_count()

    async def store_size(self) -> int:
        """The store's size in bytes (0 when the store does not say)."""
        return await self.scheduler.store.size_bytes()

    async def flush(self) -> None:
        """Wait until every change made so far is committed."""
        await self.scheduler.flush()

    async def keys(self, prefix: str = "") -> list[str]:
        # forsun's client documents "ls [prefix or *]": a trailing * (or white
        # space) is no part of the prefix, as forsun's store takes it
        return await self.scheduler.keys(prefix.rstrip("\n\t *"))

    def _key(self, key: Any) -> str:
        if key is None or key == "":
            raise errors.MissingArgument("key")
        if not isinstance(key, str):
            raise errors.InvalidValue("key must be a string")
        return key

    async def info(self) -> dict[str, str]:
        proc = self._process
        with proc.oneshot():
            cpu = proc.cpu_times()
            mem = proc.memory_info()
        facts = self.info_facts
        out: dict[str, Any] = dict(self.stats.as_dict()) if self.stats is not None else {}
        out.update(
            {
                # forsun's formats: the whole sys.version on one line, the start
                # as str(datetime) in the local zone, CPU seconds as str(float)
                "python_version": sys.version.replace("\n", " "),
                "forsun_version": __version__,
                "forsun_box_version": __version__,
                "start_time": datetime.fromtimestamp(self.start_time, self.scheduler.tz),
                "cpu_user": cpu.user,
                "cpu_system": cpu.system,
                "mem_rss": mem.rss,
                "mem_vms": mem.vms,
                "current_time": int(time.time()),
                "stores": ";".join(facts.stores),
                "current_store": facts.store_name,
                "actions": ";".join(action_names()),
                "bind_port": facts.bind_port,
                "http_bind_port": facts.http_bind_port,
                "server_mode": facts.server_mode,
                "node_id": facts.node_id,
                "extensions": ";".join(facts.extensions()),
                "plan_count": await self.scheduler.count(),
                "window_plan_count": self.scheduler.window_size(),
                "inflight_count": self.scheduler.inflight_count(),
            }
        )
        out.update(facts.extra())
        return {k: str(v) for k, v in out.items()}
