"""The client's side of one WebSocket: the small interface the client needs, and trio-websocket.

The client opens each connection through a ``Connector``: ``connect(url, subprotocols)`` returns an
async context manager that yields a ``ClientTransport`` and closes it on exit. A context manager
rather than a bare object, because trio-websocket runs a reader task per connection and that task
needs a nursery whose lifetime is the connection's. Tests inject their own connector to run the
client against an in-memory hub under the mock clock.

Errors are mapped here, in one place: "the connection is gone" becomes ``TransportClosed`` (with
the close code), a failed handshake becomes ``OSError``, and an upgrade refused with HTTP 401 or
403 becomes ``TransportClosed(1008)``, a rejection (an ASGI server turns a close before accept
into HTTP 403).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, TypeAlias

from trio_websocket import ConnectionRejected, HandshakeError, WebSocketConnection
from trio_websocket import open_websocket_url as _open_websocket_url

from wshub.core.errors import TransportClosed, translate_errors

__all__ = ["ClientTransport", "Connector", "TrioWebSocketClientTransport", "websocket_connector"]

# Batches from the hub hold up to limits.max_batch messages of limits.max_message_bytes each:
# the default 64 x 64 KiB must fit, or a large replay would be refused (1009) on every resume.
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024

# How long the close handshake may take before the TCP connection is cut.
DISCONNECT_TIMEOUT = 2.0


class ClientTransport(Protocol):
    """One open WebSocket, as the client uses it."""

    async def send(self, text: str) -> None:
        """Send one text frame; raises TransportClosed once the connection is gone."""
        ...

    async def receive(self) -> str | bytes:
        """The next whole message; raises TransportClosed (with the close code) at the end."""
        ...

    async def aclose(self, code: int = 1000) -> None:
        """Close the connection (idempotent; never raises TransportClosed)."""
        ...


#: ``connect(url, subprotocols)``: an async context manager yielding an open ClientTransport.
#: Entering raises OSError or TransportClosed when the connection cannot be made.
Connector: TypeAlias = Callable[[str, Sequence[str]], AbstractAsyncContextManager[ClientTransport]]


class TrioWebSocketClientTransport:
    """The ``ClientTransport`` of one trio-websocket client connection."""

    def __init__(self, websocket: WebSocketConnection) -> None:
        self._websocket = websocket

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server selected."""
        return self._websocket.subprotocol

    async def send(self, text: str) -> None:
        """Send one text frame; raises TransportClosed."""
        with translate_errors():
            await self._websocket.send_message(text)

    async def receive(self) -> str | bytes:
        """The next message; raises TransportClosed."""
        with translate_errors():
            return await self._websocket.get_message()

    async def aclose(self, code: int = 1000) -> None:
        """Close with ``code``; idempotent."""
        await self._websocket.aclose(code)


def websocket_connector(
    *, connect_timeout: float = 10.0, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Connector:
    """A Connector over trio-websocket for ``ws://`` and ``wss://`` URLs.

    ``connect_timeout`` bounds the TCP connection and the upgrade; ``max_frame_bytes`` is the
    largest frame accepted from the hub (a larger one closes the connection with 1009).
    """

    @asynccontextmanager
    async def connect(url: str, subprotocols: Sequence[str]) -> AsyncIterator[ClientTransport]:
        try:
            async with _open_websocket_url(
                url,
                subprotocols=list(subprotocols),
                max_message_size=max_frame_bytes,
                connect_timeout=connect_timeout,
                disconnect_timeout=DISCONNECT_TIMEOUT,
            ) as websocket:
                yield TrioWebSocketClientTransport(websocket)
        except ConnectionRejected as rejected:
            if rejected.status_code in (401, 403):
                # Reported like a close with 1008, which is what the hub meant.
                raise TransportClosed(1008, f"HTTP {rejected.status_code} at upgrade") from None
            raise OSError(f"{url}: upgrade refused with HTTP {rejected.status_code}") from None
        except HandshakeError as error:
            # The opening or closing handshake failed or timed out; the cause says which.
            cause = error.__cause__ or error
            raise OSError(f"{url}: WebSocket handshake failed: {cause!r}") from error

    return connect
