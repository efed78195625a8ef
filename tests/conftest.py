"""Shared test configuration and fixtures."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from redis_server import RedisServer

# Hypothesis: no wall-clock deadlines (the machines are shared and noisy); in CI a fixed,
# larger budget and derandomized runs so a failure reproduces.
settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, max_examples=200)
settings.load_profile("ci" if os.environ.get("CI") else "default")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def require_tool(path_or_name: str, why: str, package: str = "chromium") -> str:
    """The tool's path; skips locally when it is missing, but fails in CI (CI is set)."""
    found = path_or_name if os.path.exists(path_or_name) else shutil.which(path_or_name)
    if found:
        return found
    message = f"{path_or_name} is needed for {why} (Debian: apt-get install {package})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright; never a downloaded browser.

    Module-scoped: Playwright's sync API keeps an asyncio loop running in this thread while it
    is open, and a test module run after it that calls ``asyncio.run`` must not find one.
    """
    executable = require_tool(CHROMIUM, "the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


REDIS_SERVER = "/usr/bin/redis-server"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free port of 127.0.0.1, no persistence; stopped after."""
    binary = require_tool(REDIS_SERVER, "the Redis broker tests", package="redis-server")
    server = RedisServer(binary, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
