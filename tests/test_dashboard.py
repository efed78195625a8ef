"""The live dashboard (``GET /dashboard``) in Debian's Chromium against real hubs.

The hubs run in subprocesses: ``wshub serve --preset development`` for most tests, and
``tests/dashboard_server.py`` (the same app with an ``authenticate`` hook that fails on demand)
for the circuit-breaker test. Metrics flush every ``FLUSH`` seconds so charts fill quickly.
Traffic comes from plain ``websockets`` clients in threads and ``POST /api/publish``.

Every wait is a condition with a deadline (Playwright's ``wait_for_function`` /
``wait_for_selector``, or ``threading.Event.wait``); the only sleeps pace the background
publisher. The breaker test also takes a screenshot (1280x800, full page); set
WSHUB_SCREENSHOT=docs/dashboard.png to refresh the one in the docs.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from dashboard_server import UNREACHABLE_TOKEN
from serve_helpers import SUBPROTOCOL, WSHUB_SERVE_READY, Server, hello, objects, start, wshub_serve

HERE = Path(__file__).parent
# The picture in docs/ is refreshed on request (WSHUB_SCREENSHOT=docs/dashboard.png), so an
# ordinary test run leaves the working tree as it was.
SCREENSHOT_ENV = "WSHUB_SCREENSHOT"
API_KEY = "dashboard-test-key"
FLUSH = 0.5
ENV = {"WSHUB_METRICS__FLUSH_INTERVAL": str(FLUSH), "WSHUB_ADMIN__API_KEY": API_KEY}
CHART_IDS = [
    "connections",
    "throughput",
    "dedup",
    "queues",
    "latency",
    "resumes",
    "retries",
    "disconnects",
    "cleanup",
]
#: Milliseconds for the page to show something the hub has (a flush or two, and rendering).
SHOWN = 5_000


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``wshub serve --preset development`` with a fast flush and an admin key."""
    log = tmp_path_factory.mktemp("dashboard") / "wshub-serve.log"
    server = wshub_serve(log, "--preset", "development", env=ENV)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def breaker_hub(tmp_path: Path) -> Iterator[Server]:
    """A hub whose ``authenticate`` breaker trips after 2 failures and probes after 1 s."""
    env = {
        **ENV,
        "WSHUB_BREAKER__FAILURE_THRESHOLD": "2",
        "WSHUB_BREAKER__SUCCESS_THRESHOLD": "1",
        "WSHUB_BREAKER__RETRIES": "0",
        "WSHUB_BREAKER__OPEN_TIMEOUT": "1",
        "WSHUB_CLEANUP__INTERVAL": "1",  # the cleanup chart gets runs and removals to show
        "WSHUB_DEDUP__WINDOW": "2",
    }
    argv = [sys.executable, str(HERE / "dashboard_server.py")]
    server = start(argv, env, tmp_path / "dashboard-server.log", WSHUB_SERVE_READY)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- the page


# What the login form stores: a tab signed in before the page loads.
SIGNED_IN = f"""try {{
  sessionStorage.setItem("wshub.dashboard.credential", {json.dumps(API_KEY)});
}} catch {{}}"""


@contextmanager
def dashboard(
    browser: Any,
    server: Server,
    query: str = "",
    *,
    viewport: tuple[int, int] = (1280, 800),
    init_script: str | None = None,
    signed_in: bool = True,
) -> Iterator[tuple[Any, list[str]]]:
    """The dashboard open in a fresh context, signed in with the admin key unless told not to;
    yields the page and its console problems."""
    width, height = viewport
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        page = context.new_page()
        problems: list[str] = []

        def on_request(request: Any) -> None:
            # One self-contained page: nothing from any other origin (no CDN, no font).
            if not request.url.startswith((server.http, "data:")):
                problems.append(f"request: {request.url}")

        def on_console(message: Any) -> None:
            if message.type in ("error", "warning"):
                problems.append(f"{message.type}: {message.text}")

        page.on("request", on_request)
        page.on("console", on_console)
        page.on("pageerror", lambda error: problems.append(f"pageerror: {error}"))
        if signed_in:
            page.add_init_script(SIGNED_IN)
        if init_script is not None:
            page.add_init_script(init_script)
        response = page.goto(f"{server.http}/dashboard?{query}")
        assert response is not None and response.status == 200
        yield page, problems
    finally:
        context.close()


