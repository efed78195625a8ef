"""The dashboard signed in with an admin token (a JWT), in Debian's Chromium against a real hub.

The hub is ``wshub serve --preset development`` with ``[auth]`` and no admin key, so a token is
the only way in. With ``[auth]`` the hub admits a token only under the client id its ``sub``
names: the page must connect its WebSocket as that id, or its live view is closed with 1008
right after the login form accepted the token over HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from serve_helpers import Server, wshub_serve
from test_dashboard import FLUSH, SHOWN, dashboard, wait_for_mode
from tokens import AUDIENCE, ISSUER, SECRET, token

ENV = {
    "WSHUB_METRICS__FLUSH_INTERVAL": str(FLUSH),
    "WSHUB_SERVER__ALLOW_ANONYMOUS": "false",
    "WSHUB_AUTH__JWT_SECRET": SECRET,
    "WSHUB_AUTH__JWT_AUDIENCE": AUDIENCE,
    "WSHUB_AUTH__JWT_ISSUER": ISSUER,
}


@pytest.fixture(scope="module")
def token_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``wshub serve --preset development`` that admits tokens only (no admin key)."""
    log = tmp_path_factory.mktemp("dashboard-tokens") / "wshub-serve.log"
    server = wshub_serve(log, "--preset", "development", env=ENV)
    try:
        yield server
    finally:
        server.stop()


def signed(sub: str, *, admin: bool) -> str:
    """A token on the real wall clock (the hub is another process), valid for an hour."""
    return token(sub, admin=admin, subscribe=[], ttl=3600, now=time.time())


def test_the_dashboard_goes_live_with_an_admin_token_and_refuses_a_plain_one(
    chromium_browser: Any, token_hub: Server
) -> None:
    admin = signed("ops", admin=True)
    with httpx.Client(base_url=token_hub.http, timeout=5.0) as http:
        assert http.get("/api/stats").status_code == 401
        assert http.get("/api/stats", headers={"authorization": f"Bearer {admin}"}).is_success
    with dashboard(chromium_browser, token_hub, signed_in=False) as (page, problems):
        page.wait_for_selector("#login:not([hidden])", timeout=SHOWN)
        page.fill("#credential", signed("alice", admin=False))
        page.click("#login button[type=submit]")
        page.wait_for_function(
            "() => document.querySelector('#login-error').textContent"
            ".includes('403: this token has no admin right')",
            timeout=SHOWN,
        )
        page.fill("#credential", admin)
        page.click("#login button[type=submit]")
        # Live: $sys.metrics snapshots arrive over a WebSocket the hub admitted as "ops".
        try:
            wait_for_mode(page, "live", timeout=SHOWN + 4 * FLUSH * 1000)
        except PlaywrightTimeoutError:
            shown = page.text_content("#login-error") or page.text_content("#mode")
            raise AssertionError(f"not live with an admin token: {shown}") from None
        assert page.is_hidden("#login")
        assert admin not in page.url
        assert not any("1008" in problem for problem in problems), problems
