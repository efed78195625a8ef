"""Helpers for deterministic tests of code that uses wshub: in-memory clients, no sockets.

``await connect_memory(hub, "alice")`` starts a connection inside the hub (through the same
connection code as the real servers) and returns a ``MemoryClient`` to drive it. Everything
runs on Trio's clock, so tests can use ``trio.testing.MockClock`` (pytest-trio's
``autojump_clock``) and assert exact virtual times.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import orjson
import trio

from wshub.core.errors import TransportClosed
from wshub.core.protocol import SUBPROTOCOL, Position, encode_hello, split_batch
from wshub.hub.hub import Hub
from wshub.hub.transport import RequestInfo

__all__ = ["ClientClosed", "MemoryClient", "MemoryTransport", "connect_memory"]


class ClientClosed(Exception):
    """The hub closed this in-memory connection; ``code`` and ``reason`` say how."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class MemoryTransport:
    """The hub's side of an in-memory connection."""

    def __init__(
        self, client: MemoryClient, subprotocol: str | None, *, can_ping: bool = True
    ) -> None:
        self._client = client
        self.subprotocol = subprotocol
        self.can_ping = can_ping  # False behaves like ASGI: no ping frames
        self.peer_close_codes = True
        self.on_blocked: Callable[[], object] | None = None

    async def receive(self) -> str | bytes:
        """The client's next frame; raises TransportClosed once the client closed."""
        try:
            return await self._client._to_hub_receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise TransportClosed(self._client.close_code or 1006) from None

    async def send(self, text: str) -> None:
        """Deliver one frame to the client (waits while its buffer is full)."""
        channel = self._client._to_client_send
        try:
            try:
                channel.send_nowait(text)
            except trio.WouldBlock:
                if self.on_blocked is not None:
                    self.on_blocked()  # the client is not reading: its buffer is full
                await channel.send(text)
            else:
                await trio.lowlevel.checkpoint()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise TransportClosed(self._client.close_code or 1006) from None

    async def ping(self) -> None:
        """Answered at once while ``client.answer_pings`` is true; never otherwise."""
        if self._client.close_code is not None:
            raise TransportClosed(self._client.close_code)
        self._client.pings.append(trio.current_time())
        if self._client.answer_pings:
            await trio.lowlevel.checkpoint()
        else:
            await trio.sleep_forever()

    async def close(self, code: int, reason: str = "") -> None:
        """Record the close for the client and end its stream of frames.

        With ``client.answer_close`` false the client gets the close frame but never answers
        it, so this waits forever, as a closing handshake with a vanished peer does.
        """
        await trio.lowlevel.checkpoint()
        client = self._client
        if client.close_code is None:
            client.close_code = code
            client.close_reason = reason
        client._to_client_send.close()
        if not client.answer_close:
            await trio.sleep_forever()
        client._to_hub_receive.close()

    async def abort(self) -> None:
        """End the client's stream of frames with no close frame: it sees 1006."""
        await trio.lowlevel.checkpoint()
        client = self._client
        if client.close_code is None:
            client.close_code = 1006
            client.close_reason = ""
        client._to_client_send.close()
        client._to_hub_receive.close()


class MemoryClient:
    """The client's side: send objects, receive decoded objects, see how it was closed."""

    def __init__(
        self, *, buffer: float = math.inf, answer_pings: bool = True, answer_close: bool = True
    ) -> None:
        self._to_client_send, self._to_client_receive = trio.open_memory_channel[str](buffer)
        self._to_hub_send, self._to_hub_receive = trio.open_memory_channel[str | bytes](math.inf)
        self._pending: list[dict[str, Any]] = []
        self.answer_pings = answer_pings
        self.answer_close = answer_close  # False: never completes the closing handshake
        self.close_code: int | None = None
        self.close_reason = ""
        self.frames: list[str] = []  # every raw frame received, for assertions on batching
        self.pings: list[float] = []  # when the hub pinged (trio time), answered or not

    async def send(self, frame: Mapping[str, Any] | str | bytes) -> None:
        """Send a frame: a mapping is encoded as JSON, text and bytes go as they are."""
        if isinstance(frame, Mapping):
            frame = orjson.dumps(frame).decode()
        try:
            await self._to_hub_send.send(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ClientClosed(self.close_code or 1006, self.close_reason) from None

    async def receive(self) -> dict[str, Any]:
        """The next object from the hub (batches are split); raises ClientClosed at the end."""
        while not self._pending:
            try:
                frame = await self._to_client_receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise ClientClosed(self.close_code or 1006, self.close_reason) from None
            self.frames.append(frame)
            self._pending.extend(orjson.loads(part) for part in split_batch(frame))
        return self._pending.pop(0)

    async def receive_until(self, kind: str) -> list[dict[str, Any]]:
        """Objects up to and including the first of type ``kind``."""
        received = []
        while True:
            received.append(await self.receive())
            if received[-1]["type"] == kind:
                return received

    async def wait_closed(self) -> tuple[int, str]:
        """Read (and drop) frames until the hub closes; returns (code, reason)."""
        try:
            while True:
                await self.receive()
        except ClientClosed as closed:
            return closed.code, closed.reason

    async def aclose(self, code: int = 1000) -> None:
        """Close from the client's side, like a browser tab going away."""
        await trio.lowlevel.checkpoint()
        if self.close_code is None:
            self.close_code = code
        self._to_hub_send.close()
        self._to_client_receive.close()

    async def __aenter__(self) -> MemoryClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


async def connect_memory(
    hub: Hub,
    client_id: str | None = None,
    *,
    subscribe: Mapping[str, Position | None] | None = None,
    token: str | None = None,
    subprotocol: str | None = SUBPROTOCOL,
    request: RequestInfo | None = None,
    buffer: float = math.inf,
    answer_pings: bool = True,
    can_ping: bool = True,
    answer_close: bool = True,
) -> MemoryClient:
    """Open an in-memory connection to ``hub``; sends a hello when ``client_id`` is given.

    The connection task runs in the hub's nursery, as the embedded server's do. With
    ``can_ping`` False the transport has no ping frames, as under ASGI: only the client's own
    frames keep it alive. With ``answer_close`` False the client never completes the closing
    handshake.
    """
    client = MemoryClient(buffer=buffer, answer_pings=answer_pings, answer_close=answer_close)
    transport = MemoryTransport(client, subprotocol, can_ping=can_ping)
    hub.start_soon_in_hub(hub.serve_connection, transport, request or RequestInfo())
    if client_id is not None:
        await client.send(encode_hello(client_id, token=token, subscribe=subscribe or {}))
    return client