# A chart is drawn when uPlot holds it (a canvas in the figure) and its lines have points:
# ``data-lines`` counts the values of each line in the data given to uPlot.
CHARTS_DRAWN = """(strict) => {
  const charts = [...document.querySelectorAll("#charts figure.chart")];
  return charts.length > 0 && charts.every((chart) => {
    const lines = JSON.parse(chart.dataset.lines || "[]");
    return chart.querySelector("canvas") !== null && lines.length > 0
      && (strict ? lines.every((n) => n >= 2) : lines.some((n) => n >= 2));
  });
}"""


def wait_for_charts(page: Any, *, strict: bool) -> dict[str, list[int]]:
    """Wait until every chart draws lines of >= 2 points; returns the points per line."""

    def drawn() -> dict[str, list[int]]:
        lines: dict[str, list[int]] = page.eval_on_selector_all(
            "#charts figure.chart",
            """charts => Object.fromEntries(charts.map((c) => [c.dataset.chart,
                 JSON.parse(c.dataset.lines || "[]")]))""",
        )
        return lines

    try:
        page.wait_for_function(CHARTS_DRAWN, arg=strict, timeout=SHOWN)
    except PlaywrightTimeoutError:
        raise AssertionError(f"not every chart draws: {drawn()}") from None
    lines = drawn()
    assert list(lines) == CHART_IDS
    return lines


def wait_for_mode(page: Any, mode: str, timeout: float = SHOWN) -> None:
    page.wait_for_selector(f'#mode[data-mode="{mode}"]', timeout=timeout)


def figure(page: Any, name: str) -> int:
    """A headline figure's value (``data-value`` of ``[data-figure=name]``)."""
    return int(page.get_attribute(f'[data-figure="{name}"]', "data-value"))


def wait_for_figure(page: Any, name: str, at_least: int) -> None:
    try:
        page.wait_for_function(
            "([name, n]) => Number(document.querySelector(`[data-figure='${name}']`)"
            "?.dataset.value) >= n",
            arg=[name, at_least],
            timeout=SHOWN,
        )
    except PlaywrightTimeoutError:
        state = page.evaluate(
            """() => ({mode: window.wshubDashboard.mode,
                       points: window.wshubDashboard.store.points.slice(-6).map(
                         (p) => [p._src, p._u, p.messages.published])})"""
        )
        raise AssertionError(f"{name} stays below {at_least}: {state}") from None


def wait_for_points(page: Any, count: int) -> None:
    """Wait until the page holds ``count`` snapshots (the hub flushes every ``FLUSH`` s)."""
    page.wait_for_function(
        "(n) => window.wshubDashboard.store.points.length >= n",
        arg=count,
        timeout=count * FLUSH * 1000 + SHOWN,
    )


def breaker_state(page: Any, name: str, state: str, timeout: float = SHOWN) -> None:
    page.wait_for_selector(
        f'.breaker[data-breaker="{name}"][data-state="{state}"]', timeout=timeout
    )


def wait_for_uptime(server: Server, seconds: float) -> float:
    """Wait until the hub has been up ``seconds`` (by its own clock); returns its uptime."""
    deadline = time.monotonic() + seconds + SHOWN / 1000
    with httpx.Client(base_url=server.http, params={"api_key": API_KEY}, timeout=5.0) as http:
        while (uptime := http.get("/api/stats").json()["uptime_seconds"]) <= seconds:
            assert time.monotonic() < deadline, f"the hub's uptime stays at {uptime}"
            time.sleep(0.05)  # polling the condition
    return float(uptime)


# --------------------------------------------------------------------------- traffic


