"""One WebSocket the fast server owns: wsproto framing on a trio socket stream.

Theory of operation:
- wsproto is sans-IO: it turns events into bytes and bytes into events. This class does the
  I/O, so the hub owns the write path end to end and reads nothing private of any library.
- Writing is ``FrameWriter``'s (``framewriter.py``): a frame is written whole before
  anything else is, from the tick without a task when the socket has room.
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

import trio
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError

from wshub.core.errors import TransportClosed
from wshub.core.protocol import CloseCode
from wshub.hub.transport import CLOSE_SECONDS, DISCARD_BYTES
from wshub.servers.framewriter import FrameWriter

__all__ = ["CLOSE_SECONDS", "DISCARD_BYTES", "READ_SIZE", "FastWebSocket"]

#: Bytes asked of the socket per read.
READ_SIZE = 65536

_ABNORMAL = 1006


class FastWebSocket(FrameWriter):
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
        "_limit",
        "_message",
        "_part_bytes",
        "_parts",
        "_peer_closed",
        "_ping_payload",
        "_pings",
        "_pong",
        "_read_lock",
        "_subprotocol",
        "_ws",
        "bytes_read",
        "largest_partial",
    )

    def __init__(
        self,
        stream: trio.SocketStream,
        connection: Connection,
        subprotocol: str | None,
        max_message_bytes: int,
        leftover: bytes = b"",
    ) -> None:
        super().__init__(stream)
        self._ws = connection
        self._subprotocol = subprotocol
        self._limit = max_message_bytes
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
        self._close_sent = False
        self._peer_closed = False
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

    def send_frame_nowait(self, frame: bytes) -> bool:
        """Send one frame made by ``encode_frame`` with one non-blocking write
        (``DirectWrite``): False, taking nothing, while ``blocked``; else True, the rest of a
        frame the socket did not take whole kept for ``finish_frame``. Raises
        TransportClosed."""
        if self._close_sent or self._closed is not None:
            raise self._closed or TransportClosed(_ABNORMAL)
        if self._ws.state is not ConnectionState.OPEN:
            raise TransportClosed(_ABNORMAL)  # the peer's close arrived: no more data frames
        return self._write_frame_nowait(frame)

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
