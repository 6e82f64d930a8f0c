"""The web console's server-rendered pages, checked by selecting elements.

A real forsun-box process; pages fetched with a cookie-keeping client and
parsed with BeautifulSoup.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import tornado.httpclient
import tornado.web
from bs4 import BeautifulSoup

from forsun_box.api.console import handlers as console
from tests.helpers import Server, free_port, wait_until

PASSWORD = "console-pass-123"
TOKEN = "api-token-456"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


class Client:
    """A cookie-keeping HTTP client that does not follow redirects."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect
        )

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def page(self, path: str, status: int = 200) -> BeautifulSoup:
        got, _, body = self.request("GET", path)
        assert got == status, (got, body[:500])
        return BeautifulSoup(body, "html.parser")

    def xsrf(self, path: str = "/plans/new") -> str:
        soup = self.page(path)
        tag = soup.select_one("input[name=_xsrf]")
        assert tag is not None
        return str(tag["value"])

    def post(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, str], str]:
        return self.request("POST", path, {"_xsrf": self.xsrf(), **form})


def delay(key: str, seconds: int = 3600, **kw: Any) -> dict[str, Any]:
    body = {
        "key": key,
        "seconds": seconds,
        "count": 1,
        "action": "shell",
        "params": {"cmd": "true"},
    }
    body.update(kw)
    return body


@pytest.fixture(scope="module")
def server(start_server: Callable[..., Server]) -> Server:
    srv = start_server(name="console")
    plans = [delay(f"p:{i:03d}") for i in range(120)]
    plans.append(delay("x:every5", seconds=5, count=3, minute=0))
    plans.append(
        {
            "key": "x:daily",
            "seconds": 0,
            "minute": 32,
            "hour": 16,
            "action": "http",
            "params": {
                "url": "http://127.0.0.1:9/",
                "password": "pw1",
                "api_token": "tk",
                "Authorization": "Basic x",
            },
        }
    )
    srv.ok("PUT", "/v1/plan", plans[:-1])
    srv.ok("POST", "/v1/plan", plans[-1])
    return srv


@pytest.fixture
def client(server: Server) -> Client:
    return Client(server.http_port)


def cells(row: Any) -> list[str]:
    return [td.get_text(" ", strip=True) for td in row.select("td")]


def test_dashboard(client: Client) -> None:
    soup = client.page("/")
    assert soup.select_one("title").get_text() == "Dashboard · forsun-box"
    assert int(soup.select_one("[data-stat=pending]").get_text()) == 122
    assert soup.select_one("[data-stat=store]").get_text() == "sqlite"
    assert "shell" in soup.select_one("#actions").get_text()
    assert soup.select_one("#exposed-banner") is None  # loopback bind
    assert soup.select_one("#logout") is None  # no login configured
    snap = json.loads(soup.select_one("#snapshot").get_text())
    assert len(snap["series"]["fired"]) == 60 and len(snap["upcoming"]["count"]) == 60
    assert sum(snap["upcoming"]["count"]) >= 1  # x:every5 fires within the hour
    for name in ("chart-firings", "chart-lateness", "chart-upcoming"):
        assert soup.select_one(f"svg#{name}") is not None
    # only our own script, nothing from elsewhere
    assert [s["src"].split("?")[0] for s in soup.select("script[src]")] == ["/static/console.js"]
    status, headers, _ = client.request("GET", "/static/console.js")
    assert status == 200 and "javascript" in headers["Content-Type"]


def test_stats_api(client: Client) -> None:
    status, headers, body = client.request("GET", "/console/api/stats")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    snap = json.loads(body)
    assert snap["store"] == "sqlite" and snap["pending"] >= 122
    assert set(snap["series"]) == {"start_ms", "fired", "failed", "p50", "p99"}
    assert snap["rss"] > 0 and isinstance(snap["cpu_percent"], float)


