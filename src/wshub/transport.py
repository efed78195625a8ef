"""The small interface between the hub and a WebSocket implementation.

The hub serves every client through the same connection code; what differs between
trio-websocket (``server.py``), hypercorn's ASGI (``asgi.py``) and the in-memory transport
(``testing.py``) is hidden behind ``Transport``. Lower-level errors are translated here, in one
table, into ``TransportClosed`` so the connection code never sees a library's exception type.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol

import attrs
import trio

__all__ = ["RequestInfo", "Transport", "TransportClosed", "translate_errors"]


class TransportClosed(Exception):
    """The WebSocket is closed; ``code`` is the close code seen (1006 when the link broke)."""

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


@attrs.frozen
class RequestInfo:
    """What the hub knows about the HTTP upgrade request of a connection."""

    path: str = "/ws"
    headers: tuple[tuple[str, str], ...] = ()  # lower-case names, in request order
    remote: str = ""
    subprotocols: tuple[str, ...] = ()

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Transport(Protocol):
    """One accepted WebSocket, as the hub's connection code uses it."""

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol (``wshub.v1``) or None."""
        ...

    @property
    def can_ping(self) -> bool:
        """Whether ``ping()`` sends a WebSocket ping frame and waits for its pong."""
        ...

    async def receive(self) -> str | bytes:
        """The next whole message; raises TransportClosed once the peer is gone."""
        ...

    async def send(self, text: str) -> None:
        """Send one text frame; raises TransportClosed once the peer is gone."""
        ...

    async def ping(self) -> None:
        """Send a ping frame and wait for the pong; raises TransportClosed."""
        ...

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code`` (idempotent; never raises TransportClosed)."""
        ...

    async def abort(self) -> None:
        """Cut the connection without a close frame: a send was interrupted mid-frame, so
        anything more written to the stream would land inside that frame (idempotent)."""
        ...


@functools.cache
def _closed_errors() -> Sequence[tuple[type[BaseException], int]]:
    # The mapping table: which library exception means "the peer is gone", and the close code
    # to report when the exception itself carries none. Imported lazily so that a user of
    # wshub.testing need not import the servers' libraries.
    from trio_websocket import ConnectionClosed

    return (
        (ConnectionClosed, 1006),
        (trio.BrokenResourceError, 1006),
        (trio.ClosedResourceError, 1006),
        (trio.EndOfChannel, 1000),
        (ConnectionResetError, 1006),
        (BrokenPipeError, 1006),
    )


class translate_errors:  # used like a function: ``with translate_errors():``
    """Turn the WebSocket libraries' "connection gone" exceptions into TransportClosed.

    A plain (sync) context manager: it wraps awaits just as well and costs less on the
    send path than an async one.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None or isinstance(error, TransportClosed):
            return
        for closed_kind, default_code in _closed_errors():
            if isinstance(error, closed_kind):
                reason = getattr(error, "reason", None)  # trio-websocket's CloseReason
                code = getattr(reason, "code", None) or default_code
                text = str(getattr(reason, "reason", "") or "")
                raise TransportClosed(code, text) from error
