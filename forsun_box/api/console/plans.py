"""Console pages about existing plans: the list, one plan, its actions, "what fires when".

Filters never scan the whole table: a list page reads at most
:data:`SCAN_LIMIT` keys (in key order, from the page's ``after`` key) and
shows what matched among them, with a link that continues the scan where
it stopped. Without filters a page reads just :data:`PAGE_SIZE` + 1 rows.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import tornado.web

from forsun_box import errors
from forsun_box.api.console import text
from forsun_box.api.console.base import ConsoleContext, ConsoleHandler
from forsun_box.enums import PlanStatus
from forsun_box.plan import KINDS, Plan

log = logging.getLogger("forsun_box.console")

PAGE_SIZE = 50
#: most keys one filtered list page reads before it stops and offers "more"
SCAN_LIMIT = 5_000
SCAN_CHUNK = 500
RUNS_SHOWN = 50
#: the furthest page of a run history the plan page reads
RUNS_PAGES = 1_000
PREVIEW_COUNT = 5
#: most plans "what fires when" lists for one query
WHEN_LIMIT = 200
#: longest range "what fires when" accepts
WHEN_MAX_RANGE_MS = 7 * 86_400_000
#: how long "fire now" waits for the action before answering
FIRE_WAIT_S = 5.0

STATUS_FILTERS = {s.label: s for s in (PlanStatus.OK, PlanStatus.FAILED, PlanStatus.PENDING)}


def matches(plan: Plan, action: str, mode: str, status: str) -> bool:
    """Whether ``plan`` passes the list's filters (empty filter = any)."""
    if action and plan.action != action:
        return False
    if mode and plan.kind != mode:
        return False
    if status == "paused":
        return plan.paused
    return not (status and plan.status != STATUS_FILTERS.get(status, 99))


async def list_page(
    console: ConsoleContext, prefix: str, after: str, action: str, mode: str, status: str
) -> tuple[list[Plan], str, int]:
    """One page of plans: (plans, the ``after`` key of the next page or "", keys scanned)."""
    service = console.service
    if not (action or mode or status):
        rows = await service.plans(prefix, after, PAGE_SIZE + 1)
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        return rows, (rows[-1].key if more and rows else ""), len(rows)
    found: list[Plan] = []
    scanned = 0
    cursor = after
    exhausted = False
    while len(found) < PAGE_SIZE and scanned < SCAN_LIMIT:
        chunk = await service.plans(prefix, cursor, SCAN_CHUNK)
        for p in chunk:
            scanned += 1
            cursor = p.key
            if matches(p, action, mode, status):
                found.append(p)
                if len(found) == PAGE_SIZE:
                    break
        if len(chunk) < SCAN_CHUNK and (not chunk or cursor == chunk[-1].key):
            exhausted = True
            break
    return found, ("" if exhausted else cursor), scanned


