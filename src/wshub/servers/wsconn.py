"""One WebSocket the fast server owns: wsproto framing on a trio socket stream.

Theory of operation:
- wsproto is sans-IO: it turns events into bytes and bytes into events. This class does the
  I/O, so the hub owns the write path end to end and reads nothing private of any library.
- Writing has one rule: a frame is written whole before anything else is. ``_write`` sends
  with one non-blocking ``write(2)`` when nothing is pending (no trip through the scheduler);
  only what the socket does not take at once is awaited, under ``_write_lock``, so a ping, a
  pong or a close queued meanwhile waits behind the unfinished frame. ``send_frame_nowait``
  (the hub's flush tick writing without a task) does the same write and keeps what the
  socket did not take in ``_rest``; every later write, ``finish_frame`` included, first
  writes that rest under the lock. A write cancelled part-way leaves a torn frame: from then
  on nothing more is written (``abort`` is the only way out), so no close frame ever lands
  inside a frame.
- The tick's frames come encoded (``encode_frame``, once per distinct text per tick): with
  no extension negotiated and server frames unmasked, the bytes are the same on every
  connection, so wsproto frames them once and this class writes them as they are.
- Reading is done by whichever task waits for something (``receive`` for a message, ``ping``
  for its pong), one at a time under ``_read_lock``. Partial messages are counted as they
  arrive: past ``max_message_bytes`` the connection is closed with 1009 at once, so a peer
  can make the server hold at most the limit plus one read (``READ_SIZE``).
- wsproto reports invalid UTF-8 (1007) and protocol violations (1002) as a close event while
  the connection is still open; that is answered with a close frame of that code.
- After sending a close frame, ``close`` keeps reading and discarding (bounded by
  ``DISCARD_BYTES`` and ``CLOSE_SECONDS``) until the peer's close frame, so a peer still
  sending its oversized frame reads the 1009 rather than a reset.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError

from wshub.core.errors import TransportClosed
from wshub.core.protocol import CloseCode
from wshub.hub.transport import CLOSE_SECONDS, DISCARD_BYTES

__all__ = ["CLOSE_SECONDS", "DISCARD_BYTES", "READ_SIZE", "FastWebSocket", "encode_text_frame"]

#: Bytes asked of the socket per read.
READ_SIZE = 65536

_ABNORMAL = 1006

# Server frames are unmasked and the fast server accepts no extension (``fast.py``), so a
# text's frame is the same bytes on every connection: one wsproto connection, kept open for
# nothing else, frames them.
_ENCODER = Connection(ConnectionType.SERVER)


def encode_text_frame(text: str) -> bytes:
    """The bytes of one unmasked WebSocket text frame holding ``text`` (no extension)."""
    return _ENCODER.send(TextMessage(data=text))


class FastWebSocket:
    """The ``Transport`` of one WebSocket whose handshake is done (``connection`` is OPEN).

    ``leftover`` is what the client sent after its upgrade request (already read from the
    socket). Raises nothing but ``TransportClosed`` from ``receive``, ``send`` and ``ping``.
    """

    can_ping = True
    peer_close_codes = True
    # Slots: one per connection, for as long as it is connected (idle memory, issue 14).
    __slots__ = (
        "_close_sent",
        "_closed",
        "_events",
        "_fd",
        "_limit",
        "_message",
        "_part_bytes",
        "_parts",
        "_peer_closed",
        "_ping_payload",
        "_pings",
        "_pong",
        "_read_lock",
        "_rest",
        "_socket_closed",
        "_stream",
        "_subprotocol",
        "_torn",
        "_write_lock",
        "_ws",
        "bytes_read",
        "largest_partial",
        "on_blocked",
    )

    def __init__(
        self,
        stream: trio.SocketStream,
        connection: Connection,
        subprotocol: str | None,
        max_message_bytes: int,
        leftover: bytes = b"",
    ) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno()
        self._ws = connection
        self._subprotocol = subprotocol
        self._limit = max_message_bytes
        self._write_lock = trio.StrictFIFOLock()
        self._read_lock = trio.StrictFIFOLock()
        # A list, not a deque: a feed yields an event or two, and an empty deque is 600 bytes
        # that every idle connection would carry.
        self._events: list[Event] = []
        self._parts: list[str | bytes] = []  # the message being received
        self._part_bytes = 0
        self._message: str | bytes | None = None  # a whole message not yet returned
        self._ping_payload: bytes | None = None
        self._pings = 0
        self._pong = False
        self._closed: TransportClosed | None = None  # once set, receive/ping raise it
        self.on_blocked: Callable[[], object] | None = None
        self._close_sent = False
        self._peer_closed = False
        self._torn = False  # a write stopped mid-frame: write nothing more
        self._rest: memoryview | None = None  # what send_frame_nowait could not write
        self._socket_closed = False
        self.bytes_read = 0
        self.largest_partial = 0  # most bytes of one unfinished message held at once
        if leftover:
            self._feed(leftover)

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol (``wshub.v1``) or None."""
        return self._subprotocol

    def statistics(self) -> dict[str, int]:
        """Bytes read from the socket, and the most bytes of one partial message held."""
        return {"bytes_read": self.bytes_read, "largest_partial": self.largest_partial}

    # ------------------------------------------------------------------ writing

    @property
    def blocked(self) -> bool:
        """Whether a frame is unfinished: the socket was full when it was written."""
        return self._rest is not None or self._write_lock.locked()

    encode_frame = staticmethod(encode_text_frame)

    def send_frame_nowait(self, frame: bytes) -> bool:
        """Send one frame made by ``encode_frame`` with one non-blocking write
        (``DirectWrite``): False, taking nothing, while ``blocked``; else True, the rest of a
        frame the socket did not take whole kept for ``finish_frame``. Raises
        TransportClosed."""
        if self._close_sent or self._closed is not None:
            raise self._closed or TransportClosed(_ABNORMAL)
        if self._torn or self._socket_closed:
            raise TransportClosed(_ABNORMAL, "the connection was cut")
        if self._rest is not None or self._write_lock.locked():
            return False
        if self._ws.state is not ConnectionState.OPEN:
            raise TransportClosed(_ABNORMAL)  # the peer's close arrived: no more data frames
        sent = self._write_now(frame)
        if sent < len(frame):
            self._rest = memoryview(frame)[sent:]
            if self.on_blocked is not None:
                self.on_blocked()  # the socket is full: the rest waits for the peer
        return True

    async def finish_frame(self) -> None:
        """Write the rest of the frame ``send_frame_nowait`` left unfinished; raises
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

    async def send(self, text: str) -> None:
        """Send one text frame; raises TransportClosed.

        Not a checkpoint when the socket takes the frame at once (the hub's writer checkpoints
        once per flush tick); otherwise waits until the frame is written whole.
        """
        if self._close_sent or self._closed is not None:
            raise self._closed or TransportClosed(_ABNORMAL)
        try:
            data = self._ws.send(TextMessage(data=text))
        except LocalProtocolError:  # the peer's close arrived: no more data frames
            raise TransportClosed(_ABNORMAL) from None
        await self._write(data)

    # ------------------------------------------------------------------ reading

    def _feed(self, data: bytes | None) -> None:
        self._ws.receive_data(data)
        self._events.extend(self._ws.events())

    async def _read_more(self) -> None:
        """Read once from the socket into wsproto (EOF and errors become a 1006 close)."""
        try:
            data = await self._stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        self.bytes_read += len(data)
        if self._ws.state is ConnectionState.CLOSED:
            if not data:
                raise TransportClosed(_ABNORMAL)
            return  # after the closing handshake: nothing more to understand
        self._feed(data or None)

    async def _handle_events(self) -> None:
        """Act on every pending event; sets ``_message``, ``_pong`` or ``_closed``."""
        events = self._events
        while events and self._message is None and self._closed is None:
            event = events.pop(0)
            if isinstance(event, TextMessage | BytesMessage):
                self._take_part(event)
            elif isinstance(event, Ping):
                if not self._close_sent:
                    await self._write(self._ws.send(event.response()))
            elif isinstance(event, Pong):
                if event.payload == self._ping_payload:
                    self._pong = True
            elif isinstance(event, CloseConnection):
                await self._close_event(event)

    def _take_part(self, event: TextMessage | BytesMessage) -> None:
        data = event.data
        size = len(data) if isinstance(data, bytes | bytearray) or data.isascii() else None
        if size is None:
            assert isinstance(data, str)
            size = len(data.encode())
        self._part_bytes += size
        self.largest_partial = max(self.largest_partial, self._part_bytes)
        if self._part_bytes > self._limit:
            self._parts.clear()
            reason = f"message larger than limits.max_message_bytes ({self._limit} bytes)"
            self._closed = TransportClosed(CloseCode.MESSAGE_TOO_BIG, reason)
            return
        self._parts.append(data if isinstance(data, str) else bytes(data))
        if event.message_finished:
            parts, self._parts, self._part_bytes = self._parts, [], 0
            if len(parts) == 1:
                self._message = parts[0]
            elif isinstance(parts[0], str):
                self._message = "".join(parts)  # type: ignore[arg-type]
            else:
                self._message = b"".join(parts)  # type: ignore[arg-type]

    async def _close_event(self, event: CloseConnection) -> None:
        code, reason = int(event.code), event.reason or ""
        self._closed = TransportClosed(code, reason)
        if self._ws.state is ConnectionState.REMOTE_CLOSING:
            self._peer_closed = True
            # Answer the peer's close at once (RFC 6455 5.5.1), echoing its code.
            if not self._close_sent:
                self._close_sent = True
                data = self._ws.send(event.response())
                with contextlib.suppress(TransportClosed):
                    await self._write(data)
        elif self._ws.state is ConnectionState.CLOSED:
            self._peer_closed = True  # the answer to our close, or the link broke (1006)
        # else: still OPEN or LOCAL_CLOSING, wsproto found a bad frame (1002, 1007):
        # ``close`` sends that code when the hub ends the connection.

    async def _pump_until_ready(self, want_pong: bool) -> None:
        async with self._read_lock:
            while True:
                await self._handle_events()
                if self._message is not None or self._closed is not None:
                    return
                if want_pong and self._pong:
                    return
                await self._read_more()

    async def receive(self) -> str | bytes:
        """The next whole message; raises TransportClosed (1009 once past the limit)."""
        if self._message is None and self._closed is None:
            try:
                await self._pump_until_ready(want_pong=False)
            except TransportClosed as closed:
                self._closed = self._closed or closed
        message = self._message
        if message is not None:
            self._message = None
            return message
        assert self._closed is not None
        raise self._closed

    async def ping(self) -> None:
        """Send a ping and wait for its pong; raises TransportClosed.

        Returns early when a whole message from the peer arrives first: a sign of life as good
        as a pong, and waiting on would mean holding more than one message.
        """
        if self._closed is not None or self._close_sent:
            raise self._closed or TransportClosed(_ABNORMAL)
        self._pings += 1
        self._ping_payload = self._pings.to_bytes(4, "big")
        self._pong = False
        await self._write(self._ws.send(Ping(payload=self._ping_payload)))
        try:
            await self._pump_until_ready(want_pong=True)
        except TransportClosed as closed:
            self._closed = self._closed or closed
        if self._closed is not None:
            raise self._closed

    # ------------------------------------------------------------------ closing

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code`` and wait (bounded) for the peer's close; idempotent, never
        raises TransportClosed. A connection with a torn frame is cut instead."""
        if self._socket_closed:
            return
        if 1004 <= code <= 1006 or code == 1015:  # reserved: never sent on the wire
            code = 1000
        if (
            self._closed is not None
            and not self._peer_closed
            and self._closed.code
            in (
                1002,
                1007,
                1009,
            )
        ):
            code = self._closed.code  # what this side found wrong is what the peer learns
        with trio.move_on_after(CLOSE_SECONDS):
            if not self._close_sent and not self._torn:
                self._close_sent = True
                reason = reason.encode()[:123].decode("utf-8", "ignore")
                with contextlib.suppress(TransportClosed, LocalProtocolError):
                    await self._write(self._ws.send(CloseConnection(code=code, reason=reason)))
            if not self._torn and not self._peer_closed:
                await self._discard_until_peer_close()
        await self.abort()

    async def _discard_until_peer_close(self) -> None:
        self._parts.clear()
        self._limit = -1  # any message now is dropped at once, never held
        start = self.bytes_read
        try:
            async with self._read_lock:
                while not self._peer_closed and self.bytes_read - start < DISCARD_BYTES:
                    while self._events and not self._peer_closed:
                        event = self._events.pop(0)
                        if isinstance(event, CloseConnection):
                            self._peer_closed = True
                    if not self._peer_closed:
                        await self._read_more()
        except TransportClosed:
            pass

    async def abort(self) -> None:
        """Close the TCP connection without writing anything more (idempotent)."""
        if self._socket_closed:
            return
        self._socket_closed = True
        self._torn = True
        if self._closed is None:
            self._closed = TransportClosed(_ABNORMAL, "the connection was cut")
        await self._stream.aclose()
