"""The web console: server-rendered pages on the HTTP API's tornado app.

Pages are Jinja2 templates from ``forsun_box/web/templates``; CSS and the
small script that refreshes the dashboard are in ``forsun_box/web/static``
(package data, so a wheel and the frozen executable carry them). Every plan the
console creates or edits goes through :class:`~forsun_box.api.service.ForsunService`,
so a field means what it means on the v1 API.

Access: with ``console_password`` or ``api_token`` set, every console page
needs a login (a signed cookie); every console form carries an XSRF token,
checked here per handler -- not by tornado's application-wide switch, so
the v1 API keeps answering forsun's cookie-less clients.

Scale: no page reads the whole plan table. Listings are key-range reads
of a bounded number of rows; the upcoming-firings chart is index counts
capped per minute, plus the later firings of a bounded sample of the plans
due within the hour (recurring plans fire more than once in it).

Modules: :mod:`.base` (the typed context, on the service, and the base
handler), :mod:`.plans` (listing, one plan, its actions, "when"),
:mod:`.form` (create and edit), :mod:`.text` (words for schedules and
times); this module has the login, the dashboard and its figures, and
:func:`install`, which puts them together.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
import markupsafe
import orjson
import tornado.web

from forsun_box import __version__
from forsun_box.actions import action_names
from forsun_box.api.console import cluster as console_cluster
from forsun_box.api.console import form as console_form
from forsun_box.api.console import plans as console_plans
from forsun_box.api.console import text
from forsun_box.api.console.base import COOKIE, COOKIE_DAYS, ConsoleContext, ConsoleHandler
from forsun_box.api.security import is_loopback
from forsun_box.api.service import ForsunService
from forsun_box.config import Config
from forsun_box.plan import DELAY, Plan
from forsun_box.stats import MinuteSeries

log = logging.getLogger("forsun_box.console")

SECRET_FILE = "console-cookie-secret"
#: seconds the upcoming-firings chart is reused
UPCOMING_TTL_S = 10.0
#: the upcoming chart counts at most this many plans per minute
UPCOMING_CAP = 10_000
#: plans due within the hour whose later firings in it the chart adds
UPCOMING_SAMPLE = 2_000
#: most schedule steps spent on those later firings per chart (delay plans take none)
UPCOMING_STEPS = 20_000
UPCOMING_MINUTES = 60


def web_root() -> Path:
    """The package's ``web/`` folder (in the frozen executable too: it keeps the layout)."""
    return Path(__file__).resolve().parents[2] / "web"


def cookie_secret(config: Config) -> str:
    """``cookie_secret`` from the config, else one generated once and kept in the data dir."""
    if config.cookie_secret:
        return str(config.cookie_secret)
    path = Path(config.data_dir) / SECRET_FILE
    try:
        existing = path.read_text().strip()
        if existing:
            return existing
    except FileNotFoundError:
        pass
    secret = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