def test_plans_list_pages_by_key(client: Client) -> None:
    soup = client.page("/plans?prefix=p:")
    keys = [tr["data-key"] for tr in soup.select("#plans tbody tr")]
    assert keys == [f"p:{i:03d}" for i in range(50)]
    nxt = soup.select_one("#next-page")["href"]
    assert "after=p%3A049" in nxt and "prefix=p%3A" in nxt
    soup = client.page(nxt)
    keys = [tr["data-key"] for tr in soup.select("#plans tbody tr")]
    assert keys == [f"p:{i:03d}" for i in range(50, 100)]
    soup = client.page(soup.select_one("#next-page")["href"])
    assert len(soup.select("#plans tbody tr")) == 20
    assert soup.select_one("#next-page") is None
    assert soup.select_one("#first-page")["href"] == "/plans?prefix=p%3A"


def test_plans_list_columns(client: Client) -> None:
    soup = client.page("/plans?prefix=x:")
    rows = {tr["data-key"]: tr for tr in soup.select("#plans tbody tr")}
    every5 = rows["x:every5"]
    assert every5.select_one(".schedule").get_text() == "every 5 s, 3 times"
    assert every5.select_one(".count").get_text(strip=True) == "0 / 3"
    assert every5.select_one(".rel").get_text() in (
        "in 5 s",
        "in 4 s",
        "in 3 s",
        "in 2 s",
        "in 1 s",
        "now",
    )
    daily = rows["x:daily"]
    assert daily.select_one(".schedule").get_text() == "daily at 16:32:00"
    assert daily.select_one(".action").get_text() == "http"
    assert daily.select_one(".status").get_text(strip=True) == "pending"


def test_plans_filters_scan_a_bounded_page(client: Client) -> None:
    soup = client.page("/plans?action=http")
    assert [tr["data-key"] for tr in soup.select("#plans tbody tr")] == ["x:daily"]
    assert "this page read 122" in soup.select_one("#scan-note").get_text()
    soup = client.page("/plans?mode=calendar&prefix=x:")
    assert [tr["data-key"] for tr in soup.select("#plans tbody tr")] == ["x:daily"]
    soup = client.page("/plans?status=failed")
    assert soup.select_one("#no-plans") is not None


def test_plan_page_masks_secrets(client: Client) -> None:
    soup = client.page("/plan?key=x%3Adaily")
    assert soup.select_one("#plan-key").get_text() == "x:daily"
    assert soup.select_one("#schedule").get_text() == "daily at 16:32:00"
    params = {tr.th.get_text(): tr.td.get_text() for tr in soup.select("#params tr")}
    assert params["url"] == "http://127.0.0.1:9/"
    assert params["password"] == params["api_token"] == params["Authorization"] == "••••••"
    assert "pw1" not in str(soup)
    firings = soup.select("#next-firings li")
    assert len(firings) == 5 and all("16:32:00" in li.get_text() for li in firings)
    assert soup.select_one("#no-runs") is not None
    for button in ("#fire", "#pause", "#delete"):
        assert soup.select_one(button) is not None
    assert soup.select_one("#edit")["href"] == "/plan/edit?key=x%3Adaily"
    client.page("/plan?key=nope", status=404)


def test_forms_need_the_xsrf_token(client: Client, server: Server) -> None:
    status, _, _ = client.request("POST", "/plan/pause", {"key": "p:000"})
    assert status == 403
    assert server.ok("GET", "/v1/plan?key=p:000")["key"] == "p:000"


