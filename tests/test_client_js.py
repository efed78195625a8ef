"""The JavaScript client (src/wshub/static/client.js) against real hubs, in Node and in Chromium.

The Node tests run scripts from tests/js/ that speak JSON lines: the test sends commands on the
script's stdin and reads its events from stdout, while publishing and cutting connections on the
hub side. The browser test serves the hub with ``wshub serve`` and drives Debian's Chromium.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import subprocess
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from serve_helpers import wshub_serve
from wshub import serve_websocket
from wshub.core.config import HubConfig
from wshub.core.dedup import message_id
from wshub.core.protocol import CloseCode, Position
from wshub.hub.hub import Hub, open_hub

SCRIPTS = Path(__file__).parent / "js"
CONFIG = HubConfig.testing().merged(
    {
        "limits": {"rate": 10_000.0, "burst": 10_000},  # the scripts publish in bursts
        "history": {"size": 25},
        "dedup": {"window": 60.0},
    }
)


class NodeScript:
    """A Node script speaking JSON lines: commands on its stdin, events on its stdout."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._buffer = b""

    async def send(self, cmd: str, **args: Any) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps({"cmd": cmd, **args}).encode() + b"\n")

    async def wait_for(self, name: str) -> dict[str, Any]:
        """The next event called ``name``; the events before it are kept in ``events``."""
        assert self.process.stdout is not None
        while True:
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive_some()
                if not chunk:
                    raise AssertionError(f"the script ended before {name!r}: {self.events}")
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\n", 1)
            event: dict[str, Any] = json.loads(line)
            self.events.append(event)
            if event["event"] == name:
                return event

    async def report(self, stream: str, first: int, last: int) -> dict[str, Any]:
        """The script's check of ``stream``, offsets ``first`` to ``last`` (waits for ``last``)."""
        await self.send("report", stream=stream, **{"from": first, "to": last})
        return await self.wait_for("report")

    def seen(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event"] == name]


@asynccontextmanager
async def node_script(node: tuple[str, ...], name: str, *args: str) -> AsyncIterator[NodeScript]:
    command = [*node, str(SCRIPTS / name), *args]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        yield NodeScript(process)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@asynccontextmanager
async def serving_hub(config: HubConfig = CONFIG, port: int = 0) -> AsyncIterator[tuple[Hub, int]]:
    """A hub served on 127.0.0.1; leaving stops listening first, then drains (1001)."""
    async with open_hub(config) as hub, trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, hub, "127.0.0.1", port)
        yield hub, server.port
        nursery.cancel_scope.cancel()


async def publish_range(hub: Hub, stream: str, offsets: range) -> None:
    for n in offsets:
        result = await hub.publish(stream, {"n": n})
        assert result.offset == n


async def cut_tcp(hub: Hub) -> None:
    """Close every connection's TCP stream without a close frame: the client sees 1006."""
    for connection in list(hub._connections):
        await connection.transport.abort()


def stored_ids(hub: Hub, stream: str) -> list[str]:
    history = hub.histories.get_or_create(stream)
    return [message.id for message in history.read_from(Position(0, history.epoch)).messages]


def assert_clean(report: dict[str, Any], received: int, gap: int = 0) -> None:
    assert report["lost"] == []
    assert report["duplicates"] == 0
    assert report["outOfOrder"] == 0
    assert (report["received"], report["gapCovered"]) == (received, gap)


async def test_client_policies_on_a_fake_websocket_and_a_mock_clock(
    node: tuple[str, ...],
) -> None:
    """tests/js/client_unit_test.mjs: backoff, close codes, gaps, publish retries, heartbeat."""
    script = str(SCRIPTS / "client_unit_test.mjs")
    result = await trio.run_process(
        [*node, "--test", script], capture_stdout=True, capture_stderr=True, check=False
    )
    report = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, report
    assert re.search(r"^# pass [1-9]", report, re.MULTILINE), report
    assert re.search(r"^# fail 0$", report, re.MULTILINE), report


