"""Signing in to the web view of a trackd with authentication on: a 401 shows the form,
a bad token is refused, a good one sets the session cookie (the page never keeps the token:
not in storage, not in the URL), and signing out shows the form again."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from browser.conftest import until
from trackd.server import app
from trackd.server.config import Config

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _token(database_url: str, principal: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "trackd.server", "token", "create", "--principal", principal,
         "--admin", "--database-url", database_url],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    secret = out.stdout.strip()
    assert secret.startswith("tkd_")
    return secret


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def auth_server(database_url: str) -> AsyncIterator[tuple[str, str]]:
    """trackd with auth on and its HTTP front; (base URL, an admin's token)."""
    # The token's tables exist once the server has migrated the database.
    config = Config(
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        pool_min_size=1,
        pool_max_size=4,
        artifact_root="file:///tmp/trackd-test-artifacts",
        grace_period=2.0,
        auth="on",
    )
    running = await app.start(config, database_url)
    try:
        assert running.http_port
        secret = _token(database_url, "ada")
        yield f"http://127.0.0.1:{running.http_port}", secret
    finally:
        await running.stop(None)


async def test_sign_in_and_out(page: Any, auth_server: tuple[str, str]) -> None:
    base, secret = auth_server
    await page.goto(f"{base}/#/")
    await page.wait_for_selector("form.signin #signin-token")
    # A bad token: refused, the form stays.
    await page.fill("#signin-token", "tkd_not-a-token")
    await page.click("form.signin button[type=submit]")
    await until(page, "() => document.querySelector('#signin-error').textContent !== ''")
    assert await page.input_value("#signin-token") == ""
    # The good one: the experiments, and who is signed in.
    await page.fill("#signin-token", secret)
    await page.click("form.signin button[type=submit]")
    await page.wait_for_selector("#experiments")
    assert "ada" in await page.inner_text("#who")
    # The token is nowhere the page keeps things.
    kept = await page.evaluate(
        "JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage),"
        " location.href, document.cookie])"
    )
    assert secret not in kept
    cookies = await page.context.cookies(base)
    assert cookies and all(c["httpOnly"] for c in cookies)
    # Signing out: the form again, and the API answers 401.
    await page.click("#signout")
    await page.wait_for_selector("form.signin #signin-token")
    status = await page.evaluate("fetch('/api/view/experiments').then(r => r.status)")
    assert status == 401