def test_create_with_preview_then_save(client: Client, server: Server) -> None:
    form = {
        "key": "f:cal",
        "mode": "calendar",
        "second": "0",
        "minute": "0",
        "hour": "8",
        "week": "1",
        "count": "0",
        "action": "shell",
        "params": "cmd=echo hi",
    }
    status, _, body = client.post("/plans/new", {**form, "do": "preview"})
    soup = BeautifulSoup(body, "html.parser")
    assert status == 200
    assert "every Monday at 08:00:00" in soup.select_one("#preview-result h2").get_text()
    assert len(soup.select("#preview-firings li")) == 5
    assert soup.select_one("#key")["value"] == "f:cal"  # the form comes back filled in
    assert server.call("GET", "/v1/plan?key=f:cal")[1]["errcode"] == 1003  # not saved
    status, headers, _ = client.post("/plans/new", {**form, "do": "save"})
    assert status == 302 and headers["Location"] == "/plan?key=f%3Acal&done=created"
    plan = server.ok("GET", "/v1/plan?key=f:cal")
    assert (plan["hour"], plan["week"], plan["params"]) == (8, 1, {"cmd": "echo hi"})
    # the same key again is refused, not silently replaced
    status, _, body = client.post("/plans/new", {**form, "do": "save"})
    assert status == 409
    assert "exists" in BeautifulSoup(body, "html.parser").select_one("#error-key").get_text()


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"mode": "calendar", "second": "99"}, "second", "Second must be -1 or 0-59"),
        ({"mode": "delay", "second": "", "count": "1"}, "second", "Give the interval"),
        ({"mode": "delay", "second": "abc"}, "second", "whole number"),
        ({"mode": "cron", "cron": "* * *"}, "cron", "cron expression"),
        ({"mode": "calendar", "second": "0", "timezone": "Mars/Base"}, "timezone", "time zone"),
        ({"mode": "at", "at": "tomorrow"}, "at", "date and time"),
        ({"mode": "at", "at": "2001-01-01T00:00:00"}, "at", "never fires"),
        ({"mode": "delay", "second": "5", "action": "nope"}, "action", "unknown action"),
        ({"mode": "delay", "second": "5", "params": "no equals sign"}, "params", "name=value"),
    ],
)
def test_validation_errors_inline(
    client: Client, fields: dict[str, str], field: str, message: str
) -> None:
    form = {"key": "f:bad", "action": "shell", **fields, "do": "save"}
    status, _, body = client.post("/plans/new", form)
    assert status == 400
    soup = BeautifulSoup(body, "html.parser")
    error = soup.select_one(f"#error-{field}")
    assert error is not None, soup.select_one("main")
    assert message.lower() in error.get_text().lower()
    assert "invalid" in soup.select_one(f"#{field}")["class"]


def test_cron_and_at_modes(client: Client, server: Server) -> None:
    status, _, _ = client.post(
        "/plans/new", {"key": "f:cron", "mode": "cron", "cron": "*/10 * * * *", "action": "shell"}
    )
    assert status == 302
    soup = client.page("/plan?key=f%3Acron")
    assert soup.select_one("#schedule").get_text() == "cron */10 * * * *"
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 7200))
    status, _, _ = client.post(
        "/plans/new", {"key": "f:at", "mode": "at", "at": at, "timezone": "UTC", "action": "shell"}
    )
    assert status == 302
    soup = client.page("/plan?key=f%3Aat")
    assert soup.select_one("#schedule").get_text() == f"once at {at.replace('T', ' ')} (UTC)"
    assert len(soup.select("#next-firings li")) == 1


def test_edit_keeps_masked_secrets(client: Client, server: Server) -> None:
    soup = client.page("/plan/edit?key=x%3Adaily")
    assert soup.select_one("#key").has_attr("readonly")
    params = soup.select_one("#params").get_text()
    assert "password=••••••" in params and "pw1" not in params
    form = {
        name: (soup.select_one(f"#{name}") or {}).get("value", "") or ""
        for name in (
            "key",
            "second",
            "minute",
            "hour",
            "day",
            "month",
            "week",
            "count",
            "cron",
            "timezone",
        )
    }
    form.update(
        {
            "mode": "calendar",
            "action": "http",
            "hour": "17",
            "params": params.replace("url=http://127.0.0.1:9/", "url=http://127.0.0.1:8/"),
        }
    )
    status, headers, _ = client.post("/plan/edit?key=x%3Adaily", form)
    assert status == 302, headers
    plan = server.ok("GET", "/v1/plan?key=x:daily")
    assert plan["hour"] == 17
    assert plan["params"] == {
        "url": "http://127.0.0.1:8/",
        "password": "pw1",
        "api_token": "tk",
        "Authorization": "Basic x",
    }


