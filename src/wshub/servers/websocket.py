"""The embedded server: the hub served over trio-websocket."""

from __future__ import annotations

import os

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer
from trio_websocket import serve_websocket as _trio_serve_websocket
from wsproto.events import TextMessage

from wshub.core.errors import TransportClosed, translate_errors
from wshub.core.protocol import SUBPROTOCOL
from wshub.hub.hub import Hub
from wshub.hub.transport import RequestInfo

__all__ = ["TrioWebSocketTransport", "serve_websocket"]


# What the direct write in ``TrioWebSocketTransport.send`` uses of trio-websocket's
# internals (0.12). Without any of them, every frame goes through ``send_message``.
_INTERNALS = ("_stream", "_stream_lock", "_wsproto", "_close_reason", "_abort_web_socket")


class TrioWebSocketTransport:
    """The ``Transport`` of one trio-websocket connection."""

    can_ping = True
    peer_close_codes = True

    def __init__(self, websocket: WebSocketConnection) -> None:
        self._websocket = websocket
        stream = getattr(websocket, "_stream", None)
        direct = isinstance(stream, trio.SocketStream) and all(
            hasattr(websocket, name) for name in _INTERNALS
        )
        # Plain TCP (not TLS): frames can be written straight to the socket (see ``send``).
        self.direct_socket = stream.socket if direct else None  # type: ignore[union-attr]

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol."""
        return self._websocket.subprotocol

    async def receive(self) -> str | bytes:
        """The next message; raises TransportClosed."""
        with translate_errors():
            return await self._websocket.get_message()

    async def send(self, text: str) -> None:
        """Send one text frame; raises TransportClosed.

        Over plain TCP, when nothing else is being written, the frame is framed by wsproto
        and written with one non-blocking ``write(2)`` under trio-websocket's send lock, with
        no trip through the scheduler; only what the socket does not take at once is awaited.
        trio-websocket's own ``send_message`` yields twice per frame (its lock, then the
        socket), which with a thousand writers costs ten times the system call itself (see
        docs/benchmarks.md). So this is not a checkpoint when the frame goes out whole: the
        hub's writer checkpoints once per flush tick instead.
        """
        websocket = self._websocket
        sock = self.direct_socket
        if sock is None or websocket._stream_lock.locked() or websocket._close_reason is not None:
            with translate_errors():
                await websocket.send_message(text)
            return
        data = websocket._wsproto.send(TextMessage(data=text))
        lock = websocket._stream_lock
        lock.acquire_nowait()  # held until the frame is whole: pings and closes queue behind
        try:
            try:
                sent = os.write(sock.fileno(), data)
            except OSError:  # full (BlockingIOError), broken or closed: send_all waits or raises
                sent = 0
            if sent < len(data):
                await self._send_rest(memoryview(data)[sent:])
        finally:
            lock.release()

    async def _send_rest(self, rest: memoryview) -> None:
        # As trio-websocket's own ``_send``: a broken stream ends the WebSocket with 1006.
        websocket = self._websocket
        with translate_errors():
            try:
                await websocket._stream.send_all(rest)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await websocket._abort_web_socket()
                raise ConnectionClosed(websocket._close_reason) from None

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

    hub.served_by("trio-websocket")
    await _trio_serve_websocket(
        handle,
        host,
        port,
        None,
        handler_nursery=hub.nursery,
        max_message_size=hub.config.limits.max_message_bytes,
        task_status=task_status,
    )
