"""The web console driven in headless Chromium against a real forsun-box process.

Covers: login (wrong then right password), create a plan, find it in the
list, watch it fire and its run appear in the history, fire now, pause and
resume, a validation error and a preview, "what fires when", delete, and
logout. A screenshot of each page goes to tests/e2e/artifacts/.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Server, Sink

PASSWORD = "e2e-console-password"
TIMEOUT_MS = 30_000  # what a step may wait for on a slow host; success costs none of it


def expect(actual: Any) -> Any:
    """Playwright's assertion that retries until it holds, for up to TIMEOUT_MS.

    Imported here, not at the top: without Playwright the ``browser`` fixture
    reports it instead of the module failing to load.
    """
    from playwright.sync_api import expect as retrying

    retrying.set_options(timeout=TIMEOUT_MS)
    return retrying(actual)


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("console-e2e"), env={"HTTP_CONSOLE_PASSWORD": PASSWORD}
    ).start()
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def page(browser: Any, server: Server) -> Iterator[Any]:
    """A logged-in page."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    base = f"http://127.0.0.1:{server.http_port}"
    pg.goto(base + "/login")
    pg.fill("#password", PASSWORD)
    pg.click("#login-form button[type=submit]")
    pg.wait_for_url(base + "/")
    yield pg
    context.close()


def url(server: Server, path: str) -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