def test_pause_resume_fire_delete(client: Client, server: Server) -> None:
    status, headers, _ = client.post("/plan/pause", {"key": "p:001"})
    assert status == 302 and "done=paused" in headers["Location"]
    soup = client.page("/plan?key=p%3A001")
    assert soup.select_one("#paused-badge") is not None and soup.select_one("#resume")
    assert soup.select_one("#no-firings") is not None
    assert "p:001" in [
        tr["data-key"] for tr in client.page("/plans?status=paused").select("#plans tbody tr")
    ]
    client.post("/plan/resume", {"key": "p:001"})
    soup = client.page("/plan?key=p%3A001")
    assert soup.select_one("#paused-badge") is None and soup.select_one("#pause")
    status, _, _ = client.post("/plan/fire", {"key": "p:002"})
    assert status == 302
    soup = client.page("/plan?key=p%3A002&done=fired")
    assert soup.select_one("#notice") is not None
    # the run is there, marked as started by "fire now"
    assert [cells(tr)[5:7] for tr in soup.select("#runs tbody tr")] == [["fire now", "ok"]]
    status, headers, _ = client.post("/plan/delete", {"key": "p:003"})
    assert status == 302 and headers["Location"] == "/plans?done=deleted"
    assert server.call("GET", "/v1/plan?key=p:003")[1]["errcode"] == 1003
    assert client.post("/plan/delete", {"key": "p:003"})[0] == 404


def test_what_fires_when(client: Client, server: Server) -> None:
    plan = server.ok("GET", "/v1/plan?key=p:010")
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(plan["next_time"]))
    # the console shows the server's zone: the test process shares it
    soup = client.page("/when?at=" + urllib.parse.quote(at))
    keys = [tr["data-key"] for tr in soup.select("#when-plans tbody tr")]
    assert "p:010" in keys
    assert soup.select_one("#when-title").get_text(" ", strip=True).endswith(at.replace("T", " "))
    soup = client.page("/when?from=2030-01-02T00:00:00&to=2030-01-01T00:00:00")
    assert "after the start" in soup.select_one("#when-error").get_text()


def test_v1_pause_and_resume(server: Server) -> None:
    paused = server.ok("POST", "/v1/plan/pause?key=p:020")
    assert paused["key"] == "p:020"
    ts = paused["next_time"]
    assert "p:020" not in [p["key"] for p in server.ok("GET", f"/v1/time?timestamp={ts}")["plans"]]
    resumed = server.ok("POST", "/v1/plan/resume?key=p:020")
    assert resumed["next_time"] >= ts
    status, reply = server.call("POST", "/v1/plan/pause?key=missing")
    assert status == 200 and reply["errcode"] == 1003 and reply["data"] == {}


# ------------------------------------------------------------------ with a login


@pytest.fixture(scope="module")
def locked(start_server: Callable[..., Server]) -> Server:
    env = {"HTTP_CONSOLE_PASSWORD": PASSWORD, "HTTP_API_TOKEN": TOKEN}
    return start_server(name="console-locked", env=env)


def test_login_required(locked: Server) -> None:
    c = Client(locked.http_port)
    status, headers, _ = c.request("GET", "/plans?prefix=a")
    assert status == 302 and headers["Location"] == "/login?next=%2Fplans%3Fprefix%3Da"
    assert c.request("GET", "/console/api/stats")[0] == 403
    token = c.xsrf("/login")
    status, _, body = c.request("POST", "/login", {"_xsrf": token, "password": "wrong"})
    assert status == 403
    assert (
        BeautifulSoup(body, "html.parser").select_one("#login-error").get_text()
        == "Wrong password."
    )
    status, _, _ = c.request("POST", "/login", {"password": PASSWORD})  # no XSRF token
    assert status == 403
    status, headers, _ = c.request(
        "POST", "/login", {"_xsrf": token, "password": PASSWORD, "next": "//evil.example/"}
    )
    assert status == 302 and headers["Location"] == "/"  # never off-site
    soup = c.page("/")
    assert soup.select_one("#logout") is not None
    assert c.request("GET", "/console/api/stats")[0] == 200
    status, headers, _ = c.post("/logout", {})
    assert status == 302 and headers["Location"] == "/login"
    assert c.request("GET", "/")[0] == 302


def test_api_token_also_logs_in(locked: Server) -> None:
    c = Client(locked.http_port)
    token = c.xsrf("/login")
    status, _, _ = c.request("POST", "/login", {"_xsrf": token, "password": TOKEN})
    assert status == 302
    assert c.request("GET", "/plans")[0] == 200


def test_v1_api_needs_no_cookie(locked: Server) -> None:
    assert locked.ok("PUT", "/v1/plan", delay("v1:plain"))["key"] == "v1:plain"
    assert locked.ok("POST", "/v1/plan/pause?key=v1:plain")["key"] == "v1:plain"


