"""The ASGI app: the hub served by hypercorn's trio worker, WebSocket and HTTP on one port.

Theory of operation:
- The lifespan call owns the hub: on ``lifespan.startup`` it enters ``open_hub`` and stays in
  it until ``lifespan.shutdown``, then leaves it, which drains (the quart-trio pattern). An app
  given ``hub=`` uses that hub and leaves its lifetime to the caller.
- Hypercorn runs each WebSocket in its own task; that task serves the connection through
  ``Hub.serve_connection``, the same code as the embedded server (batching included), behind
  ``ASGITransport``. Hypercorn sends ``lifespan.shutdown`` only after every connection task
  has ended, so the hub outlives its connections.
- To drain with 1001 rather than let hypercorn cut connections at its own deadline, whoever
  receives the stop signal calls ``app.hub.drain()`` before hypercorn stops (``wshub serve``
  does this in its shutdown trigger).
- ASGI has no ping frames: ``can_ping`` is False and the connection treats the client's own
  frames as signs of life.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable

import sniffio

from wshub.core.config import HubConfig
from wshub.core.errors import TransportClosed, translate_errors
from wshub.core.protocol import SUBPROTOCOL, CloseCode
from wshub.hub.hooks import AuthenticateHook, OnPublishHook
from wshub.hub.hub import Hub, open_hub
from wshub.hub.transport import DISCARD_BYTES, RequestInfo
from wshub.servers.endpoints import handle_http
from wshub.servers.http_messages import Message, Receive, Scope, Send, error_response

__all__ = ["ASGITransport", "HubApp", "app", "create_app"]

logger = logging.getLogger("wshub.asgi")


class ASGITransport:
    """The ``Transport`` of one accepted ASGI WebSocket.

    Once it raises TransportClosed it counts as closed, so ``close()`` never sends a close
    frame on a dead connection (nor a reserved code such as 1006 on the wire). After its own
    close frame it keeps receiving (and discarding) until hypercorn reports the peer's close:
    returning earlier would make hypercorn close the socket under a peer still sending, and
    the reset would throw away the close frame before the peer read it.
    """

    can_ping = False
    # Hypercorn (0.18) reports 1006 for a client's own close unless the app closed first, so a
    # disconnect code from the server says nothing; the hub counts such closes as PEER_CLOSED.
    peer_close_codes = False

    def __init__(
        self, receive: Receive, send: Send, subprotocol: str | None, max_message_bytes: int
    ) -> None:
        self._receive = receive
        self._send = send
        self._subprotocol = subprotocol
        self._limit = max_message_bytes
        self._closed_with: int | None = None
        # Never called: ASGI cannot tell whether hypercorn's send waits on the peer. The flush
        # tick's idle rule covers it (a writer that finishes nothing is not waited for).
        self.on_blocked: Callable[[], object] | None = None
        self._disconnected = False  # the server said websocket.disconnect, or a call failed

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol."""
        return self._subprotocol

    def _closed(self, code: int, reason: str = "") -> TransportClosed:
        self._disconnected = True
        if self._closed_with is None:
            self._closed_with = code
        return TransportClosed(code, reason)

    async def receive(self) -> str | bytes:
        """The next message; raises TransportClosed (after closing with 1009 when too big)."""
        if self._closed_with is not None:
            raise TransportClosed(self._closed_with)
        try:
            with translate_errors():
                message = await self._receive()
        except TransportClosed as closed:
            raise self._closed(closed.code, closed.reason) from closed
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            data: str | bytes = text if text is not None else message.get("bytes") or b""
            if self._too_big(data):
                reason = f"message larger than limits.max_message_bytes ({self._limit} bytes)"
                await self._send_close(CloseCode.MESSAGE_TOO_BIG, reason)
                raise TransportClosed(CloseCode.MESSAGE_TOO_BIG, reason)
            return data
        if kind == "websocket.disconnect":
            raise self._closed(int(message.get("code", 1000)), message.get("reason") or "")
        raise self._closed(1006, f"unexpected ASGI event {kind!r}")

    def _too_big(self, data: str | bytes) -> bool:
        size, limit = len(data), self._limit
        if isinstance(data, str) and limit < size * 4 and size <= limit:
            size = len(data.encode())  # only when the character count cannot decide
        return size > limit

    async def send(self, text: str) -> None:
        """Send one text frame; raises TransportClosed."""
        if self._closed_with is not None:
            raise TransportClosed(self._closed_with)
        try:
            with translate_errors():
                await self._send({"type": "websocket.send", "text": text})
        except TransportClosed as closed:
            raise self._closed(closed.code, closed.reason) from closed

    async def ping(self) -> None:
        """Not available: ASGI has no ping frames (``can_ping`` is False)."""
        raise NotImplementedError("ASGI has no WebSocket ping frames")

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code``, then discard what the peer still sends (up to DISCARD_BYTES)
        until its close; idempotent, never raises TransportClosed. The caller bounds the
        time."""
        await self._send_close(code, reason)
        if self._disconnected:
            return
        discarded = 0
        with contextlib.suppress(TransportClosed), translate_errors():
            while discarded <= DISCARD_BYTES:
                message = await self._receive()
                if message["type"] != "websocket.receive":
                    break
                discarded += len(message.get("text") or message.get("bytes") or b"")
        self._disconnected = True

    async def _send_close(self, code: int, reason: str) -> None:
        if self._closed_with is not None:
            return
        self._closed_with = code
        # The close reason is limited to 123 bytes on the wire.
        reason = reason.encode()[:123].decode("utf-8", "ignore")
        try:
            with translate_errors():
                await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except TransportClosed:
            self._disconnected = True

    async def abort(self) -> None:
        """Close with 1006's meaning: hypercorn never cuts a frame (its writes are shielded),
        so the ASGI close event is all an application can send."""
        await self.close(1011, "connection aborted")


def _request_info(scope: Scope) -> RequestInfo:
    query = scope.get("query_string", b"").decode("latin-1")
    client = scope.get("client")
    return RequestInfo(
        path=scope["path"] + (f"?{query}" if query else ""),
        headers=tuple(
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in scope.get("headers", ())
        ),
        remote=f"{client[0]}:{client[1]}" if client else "",
        subprotocols=tuple(scope.get("subprotocols", ())),
    )


class HubApp:
    """The ASGI app: ``/ws`` and the HTTP endpoints, with a lifespan that runs the hub.

    Build it with ``create_app``. ``hub`` is the running hub once the lifespan has started.
    """

    def __init__(
        self,
        config: HubConfig | None = None,
        *,
        hub: Hub | None = None,
        authenticate: AuthenticateHook | None = None,
        on_publish: OnPublishHook | None = None,
    ) -> None:
        if hub is not None and (config, authenticate, on_publish) != (None, None, None):
            raise ValueError("give either hub= or the config and hooks to build one, not both")
        self._config = config
        self._authenticate = authenticate
        self._on_publish = on_publish
        self._hub = hub
        self._owns_hub = hub is None

    @property
    def hub(self) -> Hub:
        """The running hub; raises RuntimeError before the lifespan has started it."""
        if self._hub is None:
            raise RuntimeError("the hub is not running: the ASGI lifespan has not started")
        return self._hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI 3 entry point."""
        kind = scope["type"]
        if kind == "http":
            await handle_http(self._hub, scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            raise ValueError(f"unsupported ASGI scope type {kind!r}")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "lifespan.startup":
            return
        library = _async_library()
        if library != "trio":
            # Refuse to start, rather than serve 503 from an app whose hub can never run.
            logger.error("%s", _needs_trio(library))
            await send({"type": "lifespan.startup.failed", "message": _needs_trio(library)})
            return
        if not self._owns_hub:
            self.hub.served_by(_server_name())
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown: the hub's owner ends it
            await send({"type": "lifespan.shutdown.complete"})
            return
        if self._hub is not None:
            raise RuntimeError("this app's hub is already running; use one lifespan per app")
        try:
            config = self._config if self._config is not None else HubConfig.from_env()
        except ValueError as error:  # ConfigError: the message names the key
            await send({"type": "lifespan.startup.failed", "message": str(error)})
            return
        async with contextlib.AsyncExitStack() as stack:
            try:
                hub = await stack.enter_async_context(
                    open_hub(config, authenticate=self._authenticate, on_publish=self._on_publish)
                )
            except ValueError as error:  # ConfigError (say, auth.jwt_public_key): names the key
                await send({"type": "lifespan.startup.failed", "message": str(error)})
                return
            self._hub = hub
            hub.served_by(_server_name())
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown; leaving open_hub drains the hub
        await send({"type": "lifespan.shutdown.complete"})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._hub is None and _async_library() != "trio":
            # A server that ran no lifespan (hypercorn --lifespan off, say) on another loop.
            raise RuntimeError(_needs_trio(_async_library()))
        if (await receive())["type"] != "websocket.connect":
            return
        hub = self._hub
        if hub is None or scope["path"] != hub.config.server.path:
            await self._refuse(scope, send, hub is None)
            return
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in scope.get("subprotocols", ()) else None
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        transport = ASGITransport(receive, send, subprotocol, hub.config.limits.max_message_bytes)
        # A draining hub closes the new connection with 1001 itself (admission_refusal).
        await hub.serve_connection(transport, _request_info(scope))

    async def _refuse(self, scope: Scope, send: Send, not_running: bool) -> None:
        """Refuse an upgrade with a JSON answer where the server allows one (else 403)."""
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})
            return
        response = (
            error_response(503, "the hub is not running")
            if not_running
            else error_response(404, "not found", path=scope["path"])
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(response.body)).encode()),
        ]
        start: Message = {
            "type": "websocket.http.response.start",
            "status": response.status,
            "headers": headers,
        }
        await send(start)
        await send({"type": "websocket.http.response.body", "body": response.body})


