"""Whole frames onto one socket: the write half of the fast server's WebSocket.

Theory of operation:
- Writing has one rule: a frame is written whole before anything else is. ``_write`` sends
  with one non-blocking ``write(2)`` when nothing is pending (no trip through the scheduler);
  only what the socket does not take at once is awaited, under ``_write_lock``, so a ping, a
  pong or a close queued meanwhile waits behind the unfinished frame.
- ``_write_frame_nowait`` (the hub's flush tick writing without a task) does the same write
  and keeps what the socket did not take in ``_rest``; every later write, ``finish_frame``
  included, first writes that rest under the lock.
- A write cancelled part-way leaves a torn frame: from then on nothing more is written
  (``abort`` is the only way out), so no close frame ever lands inside a frame.
- The tick's frames come encoded (``encode_frame``, once per distinct text per tick): with no
  extension negotiated and server frames unmasked, the bytes are the same on every
  connection, so wsproto frames them once and this class writes them as they are.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from wshub.core.errors import TransportClosed

__all__ = ["FrameWriter", "encode_text_frame"]

_ABNORMAL = 1006

# Server frames are unmasked and the fast server accepts no extension (``fast.py``), so a
# text's frame is the same bytes on every connection: one wsproto connection, kept open for
# nothing else, frames them.
_ENCODER = Connection(ConnectionType.SERVER)


def encode_text_frame(text: str) -> bytes:
    """The bytes of one unmasked WebSocket text frame holding ``text`` (no extension)."""
    return _ENCODER.send(TextMessage(data=text))


class FrameWriter:
    """Writes whole frames to one socket stream; ``FastWebSocket`` is the rest of it."""

    __slots__ = ("_fd", "_rest", "_socket_closed", "_stream", "_torn", "_write_lock", "on_blocked")

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno()
        self._write_lock = trio.StrictFIFOLock()
        self.on_blocked: Callable[[], object] | None = None
        self._torn = False  # a write stopped mid-frame: write nothing more
        self._rest: memoryview | None = None  # what _write_frame_nowait could not write
        self._socket_closed = False

    @property
    def blocked(self) -> bool:
        """Whether a frame is unfinished: the socket was full when it was written."""
        return self._rest is not None or self._write_lock.locked()

    encode_frame = staticmethod(encode_text_frame)

    def _write_frame_nowait(self, frame: bytes) -> bool:
        """One non-blocking write of ``frame``: False, taking nothing, while ``blocked``; else
        True, the rest of a frame the socket did not take whole kept for ``finish_frame``.
        Raises TransportClosed."""
        if self._torn or self._socket_closed:
            raise TransportClosed(_ABNORMAL, "the connection was cut")
        if self._rest is not None or self._write_lock.locked():
            return False
        sent = self._write_now(frame)
        if sent < len(frame):
            self._rest = memoryview(frame)[sent:]
            if self.on_blocked is not None:
                self.on_blocked()  # the socket is full: the rest waits for the peer
        return True

    async def finish_frame(self) -> None:
        """Write the rest of the frame ``_write_frame_nowait`` left unfinished; raises
        TransportClosed."""
        if self._rest is None:
            await trio.lowlevel.checkpoint()
            return
        async with self._write_lock:
            await self._write_rest()

    async def _write_rest(self) -> None:
        # The lock is held. Torn if cancelled part-way, like any other frame.
        rest, self._rest = self._rest, None
        if rest is not None:
            if self._torn or self._socket_closed:
                raise TransportClosed(_ABNORMAL, "the connection was cut")
            await self._send_rest(rest)

    def _write_now(self, data: bytes) -> int:
        # One non-blocking write(2): how much the socket took.
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except OSError as error:
            self._torn = True
            raise TransportClosed(_ABNORMAL, str(error)) from None

    async def _write(self, data: bytes) -> None:
        """Write ``data`` whole after anything already pending; raises TransportClosed."""
        if self._torn or self._socket_closed:
            raise TransportClosed(_ABNORMAL, "the connection was cut")
        lock = self._write_lock
        if lock.locked() or self._rest is not None:
            # Another frame is unfinished: the socket is full, this one waits for the peer.
            if self.on_blocked is not None:
                self.on_blocked()
            async with lock:
                await self._write_rest()
                await self._write_locked(data)
            return
        # Nothing pending: one system call, no checkpoint when the socket takes it all.
        sent = self._write_now(data)
        if sent < len(data):
            if self.on_blocked is not None:
                self.on_blocked()  # the socket is full: the rest waits for the peer
            # Taken without a checkpoint: part of the frame is on the wire already, so no
            # cancellation may come between that and the rest being sent under the lock.
            lock.acquire_nowait()
            try:
                await self._send_rest(memoryview(data)[sent:])
            finally:
                lock.release()

    async def _write_locked(self, data: bytes) -> None:
        if self._torn or self._socket_closed:
            raise TransportClosed(_ABNORMAL, "the connection was cut")
        await self._send_rest(memoryview(data))

    async def _send_rest(self, rest: memoryview) -> None:
        # The lock is held: nothing else is written until this frame is whole.
        try:
            await self._stream.send_all(rest)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._torn = True
            raise TransportClosed(_ABNORMAL, str(error)) from None
        except BaseException:  # cancelled part-way: the frame on the wire is torn
            self._torn = True
            raise