def test_cookie_secret_persisted(locked: Server) -> None:
    path = Path(locked.data_dir) / console.SECRET_FILE
    assert len(path.read_text().strip()) == 64
    assert path.stat().st_mode & 0o077 == 0


# ------------------------------------------------------------------ open to the network


def test_open_console_warns_and_shows_banner(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No login and a non-loopback bind: a loud log line and a banner on every page.

    Nothing listens beyond loopback here: the console's routes are built for
    an app configured for 0.0.0.0 and served on 127.0.0.1.
    """
    config = SimpleNamespace(
        http_host="0.0.0.0",
        http_bind="0.0.0.0:9002",
        console_password="",
        api_token="",
        cookie_secret="",
        data_dir=str(tmp_path),
    )
    service = SimpleNamespace(
        tz=ZoneInfo("UTC"), now_ms=lambda: int(time.time() * 1000), clustered=False
    )
    with caplog.at_level(logging.WARNING, logger="forsun_box.console"):
        routes, settings = console.install(service, config)
    assert "OPEN TO THE NETWORK" in caplog.text

    async def fetch() -> str:
        web = tornado.web.Application(routes, **settings)
        port = free_port()
        server = web.listen(port, "127.0.0.1")
        try:
            resp = await tornado.httpclient.AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/when")
            return resp.body.decode()
        finally:
            server.stop()

    soup = BeautifulSoup(asyncio.run(fetch()), "html.parser")
    banner = soup.select_one("#exposed-banner")
    assert banner is not None and "0.0.0.0:9002" in banner.get_text()


# ---------------------------------------------------------------- a newcomer's snags


def test_a_bad_value_in_a_hidden_kinds_field_does_not_block_saving(
    client: Client, server: Server
) -> None:
    # typed into the delay fields, then switched to cron: those fields are hidden and ignored
    form = {
        "key": "h:cron",
        "mode": "cron",
        "second": "abc",
        "minute": "-5x",
        "count": "0",
        "cron": "0 9 * * *",
        "at": "not a date",
        "action": "shell",
        "params": "cmd=true",
        "do": "save",
    }
    status, headers, body = client.post("/plans/new", form)
    assert status == 302, BeautifulSoup(body, "html.parser").select_one("main")
    assert headers["Location"] == "/plan?key=h%3Acron&done=created"
    status, plan = server.call("GET", "/v2/plans/h:cron")
    assert status == 200 and plan["schedule"]["kind"] == "cron", plan
    # an error in a field the chosen kind shows is still marked beside it
    status, _, body = client.post("/plans/new", {**form, "key": "h:cron2", "cron": "* *"})
    soup = BeautifulSoup(body, "html.parser")
    assert status == 400 and soup.select_one("#error-cron") is not None
    assert soup.select_one("#error-second") is None


def test_pending_plans_count_follows_creates_at_once(client: Client, server: Server) -> None:
    before = json.loads(client.request("GET", "/console/api/stats")[2])["pending"]
    server.ok("PUT", "/v1/plan", delay("pc:new"))
    after = json.loads(client.request("GET", "/console/api/stats")[2])["pending"]
    assert after == before + 1


def test_upcoming_chart_counts_a_recurring_plans_later_firings(
    client: Client, server: Server
) -> None:
    status, body = server.call(
        "PUT",
        "/v2/plans/up:every10",
        {
            "action": "shell",
            "params": {"cmd": "true"},
            "schedule": {"kind": "cron", "expr": "*/10 * * * * *"},
        },
    )
    assert status == 201, body  # a new key: created

    def upcoming() -> list[int]:
        return list(json.loads(client.request("GET", "/console/api/stats")[2])["upcoming"]["count"])

    # every 10 s: some 360 firings in the hour, not one bar of 1 (the chart is
    # recomputed at most every 10 s, later on a busy host)
    assert wait_until(lambda: sum(upcoming()) >= 350, 60, interval=0.5), upcoming()
    assert max(upcoming()) >= 6
    server.call("DELETE", "/v2/plans/up:every10")


def test_a_plans_own_zone_is_labelled_on_its_page_and_in_the_list(
    client: Client, server: Server
) -> None:
    status, body = server.call(
        "PUT",
        "/v2/plans/z:tokyo",
        {
            "action": "shell",
            "params": {"cmd": "true"},
            "timezone": "Asia/Tokyo",
            "schedule": {"kind": "cron", "expr": "0 9 * * *"},
        },
    )
    assert status == 201, body  # a new key: created
    soup = client.page("/plan?key=z%3Atokyo")
    assert "09:00:00 Asia/Tokyo" in soup.select_one("#next-firing").get_text(" ", strip=True)
    assert all("Asia/Tokyo" in li.get_text() for li in soup.select("#next-firings li"))
    row = client.page("/plans?prefix=z%3A").select_one("#plans tr[data-key='z:tokyo']")
    # the list shows it in its own zone too, with the label
    assert "09:00:00 Asia/Tokyo" in row.select_one(".next").get_text(" ", strip=True)


def test_a_finished_plans_page_shows_its_kept_run_history(client: Client, server: Server) -> None:
    server.ok("PUT", "/v1/plan", delay("fin:once", seconds=1))

    def finished() -> bool:
        return server.call("GET", "/v1/plan?key=fin:once")[1]["errcode"] == 1003

    assert wait_until(finished, 60)  # a shell firing: a process to start
    soup = client.page("/plan?key=fin%3Aonce")  # 200, not 404
    assert soup.select_one("#finished-badge") is not None
    rows = soup.select("#runs tbody tr")
    assert len(rows) == 1 and cells(rows[0])[5:7] == ["schedule", "ok"]
    # a key that never existed is still a 404
    client.page("/plan?key=never-was", status=404)


def test_run_history_pages_past_fifty(client: Client, server: Server) -> None:
    server.ok("PUT", "/v1/plan", delay("many:runs", seconds=0, day=1))
    for _ in range(55):
        assert server.call("POST", "/v2/plans/many:runs/fire")[0] == 200
    first = client.page("/plan?key=many%3Aruns")
    assert len(first.select("#runs tbody tr")) == 50
    assert first.select_one("#newer-runs") is None
    older = first.select_one("#older-runs")
    assert older is not None and older["href"] == "/plan?key=many%3Aruns&runs_page=2"
    second = client.page(str(older["href"]))
    assert len(second.select("#runs tbody tr")) == 5
    assert second.select_one("#older-runs") is None
    assert second.select_one("#newer-runs")["href"] == "/plan?key=many%3Aruns"
    assert "runs 51–55" in second.select_one("#runs-title").get_text()  # noqa: RUF001 (the page writes an en dash)


def test_unknown_urls_answer_html_404_and_v1_keeps_its_json(client: Client) -> None:
    status, headers, body = client.request("GET", "/no/such/page")
    assert status == 404 and headers["Content-Type"].startswith("text/html")
    soup = BeautifulSoup(body, "html.parser")
    assert "No page at /no/such/page" in soup.select_one("#error-message").get_text()
    status, headers, body = client.request("GET", "/v1/nosuch")
    assert status == 404 and json.loads(body)["errmsg"] == "no such endpoint: /v1/nosuch"
    status, headers, _ = client.request("GET", "/v2/nosuch")
    assert status == 404 and headers["Content-Type"].startswith("application/problem+json")


def test_the_access_log_shows_plan_keys(server: Server) -> None:
    server.call("GET", "/v1/plan?key=visible-key-123")
    assert wait_until(lambda: "key=visible-key-123" in server.log(), 30), server.log()[-2000:]


def test_missing_console_files_are_reported_at_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an install that lost forsun_box/web/ (as a wheel without package data did)
    monkeypatch.setattr(console, "web_root", lambda: tmp_path / "no-web")
    config = SimpleNamespace(
        http_host="127.0.0.1",
        http_bind="127.0.0.1:9002",
        console_password="",
        api_token="",
        cookie_secret="",
        data_dir=str(tmp_path),
    )
    service = SimpleNamespace(tz=ZoneInfo("UTC"))
    with caplog.at_level(logging.WARNING, logger="forsun_box.console"):
        console.install(service, config)
    assert "the web console's files are missing" in caplog.text
    assert str(tmp_path / "no-web" / "templates" / "base.html") in caplog.text