def _async_library() -> str:
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return "unknown"


def _server_name() -> str:
    # ASGI does not name the server; hypercorn, the one wshub documents, is known by its module.
    return "hypercorn" if "hypercorn" in sys.modules else "asgi"


def _needs_trio(library: str) -> str:
    return (
        f"wshub runs on Trio, not {library}: start hypercorn with --worker-class trio "
        "(hypercorn --worker-class trio wshub.asgi:app), or use wshub serve"
    )


def create_app(
    config: HubConfig | None = None,
    *,
    hub: Hub | None = None,
    authenticate: AuthenticateHook | None = None,
    on_publish: OnPublishHook | None = None,
) -> HubApp:
    """An ASGI app serving a hub: ``/ws`` (``server.path``) and the HTTP endpoints.

    Its lifespan runs ``open_hub(config, authenticate=..., on_publish=...)`` for the app's
    lifetime; without ``config`` the configuration is read at lifespan startup by
    ``HubConfig.from_env()`` (``WSHUB_CONFIG``, ``WSHUB_PRESET``, ``WSHUB_*`` variables).
    With ``hub`` the app serves that running hub and leaves its lifetime to the caller.
    Raises ValueError when ``hub`` is given together with a config or hooks.
    """
    return HubApp(config, hub=hub, authenticate=authenticate, on_publish=on_publish)


#: ``hypercorn --worker-class trio wshub.asgi:app``: configured from the environment at
#: lifespan startup; nothing is created at import time but this empty shell.
app = create_app()
