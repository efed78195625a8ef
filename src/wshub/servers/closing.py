"""How the embedded server ends a TCP connection, so that the peer reads the close code.

Theory of operation:
- Closing a socket that still holds unread input makes the kernel send a reset, and a reset
  makes the peer's kernel throw away what the peer had not read yet: the close frame
  included. The client then sees "connection reset", not the code. trio-websocket closes the
  stream while the peer may still be sending in three cases: right after its own 1009 (it
  stops reading at once), after a frame wsproto cannot parse (invalid UTF-8, broken
  fragmentation: it sends no close frame at all), and at the end of a closing handshake.
- So trio-websocket is given a ``ClosingStream`` over the socket stream, whose ``aclose`` only
  releases it (trio-websocket reads and writes no more). The server's handler closes the
  socket itself once the connection has ended (``close_lingering``): it writes the close frame
  trio-websocket did not write (1002 or 1007 after a parse failure), half-closes (FIN), then
  reads and discards until the peer closes too, for at most ``CLOSE_SECONDS`` seconds and
  ``DISCARD_BYTES`` bytes (as the fast server does, and HTTP servers in their lingering
  close).
- Whether trio-websocket wrote a close frame is seen on the wire: each of its writes is one
  whole frame, and a close frame's first byte is 0x88 (FIN and opcode 8, RFC 6455 section
  5.2). The hub's direct writes of text frames go to the socket stream itself, not through
  this wrapper.
"""

from __future__ import annotations

import trio
from wsproto import ConnectionType
from wsproto.connection import Connection as WSProtoConnection
from wsproto.events import CloseConnection

from wshub.hub.transport import CLOSE_SECONDS, DISCARD_BYTES

__all__ = ["ClosingStream", "close_frame"]

_CLOSE_FRAME_FIRST_BYTE = b"\x88"  # FIN + opcode 0x8; servers never mask (RFC 6455 5.2)
_RESERVED_CODES = frozenset({1004, 1005, 1006, 1015})  # never sent on the wire


def close_frame(code: int, reason: str = "") -> bytes | None:
    """A server's close frame with ``code`` (None for a code that is never sent)."""
    if code in _RESERVED_CODES:
        return None
    reason = reason.encode()[:120].decode("utf-8", "ignore")
    return WSProtoConnection(ConnectionType.SERVER).send(CloseConnection(code, reason))


class ClosingStream(trio.abc.HalfCloseableStream):
    """A socket stream as trio-websocket sees it: closing it only releases it.

    ``aborted`` is set by ``abort`` (the connection is cut, nothing more may be written);
    ``close_frame_written`` once trio-websocket has started writing a close frame.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.released = False
        self.aborted = False
        self.close_frame_written = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write for trio-websocket; raises ClosedResourceError once released."""
        if self.released:
            raise trio.ClosedResourceError("the WebSocket has released its stream")
        if data[:1] == _CLOSE_FRAME_FIRST_BYTE:
            self.close_frame_written = True
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        """As the socket stream's."""
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """As the socket stream's."""
        await self.stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Read for trio-websocket; raises ClosedResourceError once released."""
        if self.released:
            raise trio.ClosedResourceError("the WebSocket has released its stream")
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        """trio-websocket is done with the stream; the server closes the socket later."""
        self.released = True
        await trio.lowlevel.checkpoint()

    async def abort(self) -> None:
        """Close the socket now, writing nothing more (a frame was cut part-way)."""
        self.released = self.aborted = True
        await trio.aclose_forcefully(self.stream)

    async def close_lingering(self, frame: bytes | None) -> None:
        """Close the socket so that the peer can read what was sent: write ``frame`` (the
        close frame) unless a close frame went out already, half-close, discard the peer's
        input until it closes (bounded by CLOSE_SECONDS and DISCARD_BYTES), then close."""
        self.released = True
        try:
            if not self.aborted:
                if frame is not None and not self.close_frame_written:
                    self.close_frame_written = True
                    await self.stream.send_all(frame)
                await self.stream.send_eof()
                with trio.move_on_after(CLOSE_SECONDS):
                    discarded = 0
                    while discarded <= DISCARD_BYTES:
                        data = await self.stream.receive_some(65536)
                        if not data:
                            break
                        discarded += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer is gone already: nothing left to wait for
        finally:
            await trio.aclose_forcefully(self.stream)