async def test_node_client_resumes_without_loss_through_cuts_gaps_and_a_restart(
    node: tuple[str, ...],
) -> None:
    # Well under the client's connectTimeout (10 s): an attempt that hangs fails the test.
    with trio.fail_after(8):
        async with AsyncExitStack() as first_hub:
            hub, port = await first_hub.enter_async_context(serving_hub())
            url = f"ws://127.0.0.1:{port}/ws"
            async with node_script(node, "client_node_test.mjs", url) as script:
                old_epoch = await cuts_and_gaps(hub, script)
                await first_hub.aclose()  # a restart: the client retries until the new hub is up
                async with serving_hub(port=port) as (hub, _):
                    await restart_and_publish(hub, script, old_epoch)
                    await script.send("exit")
                    await script.wait_for("bye")
                assert await script.process.wait() == 0
                assert script.seen("error") == []


async def cuts_and_gaps(hub: Hub, script: NodeScript) -> str:
    """Phase one, on the first hub; returns the epoch of "news"."""
    await script.wait_for("open")
    # Live messages, a 1001 close (reconnect at once) and a TCP cut (1006, back off), with
    # messages published while the client is away: every one arrives, once, in order.
    await publish_range(hub, "news", range(1, 21))
    for n in range(1, 4):
        await hub.send("node-1", {"direct": n})
    for connection in list(hub._connections):
        connection.abort(CloseCode.GOING_AWAY)
    await publish_range(hub, "news", range(21, 41))
    await script.wait_for("open")
    await publish_range(hub, "news", range(41, 61))
    await cut_tcp(hub)
    await publish_range(hub, "news", range(61, 81))
    await script.wait_for("open")
    await publish_range(hub, "news", range(81, 101))
    report = await script.report("news", 1, 100)
    assert_clean(report, received=100)
    assert report["duplicatesDropped"] > 0  # the flaky socket repeated frames
    assert_clean(await script.report("@node-1", 1, 3), received=3)
    assert [event["code"] for event in script.seen("close")] == [1001, 1006]

    # Away longer than the history holds: one gap event, then everything still held.
    await script.send("pause")
    await script.wait_for("paused")
    await publish_range(hub, "news", range(101, 161))  # history keeps 136..160
    await script.send("resume")
    gap = await script.wait_for("gap")
    epoch = hub.histories.get_or_create("news").epoch
    assert gap == {
        "event": "gap",
        "stream": "news",
        "from": 101,
        "to": 135,
        "epochChanged": False,
        "oldEpoch": epoch,
        "newEpoch": epoch,
    }
    await publish_range(hub, "news", range(161, 166))
    assert_clean(await script.report("news", 101, 165), received=30, gap=35)
    return epoch


async def restart_and_publish(hub: Hub, script: NodeScript, old_epoch: str) -> None:
    """Phase two, on a new hub at the same port: new epochs, then idempotent publishing."""
    await script.wait_for("open")
    await publish_range(hub, "news", range(1, 11))  # offsets start again at 1, and are new
    report = await script.report("news", 1, 10)
    assert_clean(report, received=10)
    gaps = {event["stream"]: event for event in script.seen("gap") if event["epochChanged"]}
    assert gaps["news"] == {
        "event": "gap",
        "stream": "news",
        "from": 166,  # and every later offset of the old epoch
        "to": None,
        "epochChanged": True,
        "oldEpoch": old_epoch,
        "newEpoch": report["epoch"],
    }
    assert report["epoch"] != old_epoch
    assert gaps["@node-1"]["from"] == 4  # the personal stream's history was lost too

    # An explicit id twice, and the same data twice without an id: the hub's content id.
    items = [{"id": f"p-{n}", "data": n} for n in range(5)]
    items += [{"id": "p-3", "data": 3}, {"data": "no id"}, {"data": "no id"}]
    await script.send("publish", stream="pub", items=items)
    results = (await script.wait_for("published"))["results"]
    assert [result["offset"] for result in results[:5]] == [1, 2, 3, 4, 5]
    assert results[5] == {"stream": "pub", "offset": 4, "id": "p-3", "duplicate": True}
    content_id = message_id("pub", "no id")  # what hub.publish("pub", "no id") would store
    assert results[6] == {"stream": "pub", "offset": 6, "id": content_id, "duplicate": False}
    assert results[7] == {"stream": "pub", "offset": 6, "id": content_id, "duplicate": True}

    # Answers lost on the way: after reconnecting the client resends with the same ids and
    # learns the original offsets; the hub stored each message once.
    await script.send("flaky", dropAnswers=True)
    await script.wait_for("flaky")
    await script.send(
        "publish", stream="pub", items=[{"id": f"q-{n}", "data": n} for n in range(5)]
    )
    await script.wait_for("publishing")
    assert_clean(await script.report("pub", 1, 11), received=11)  # stored, not answered
    await script.send("flaky", dropAnswers=False)
    await script.wait_for("flaky")
    await cut_tcp(hub)
    results = (await script.wait_for("published"))["results"]
    answers = [(result["id"], result["offset"], result["duplicate"]) for result in results]
    assert answers == [(f"q-{n}", 7 + n, True) for n in range(5)]
    ids = stored_ids(hub, "pub")
    assert len(ids) == len(set(ids)) == 11


