"""A raw WebSocket client for hostile-input tests: it can send what no library would.

The handshake and the server's frames go through wsproto (the sans-IO library both servers use);
the client's own frames can also be written by hand (``frame``), so a test can send invalid
UTF-8, broken fragmentation or a frame far over the size limit, and then see exactly how the
server ended the connection: its close code, or ``EOF`` / ``RESET`` when no close frame came.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from typing import Any

import orjson
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

__all__ = ["EOF", "RESET", "RawWebSocket", "frame"]

#: How a connection ended when no close frame arrived: the server closed TCP cleanly (EOF), or
#: the client saw a reset (RST), which may have thrown away a close frame still in flight.
EOF = "eof"
RESET = "reset"

TEXT, BINARY, CONTINUATION, CLOSE, PING = 0x1, 0x2, 0x0, 0x8, 0x9


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked client frame, written by hand (any opcode, any payload, any FIN bit)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", size)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", size)
    mask = os.urandom(4)
    return head + mask + _masked(payload, mask)


def _masked(payload: bytes, mask: bytes) -> bytes:
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


class RawWebSocket:
    """One client connection over a trio socket stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.answer_close = True  # False: read the server's close frame but never answer it
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.messages: list[str] = []  # text messages received, whole
        self._parts: list[str] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self._sending = trio.Lock()  # a frame is written whole before the next one starts

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str = "/ws",
        *,
        subprotocols: tuple[str, ...] = ("wshub.v1",),
        receive_buffer: int | None = None,
    ) -> RawWebSocket:
        """Connect to 127.0.0.1:``port`` and complete the opening handshake.

        ``receive_buffer`` sets SO_RCVBUF before connecting, so that the advertised window
        stays small: a client that then stops reading fills it after a few kilobytes.
        """
        sock = trio.socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        client = cls(stream)
        request = Request(host=f"127.0.0.1:{port}", target=path, subprotocols=list(subprotocols))
        await stream.send_all(client.ws.send(request))
        while True:
            client.ws.receive_data(await stream.receive_some(65536))
            for event in client.ws.events():
                if isinstance(event, AcceptConnection):
                    return client
                if isinstance(event, RejectConnection):
                    raise AssertionError(f"upgrade refused with {event.status_code}")

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (hand-made frames)."""
        async with self._sending:
            await self.stream.send_all(data)

    async def send_text(self, text: str) -> None:
        """Send one well-formed text frame."""
        await self.send_raw(self.ws.send(TextMessage(data=text)))

    async def send_json(self, obj: Any) -> None:
        """Send one object as a text frame."""
        await self.send_text(orjson.dumps(obj).decode())

    async def receive(self) -> dict[str, Any] | None:
        """The next object from the server (batches split), or None once it closed."""
        while True:
            if self.messages:
                return self._next_object()
            if not await self._read_events():
                return None

    def _next_object(self) -> dict[str, Any]:
        text = self.messages[0]
        first, _, rest = text.partition("\n")
        if rest:
            self.messages[0] = rest
        else:
            self.messages.pop(0)
        loaded: dict[str, Any] = orjson.loads(first)
        return loaded

    async def _read_events(self) -> bool:
        """Read once and handle the events; False once the connection has ended."""
        if self.close_code is not None:
            return False
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError as error:
            if isinstance(error.__cause__, ConnectionResetError):
                self.close_reason = RESET
                self.close_code = 1006
                return False
            raise
        if not data:
            self.close_reason = EOF
            self.close_code = 1006
            return False
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                self._parts.append(event.data)
                if event.message_finished:
                    self.messages.append("".join(self._parts))
                    self._parts = []
            elif isinstance(event, Ping):
                await self._send_quietly(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_code, self.close_reason = event.code, event.reason or ""
                if self.answer_close:
                    await self._send_quietly(self.ws.send(event.response()))
                return False
        return True

    async def _send_quietly(self, data: bytes) -> None:
        # Answering a ping or a close is best effort: the server may be gone, or another task
        # may still be writing a big frame (the answer cannot go inside it).
        if self._sending.locked():
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.send_raw(data)

    async def wait_closed(self) -> tuple[int, str]:
        """Read until the server closes; (close code, reason), or (1006, EOF or RESET)."""
        while await self._read_events():
            self.messages.clear()
        return self.close_code or 1006, self.close_reason

    async def aclose(self) -> None:
        """Drop the TCP connection."""
        await self.stream.aclose()