@dataclass
class Console(ConsoleContext):
    """The console's context with the dashboard's figures (the chart is cached)."""

    async def upcoming(self) -> dict[str, Any]:
        async def compute() -> dict[str, Any]:
            now = self.now_ms()
            start = now - now % 60_000
            end = start + UPCOMING_MINUTES * 60_000
            starts, counts = [], []
            for i in range(UPCOMING_MINUTES):
                a = start + i * 60_000
                lo = max(a, now)
                starts.append(a)
                counts.append(await self.service.count_firing_between(lo, a + 60_000, UPCOMING_CAP))
            due = await self.service.firing_between(now, end, UPCOMING_SAMPLE + 1)
            # pure computation over the whole sample: off the event loop, which goes on
            # firing meanwhile (its cost: bench/console_upcoming.py)
            later, complete = await asyncio.to_thread(
                later_firings, due[:UPCOMING_SAMPLE], start, end, self.tz
            )
            return {
                "start_ms": starts,
                "count": [c + n for c, n in zip(counts, later, strict=True)],
                "cap": UPCOMING_CAP,
                "partial": not complete or len(due) > UPCOMING_SAMPLE,
            }

        return dict(await self.cached("upcoming", UPCOMING_TTL_S, compute))

    async def snapshot(self) -> dict[str, Any]:
        """Everything the dashboard shows, as JSON-able values."""
        service = self.service
        now = self.now_ms()
        proc = self.process
        with proc.oneshot():
            cpu = proc.cpu_percent(interval=None)
            rss = proc.memory_info().rss
        size = await service.store_size()
        minutes = service.stats.minutes if service.stats is not None else MinuteSeries()
        series = minutes.series(now)
        hour = minutes.percentiles(now)
        last = len(series["fired"]) - 1
        facts = service.info_facts
        return {
            "version": __version__,
            "now_ms": now,
            "now": text.local_time(now, self.tz),
            "uptime_s": (now - self.started_ms) // 1000,
            "uptime": text.duration(max(0, now - self.started_ms) // 1000 * 1000, parts=2),
            "store": facts.store_name,
            "store_size": size,
            "store_size_text": text.human_bytes(size),
            "pending": await self.plan_count(),
            "window": service.window_size(),
            "inflight": service.inflight_count(),
            "cpu_percent": round(cpu, 1),
            "rss": rss,
            "rss_text": text.human_bytes(rss),
            "fired_last_minute": series["fired"][last] + series["fired"][last - 1],
            "failed_hour": sum(series["failed"]),
            "fired_hour": hour["count"],
            "lateness_p50": hour["p50"],
            "lateness_p99": hour["p99"],
            "series": series,
            "upcoming": await self.upcoming(),
            "actions": sorted(action_names()),
            "extensions": sorted(facts.extensions()),
            "extension_errors": list(facts.extension_errors()),
            "timezone": getattr(self.tz, "key", str(self.tz)),
        }


def later_firings(
    plans: list[Plan], start: int, end: int, tz: ZoneInfo, budget: int = UPCOMING_STEPS
) -> tuple[list[int], bool]:
    """Per minute from ``start`` to ``end``: the firings of ``plans`` after their next one.

    Returns (counts, complete); complete is False when ``budget`` schedule
    steps ran out first. A delay plan's firings are counted arithmetically
    (they fall on a fixed grid), others are stepped through their schedule.
    """
    counts = [0] * ((end - start) // 60_000)
    steps = 0
    for plan in plans:
        first = plan.next_time
        if first is None or plan.paused:
            continue
        left = plan.count - plan.current_count - 1 if plan.count else -1
        if plan.kind == DELAY and plan.interval_ms > 0 and not plan.jitter_ms:
            every = plan.interval_ms
            stop = min(end, plan.end_ms) if plan.end_ms else end
            last = first + every * left if left >= 0 else stop
            for i in range(len(counts)):
                lo = max(start + i * 60_000, first + every)
                hi = min(start + (i + 1) * 60_000, stop, last + 1)
                if hi > lo:
                    # occurrences first + k * every, k >= 1, in [lo, hi)
                    counts[i] += -(-(hi - first) // every) - -(-(lo - first) // every)
            continue
        zone = ZoneInfo(plan.timezone) if plan.timezone else tz
        p = plan.copy()
        t: int | None = first
        while t is not None:
            if steps >= budget:
                return counts, False
            steps += 1
            p.current_count += 1
            t = p.next_after(t, zone)
            if t is None or t >= end:
                break
            counts[(t - start) // 60_000] += 1
    return counts, True


def script_json(value: Any) -> markupsafe.Markup:
    """JSON safe to place inside a ``<script type="application/json">`` element."""
    # "<" only occurs inside JSON strings, where \u003c means the same
    return markupsafe.Markup(orjson.dumps(value).decode().replace("<", "\\u003c"))


class LoginHandler(ConsoleHandler):
    def get(self) -> None:
        if not self.console.auth_required:
            self.redirect("/")
            return
        self.page("login.html", error="", next=self._next())

    async def post(self) -> None:
        console = self.console
        if not console.auth_required:
            self.redirect("/")
            return
        given = self.get_body_argument("password", "")
        if console.check_password(given):
            self.set_signed_cookie(
                COOKIE, "admin", expires_days=COOKIE_DAYS, httponly=True, samesite="Lax"
            )
            log.info("console login from %s", self.request.remote_ip)
            self.redirect(self._next())
            return
        log.warning("console login failed from %s", self.request.remote_ip)
        # a little wait makes guessing slow
        await asyncio.sleep(0.5)
        self.set_status(403)
        self.page("login.html", error="Wrong password.", next=self._next())

    def _next(self) -> str:
        nxt = self.get_argument("next", "/")
        # only paths on this site: never //host or a scheme
        if not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
            return "/"
        return nxt


class LogoutHandler(ConsoleHandler):
    def post(self) -> None:
        self.clear_cookie(COOKIE)
        self.redirect("/login" if self.console.auth_required else "/")


class DashboardHandler(ConsoleHandler):
    console: Console

    @tornado.web.authenticated
    async def get(self) -> None:
        snap = await self.console.snapshot()
        self.page("dashboard.html", snap=snap, snap_json=script_json(snap), active="dashboard")


class StatsApiHandler(ConsoleHandler):
    """``GET /console/api/stats``: the dashboard's numbers, polled by its script."""

    console: Console

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "application/json")
        if not self.current_user:
            self.set_status(403)
            self.finish(b'{"error":"login required"}')
            return
        self.finish(orjson.dumps(await self.console.snapshot()))


class NotFoundHandler(ConsoleHandler):
    """Any path no API or page serves: an HTML 404 page (v1 and v2 answer their own)."""

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, f"No page at {self.request.path}.")


def install(service: ForsunService, config: Config) -> tuple[list[Any], dict[str, Any]]:
    """The console's routes and the tornado settings it needs, on ``service``.

    The settings make :class:`NotFoundHandler` the answer to unknown paths.
    Logs a loud warning when the console is reachable from the network
    without a login.
    """
    root = web_root()
    for needed in (root / "templates" / "base.html", root / "static" / "console.css"):
        if not needed.is_file():
            log.warning(
                "the web console's files are missing (%s): its pages will fail; "
                "reinstall forsun-box (its wheel carries forsun_box/web/)",
                needed,
            )
            break
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root / "templates")),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    passwords = tuple(p for p in (config.console_password, config.api_token) if p)
    host = config.http_host
    exposed = not passwords and not is_loopback(host)
    if exposed:
        bar = "!" * 72
        log.warning(
            "\n%s\nTHE WEB CONSOLE AND HTTP API ARE OPEN TO THE NETWORK (%s) WITHOUT A LOGIN.\n"
            "Anyone who can reach this address can create, fire and delete plans, and run\n"
            "shell commands. Set console_password or api_token (HTTP_CONSOLE_PASSWORD /\n"
            "HTTP_API_TOKEN), or bind --http to 127.0.0.1.\n%s",
            bar,
            config.http_bind,
            bar,
        )
    console = Console(
        service=service, env=env, passwords=passwords, exposed=exposed, bind=config.http_bind
    )
    kw = {"console": console}
    routes: list[Any] = [
        (r"/", DashboardHandler, kw),
        (r"/login", LoginHandler, kw),
        (r"/logout", LogoutHandler, kw),
        (r"/console/api/stats", StatsApiHandler, kw),
        *console_plans.routes(kw),
        *console_form.routes(kw),
        *console_cluster.routes(kw),
    ]
    settings = {
        "cookie_secret": cookie_secret(config),
        "login_url": "/login",
        "static_path": str(root / "static"),
        "static_url_prefix": "/static/",
        "xsrf_cookie_kwargs": {"httponly": True, "samesite": "Strict"},
        "default_handler_class": NotFoundHandler,
        "default_handler_args": kw,
    }
    return routes, settings