class PlansHandler(ConsoleHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        arg = self.get_query_argument
        prefix = arg("prefix", "").strip()
        after = arg("after", "")
        action = arg("action", "")
        mode = arg("mode", "")
        status = arg("status", "")
        plans, next_after, scanned = await list_page(
            self.console, prefix, after, action, mode, status
        )
        query = {
            k: v
            for k, v in (("prefix", prefix), ("action", action), ("mode", mode), ("status", status))
            if v
        }
        next_url = ""
        if next_after:
            next_url = "/plans?" + urllib.parse.urlencode({**query, "after": next_after})
        first_url = "/plans?" + urllib.parse.urlencode(query) if after else ""
        self.page(
            "plans.html",
            active="plans",
            plans=plans,
            prefix=prefix,
            after=after,
            action=action,
            mode=mode,
            status=status,
            next_url=next_url,
            first_url=first_url,
            scanned=scanned,
            filtered=bool(action or mode or status),
            actions=sorted(self.console.service.known_actions()),
            kinds=KINDS,
            statuses=[*STATUS_FILTERS, "paused"],
            scan_limit=SCAN_LIMIT,
        )


async def runs_page(console: ConsoleContext, key: str, page: int) -> dict[str, Any]:
    """Page ``page`` (1 = newest) of ``key``'s run history, with links to its neighbours."""
    rows = await console.service.runs(key, RUNS_SHOWN * page + 1)
    shown = rows[RUNS_SHOWN * (page - 1) : RUNS_SHOWN * page]
    base = {"key": key}

    def link(n: int) -> str:
        return "/plan?" + urllib.parse.urlencode({**base, "runs_page": n} if n > 1 else base)

    return {
        "runs": shown,
        "runs_first": RUNS_SHOWN * (page - 1) + 1,
        "older_url": link(page + 1) if len(rows) > RUNS_SHOWN * page else "",
        "newer_url": link(page - 1) if page > 1 else "",
    }


class PlanHandler(ConsoleHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        key = self.get_query_argument("key", "")
        if not key:
            raise tornado.web.HTTPError(404, f"No plan with key {key!r}.")
        console = self.console
        try:
            # a store keeps at most max_runs_per_key runs of a key: pages end early
            page = min(max(1, int(self.get_query_argument("runs_page", "1") or 1)), RUNS_PAGES)
        except ValueError:
            page = 1
        history = await runs_page(console, key, page)
        try:
            plan = await console.service.get(key)
        except errors.PlanNotFound:
            if not history["runs"]:
                raise tornado.web.HTTPError(404, f"No plan with key {key!r}.") from None
            # finished (or deleted): the plan is gone, its run history is kept
            self.page(
                "finished.html",
                active="plans",
                key=key,
                plan_tz=console.tz,
                zone_label="",
                **history,
            )
            return
        tz = text.zone_of(plan, console.tz)
        firings = [] if plan.paused else plan.upcoming(PREVIEW_COUNT, tz)
        self.page(
            "plan.html",
            active="plans",
            plan=plan,
            firings=firings,
            plan_tz=tz,
            zone_label=text.zone_label(plan, console.tz),
            params=text.mask_params(plan.params),
            **history,
        )


class PlanActionHandler(ConsoleHandler):
    """``POST /plan/{delete,fire,pause,resume}`` with the key in the form."""

    @tornado.web.authenticated
    async def post(self, op: str) -> None:
        key = self.get_body_argument("key", "")
        console = self.console
        service = console.service
        try:
            if op == "delete":
                await service.remove(key)
                console.forget_counts()
                self.redirect("/plans?done=deleted")
                return
            if op == "pause":
                await service.pause(key)
                console.forget_counts()
            elif op == "resume":
                await service.resume(key)
                console.forget_counts()
            elif op == "fire":
                task = asyncio.ensure_future(service.fire(key))
                # a quick action's run shows on the page we go back to; a slow one goes on
                finished, _ = await asyncio.wait({task}, timeout=FIRE_WAIT_S)
                if finished:
                    task.result()
                await service.flush()
            else:
                raise tornado.web.HTTPError(404)
        except (errors.PlanNotFound, errors.RemoveError):
            raise tornado.web.HTTPError(404, f"No plan with key {key!r}.") from None
        except errors.ForsunBoxError as e:
            raise tornado.web.HTTPError(409, e.message) from None
        done = {"pause": "paused", "resume": "resumed", "fire": "fired"}[op]
        self.redirect("/plan?" + urllib.parse.urlencode({"key": key, "done": done}))


def parse_local(value: str, tz: ZoneInfo) -> int:
    """``YYYY-MM-DDTHH:MM[:SS]`` (a datetime-local input) in ``tz`` as epoch ms."""
    dt = datetime.fromisoformat(value.strip().replace(" ", "T"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return int(dt.timestamp()) * 1000


def input_value(ms: int, tz: ZoneInfo) -> str:
    """Epoch ms as a datetime-local input's value (seconds included)."""
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%dT%H:%M:%S")


class WhenHandler(ConsoleHandler):
    """ "What fires when": plans firing at one second, or in a range (forsun's /v1/time)."""

    @tornado.web.authenticated
    async def get(self) -> None:
        console = self.console
        tz = console.tz
        arg = self.get_query_argument
        now = console.now_ms()
        at, start, end = arg("at", ""), arg("from", ""), arg("to", "")
        error = ""
        plans: list[Plan] = []
        lo = hi = 0
        try:
            if at:
                lo = parse_local(at, tz)
                hi = lo + 1000
            elif start or end:
                lo = parse_local(start, tz) if start else now - now % 1000
                hi = parse_local(end, tz) + 1000 if end else lo + 60_000
                if hi <= lo:
                    error = "The end must be after the start."
                elif hi - lo > WHEN_MAX_RANGE_MS:
                    error = "A range may span at most 7 days."
        except ValueError:
            error = "Give times as YYYY-MM-DD HH:MM:SS."
        if lo and not error:
            plans = await console.service.firing_between(lo, hi, WHEN_LIMIT + 1)
        more = len(plans) > WHEN_LIMIT
        base = now - now % 1000
        self.page(
            "when.html",
            active="when",
            plans=plans[:WHEN_LIMIT],
            more=more,
            error=error,
            at=at,
            start=start,
            end=end,
            searched=bool(lo and not error),
            lo=lo,
            hi=hi,
            limit=WHEN_LIMIT,
            quick={
                "next minute": (input_value(base, tz), input_value(base + 59_000, tz)),
                "next hour": (input_value(base, tz), input_value(base + 3_599_000, tz)),
                "next day": (input_value(base, tz), input_value(base + 86_399_000, tz)),
            },
            now_value=input_value(base, tz),
        )


def routes(kw: dict[str, Any]) -> list[Any]:
    return [
        (r"/plans", PlansHandler, kw),
        (r"/plan", PlanHandler, kw),
        (r"/plan/(delete|fire|pause|resume)", PlanActionHandler, kw),
        (r"/when", WhenHandler, kw),
    ]
