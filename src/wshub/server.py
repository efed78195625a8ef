"""The embedded server: the hub served over trio-websocket."""

from __future__ import annotations

import trio
from trio_websocket import WebSocketConnection, WebSocketRequest, WebSocketServer
from trio_websocket import serve_websocket as _trio_serve_websocket

from wshub.hub import Hub
from wshub.protocol import SUBPROTOCOL
from wshub.transport import RequestInfo, TransportClosed, translate_errors

__all__ = ["TrioWebSocketTransport", "serve_websocket"]


class TrioWebSocketTransport:
    """The ``Transport`` of one trio-websocket connection."""

    can_ping = True

    def __init__(self, websocket: WebSocketConnection) -> None:
        self._websocket = websocket

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol."""
        return self._websocket.subprotocol

    async def receive(self) -> str | bytes:
        """The next message; raises TransportClosed."""
        with translate_errors():
            return await self._websocket.get_message()

    async def send(self, text: str) -> None:
        """Send one text frame; raises TransportClosed."""
        with translate_errors():
            await self._websocket.send_message(text)

    async def ping(self) -> None:
        """Ping and wait for the pong; raises TransportClosed."""
        with translate_errors():
            await self._websocket.ping()

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code``; idempotent."""
        if 1004 <= code <= 1006 or code == 1015:  # reserved: never sent on the wire
            code = 1000
        await self._websocket.aclose(code, reason[:120] or None)

    async def abort(self) -> None:
        """Close the TCP stream under the WebSocket, writing nothing more."""
        # trio-websocket has no public way to drop a connection without the closing
        # handshake; its own error path uses this method. Kept here, in the adapter.
        await self._websocket._close_stream()


def _remote(request: WebSocketRequest) -> str:
    remote = request.remote  # getpeername(): raises OSError once the peer has reset
    return remote if isinstance(remote, str) else f"{remote.address}:{remote.port}"


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


async def serve_websocket(
    hub: Hub,
    host: str | None,
    port: int,
    *,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``hub`` on ``host:port`` at ``hub.config.server.path`` until cancelled.

    Supports ``server = await nursery.start(serve_websocket, hub, host, port)``; ``server.port``
    is the bound port (useful with port 0). Connections run in the hub's nursery, so they end
    no later than the hub, and are drained by its shutdown. Other paths are refused with 404.
    """
    path = hub.config.server.path

    async def handle(request: WebSocketRequest) -> None:
        # This runs in the hub's nursery: a peer that leaves during the upgrade must end
        # only its own handler, never the hub.
        try:
            with translate_errors():
                if request.path.split("?", 1)[0] != path:
                    await request.reject(404, body=b"not found")
                    return
                offered = request.proposed_subprotocols
                websocket = await request.accept(
                    subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None
                )
                remote = _remote(request)
        except (TransportClosed, OSError):  # reset mid-upgrade; getpeername() -> ENOTCONN
            return
        # Built in the call, so that no local variable keeps the headers for the connection's
        # lifetime: the connection drops them after the hello.
        await hub.serve_connection(
            TrioWebSocketTransport(websocket), _request_info(request, remote)
        )

    await _trio_serve_websocket(
        handle,
        host,
        port,
        None,
        handler_nursery=hub._nursery,
        max_message_size=hub.config.limits.max_message_bytes,
        task_status=task_status,
    )
