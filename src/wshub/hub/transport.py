"""The small interface between the hub and a WebSocket implementation.

The hub serves every client through the same connection code; what differs between
trio-websocket (``servers/websocket.py``), hypercorn's ASGI (``servers/asgi.py``) and the
in-memory transport (``testing.py``) is hidden behind ``Transport``. Lower-level errors become
``TransportClosed`` in ``core/errors.py``, so the connection code never sees a library's
exception type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import attrs

from wshub.core.errors import TransportClosed

__all__ = [
    "CLOSE_SECONDS",
    "DISCARD_BYTES",
    "DirectWrite",
    "RequestInfo",
    "Transport",
    "TransportClosed",
]

#: Most a transport reads (and drops) after sending its close frame, while it waits for the
#: peer's close: enough for a client to finish writing an oversized frame and then read why it
#: was closed, rather than have its kernel drop the close frame on a reset.
DISCARD_BYTES = 64 * 1024 * 1024
#: Most seconds a transport spends after its close frame waiting for the peer's close.
CLOSE_SECONDS = 2.0


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

    on_blocked: Callable[[], object] | None
    """Set by the connection; ``send`` calls it just before it waits for the peer to take
    data (its socket or buffer is full), so that the hub's flush tick never waits for a peer
    that is not reading. A transport that cannot tell (ASGI) never calls it: the tick's idle
    rule then stops waiting for it after ``FlushTick.idle`` seconds."""

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol (``wshub.v1``) or None."""
        ...

    @property
    def can_ping(self) -> bool:
        """Whether ``ping()`` sends a WebSocket ping frame and waits for its pong."""
        ...

    @property
    def peer_close_codes(self) -> bool:
        """Whether the code in a ``TransportClosed`` is the one the peer sent. False under
        hypercorn, which reports 1006 for a client's clean close and a lost connection alike."""
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
        """Close with ``code`` (idempotent; never raises TransportClosed). After the close
        frame the transport keeps reading, discarding up to DISCARD_BYTES, until the peer's
        close frame, so that the peer can read the code; the caller bounds the time."""
        ...

    async def abort(self) -> None:
        """Cut the connection without a close frame: a send was interrupted mid-frame, so
        anything more written to the stream would land inside that frame (idempotent)."""
        ...


@runtime_checkable
class DirectWrite(Protocol):
    """A transport the hub's flush tick can write to itself, with no task woken per client.

    The fast server's sockets are one: a frame goes out with one non-blocking ``write(2)``.
    The tick calls ``send_frame_nowait`` for each frame of a dirty connection's queue while
    its writer task stays parked; only a socket that is full hands the rest to the writer,
    which waits for the peer (``finish_frame``, then ``send``). A transport without this
    interface is written by its connection's writer task alone.

    ``encode_frame`` is a pure function of the text (server frames are unmasked and no
    extension is negotiated), so a frame that many connections are sent is encoded once per
    tick and the same bytes are written to each.
    """

    @property
    def blocked(self) -> bool:
        """Whether a frame is unfinished (the socket was full): nothing else may start until
        ``finish_frame`` or a ``send`` has written its rest."""
        ...

    @property
    def encode_frame(self) -> Callable[[str], bytes]:
        """The bytes of one text frame holding a text, the same for every connection."""
        ...

    def send_frame_nowait(self, frame: bytes) -> bool:
        """Send one frame made by ``encode_frame`` without waiting: False, taking nothing,
        while ``blocked``; True once the frame is taken, written whole or its rest kept for
        ``finish_frame`` (then ``blocked`` is true). Raises TransportClosed once the peer is
        gone."""
        ...

    async def finish_frame(self) -> None:
        """Write the rest of an unfinished frame (waits for the peer; a checkpoint when there
        is none). Raises TransportClosed."""
        ...
