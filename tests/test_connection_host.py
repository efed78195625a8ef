"""A connection needs nothing of the hub but ``ConnectionHost`` (issue 11, DESIGN.md "Layers").

The host below has exactly the members ``ConnectionHost`` names and ``__slots__`` instead of a
``__dict__``, so reaching for anything else on it (``hub.subscriptions``, ``hub.lifetime``,
``hub.broker``) raises AttributeError and fails the connection. A whole life runs against it:
admission, hello, authentication, welcome, a request, a ping, the close.
"""

from __future__ import annotations

from typing import Any

import trio

from wshub.core.config import HubConfig
from wshub.core.metrics import HubMetrics
from wshub.core.protocol import (
    SUBPROTOCOL,
    Hello,
    encode_hello,
    encode_unsubscribed,
    encode_welcome,
)
from wshub.hub.connection import Connection, ConnectionHost, Request
from wshub.hub.flush import FlushTick
from wshub.hub.hooks import Identity
from wshub.hub.transport import RequestInfo
from wshub.testing import MemoryClient, MemoryTransport


class NarrowHost:
    """``ConnectionHost`` and nothing more; records which of its methods were called."""

    __slots__ = ("calls", "config", "flush", "metrics", "unregistered")

    def __init__(self) -> None:
        self.config = HubConfig.testing()
        self.metrics = HubMetrics(client_ttl=10.0)
        self.flush = FlushTick(self.config.limits)
        self.calls: list[str] = []
        self.unregistered = trio.Event()

    def record_overflow(self, dropped: int) -> None:
        self.calls.append("record_overflow")

    def admission_refusal(self, request: RequestInfo) -> tuple[int, str] | None:
        self.calls.append("admission_refusal")
        return None

    async def authenticate_hello(self, hello: Hello, request: RequestInfo) -> Identity:
        self.calls.append("authenticate_hello")
        return Identity(hello.client_id)

    async def register(self, connection: Connection, hello: Hello) -> bool:
        self.calls.append("register")
        assert connection.client_id is not None
        connection.stats = self.metrics.connection_opened(connection.client_id)
        connection.enqueue(encode_welcome(connection.client_id, connection.session, 2.0, {}))
        return True

    def unregister(self, connection: Connection) -> None:
        self.calls.append("unregister")
        self.unregistered.set()

    async def handle_request(self, connection: Connection, request: Request) -> None:
        self.calls.append(f"handle_request {type(request).__name__}")
        connection.enqueue(encode_unsubscribed("news"))


async def test_a_connection_lives_on_connection_host_alone(autojump_clock: Any) -> None:
    host = NarrowHost()
    narrow: ConnectionHost = host  # what mypy checks for Hub too
    client = MemoryClient()
    connection = Connection(narrow, MemoryTransport(client, SUBPROTOCOL), RequestInfo())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(host.flush.run)
        nursery.start_soon(connection.run)
        await client.send(encode_hello("alice"))
        assert (await client.receive())["type"] == "welcome"
        await client.send({"type": "unsubscribe", "stream": "news"})
        assert await client.receive() == {"type": "unsubscribed", "stream": "news"}
        await client.send({"type": "ping"})
        assert await client.receive() == {"type": "pong"}
        await client.aclose()
        with trio.fail_after(5):
            await host.unregistered.wait()
        nursery.cancel_scope.cancel()
    assert host.calls[:4] == [
        "admission_refusal",
        "authenticate_hello",
        "register",
        "handle_request Unsubscribe",
    ]
    assert set(host.calls[4:]) == {"unregister"}
    assert not hasattr(host, "__dict__")
