"""The client over real sockets, through a proxy that cuts connections at random points.

The proxy (trio, in this file) sits between the client and the hub's ``serve_websocket`` port.
Each connection it forwards gets a seeded byte budget per direction and a lifetime; when one
runs out it cuts both sides, mid-frame as often as not, with a FIN or an RST. Whatever the
cuts, the application must see every message exactly once and in order per stream.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import time
from collections import Counter
from functools import partial
from typing import Any

import attrs
import pytest
import trio
from trio_websocket import WebSocketRequest
from trio_websocket import serve_websocket as trio_serve_websocket

from wshub.client.client import ClientRejected, ConnectFailed, Gap, Message, open_client
from wshub.core.config import HubConfig
from wshub.core.protocol import Position
from wshub.hub.hub import Hub, open_hub
from wshub.servers.websocket import serve_websocket
from wshub.tools import PublishHTTPError, publish_http

STREAMS = [f"chaos.{n}" for n in range(5)]
PER_STREAM = 1000  # 5 streams x 1000 = 5,000 messages from the hub's API
CLIENT_PUBLISHES = 200  # and 200 from the client itself, through the same cuts

CONFIG = HubConfig.testing().merged(
    {
        "history": {"size": 2 * PER_STREAM, "ttl": 600.0},
        "dedup": {"window": 600.0, "max_entries": 100_000},
        "limits": {"max_queue": 20_000, "rate": 100_000.0, "burst": 100_000, "write_delay": 0.002},
        "heartbeat": {"interval": 5.0, "timeout": 5.0},
    }
)


@attrs.define
class ChaosProxy:
    """A TCP proxy to ``127.0.0.1:target_port`` that cuts connections at random points."""

    rng: random.Random
    target_port: int = 0
    chaos: bool = True
    connections: int = 0
    cuts: int = 0

    async def handle(self, downstream: trio.SocketStream) -> None:
        """Forward one connection until either side closes or the chaos cuts it."""
        self.connections += 1
        rng = self.rng
        # Most connections live long enough to carry some messages; a few die in the upgrade.
        down_budget = rng.randint(100, 400) if rng.random() < 0.05 else rng.randint(2_000, 80_000)
        up_budget = rng.randint(50, 4_000)
        lifetime = rng.uniform(0.05, 0.6)
        reset = rng.random() < 0.5
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await downstream.aclose()
            return
        cut = [False]
        try:
            async with trio.open_nursery() as nursery:
                up, down = (up_budget, down_budget) if self.chaos else (None, None)
                nursery.start_soon(self._pump, downstream, upstream, up, nursery.cancel_scope, cut)
                nursery.start_soon(
                    self._pump, upstream, downstream, down, nursery.cancel_scope, cut
                )
                if self.chaos:
                    await trio.sleep(lifetime)
                    cut[0] = True
                    nursery.cancel_scope.cancel()
            self.cuts += cut[0]
        finally:
            await _close(downstream, reset=reset and self.chaos)
            await _close(upstream, reset=reset and self.chaos)

    async def _pump(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        budget: int | None,
        scope: trio.CancelScope,
        cut: list[bool],
    ) -> None:
        try:
            while True:
                data = await source.receive_some(65536)
                if not data:
                    break
                if budget is not None and len(data) >= budget:
                    await sink.send_all(data[:budget])  # cut mid-frame, most likely
                    cut[0] = True
                    break
                if budget is not None:
                    budget -= len(data)
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


async def _close(stream: trio.SocketStream, *, reset: bool) -> None:
    """Close ``stream`` with a FIN, or with an RST when ``reset``."""
    if reset:
        with contextlib.suppress(OSError):
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


async def start_proxy(nursery: trio.Nursery, proxy: ChaosProxy) -> int:
    """Serve ``proxy`` on an ephemeral port of 127.0.0.1; returns the port."""
    listeners = await nursery.start(partial(trio.serve_tcp, proxy.handle, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


def epoch_of(hub: Hub, stream: str) -> str:
    """The epoch of ``stream`` on ``hub``."""
    history = hub.histories.get(stream)
    assert history is not None
    return history.epoch


async def serve(nursery: trio.Nursery, hub: Hub) -> int:
    """Serve ``hub`` on an ephemeral port; returns it."""
    server = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
    port: int = server.port
    return port


async def test_exactly_once_in_order_through_random_cuts() -> None:
    started = time.monotonic()
    proxy = ChaosProxy(random.Random(20240601))
    received: list[tuple[str, int, Any]] = []
    gaps: list[Gap] = []
    answers: list[Any] = []
    with trio.fail_after(60):
        async with open_hub(CONFIG) as hub, trio.open_nursery() as nursery:
            proxy.target_port = await serve(nursery, hub)
            url = f"ws://127.0.0.1:{await start_proxy(nursery, proxy)}/ws"
            async with open_client(
                url,
                "chaos",
                subscribe=[*STREAMS, "chaos.client"],
                backoff_base=0.005,
                backoff_cap=0.1,
                connect_timeout=1.0,
                request_timeout=2.0,
                rng=random.Random(7),
            ) as client:
                await client.wait_connected()

                async def publish_from_hub() -> None:
                    for n in range(PER_STREAM):
                        for stream in STREAMS:
                            await hub.publish(stream, {"n": n + 1})
                        if n % 2 == 0:
                            await trio.sleep(0.004)

                async def publish_from_client(task: int) -> None:
                    for n in range(task, CLIENT_PUBLISHES, 4):
                        answers.append(await client.publish("chaos.client", {"n": n}))

                async with trio.open_nursery() as publishers:
                    publishers.start_soon(publish_from_hub)
                    for task in range(4):
                        publishers.start_soon(publish_from_client, task)
                    expected = len(STREAMS) * PER_STREAM + CLIENT_PUBLISHES
                    async for event in client:
                        if isinstance(event, Gap):
                            gaps.append(event)
                        elif event.stream != "@chaos":
                            received.append((event.stream, event.offset, event.data))
                        if len({(s, o) for s, o, _ in received}) >= expected:
                            break
                statistics = client.statistics()
            nursery.cancel_scope.cancel()

    unique = set((stream, offset) for stream, offset, _ in received)
    lost = expected - len(unique)
    duplicates = len(received) - len(unique)
    elapsed = time.monotonic() - started
    print(
        f"\nchaos: {len(received)} received, lost {lost}, duplicates {duplicates}, "
        f"gaps {len(gaps)}; proxy: {proxy.connections} connections, {proxy.cuts} cuts; "
        f"client: {statistics.reconnects} reconnects, {statistics.failed_attempts} failed "
        f"attempts, {statistics.duplicates} duplicates dropped, "
        f"{statistics.publish_retries} publish retries; {elapsed:.1f} s"
    )
    assert lost == 0 and duplicates == 0 and gaps == []
    for stream in STREAMS:
        got = [(offset, data) for s, offset, data in received if s == stream]
        assert got == [(n, {"n": n}) for n in range(1, PER_STREAM + 1)]  # in order, all there
    # Every client publish is stored exactly once, whatever the retries.
    history = hub.histories.get("chaos.client")
    assert history is not None and len(history) == CLIENT_PUBLISHES
    replay = history.read_from(Position(0, history.epoch))
    stored = sorted(message.data["n"] for message in replay.messages)
    assert stored == list(range(CLIENT_PUBLISHES))
    assert sorted(answer.offset for answer in answers) == list(range(1, CLIENT_PUBLISHES + 1))
    assert Counter(answer.id for answer in answers).most_common(1)[0][1] == 1
    assert statistics.reconnects >= 5, "the proxy should have cut the client off many times"


async def test_a_restarted_hub_is_reported_as_an_epoch_change() -> None:
    proxy = ChaosProxy(random.Random(1), chaos=False)
    events: list[Message | Gap] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = f"ws://127.0.0.1:{await start_proxy(nursery, proxy)}/ws"
            async with open_client(
                url, "restart", subscribe=["news"], backoff_cap=0.2, connect_timeout=1.0
            ) as client:
                async with open_hub(CONFIG) as first, trio.open_nursery() as serving:
                    proxy.target_port = await serve(serving, first)
                    await client.wait_connected()
                    for n in range(1, 4):
                        await first.publish("news", n)
                    while len(events) < 3:
                        events.append(await client.__anext__())
                    old_epoch = epoch_of(first, "news")
                    serving.cancel_scope.cancel()
                # The first hub has drained (1001) and is gone; its history with it.
                async with open_hub(CONFIG) as second, trio.open_nursery() as serving:
                    for n in range(1, 3):
                        await second.publish("news", n)
                    proxy.target_port = await serve(serving, second)
                    while len([e for e in events if e.stream == "news"]) < 6:
                        events.append(await client.__anext__())
                    new_epoch = epoch_of(second, "news")
                    serving.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    news = [event for event in events if event.stream == "news"]
    assert [e.offset for e in news[:3] if isinstance(e, Message)] == [1, 2, 3]
    assert news[3] == Gap("news", 4, None, True, old_epoch, new_epoch)
    assert [(e.offset, e.epoch) for e in news[4:] if isinstance(e, Message)] == [
        (1, new_epoch),
        (2, new_epoch),
    ]
    print(f"\nrestart: gap {news[3]}")


async def test_publish_http_reports_an_unreachable_hub() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PublishHTTPError, match="cannot reach the hub") as failed:
        await publish_http(f"http://127.0.0.1:{port}", "news", {"x": 1}, timeout=2.0)
    assert failed.value.status is None


UPGRADE_REQUEST = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def test_hub_survives_a_peer_that_resets_during_the_upgrade() -> None:
    with trio.fail_after(10):
        async with open_hub(CONFIG) as hub, trio.open_nursery() as nursery:
            port = await serve(nursery, hub)
            for _ in range(5):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(UPGRADE_REQUEST)
                await _close(stream, reset=True)
                await trio.sleep(0.05)
            # the hub is still serving everyone else
            async with open_client(f"ws://127.0.0.1:{port}/ws", "after") as client:
                await client.wait_connected()
                await hub.publish("@after", "still here")
                event = await client.__anext__()
                assert getattr(event, "data", None) == "still here"
            nursery.cancel_scope.cancel()


async def test_an_upgrade_refused_with_403_is_a_rejection_and_404_is_retried() -> None:
    async def refuse(request: WebSocketRequest) -> None:
        await request.reject(403, body=b"forbidden")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(trio_serve_websocket, refuse, "127.0.0.1", 0, None)
            with pytest.raises(ClientRejected, match="HTTP 403"):
                async with open_client(f"ws://127.0.0.1:{server.port}/ws", "alice"):
                    await trio.sleep_forever()
            nursery.cancel_scope.cancel()
        async with open_hub(CONFIG) as hub, trio.open_nursery() as nursery:
            port = await serve(nursery, hub)
            with pytest.raises(ConnectFailed) as failed:  # the hub serves /ws only
                async with open_client(
                    f"ws://127.0.0.1:{port}/wrong",
                    "alice",
                    max_attempts=2,
                    backoff_base=0.01,
                    backoff_cap=0.05,
                ):
                    await trio.sleep_forever()
            assert "HTTP 404" in str(failed.value.last_error)
            nursery.cancel_scope.cancel()
