"""The fast server: WebSocket and HTTP on one port, on connections the hub owns.

Theory of operation:
- One task per TCP connection, in the hub's nursery (so no connection outlives the hub). It
  reads HTTP requests with h11 (``servers/http.py``). A WebSocket upgrade on
  ``server.path`` is validated and answered by wsproto; from then on the same task is the
  connection's reader, inside ``Hub.serve_connection`` (the code every server shares),
  behind ``FastWebSocket`` (``servers/wsconn.py``). Any other request on ``server.path``
  gets 426; every other path goes to the endpoint code shared with the ASGI app.
- Nothing a peer does ends more than its own task: a reset during the upgrade, a request
  h11 cannot parse, a handshake wsproto refuses (answered 400 or 426 with a JSON body).
- The write path belongs to ``FastWebSocket``: wsproto frames, one non-blocking write when
  the socket has room, and frames kept whole under one writer, with no private attribute of
  any library read. trio-websocket stays the Trio client's transport.
"""

from __future__ import annotations

import logging
import socket
from functools import partial

import attrs
import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection
from wsproto.events import Request as UpgradeRequest
from wsproto.utilities import RemoteProtocolError

from wshub.core.protocol import SUBPROTOCOL
from wshub.hub.hub import Hub
from wshub.hub.transport import RequestInfo
from wshub.servers.http import ClientGone, HTTPConnection
from wshub.servers.http_messages import error_response, upgrade_required
from wshub.servers.wsconn import FastWebSocket

__all__ = ["FastServer", "accept_websocket", "serve_fast"]

logger = logging.getLogger("wshub.server")


@attrs.frozen
class FastServer:
    """Where a running fast server listens (``port`` is the bound one, also with port 0)."""

    host: str | None
    port: int


def _peer(stream: trio.SocketStream) -> tuple[str, int] | None:
    try:
        address = stream.socket.getpeername()  # OSError once the peer has reset
    except OSError:
        return None
    return str(address[0]), int(address[1])


def _is_upgrade(request: h11.Request) -> bool:
    if request.method != b"GET":
        return False
    return any(
        name == b"upgrade" and value.lower() == b"websocket" for name, value in request.headers
    )


async def accept_websocket(
    http: HTTPConnection, request: h11.Request, max_message_bytes: int
) -> tuple[FastWebSocket, RequestInfo] | None:
    """Complete the WebSocket handshake of ``request`` (an upgrade read by ``http``).

    Returns the open WebSocket and what the hub knows of its request, or None when the
    handshake was refused (answered 400 or 426 with a JSON body) or the client left.
    """
    handshake = WSConnection(ConnectionType.SERVER)
    try:
        handshake.initiate_upgrade_connection(list(request.headers), request.target)
        upgrade = next(iter(handshake.events()))
    except RemoteProtocolError as error:
        status = getattr(error.event_hint, "status_code", 400)
        await http.send_response(error_response(status, f"bad WebSocket upgrade: {error}"))
        return None
    assert isinstance(upgrade, UpgradeRequest)
    subprotocol = SUBPROTOCOL if SUBPROTOCOL in upgrade.subprotocols else None
    answer = handshake.send(AcceptConnection(subprotocol=subprotocol))
    leftover, _ = http.h11.trailing_data  # what the client sent after its request
    try:
        await http.stream.send_all(answer)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return None
    connection = handshake.connection  # only this is kept: not the handshake's h11 state
    assert connection is not None
    websocket = FastWebSocket(http.stream, connection, subprotocol, max_message_bytes, leftover)
    client = http.client
    info = RequestInfo(
        path=request.target.decode("latin-1"),
        headers=tuple(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers
        ),
        remote=f"{client[0]}:{client[1]}" if client is not None else "",
        subprotocols=tuple(upgrade.subprotocols),
    )
    return websocket, info


Accepted = list[tuple[FastWebSocket, RequestInfo]]


async def _serve_http(hub: Hub, stream: trio.SocketStream, accepted: Accepted) -> None:
    """Answer HTTP requests until the connection ends or one is a WebSocket upgrade, which
    is accepted into ``accepted`` (so that none of this frame's locals outlive the HTTP
    part: an idle WebSocket keeps neither its h11 state nor its request headers)."""
    path = hub.config.server.path
    client = _peer(stream)
    if client is None:
        return
    http = HTTPConnection(stream, client)
    while True:
        request = await http.next_event()
        if not isinstance(request, h11.Request):
            return
        if request.target.split(b"?", 1)[0].decode("latin-1") == path:
            if _is_upgrade(request):
                limit = hub.config.limits.max_message_bytes
                websocket = await accept_websocket(http, request, limit)
                if websocket is not None:
                    accepted.append(websocket)
                return
            await http.send_response(upgrade_required(path))
        else:
            await http.serve_endpoint(hub, request)
        if not await http.ready_for_next():
            return


async def _serve_client(hub: Hub, stream: trio.SocketStream) -> None:
    """Serve one TCP connection: HTTP requests until one is a WebSocket upgrade."""
    try:
        accepted: Accepted = []
        await _serve_http(hub, stream, accepted)
        if accepted:
            # Popped into the call: only the connection holds the request from here on.
            await hub.serve_connection(*accepted.pop())
    except ClientGone:
        pass
    except Exception:  # one client's failure is logged and ends that client only
        logger.exception("serving a client failed")
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def serve_fast(
    hub: Hub,
    host: str | None,
    port: int,
    *,
    sock: socket.socket | None = None,
    task_status: trio.TaskStatus[FastServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``hub`` on ``host:port`` (WebSocket at ``server.path``, HTTP endpoints) until
    cancelled.

    ``server = await nursery.start(serve_fast, hub, host, port)`` returns once the socket
    listens; ``server.port`` is the bound port. Connections run in the hub's nursery, so they
    end no later than the hub and are drained by its shutdown. With ``sock`` (a listening
    socket, as ``wshub serve --workers N`` hands each worker) it accepts from that instead
    of binding. Raises OSError when the address cannot be bound.
    """
    if sock is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    else:  # already listening, inherited from ``wshub serve --workers N``
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
    hub.served_by("fast")
    bound = listeners[0].socket.getsockname()[1]
    task_status.started(FastServer(host, int(bound)))
    await trio.serve_listeners(partial(_serve_client, hub), listeners, handler_nursery=hub.nursery)
