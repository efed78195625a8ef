"""Shared test configuration and fixtures."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

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


def missing_tool(message: str) -> NoReturn:
    """Skip with ``message`` locally, but fail in CI (CI is set): CI must not go green without
    the tool.

    Call it from a sync test or a sync fixture: pytest-trio drops the reason of a skip raised
    inside an async test (the summary then says only "Skipped").
    """
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_tool(path_or_name: str, why: str, package: str) -> str:
    """The tool's path; skips locally when it is missing (naming the Debian ``package``), but
    fails in CI."""
    found = path_or_name if os.path.exists(path_or_name) else shutil.which(path_or_name)
    if found:
        return found
    missing_tool(f"{path_or_name} is needed for {why} (Debian: apt-get install {package})")


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright; never a downloaded browser.

    Module-scoped: Playwright's sync API keeps an asyncio loop running in this thread while it
    is open, and a test module run after it that calls ``asyncio.run`` must not find one.
    """
    executable = require_tool(CHROMIUM, "the browser tests", "chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


#: Node's WebSocket global is needed: behind a flag in Node 20, built in from 22. Debian 12's
#: own nodejs is 18 (no WebSocket at all); Debian 13's, or NodeSource's for Debian 12, is >= 20.
NODE_NEEDED = "the JavaScript client tests (Node >= 20; Debian 12's own nodejs is 18)"


@functools.cache
def node_command() -> tuple[str, ...]:
    """Node with the flags it needs: Node 20 has its WebSocket global behind a flag.

    Skips (fails in CI) without Node >= 20. Called from the sync ``node`` fixture, so that the
    skip reason reaches the summary (pytest-trio drops it when an async test skips).
    """
    node = require_tool("node", NODE_NEEDED, "nodejs")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major, minor = (int(part) for part in version.stdout.strip().lstrip("v").split(".")[:2])
    if major < 20:
        found = version.stdout.strip()
        missing_tool(f"node {found} is too old for {NODE_NEEDED} (Debian: apt-get install nodejs)")
    flags = ["--experimental-websocket"] if major < 22 else []
    if (major, minor) >= (20, 11):
        flags.append("--disable-warning=ExperimentalWarning")
    return (node, *flags)


@pytest.fixture
def node() -> tuple[str, ...]:
    """The Node command line (``node_command``), or a skip whose reason names the package."""
    return node_command()


REDIS_SERVER = "/usr/bin/redis-server"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free port of 127.0.0.1, no persistence; stopped after."""
    binary = require_tool(REDIS_SERVER, "the Redis broker tests", "redis-server")
    server = RedisServer(binary, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
