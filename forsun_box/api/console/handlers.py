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
of a bounded number of rows; the dashboard's chart is bounded too
(:mod:`~forsun_box.api.console.dashboard`).

Modules: :mod:`.base` (the typed context and the base handler),
:mod:`.dashboard` (the dashboard's figures), :mod:`.plans` (listing, one
plan, its actions, "when"), :mod:`.form` (create and edit), :mod:`.text`
(words for schedules and times); this module has the login, the dashboard
pages and :func:`install`, which puts them together.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import jinja2
import orjson
import tornado.web

from forsun_box.api.console import dashboard, form, plans
from forsun_box.api.console.base import COOKIE, COOKIE_DAYS, Console, ConsoleHandler, script_json
from forsun_box.api.security import is_loopback
from forsun_box.api.service import ForsunService
from forsun_box.config import Config

log = logging.getLogger("forsun_box.console")

SECRET_FILE = "console-cookie-secret"


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
        snap = await dashboard.snapshot(self.console)
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
        self.finish(orjson.dumps(await dashboard.snapshot(self.console)))


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
        *plans.routes(kw),
        *form.routes(kw),
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