class Traffic:
    """Clients of one hub: subscribers to "news" in threads, publishes over HTTP and WebSocket.

    Every thread stops when the block ends; an exception in one is raised there.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.url = f"{server.ws}/ws"
        self.http = httpx.Client(
            base_url=server.http, headers={"authorization": f"Bearer {API_KEY}"}, timeout=5.0
        )
        self.received: Counter[str] = Counter()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=8)
        self._futures: list[Future[None]] = []
        self._published = 0
        self._prefix = uuid.uuid4().hex[:8]  # ids unique to this instance (the hub dedups by id)

    def __enter__(self) -> Traffic:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        try:
            for future in self._futures:
                future.result(timeout=10)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self.http.close()

    def subscriber(self, client_id: str, *, publish_every: float | None = None) -> None:
        """Start a subscriber to "news" (publishing too, if asked); returns once welcomed."""
        welcomed = threading.Event()
        self._futures.append(self._pool.submit(self._subscribe, client_id, welcomed, publish_every))
        assert welcomed.wait(5.0), f"{client_id} was not welcomed"

    def _subscribe(
        self, client_id: str, welcomed: threading.Event, publish_every: float | None
    ) -> None:
        with self._connect() as websocket:
            websocket.send(hello(client_id, {"news": None}))
            due, n = time.monotonic(), 0
            while not self._stop.is_set():
                if publish_every and welcomed.is_set() and time.monotonic() >= due:
                    n += 1
                    frame = {"type": "publish", "stream": "news", "data": {"by": client_id, "n": n}}
                    websocket.send(json.dumps(frame))
                    due += publish_every
                try:
                    frame_text = websocket.recv(timeout=0.05)
                except TimeoutError:
                    continue
                for obj in objects(frame_text):
                    if obj["type"] == "welcome":
                        welcomed.set()
                    elif obj["type"] == "message":
                        self.received[client_id] += 1

    def _connect(self) -> ClientConnection:
        return connect(
            self.url, subprotocols=[SUBPROTOCOL], open_timeout=5, close_timeout=2, proxy=None
        )

    def publish(self, count: int, *, duplicate_every: int = 0) -> int:
        """POST ``count`` messages to "news"; every ``duplicate_every``-th one repeats the
        previous id (a de-duplicated publish). Returns how many were stored."""
        stored = 0
        for _ in range(count):
            self._published += 1
            n = self._published
            repeat = duplicate_every and n % duplicate_every == 0
            number = n - 1 if repeat else n  # a repeat resends the same message
            key = f"{self._prefix}-{number}"
            response = self.http.post(
                "/api/publish", json={"stream": "news", "data": {"n": number}, "id": key}
            )
            response.raise_for_status()
            stored += not response.json()["duplicate"]
        return stored

    def publish_in_background(self) -> None:
        """Publish until the block ends at a rate swinging between about 15 and 75 per second."""

        def run() -> None:
            began = time.monotonic()
            while not self._stop.is_set():
                self.publish(1, duplicate_every=5)
                rate = 45 + 30 * math.sin((time.monotonic() - began) * 1.4)
                self._stop.wait(1 / rate)  # pacing, not waiting for a condition

        self._futures.append(self._pool.submit(run))

    def hello_closed_with(self, client_id: str, token: str) -> int:
        """Send a hello with ``token``; the close code the hub answers with."""
        with self._connect() as websocket:
            websocket.send(json.dumps({"type": "hello", "client_id": client_id, "token": token}))
            with pytest.raises(ConnectionClosed) as closed:
                self._drain(websocket)
        assert closed.value.rcvd is not None, "the hub closed without a close frame"
        return closed.value.rcvd.code

    @staticmethod
    def _drain(websocket: ClientConnection) -> None:
        """Read until the hub closes (raises ConnectionClosed) or stays silent for 5 s."""
        while True:
            websocket.recv(timeout=5.0)

    def welcome(self, client_id: str, subscribe: dict[str, Any]) -> dict[str, Any]:
        """Connect, say hello, and return the welcome (then close normally)."""
        with self._connect() as websocket:
            websocket.send(hello(client_id, subscribe))
            while True:
                for obj in objects(websocket.recv(timeout=5.0)):
                    if obj["type"] == "welcome":
                        return obj

    def resume(self, client_id: str) -> None:
        """One resume that history covers and one it cannot (an unknown epoch)."""
        news = self.welcome(client_id, {"news": None})["streams"]["news"]
        position = {"offset": news["offset"], "epoch": news["epoch"]}
        assert self.welcome(client_id, {"news": position})["streams"]["news"]["recovered"]
        lost = {"offset": 1, "epoch": "an-epoch-long-gone"}
        assert not self.welcome(f"{client_id}-late", {"news": lost})["streams"]["news"]["recovered"]


# --------------------------------------------------------------------------- tests


def test_the_dashboard_data_needs_the_key_and_the_page_asks_for_it(
    chromium_browser: Any, hub: Server
) -> None:
    with httpx.Client(base_url=hub.http, timeout=5.0) as http:
        for path in ("/api/stats", "/metrics"):
            assert http.get(path).status_code == 401, path
            assert http.get(path, params={"api_key": "wrong"}).status_code == 403, path
        page = http.get("/dashboard")  # the page holds no figures: served to anyone
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert 'import("./client.js")' in page.text
        assert http.get("/client.js").status_code == 200
    with dashboard(chromium_browser, hub, signed_in=False) as (page, problems):
        page.wait_for_selector("#login:not([hidden])", timeout=SHOWN)
        assert "401" in page.text_content("#login-error")
        page.fill("#credential", "wrong")
        page.click("#login button[type=submit]")
        page.wait_for_function(
            "() => document.querySelector('#login-error').textContent.includes('403')",
            timeout=SHOWN,
        )
        assert not page.is_hidden("#login")
        page.fill("#credential", API_KEY)
        page.click("#login button[type=submit]")
        wait_for_mode(page, "live")
        assert page.is_hidden("#login")
        wait_for_charts(page, strict=False)
        # The key went in headers and the hello, never in a URL.
        assert API_KEY not in page.url
        assert page.evaluate("sessionStorage.getItem('wshub.dashboard.credential')") == API_KEY
        # The only console problems are the two refused requests the form answered.
        assert all("401" in p or "403" in p for p in problems), problems


def test_live_charts_follow_the_traffic(chromium_browser: Any, hub: Server) -> None:
    with dashboard(chromium_browser, hub) as (page, problems), Traffic(hub) as traffic:
        wait_for_mode(page, "live")
        wait_for_charts(page, strict=True)
        assert page.get_attribute("#banner", "data-status") == "healthy"
        assert page.eval_on_selector("#reasons", "list => list.children.length") == 0
        assert page.text_content("#server") == "fast"  # wshub serve's default server
        with httpx.Client(base_url=hub.http, params={"api_key": API_KEY}, timeout=5.0) as http:
            node = http.get("/api/stats").json()["node"]
        assert page.text_content("#node") == node  # which node, when several are scraped
        before = {name: figure(page, name) for name in ("published", "delivered", "deduplicated")}

        traffic.subscriber("alice")
        traffic.subscriber("bob")
        stored = traffic.publish(20, duplicate_every=4)  # 15 stored, 5 duplicates
        assert stored == 15

        wait_for_figure(page, "published", before["published"] + 15)
        wait_for_figure(page, "delivered", before["delivered"] + 2 * 15)
        wait_for_figure(page, "deduplicated", before["deduplicated"] + 5)
        page.wait_for_function(
            """() => ["alice", "bob"].every((id) => Number(document.querySelector(
                 `#clients tr[data-client="${id}"] td[data-col="messages_out"]`
               )?.textContent) >= 15)""",
            timeout=SHOWN,
        )
        rate = page.eval_on_selector(
            'figure[data-chart="throughput"] [data-current]', "e => e.textContent"
        )
        assert rate.endswith("delivered/s")
        assert not problems, problems


def test_the_dashboard_resumes_metrics_after_a_lost_connection(
    chromium_browser: Any, hub: Server
) -> None:
    # Wrap WebSocket so that the test can cut the dashboard's connection and refuse new ones
    # (a refused one closes at once, as a failed connection does, without console noise).
    cut = """(() => {
      const Real = window.WebSocket;
      const state = (window.cutter = { blocked: false, sockets: [] });
      class Refused {
        constructor() {
          this.readyState = 0;
          setTimeout(() => ((this.readyState = 3), this.onclose?.({ code: 1006, reason: "" })), 10);
        }
        send() {}
        close() {}
      }
      window.WebSocket = function WebSocket(url, protocols) {
        if (state.blocked) return new Refused();
        const socket = new Real(url, protocols);
        state.sockets.push(socket);
        return socket;
      };
    })();"""
    # A long poll interval: whatever the gap holds must come from the stream's replay.
    query = "poll=60"
    with dashboard(chromium_browser, hub, query, init_script=cut) as (page, problems):
        wait_for_mode(page, "live")
        wait_for_charts(page, strict=False)
        page.evaluate("window.cutter.blocked = true; window.cutter.sockets.at(-1).close()")
        wait_for_mode(page, "reconnecting")
        cut_at = page.evaluate("window.wshubDashboard.store.points.at(-1)._u")
        # Stay away for several flushes, measured on the hub's own snapshots.
        back_at = wait_for_uptime(hub, cut_at + 5 * FLUSH)
        page.evaluate("window.cutter.blocked = false")
        wait_for_mode(page, "live", timeout=10_000)  # the client's backoff may have grown
        page.wait_for_function(  # the replay has come in, up to where the test let it back
            """(t) => window.wshubDashboard.store.points
                 .some((p) => p._src === "flush" && p._u >= t)""",
            arg=back_at,
            timeout=SHOWN,
        )
        flushed: list[float] = page.evaluate(
            """() => window.wshubDashboard.store.points
                 .filter((p) => p._src === "flush").map((p) => p._u)"""
        )
        across = [u for u in flushed if cut_at - FLUSH <= u <= back_at]
        # The flush just before back_at may be up to one interval earlier: at least 3 remain.
        assert across and across[-1] - across[0] >= 3 * FLUSH, (cut_at, back_at, flushed)
        # Every snapshot the hub took while the page was away is on the page: compared with
        # the hub's own series, not with the interval (a loaded machine delays a flush).
        with httpx.Client(base_url=hub.http, params={"api_key": API_KEY}, timeout=5.0) as http:
            series = http.get("/api/stats", params={"series": "true"}).json()["series"]
        taken = [p["uptime_seconds"] for p in series if cut_at <= p["uptime_seconds"] <= back_at]
        assert len(taken) >= 3, (cut_at, back_at, taken)
        missing = sorted(set(taken) - set(flushed))
        assert missing == [], f"snapshots missing after the resume: {missing} of {taken}"
        statistics = page.evaluate("window.wshubDashboard.client.statistics()")
        assert statistics["reconnects"] >= 1 and statistics["gaps"] == 0, statistics
        assert not problems, problems


def test_without_websocket_the_dashboard_polls(chromium_browser: Any, hub: Server) -> None:
    no_websocket = "delete window.WebSocket;"
    with (
        dashboard(
            chromium_browser,
            hub,
            "poll=0.5",
            viewport=(390, 844),  # a phone: the grid becomes one column
            init_script=no_websocket,
        ) as (page, problems),
        Traffic(hub) as traffic,
    ):
        wait_for_mode(page, "polling")
        traffic.subscriber("alice")  # deliveries, so that latency has something to show
        traffic.publish(10)
        wait_for_charts(page, strict=False)
        before = figure(page, "published")
        traffic.publish(10)
        wait_for_figure(page, "published", before + 10)
        assert page.get_attribute("#mode", "data-mode") == "polling"
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"the page scrolls sideways on a narrow screen: {widths}"
        assert not problems, problems


def test_an_open_breaker_turns_the_banner_degraded(
    chromium_browser: Any, breaker_hub: Server, tmp_path: Path
) -> None:
    with (
        dashboard(chromium_browser, breaker_hub) as (page, problems),
        Traffic(breaker_hub) as traffic,
    ):
        traffic.subscriber("alice", publish_every=0.2)
        traffic.subscriber("bob")
        traffic.subscriber("carol")
        traffic.publish_in_background()
        traffic.resume("dave")
        wait_for_mode(page, "live")
        wait_for_charts(page, strict=True)
        assert page.get_attribute("#banner", "data-status") == "healthy"
        wait_for_points(page, 10)  # some history before the breaker trips, for the picture

        # Two hellos the auth service cannot answer: the "authenticate" breaker opens.
        for n in (1, 2):
            assert traffic.hello_closed_with(f"mallory-{n}", UNREACHABLE_TOKEN) == 1013
        opened = time.monotonic()
        page.wait_for_selector('#banner[data-status="degraded"]', timeout=FLUSH * 1000 + 1500)
        within = time.monotonic() - opened
        reasons = page.eval_on_selector_all("#reasons li", "items => items.map((i) => i.innerText)")
        assert "circuit breaker 'authenticate' is open" in reasons, reasons
        assert within < FLUSH + 1.5
        health = httpx.get(f"{breaker_hub.http}/health/websocket", timeout=5.0)
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        breaker_state(page, "authenticate", "open")

        # After open_timeout the breaker lets a probe through; a good hello closes it.
        breaker_state(page, "authenticate", "half_open")
        assert traffic.welcome("erin", {})["type"] == "welcome"
        breaker_state(page, "authenticate", "closed")
        page.wait_for_selector('#banner[data-status="healthy"]', timeout=SHOWN)
        timeline = '.breaker[data-breaker="authenticate"] .timeline'
        assert page.get_attribute(timeline, "data-states") == "closed open half_open closed"
        assert int(page.get_attribute(timeline, "data-transitions")) >= 3

        # A picture of the page under traffic, for docs/dashboard.md, with some history after
        # the recovery too.
        wait_for_points(page, 24)
        wait_for_charts(page, strict=True)
        page.wait_for_function(
            "() => Number(document.querySelector('[data-chart=cleanup]').dataset.markers) >= 2",
            timeout=SHOWN,
        )
        page.evaluate("window.scrollTo(0, 0)")
        target = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "dashboard.png")
        page.screenshot(path=str(target), full_page=True)
        assert target.stat().st_size > 10_000  # a real picture of a drawn page
        assert not problems, problems


# --------------------------------------------------------------------------- uPlot, streams, range

UPLOT = HERE.parent / "src" / "wshub" / "static" / "vendor" / "uplot"


def test_uplot_is_vendored_unchanged_at_its_pinned_version() -> None:
    """The digests in vendor/uplot/README.md are those of the files, and the version matches."""
    import hashlib
    import re

    readme = (UPLOT / "README.md").read_text()
    recorded = dict(re.findall(r"^\| (\S+) \| ([0-9a-f]{64}) \|$", readme, re.M))
    assert set(recorded) == {"uPlot.iife.min.js", "uPlot.min.css", "LICENSE", "package.json"}
    for name, digest in recorded.items():
        assert hashlib.sha256((UPLOT / name).read_bytes()).hexdigest() == digest, name
    package = json.loads((UPLOT / "package.json").read_text())
    assert (package["name"], package["license"]) == ("uplot", "MIT")
    version = package["version"]
    assert f"uplot@{version}" in readme
    banner = (UPLOT / "uPlot.iife.min.js").read_text().splitlines()[0]
    assert banner == f"/*! https://github.com/leeoniya/uPlot (v{version}) */"
    assert (UPLOT / "LICENSE").read_text().startswith("The MIT License")


def test_the_hub_serves_uplot_without_the_key(hub: Server) -> None:
    with httpx.Client(base_url=hub.http, timeout=5.0) as http:
        script = http.get("/static/uplot/uPlot.iife.min.js")
        style = http.get("/static/uplot/uPlot.min.css")
    assert script.status_code == 200 and script.headers["content-type"].startswith(
        "application/javascript"
    )
    assert script.content == (UPLOT / "uPlot.iife.min.js").read_bytes()
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert style.content == (UPLOT / "uPlot.min.css").read_bytes()


def stream_cell(page: Any, stream: str, column: str) -> str:
    text: str = page.eval_on_selector(
        f'#streams tr[data-stream="{stream}"] td[data-col="{column}"]', "cell => cell.textContent"
    )
    return text


def test_the_stream_view_follows_a_stream_and_keeps_the_choice_across_a_reload(
    chromium_browser: Any, hub: Server
) -> None:
    with dashboard(chromium_browser, hub) as (page, problems), Traffic(hub) as traffic:
        wait_for_mode(page, "live")
        traffic.subscriber("stream-a")
        traffic.subscriber("stream-b")
        traffic.publish(12)
        with httpx.Client(base_url=hub.http, params={"api_key": API_KEY}, timeout=5.0) as http:
            news = next(
                r for r in http.get("/api/stats").json()["top_streams"] if r["stream"] == "news"
            )
        # The table shows what the hub reports for "news": subscribers, offset, history held.
        page.wait_for_function(
            """(offset) => Number(document.querySelector('#streams tr[data-stream="news"]'
                 + ' td[data-col="offset"]')?.textContent) >= offset""",
            arg=news["offset"],
            timeout=SHOWN,
        )
        assert int(stream_cell(page, "news", "subscribers")) >= 2
        held = page.get_attribute(
            '#streams tr[data-stream="news"] td[data-col="held"]', "data-value"
        )
        assert int(held) >= 12
        # With no choice made, the chart follows the most subscribed stream: news here.
        assert page.get_attribute("#stream-chart", "data-stream") == "news"
        page.wait_for_function(
            """() => JSON.parse(document.querySelector("#stream-chart").dataset.lines || "[]")
                 .some((n) => n >= 2)""",
            timeout=SHOWN,
        )
        assert page.eval_on_selector("#stream-chart", "f => f.querySelector('canvas') !== null")

        page.click('#streams tr[data-stream="@stream-a"]')
        page.wait_for_selector('#stream-chart[data-stream="@stream-a"]', timeout=SHOWN)
        assert page.get_attribute('#streams tr[data-stream="@stream-a"]', "aria-selected") == "true"
        title = page.eval_on_selector("#stream-chart [data-title]", "e => e.textContent")
        assert title == "Stream @stream-a"

        page.reload()
        page.wait_for_selector('#stream-chart[data-stream="@stream-a"]', timeout=SHOWN)
        assert not problems, problems


def test_the_time_range_limits_the_charts_and_survives_a_reload(
    chromium_browser: Any, hub: Server
) -> None:
    with dashboard(chromium_browser, hub) as (page, problems):
        wait_for_mode(page, "live")
        wait_for_charts(page, strict=False)
        assert page.input_value("#range") == "0"  # everything held, by default
        # A snapshot from 10 minutes before the first one held, as a saved one added by hand.
        added = page.evaluate(
            """() => {
              const first = window.wshubDashboard.store.points[0];
              const { _t, _u, _src, ...snapshot } = first;
              snapshot.time = new Date(_t - 600_000).toISOString();
              snapshot.uptime_seconds = _u - 600;
              return window.wshubDashboard.addSnapshot(snapshot);
            }"""
        )
        assert added

        def x_span() -> tuple[float, float, int, int]:
            """The connections chart: (first x, last x) uPlot holds, points shown, held."""
            return tuple(
                page.evaluate(
                    """() => {
                      const figure = document.querySelector('[data-chart="connections"]');
                      const xs = figure._plot.data[0];
                      return [xs[0], xs.at(-1), Number(figure.dataset.points),
                              window.wshubDashboard.store.points.length];
                    }"""
                )
            )

        page.wait_for_function(
            """() => { const f = document.querySelector('[data-chart="connections"]');
                       return f._plot && f._plot.data[0].at(-1) - f._plot.data[0][0] > 600; }""",
            timeout=SHOWN,
        )
        first, last, shown, held = x_span()
        assert last - first > 600 and shown == held

        page.select_option("#range", "60")
        page.wait_for_function(
            """() => { const f = document.querySelector('[data-chart="connections"]');
                       return f._plot.data[0].at(-1) - f._plot.data[0][0] <= 60; }""",
            timeout=SHOWN,
        )
        first, last, shown, held = x_span()
        assert last - first <= 60 and shown < held

        page.reload()
        wait_for_mode(page, "live")
        assert page.input_value("#range") == "60"
        assert page.evaluate("window.wshubDashboard.view.range") == 60
        assert not problems, problems


# A snapshot an hour after the newest the page holds, with the figures of issue 16: it stays the
# newest while live ones arrive (they sort before it by uptime), so the page shows its figures.
AN_HOUR_LATER = """(figures) => {
  const newest = window.wshubDashboard.store.points.at(-1);
  const { _t, _u, _src, ...snapshot } = newest;
  snapshot.time = new Date(_t + 3_600_000).toISOString();
  snapshot.uptime_seconds = _u + 3600;
  snapshot.server = figures.server;
  snapshot.connections = { ...snapshot.connections, ...figures.connections };
  snapshot.queues = { ...snapshot.queues, ...figures.queues };
  snapshot.latency = figures.latency;
  snapshot.retries = figures.retries;
  snapshot.retry_success_ratio = figures.retry_success_ratio;
  snapshot.top_streams = figures.top_streams;
  return window.wshubDashboard.addSnapshot(snapshot);
}"""


def test_the_page_shows_the_server_timeouts_longest_queue_mean_latency_and_retry_ratio(
    chromium_browser: Any, hub: Server
) -> None:
    figures = {
        "server": "hypercorn",
        "connections": {"timeouts": {"hello": 2, "heartbeat": 1}, "disconnects": {"peer": 3}},
        "queues": {"depth_max": 7},
        "latency": {"count": 4, "sum": 0.018, "mean": 0.0045, "p50": 0.002, "p99": 0.009},
        "retries": {"retry": 2, "recovered": 1, "exhausted": 1},
        "retry_success_ratio": 0.5,
        "top_streams": [
            {
                "stream": "orders",
                "subscribers": 3,
                "epoch": "e1",
                "offset": 42,
                "first": 30,
                "held": 13,
                "rate": 2.5,
            }
        ],
    }
    with dashboard(chromium_browser, hub) as (page, problems):
        wait_for_mode(page, "live")
        wait_for_charts(page, strict=False)
        assert page.evaluate(AN_HOUR_LATER, figures)
        page.wait_for_function(
            "() => document.querySelector('#server').textContent === 'hypercorn'", timeout=SHOWN
        )

        def note(name: str) -> str:
            text: str = page.eval_on_selector(
                f'[data-figure="{name}"]', "e => e.parentElement.querySelector('.note').textContent"
            )
            return text

        assert note("connections").endswith("· 3 timed out")  # hello and heartbeat together
        assert note("queued").endswith("· max 7")
        assert note("latency") == "p50 2.0 · mean 4.5 ms"
        assert page.text_content('[data-figure="latency"]') == "9.0 ms"  # p99
        retries = page.text_content('figure[data-chart="retries"] [data-current]')
        assert retries is not None and retries.endswith("attempts · 50% saved")
        labels = page.evaluate(
            """() => document.querySelector('figure[data-chart="disconnects"]')
                 ._plot.series.map((s) => s.label)"""
        )
        assert "closed by the client, code unknown" in labels  # code=peer, as under hypercorn
        assert "close 1006" not in labels
        row = {col: stream_cell(page, "orders", col) for col in ("subscribers", "rate", "offset")}
        assert row == {"subscribers": "3", "rate": "2.5", "offset": "42"}
        held = page.text_content('#streams tr[data-stream="orders"] td[data-col="held"]')
        assert held == "13 (30\u201342)"  # an en dash
        assert not problems, problems
