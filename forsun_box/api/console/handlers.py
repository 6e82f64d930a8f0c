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
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
import markupsafe
import orjson
import psutil
import tornado.web

from forsun_box import __version__
from forsun_box.actions import action_names
from forsun_box.api.console import text
from forsun_box.api.security import is_loopback
from forsun_box.plan import DELAY

log = logging.getLogger("forsun_box.console")

COOKIE = "forsun_box_console"
COOKIE_DAYS = 7
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


def cookie_secret(config: Any) -> str:
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
class Console:
    """What every console handler shares: the running app, templates, caches."""

    app: Any  # forsun_box.app.App
    env: jinja2.Environment
    passwords: tuple[str, ...]
    exposed: bool  # no login configured and bound beyond loopback
    bind: str
    process: psutil.Process = field(default_factory=lambda: psutil.Process(os.getpid()))
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    _cache: dict[str, tuple[float, Any]] = field(default_factory=dict)

    @property
    def auth_required(self) -> bool:
        return bool(self.passwords)

    @property
    def service(self) -> Any:
        return self.app.service

    @property
    def scheduler(self) -> Any:
        return self.app.scheduler

    @property
    def tz(self) -> ZoneInfo:
        return self.app.scheduler.tz  # type: ignore[no-any-return]

    def now_ms(self) -> int:
        return int(self.app.scheduler.clock.now_ms())

    def check_password(self, given: str) -> bool:
        ok = False
        for p in self.passwords:
            # compare every candidate, so timing tells nothing about which matched
            ok |= hmac.compare_digest(given.encode(), p.encode())
        return ok

    async def cached(self, name: str, ttl: float, compute: Any) -> Any:
        hit = self._cache.get(name)
        now = time.monotonic()
        if hit is not None and now - hit[0] < ttl:
            return hit[1]
        value = await compute()
        self._cache[name] = (now, value)
        return value

    def forget_counts(self) -> None:
        """Drop the cached chart after this console changed plans (others' changes show later)."""
        self._cache.pop("upcoming", None)

    async def plan_count(self) -> int:
        # not cached: every store keeps its count in step with each commit
        return int(await self.scheduler.count())

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
                counts.append(
                    await self.scheduler.count_firing_between(lo, a + 60_000, UPCOMING_CAP)
                )
            due = await self.scheduler.firing_between(now, end, UPCOMING_SAMPLE + 1)
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
        app = self.app
        now = self.now_ms()
        proc = self.process
        with proc.oneshot():
            cpu = proc.cpu_percent(interval=None)
            rss = proc.memory_info().rss
        store = app.store
        size = await store.size_bytes() if store is not None else 0
        stats = app.stats
        series = stats.minutes.series(now)
        hour = stats.minutes.percentiles(now)
        last = len(series["fired"]) - 1
        ext_errors = [str(e) for e in getattr(app.extensions, "errors", [])]
        return {
            "version": __version__,
            "now_ms": now,
            "now": text.local_time(now, self.tz),
            "uptime_s": (now - self.started_ms) // 1000,
            "uptime": text.duration(max(0, now - self.started_ms) // 1000 * 1000, parts=2),
            "store": app.config.driver,
            "store_size": size,
            "store_size_text": text.human_bytes(size),
            "pending": await self.plan_count(),
            "window": self.scheduler.window_size(),
            "inflight": self.scheduler.inflight_count(),
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
            "extensions": sorted(app.extensions.names()),
            "extension_errors": ext_errors,
            "timezone": getattr(self.tz, "key", str(self.tz)),
        }


def later_firings(
    plans: list[Any], start: int, end: int, tz: ZoneInfo, budget: int = UPCOMING_STEPS
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


class ConsoleHandler(tornado.web.RequestHandler):
    """Base of console pages: login, XSRF on every form, Jinja2 rendering."""

    console: Console

    def initialize(self, console: Console) -> None:  # type: ignore[override]
        self.console = console

    def set_default_headers(self) -> None:
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'",
        )

    def get_current_user(self) -> str | None:
        if not self.console.auth_required:
            return "open"
        value = self.get_signed_cookie(COOKIE, max_age_days=COOKIE_DAYS)
        return value.decode() if value else None

    def prepare(self) -> None:
        if self.request.method not in ("GET", "HEAD", "OPTIONS"):
            self.check_xsrf_cookie()

    def page(self, template: str, **ctx: Any) -> None:
        """Render ``template`` with the layout's shared values and finish."""
        console = self.console
        ctx.setdefault("notice", self.get_query_argument("done", ""))
        ctx.setdefault("active", "")
        values = {
            "console": console,
            "version": __version__,
            "user": self.current_user,
            "auth_required": console.auth_required,
            "exposed": console.exposed,
            "bind": console.bind,
            "timezone": getattr(console.tz, "key", str(console.tz)),
            "xsrf_form_html": lambda: markupsafe.Markup(self.xsrf_form_html()),
            "static_url": self.static_url,
            "path": self.request.path,
            "text": text,
            "tz": console.tz,
            "now_ms": console.now_ms(),
            **ctx,
        }
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(console.env.get_template(template).render(**values))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self._reason
        exc = kwargs.get("exc_info")
        if exc and isinstance(exc[1], tornado.web.HTTPError) and exc[1].log_message:
            if status_code < 500:
                reason = exc[1].log_message
        try:
            self.page("error.html", status=status_code, message=reason)
        except Exception:  # a broken template must still give an answer
            self.finish(f"{status_code} {reason}")


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
    @tornado.web.authenticated
    async def get(self) -> None:
        snap = await self.console.snapshot()
        self.page("dashboard.html", snap=snap, snap_json=script_json(snap), active="dashboard")


class StatsApiHandler(ConsoleHandler):
    """``GET /console/api/stats``: the dashboard's numbers, polled by its script."""

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


def install(app: Any) -> tuple[list[Any], dict[str, Any]]:
    """The console's routes and the tornado settings it needs, for ``app``'s HTTP server.

    The settings make :class:`NotFoundHandler` the answer to unknown paths.
    Logs a loud warning when the console is reachable from the network
    without a login.
    """
    from forsun_box.api.console import form as console_form
    from forsun_box.api.console import plans as console_plans

    config = app.config
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
    console = Console(app=app, env=env, passwords=passwords, exposed=exposed, bind=config.http_bind)
    kw = {"console": console}
    routes: list[Any] = [
        (r"/", DashboardHandler, kw),
        (r"/login", LoginHandler, kw),
        (r"/logout", LogoutHandler, kw),
        (r"/console/api/stats", StatsApiHandler, kw),
        *console_plans.routes(kw),
        *console_form.routes(kw),
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
