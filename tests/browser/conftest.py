"""Browser tests of the web view: a real trackd (gRPC + its HTTP front) on a fresh
database, data logged through trackd's Python client over gRPC, and the system's Chromium
driven by Playwright (never `playwright install`).

Chromium is TRACKD_CHROMIUM or `chromium` on PATH (Debian: `apt-get install chromium`);
without one every test here is skipped, saying so. Screenshots of each page go to
docs/screenshots/ when TRACKD_SCREENSHOTS=1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from trackd.client import AsyncClient
from trackd.server import app
from trackd.server.config import Config

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Every wait of a test is bounded: Playwright's default for actions and expectations.
TIMEOUT_MS = 10_000


def chromium_path() -> str | None:
    configured = os.environ.get("TRACKD_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http_server(database_url: str) -> AsyncIterator[app.Running]:
    """trackd with its HTTP front on a free port; a RUNNING run silent for 5 s reads as
    UNRESPONSIVE (so the runs table can show one)."""
    config = Config(
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        pool_min_size=1,
        pool_max_size=8,
        artifact_root="file:///tmp/trackd-test-artifacts",
        grace_period=2.0,
        liveness_window=5.0,
    )
    running = await app.start(config, database_url)
    yield running
    await running.stop(None)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def base_url(http_server: app.Running) -> str:
    """Where the web view is served: trackd's own HTTP front (/, /static/, /api/view)."""
    assert http_server.http_port
    return f"http://127.0.0.1:{http_server.http_port}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(http_server: app.Running) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(f"127.0.0.1:{http_server.port}") as c:
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    """One headless Chromium for the module, with a fresh profile; closed at the end."""
    exe = chromium_path()
    if exe is None:
        pytest.skip(
            "no Chromium binary: install it (apt-get install chromium) or set TRACKD_CHROMIUM"
        )
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="trackd-chromium-") as profile:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile,
                executable_path=exe,
                headless=True,
                args=CHROMIUM_ARGS,
                accept_downloads=True,
                viewport={"width": 1400, "height": 900},
            )
            context.set_default_timeout(TIMEOUT_MS)
            try:
                yield context
            finally:
                await context.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any) -> AsyncIterator[Any]:
    """A new tab; fails the test on an uncaught script error or a CSP violation."""
    p = await browser.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    p.on(
        "console",
        lambda msg: (
            errors.append(f"console: {msg.text}")
            if msg.type == "error" and "Content Security Policy" in msg.text
            else None
        ),
    )
    try:
        yield p
    finally:
        await p.close()
    assert not errors, errors


async def screenshot(page: Any, name: str) -> None:
    """Saves docs/screenshots/<name>.png when TRACKD_SCREENSHOTS=1."""
    if os.environ.get("TRACKD_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def until(page: Any, js: str, arg: Any = None, timeout_ms: int = TIMEOUT_MS) -> Any:
    """Polls the function `js` (called with `arg`) in the page until it returns something
    truthy, within `timeout_ms`; its value. (page.wait_for_function evaluates its predicate
    in a way the page's Content-Security-Policy refuses.)"""
    deadline = time.monotonic() + timeout_ms / 1000
    last = None
    while True:
        last = await page.evaluate(js, arg)
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_ms} ms: {js} (last: {last!r})")
        await asyncio.sleep(0.05)


NAMES = "() => [...document.querySelectorAll('#runs tbody td.name a')].map(a => a.textContent)"


async def until_names(page: Any, expected: list[str], *, first: int = 0) -> None:
    """Waits until the runs grid lists `expected` (its first `first` rows only, if given)."""
    js = f"() => {{ const n = ({NAMES})(); return {first} ? n.slice(0, {first}) : n; }}"
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        got = await page.evaluate(js)
        if got == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"runs grid: {got!r}, expected {expected!r}")
        await asyncio.sleep(0.05)
