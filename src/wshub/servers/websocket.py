"""The embedded server: the hub served over trio-websocket, on sockets it owns.

Theory of operation:
- Each accepted TCP stream is handed to trio-websocket with ``wrap_server_stream`` inside a
  nursery of the connection's own, so that whatever trio-websocket's reader task raises ends
  that connection only (a peer racing a closing handshake with an oversized frame makes
  trio-websocket's reader raise wsproto's LocalProtocolError).
- trio-websocket sees the socket through a ``ClosingStream`` (``closing.py``): once the
  connection has ended, the handler writes the close frame trio-websocket did not write (1002,
  1007) and closes the socket with a lingering close, so the peer reads the close code.
- Connection tasks run in the hub's nursery, so they end no later than the hub.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import attrs
import trio
from trio_websocket import (
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)
from wsproto.utilities import LocalProtocolError

from wshub.core.errors import TransportClosed, translate_errors
from wshub.core.protocol import SUBPROTOCOL
from wshub.hub.hub import Hub
from wshub.hub.transport import RequestInfo
from wshub.servers.closing import ClosingStream, close_frame

__all__ = ["EmbeddedServer", "TrioWebSocketTransport", "serve_websocket"]

#: How long a new TCP connection has to complete the WebSocket upgrade (trio-websocket's own
#: default).
UPGRADE_TIMEOUT = 60.0


class TrioWebSocketTransport:
    """The ``Transport`` of one trio-websocket connection over a ``ClosingStream``."""

    can_ping = True
    peer_close_codes = True

    def __init__(self, websocket: WebSocketConnection, stream: ClosingStream) -> None:
        self._websocket = websocket
        self._stream = stream
        self._closed_with: tuple[int, str] | None = None
        # trio-websocket cannot say when a send waits for the peer: the flush tick's idle rule
        # stops waiting for such a writer instead (``hub/flush.py``).
        self.on_blocked: Callable[[], object] | None = None

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol."""
        return self._websocket.subprotocol

    async def receive(self) -> str | bytes:
        """The next message; raises TransportClosed."""
        with translate_errors():
            return await self._websocket.get_message()

    async def send(self, text: str) -> None:
        """Send one text frame through trio-websocket's ``send_message``; raises
        TransportClosed.

        It yields twice per frame (its send lock, then the socket), which with a thousand
        writers costs several times the system call itself: the fast server (``fast.py``),
        which owns its write path, is the one for many clients (docs/architecture.md).
        """
        with translate_errors():
            await self._websocket.send_message(text)

    async def ping(self) -> None:
        """Ping and wait for the pong; raises TransportClosed."""
        with translate_errors():
            await self._websocket.ping()

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code``; idempotent. trio-websocket reads on until the peer's close
        frame (the caller bounds the wait); the server's lingering close does the rest."""
        if self._closed_with is None:
            self._closed_with = (code, reason)
        if 1004 <= code <= 1006 or code == 1015:  # reserved: never sent on the wire
            code = 1000
        await self._websocket.aclose(code, reason[:120] or None)

    async def abort(self) -> None:
        """Close the TCP stream under the WebSocket, writing nothing more."""
        await self._stream.abort()

    def unsent_close_frame(self) -> bytes | None:
        """The close frame the hub closed with, for the server to write when trio-websocket
        did not (after a frame wsproto could not parse, it closes without one)."""
        if self._closed_with is None:
            return None
        return close_frame(*self._closed_with)


@attrs.frozen
class EmbeddedServer:
    """What ``serve_websocket`` reports once it listens."""

    listeners: tuple[trio.SocketListener, ...]

    @property
    def port(self) -> int:
        """The bound port (useful after asking for port 0)."""
        port: int = self.listeners[0].socket.getsockname()[1]
        return port


def _remote(stream: trio.SocketStream) -> str:
    host, port = stream.socket.getpeername()[:2]  # raises OSError once the peer has reset
    return f"{host}:{port}"


def _request_info(request: WebSocketRequest, remote: str) -> RequestInfo:
    return RequestInfo(
        path=request.path,
        headers=tuple(
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in request.headers
        ),
        remote=remote,
        subprotocols=tuple(request.proposed_subprotocols),
    )


async def _serve_upgrade(hub: Hub, nursery: trio.Nursery, stream: ClosingStream) -> bytes | None:
    """The upgrade, then the hub's connection; returns the close frame still to write."""
    with trio.move_on_after(UPGRADE_TIMEOUT):
        request = await wrap_server_stream(
            nursery, stream, max_message_size=hub.config.limits.max_message_bytes
        )
        with translate_errors():
            if request.path.split("?", 1)[0] != hub.config.server.path:
                await request.reject(404, body=b"not found")
                return None
            offered = request.proposed_subprotocols
            websocket = await request.accept(
                subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None
            )
        remote = _remote(stream.stream)
        transport = TrioWebSocketTransport(websocket, stream)
        # Built in the call, so that no local variable keeps the headers for the connection's
        # lifetime: the connection drops them after the hello.
        await hub.serve_connection(transport, _request_info(request, remote))
        return transport.unsent_close_frame()
    return None  # no upgrade in time


async def _serve_stream(hub: Hub, socket_stream: trio.SocketStream) -> None:
    # This runs in the hub's nursery: a peer must end only its own handler, never the hub.
    stream = ClosingStream(socket_stream)
    frame = None
    try:
        async with trio.open_nursery() as nursery:  # trio-websocket's reader task
            frame = await _serve_upgrade(hub, nursery, stream)
            nursery.cancel_scope.cancel()
    except* (TransportClosed, OSError):
        pass  # reset mid-upgrade; getpeername() -> ENOTCONN
    except* LocalProtocolError:
        # trio-websocket's reader, closing, met an oversized frame and tried to send 1009
        # in a state where wsproto allows no second close frame: the connection is over.
        pass
    finally:
        await stream.close_lingering(frame)


async def serve_websocket(
    hub: Hub,
    host: str | None,
    port: int,
    *,
    task_status: trio.TaskStatus[EmbeddedServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``hub`` on ``host:port`` at ``hub.config.server.path`` until cancelled.

    Supports ``server = await nursery.start(serve_websocket, hub, host, port)``; ``server.port``
    is the bound port (useful with port 0). Connections run in the hub's nursery, so they end
    no later than the hub, and are drained by its shutdown. Other paths are refused with 404.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def handle(stream: trio.SocketStream) -> None:
        await _serve_stream(hub, stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(trio.serve_listeners, handle, listeners, handler_nursery=hub.nursery)
        )
        hub.served_by("trio-websocket")
        task_status.started(EmbeddedServer(tuple(listeners)))
