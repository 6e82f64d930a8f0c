"""The console's cluster page in headless Chromium, on two real cluster nodes on one
PostgreSQL (tests/servers.py): the nav links it, it shows both nodes, and it fits a
420 px screen. Screenshots go to tests/e2e/artifacts/ (cluster, narrow-cluster).

Chromium is started here, after the database is set up, not by the module's
``browser`` fixture: Playwright's event loop would stop the PostgreSQL
fixture's own asyncio.run()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.conftest import CHROMIUM_ARGS, _chromium, _unavailable
from tests.e2e.test_console_browser import NARROW, TIMEOUT_MS, _fits, expect
from tests.helpers import wait_until
from tests.integration.test_cluster_nodes import balanced, node, owners

pytest_plugins = ["tests.servers"]


def test_the_cluster_page_in_a_browser(tmp_path: Path, postgres_dsn: str, artifacts: Path) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    path = _chromium()
    if not path:
        _unavailable("chromium is not installed (apt-get install chromium)")
    nodes = {n: node(tmp_path, postgres_dsn, n) for n in ("node-a", "node-b")}
    try:
        for srv in nodes.values():
            srv.start()
        assert wait_until(lambda: balanced(postgres_dsn, set(nodes)), 60), owners(postgres_dsn)
        base = f"http://127.0.0.1:{nodes['node-a'].http_port}"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
            try:
                look(browser, base, artifacts)
            finally:
                browser.close()
    finally:
        for srv in nodes.values():
            if srv.proc is not None:
                srv.stop()


def look(browser: Any, base: str, artifacts: Path) -> None:
    for name, viewport in (
        ("cluster", {"width": 1280, "height": 900}),
        ("narrow-cluster", NARROW),
    ):
        context = browser.new_context(viewport=viewport)
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(base + "/")
        pg.click("#nav-cluster")
        pg.wait_for_url(base + "/cluster")
        expect(pg.locator("#nodes tbody tr")).to_have_count(2)
        expect(pg.locator("#this-node")).to_have_text("node-a")
        expect(pg.locator("#nav-cluster")).to_have_class("on")
        if viewport is NARROW:
            _fits(pg)
        pg.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)
        context.close()