# --------------------------------------------------------------------------- the browser

API_KEY = "test-key"


class CuttableProxy:
    """A TCP proxy to ``127.0.0.1:target`` whose connections ``cut()`` resets, like a network
    failure: the browser sees its WebSocket end abnormally (1006), with no close frame."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.sockets += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # cut

    def cut(self) -> None:
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)  # wakes its pipe thread without sending anything
            sock.close()  # with a zero linger time: a reset

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept thread (close does not)
        self.listener.close()
        self.cut()


# Runs in the page: loads the client from the server, as an application would, and keeps what
# it receives in ``window.received`` (offsets of "news") and ``window.log`` (every other event).
OPEN_CLIENT = """async (base) => {
  const { connect, localStorageStore } = await import(base + "/client.js");
  window.received = [];
  window.log = [];
  window.client = connect(base.replace("http", "ws") + "/ws", "browser-1", {
    subscribe: ["news"],
    positions: localStorageStore("wshub:browser-1:"),
    backoffBase: 50,
    backoffCap: 500,
  });
  client.on("message", (message) => message.stream === "news" && received.push(message.offset));
  for (const type of ["open", "close", "gap", "error"]) client.on(type, (e) => log.push([type, e]));
  await new Promise((resolve) => client.on("open", resolve));
}"""


def publish_http(server_url: str, offsets: range) -> None:
    for n in offsets:
        answer = httpx.post(
            f"{server_url}/api/publish",
            json={"stream": "news", "data": {"n": n}},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["offset"] == n


def wait_received(page: Any, count: int) -> list[int]:
    page.wait_for_function("count => window.received.length >= count", arg=count, timeout=10_000)
    received: list[int] = page.evaluate("window.received")
    return received


@pytest.mark.browser
def test_browser_client_resumes_after_a_network_cut_and_a_reload(
    chromium_browser: Any, tmp_path: Path
) -> None:
    server = wshub_serve(
        tmp_path / "wshub.log", "--preset", "development", env={"WSHUB_ADMIN__API_KEY": API_KEY}
    )
    proxy = CuttableProxy(server.port)
    context = chromium_browser.new_context()
    try:
        page = context.new_page()
        problems: list[str] = []

        def on_console(message: Any) -> None:
            if message.type in ("error", "warning"):
                problems.append(message.text)

        page.on("console", on_console)
        page.on("pageerror", lambda error: problems.append(str(error)))
        # The hub has no favicon, and Chromium logs the 404 of its automatic request as an error.
        page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
        base = f"http://127.0.0.1:{proxy.port}"
        page.goto(f"{base}/health")
        page.evaluate(OPEN_CLIENT, base)
        publish_http(server.http, range(1, 21))
        assert wait_received(page, 20) == list(range(1, 21))

        proxy.cut()  # published meanwhile: the client must resume from its position
        publish_http(server.http, range(21, 41))
        assert wait_received(page, 40) == list(range(1, 41))
        log = page.evaluate("window.log")
        assert [event["code"] for kind, event in log if kind == "close"] == [1006]
        assert page.evaluate("client.statistics().reconnects") == 1

        # A reload: the new page resumes from the positions the old one left in localStorage.
        page.evaluate("client.close()")
        publish_http(server.http, range(41, 51))
        page.reload()
        page.evaluate(OPEN_CLIENT, base)
        assert wait_received(page, 10) == list(range(41, 51))
        assert [kind for kind, _ in page.evaluate("window.log")] == ["open"]  # no gap, no error
        assert problems == []
    finally:
        context.close()
        proxy.close()
        server.stop()
