"""The status page in a real headless browser (Debian's chromium driven by Playwright): it shows
each model's versions, states, labels, pin, traffic and events, and a swap performed during the
test appears without a reload. Skipped when chromium or Playwright is missing (.ci/run installs
chromium)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.control.conftest import TOKEN, publish
from tests.harness import ServerProcess

CHROMIUM = os.environ.get("HOTSERVE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AUTH = {"Authorization": f"Bearer {TOKEN}"}

sync_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no chromium at {CHROMIUM}", allow_module_level=True)


@pytest.fixture
def browser_page() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def _row(model: str, version: int, state: str) -> str:
    return f'tr[data-model="{model}"][data-version="{version}"][data-state="{state}"]'


def test_a_swap_appears_on_the_page_without_a_reload(
    browser_page: Any, version_library: Path, tmp_path: Path
) -> None:
    page = browser_page
    base = tmp_path / "m"
    base.mkdir()
    publish(version_library, base, 1, 2)
    srv = ServerProcess(
        ["--model_name=m", f"--model_base_path={base}", "--version_settle_seconds=0"],
        env={"HOTSERVE_ADMIN_TOKEN": TOKEN},
    )
    srv.start(tmp_path / "server.log")
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                client.post(srv.url + "/v1/models/m:predict", json={"instances": [1.0]})

    load = threading.Thread(target=traffic, daemon=True)
    load.start()
    try:
        page.goto(srv.url + "/")
        page.wait_for_selector("#login:not([hidden])")
        page.fill("#token", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector(_row("m", 2, "AVAILABLE"))
        assert page.text_content('section[data-model="m"] [data-role="default"]') == "default: 2"
        page.evaluate("window.__loadedOnce = true")  # gone if the page reloads

        publish(version_library, base, 3)  # the swap: 3 loads, takes the route, 2 unloads
        page.wait_for_selector(_row("m", 3, "AVAILABLE"))
        page.wait_for_function(
            """() => document.querySelector('section[data-model="m"] [data-role="default"]')
                       .textContent === 'default: 3'"""
        )
        page.wait_for_selector(_row("m", 2, "END"))
        events = page.text_content('section[data-model="m"] [data-role="events"]') or ""
        assert "version 3 AVAILABLE (load" in events and "version 2 UNLOADING" in events

        r = httpx.put(srv.url + "/admin/v1/models/m/pin", json={"version": 1}, headers=AUTH)
        assert r.status_code == 200, r.text
        page.wait_for_selector('section[data-model="m"] .badge.pin')
        assert "pinned to 1" in (page.text_content('section[data-model="m"] h2') or "")
        # Requests/s of the serving version, from the traffic the test keeps sending.
        page.wait_for_function(
            """() => { const row = document.querySelector('tr[data-version="1"]');
                       return row && Number(row.children[4].textContent) > 0; }"""
        )
        assert page.evaluate("window.__loadedOnce") is True
    finally:
        stop.set()
        load.join(30)
        srv.stop()


def test_the_page_asks_again_for_a_wrong_token(browser_page: Any, tmp_path: Path) -> None:
    page = browser_page
    srv = ServerProcess(
        [
            "--model_name=half",
            f"--model_base_path={Path(__file__).parents[2] / 'models/half_plus_two'}",
        ],
        env={"HOTSERVE_ADMIN_TOKEN": TOKEN},
    )
    srv.start(tmp_path / "server.log")
    try:
        page.goto(srv.url + "/")
        page.fill("#token", "not-the-token-at-all")
        page.click("button[type=submit]")
        page.wait_for_function("document.getElementById('banner').textContent === 'Wrong token.'")
        assert not page.is_hidden("#login")
        assert page.query_selector("section") is None
        csp = httpx.get(srv.url + "/").headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
    finally:
        srv.stop()
