"""What every console page shares: the typed context and the base handler.

:class:`ConsoleContext` is the console's whole view of the running service: the
:class:`~forsun_box.api.service.ForsunService` (every read and every change
goes through it, as for the other APIs), the templates, the login settings
and a small cache. :class:`ConsoleHandler` is the base of every page: login,
XSRF on every form, security headers, Jinja2 rendering.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
import markupsafe
import psutil
import tornado.web

from forsun_box import __version__
from forsun_box.api import security
from forsun_box.api.console import text
from forsun_box.api.service import ForsunService

COOKIE = "forsun_box_console"
COOKIE_DAYS = 7


@dataclass
class ConsoleContext:
    """What every console handler shares: the service, templates, login settings, caches."""

    service: ForsunService
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
    def tz(self) -> ZoneInfo:
        return self.service.tz

    def now_ms(self) -> int:
        return self.service.now_ms()

    def check_password(self, given: str) -> bool:
        ok = False
        for p in self.passwords:
            # compare every candidate, so timing tells nothing about which matched
            ok |= security.token_ok(given, p)
        return ok

    async def cached(self, name: str, ttl: float, compute: Callable[[], Awaitable[Any]]) -> Any:
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
        return await self.service.plan_count()


class ConsoleHandler(tornado.web.RequestHandler):
    """Base of console pages: login, XSRF on every form, Jinja2 rendering."""

    console: ConsoleContext

    def initialize(self, console: ConsoleContext) -> None:  # type: ignore[override]
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
        if (
            exc
            and isinstance(exc[1], tornado.web.HTTPError)
            and exc[1].log_message
            and status_code < 500
        ):
            reason = exc[1].log_message
        try:
            self.page("error.html", status=status_code, message=reason)
        except Exception:  # a broken template must still give an answer
            self.finish(f"{status_code} {reason}")