def shot(page: Any, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def test_login_rejects_wrong_password_then_accepts(
    browser: Any, server: Server, artifacts: Path
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(url(server, "/plans"))
    assert "/login" in pg.url  # every page needs a login
    shot(pg, artifacts, "01-login")
    pg.fill("#password", "not-it")
    pg.click("#login-form button[type=submit]")
    expect(pg.locator("#login-error")).to_have_text("Wrong password.")
    pg.fill("#password", PASSWORD)
    pg.click("#login-form button[type=submit]")
    pg.wait_for_url(url(server, "/plans"))  # back where it was going
    expect(pg.locator("h1").first).to_have_text(re.compile(r"^Plans"))
    context.close()


def test_create_find_watch_fire(page: Any, server: Server, sink: Sink, artifacts: Path) -> None:
    page.goto(url(server, "/plans/new"))
    page.fill("#key", "e2e-hook")
    page.check("#mode-delay")
    for f in ("second", "minute", "hour", "day", "month", "week"):
        page.fill(f"#{f}", "")
    page.fill("#second", "2")
    page.fill("#count", "0")
    page.select_option("#action", "http")
    page.fill("#params", f"url={sink.url('/e2e-hook')}\nmethod=get\nauth_token=hidden-value")
    expect(page.locator("#cron")).to_be_hidden()  # fields of other modes are hidden
    page.click("#preview")
    expect(page.locator("#preview-firings li")).to_have_count(5)
    shot(page, artifacts, "02-form-preview")
    page.click("#save")
    page.wait_for_url(re.compile(r".*/plan\?key=e2e-hook.*"))
    expect(page.locator("#notice")).to_have_text("Plan created.")
    expect(page.locator("#schedule")).to_have_text("every 2 s, no end")
    # the secret-looking param is masked, the others shown
    params = page.locator("#params").inner_text()
    assert "••••••" in params and "hidden-value" not in params and "/e2e-hook" in params

    # find it in the list by key prefix
    page.goto(url(server, "/plans"))
    page.fill("#prefix", "e2e-")
    page.click("#filters button[type=submit]")
    row = page.locator("#plans tr[data-key='e2e-hook']")
    expect(row.locator(".schedule")).to_have_text("every 2 s, no end")
    expect(row.locator(".next")).to_have_text(re.compile(r"in \d+ s|now"))
    shot(page, artifacts, "03-plans-list")
    row.locator("a").click()
    page.wait_for_url(re.compile(r".*/plan\?key=e2e-hook"))

    # watch it fire: the sink is called and the run shows in the history
    assert sink.wait_for(1, timeout=60), "the plan did not fire"
    deadline = time.monotonic() + 60
    while page.locator("#runs tbody tr").count() == 0 and time.monotonic() < deadline:
        page.wait_for_timeout(500)
        page.reload()
    first_run = page.locator("#runs tbody tr").first
    expect(first_run.locator(".result")).to_have_text("ok")
    assert sink.hits[0][1] == "/e2e-hook"
    shot(page, artifacts, "04-plan-history")


def test_pause_and_resume(page: Any, server: Server, artifacts: Path) -> None:
    page.goto(url(server, "/plan?key=e2e-hook"))
    page.click("#pause")
    page.wait_for_url(re.compile(r".*done=paused"))
    expect(page.locator("#paused-badge")).to_be_visible()
    expect(page.locator("#next-firing")).to_have_text("paused")
    expect(page.locator("#resume")).to_be_visible()
    shot(page, artifacts, "05-plan-paused")
    # the paused filter finds it
    page.goto(url(server, "/plans?status=paused"))
    expect(page.locator("#plans tr[data-key='e2e-hook']")).to_have_count(1)
    page.goto(url(server, "/plan?key=e2e-hook"))
    page.click("#resume")
    page.wait_for_url(re.compile(r".*done=resumed"))
    expect(page.locator("#paused-badge")).to_have_count(0)
    expect(page.locator("#next-firings li")).to_have_count(5)


def test_fire_now_records_a_run(page: Any, server: Server) -> None:
    page.goto(url(server, "/plans/new"))
    page.fill("#key", "e2e-manual")
    page.check("#mode-calendar")
    for f, v in (
        ("second", "0"),
        ("minute", "0"),
        ("hour", "3"),
        ("day", ""),
        ("month", ""),
        ("week", ""),
    ):
        page.fill(f"#{f}", v)
    page.fill("#count", "0")
    page.select_option("#action", "shell")
    page.fill("#params", "cmd=true")
    page.click("#save")
    page.wait_for_url(re.compile(r".*/plan\?key=e2e-manual.*"))
    expect(page.locator("#schedule")).to_have_text("daily at 03:00:00")
    expect(page.locator("#no-runs")).to_be_visible()
    page.click("#fire")
    page.wait_for_url(re.compile(r".*done=fired"))
    expect(page.locator("#runs tbody tr")).to_have_count(1)
    expect(page.locator("#runs .result").first).to_have_text("ok")
    # a manual firing is told apart from scheduled ones
    expect(page.locator("#runs .trigger").first).to_have_text("fire now")


def test_validation_error_shown_inline(page: Any, server: Server, artifacts: Path) -> None:
    page.goto(url(server, "/plans/new"))
    page.fill("#key", "e2e-bad")
    page.check("#mode-calendar")
    page.fill("#second", "99")
    page.fill("#minute", "x")
    page.click("#save")
    expect(page.locator("#form-errors")).to_be_visible()
    expect(page.locator("#error-minute")).to_contain_text("whole number")
    expect(page.locator("#minute")).to_have_class("invalid")
    # fix the minute: the engine's own range check speaks next
    page.fill("#minute", "5")
    page.click("#save")
    expect(page.locator("#error-second")).to_contain_text("Second must be -1 or 0-59")
    expect(page.locator("#key")).to_have_value("e2e-bad")  # what was typed is kept
    shot(page, artifacts, "06-form-error")
    page.goto(url(server, "/plans?prefix=e2e-bad"))
    expect(page.locator("#no-plans")).to_be_visible()  # nothing was saved


def test_a_bad_value_left_in_a_hidden_kind_does_not_block_saving(page: Any, server: Server) -> None:
    page.goto(url(server, "/plans/new"))
    page.fill("#key", "e2e-switched")
    page.check("#mode-delay")
    page.fill("#second", "abc")  # a mistake, then the user changes their mind
    page.check("#mode-cron")
    expect(page.locator("#second")).to_be_hidden()
    page.fill("#cron", "0 4 * * *")
    page.fill("#params", "cmd=true")
    page.click("#save")
    page.wait_for_url(re.compile(r".*/plan\?key=e2e-switched.*"))
    expect(page.locator("#notice")).to_have_text("Plan created.")
    expect(page.locator("#schedule")).to_have_text(re.compile(r"^cron 0 4 \* \* \*"))


def test_finished_plan_page_and_unknown_url(page: Any, server: Server, artifacts: Path) -> None:
    server.ok(
        "PUT",
        "/v1/plan",
        {"key": "e2e-once", "seconds": 1, "count": 1, "action": "shell", "params": {"cmd": "true"}},
    )
    deadline = time.monotonic() + 60  # a shell firing: a process to start
    while server.call("GET", "/v1/plan?key=e2e-once")[1]["errcode"] == 0:
        assert time.monotonic() < deadline, "the one-shot plan did not finish"
        page.wait_for_timeout(200)
    page.goto(url(server, "/plan?key=e2e-once"))
    expect(page.locator("#finished-badge")).to_be_visible()
    expect(page.locator("#runs tbody tr")).to_have_count(1)
    expect(page.locator("#runs .trigger").first).to_have_text("schedule")
    shot(page, artifacts, "10-plan-finished")
    response = page.goto(url(server, "/no/such/page"))
    assert response is not None and response.status == 404
    expect(page.locator("#error-message")).to_contain_text("No page at /no/such/page")
    # the console's own page, with its nav
    expect(page.locator("header nav a")).to_have_count(4)
    shot(page, artifacts, "11-not-found")


def test_what_fires_when_and_dashboard(page: Any, server: Server, artifacts: Path) -> None:
    page.goto(url(server, "/when"))
    page.locator("#when-range p.hint a").first.click()  # "next minute"
    expect(page.locator("#when-plans tr[data-key='e2e-hook']")).to_have_count(1)
    shot(page, artifacts, "07-when")
    page.goto(url(server, "/"))
    assert int(page.locator("[data-stat=pending]").inner_text()) >= 1
    # at least one bar each; the firings chart is drawn from the minute series
    expect(page.locator("#chart-firings rect").first).to_be_attached()
    expect(page.locator("#chart-upcoming rect").first).to_be_attached()
    # the page refreshes itself from the stats endpoint (every 5 s, later on a slow host)
    before = page.locator("[data-stat=now]").inner_text()
    page.wait_for_function(
        "b => document.querySelector('[data-stat=now]').textContent !== b",
        arg=before,
        timeout=TIMEOUT_MS,
    )
    expect(page.locator("#live")).to_have_text("live")
    shot(page, artifacts, "08-dashboard")


def test_delete(page: Any, server: Server, artifacts: Path) -> None:
    page.goto(url(server, "/plan/edit?key=e2e-hook"))
    # edit keeps the masked secret unless it is changed
    expect(page.locator("#params")).to_have_value(re.compile(r"auth_token=••••••"))
    shot(page, artifacts, "09-form-edit")
    page.goto(url(server, "/plan?key=e2e-hook"))
    page.once("dialog", lambda d: d.accept())
    page.click("#delete")
    page.wait_for_url(re.compile(r".*/plans\?done=deleted"))
    expect(page.locator("#notice")).to_have_text("Plan deleted.")
    expect(page.locator("#plans tr[data-key='e2e-hook']")).to_have_count(0)
    # gone, but it fired: its run history stays reachable
    page.goto(url(server, "/plan?key=e2e-hook"))
    expect(page.locator("#finished-badge")).to_be_visible()
    expect(page.locator("#delete")).to_have_count(0)
    page.goto(url(server, "/plan?key=e2e-never-was"))
    expect(page.locator("#error-message")).to_contain_text("No plan with key")


def test_logout(page: Any, server: Server) -> None:
    page.goto(url(server, "/"))
    page.click("#logout")
    page.wait_for_url(re.compile(r".*/login"))
    page.goto(url(server, "/plans"))
    assert "/login" in page.url


NARROW = {"width": 420, "height": 860}


def _fits(pg: Any) -> None:
    """Nothing sticks out sideways: the page does not scroll, every nav link is on screen."""
    width = pg.evaluate("document.documentElement.scrollWidth")
    assert width <= NARROW["width"], f"{pg.url}: page is {width} px wide"
    for i in range(pg.locator("header nav a").count()):
        box = pg.locator("header nav a").nth(i).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= NARROW["width"]


def test_pages_fit_a_420px_screen(browser: Any, server: Server, artifacts: Path) -> None:
    status, _ = server.call(
        "PUT",
        "/v2/plans/e2e-tokyo",
        {
            "action": "http",
            "params": {"url": "http://127.0.0.1:9/a/rather/long/path/that/needs/room?x=1"},
            "timezone": "Asia/Tokyo",
            "schedule": {"kind": "cron", "expr": "30 9 * * 1-5"},
        },
    )
    assert status == 201
    context = browser.new_context(viewport=NARROW)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(url(server, "/login"))
    pg.fill("#password", PASSWORD)
    pg.click("#login-form button[type=submit]")
    pg.wait_for_url(url(server, "/"))
    for name, path in (
        ("dashboard", "/"),
        ("plans", "/plans"),
        ("plan", "/plan?key=e2e-manual"),
        ("plan-zone", "/plan?key=e2e-tokyo"),
        ("form", "/plans/new"),
        ("when", "/when"),
    ):
        pg.goto(url(server, path))
        _fits(pg)
        shot(pg, artifacts, f"narrow-{name}")
    # a wide table scrolls inside its own box instead of widening the page
    pg.goto(url(server, "/plan?key=e2e-manual"))
    assert pg.evaluate("document.querySelector('#runs').parentElement.className") == "scroll"
    # the plan's own zone is labelled wherever its times are shown
    pg.goto(url(server, "/plan?key=e2e-tokyo"))
    expect(pg.locator("#next-firing")).to_contain_text("09:30:00 Asia/Tokyo")
    pg.goto(url(server, "/plans?prefix=e2e-tokyo"))
    expect(pg.locator("#plans tr[data-key='e2e-tokyo'] .next")).to_contain_text(
        "09:30:00 Asia/Tokyo"
    )
    context.close()
