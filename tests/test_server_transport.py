"""The embedded server's transport over real sockets: direct writes keep frames whole.

``TrioWebSocketTransport.send`` writes a frame straight to the socket when it can, and awaits
only what the socket does not take. These tests make the socket full (a client that does not
read yet), so the rest of a frame has to wait, and check that nothing else (a ping, the next
frame, a close) gets into the middle of it.
"""

from __future__ import annotations

import base64
import functools
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from trio_websocket import wrap_server_stream

from wshub.core.errors import TransportClosed
from wshub.servers.closing import ClosingStream
from wshub.servers.websocket import TrioWebSocketTransport

BIG = 8_000_000  # far more than a loopback socket with a small receive buffer takes at once

Handler = Callable[[TrioWebSocketTransport], Awaitable[None]]


class RawClient:
    """A WebSocket client that reads only when told to, so the server's socket can fill up."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = await self.stream.receive_some(1 << 20)
            if not chunk:
                raise EOFError("the server closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def handshake(self, port: int) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await self.stream.send_all(request.encode())
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += await self.stream.receive_some(4096)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101")

    async def frame(self) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload)."""
        first, second = await self._read(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self._read(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self._read(8))
        assert first & 0x80, "fragmented frame"
        return first & 0x0F, await self._read(size)


@asynccontextmanager
async def served(handler: Handler) -> AsyncIterator[RawClient]:
    """A trio-websocket server running ``handler`` on one transport, and a raw client of it."""

    async def accept(stream: trio.SocketStream) -> None:
        closing = ClosingStream(stream)  # as the embedded server hands it to trio-websocket
        async with trio.open_nursery() as reader:
            request = await wrap_server_stream(reader, closing)
            await handler(TrioWebSocketTransport(await request.accept(), closing))
            reader.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, host="127.0.0.1")
        listeners = await nursery.start(serve, accept, 0)
        port = listeners[0].socket.getsockname()[1]
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        await sock.connect(("127.0.0.1", port))
        client = RawClient(trio.SocketStream(sock))
        await client.handshake(port)
        yield client
        await client.stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_frame_bigger_than_the_socket_stays_whole_with_a_ping_behind_it() -> None:
    big = "x" * BIG
    filled = trio.Event()

    async def handler(transport: TrioWebSocketTransport) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.send, big)
            await trio.testing.wait_all_tasks_blocked()  # the socket is full: the rest waits
            nursery.start_soon(transport.ping)  # must queue behind the unfinished frame
            await trio.testing.wait_all_tasks_blocked()
            filled.set()
            await transport.send("after")  # and this behind the ping
        await trio.sleep_forever()

    async with served(handler) as client:
        await filled.wait()
        with trio.fail_after(10):  # a frame torn by the ping would leave the parser lost
            opcode, payload = await client.frame()
            assert (opcode, len(payload), payload == big.encode()) == (1, BIG, True)
            assert (await client.frame())[0] == 9  # the ping, after the whole frame
            assert await client.frame() == (1, b"after")


async def test_small_frames_go_out_whole_and_in_order() -> None:
    texts = [f"message {n}" for n in range(500)]

    async def handler(transport: TrioWebSocketTransport) -> None:
        for text in texts:
            await transport.send(text)
        await trio.sleep_forever()

    async with served(handler) as client:
        received = [await client.frame() for _ in texts]
    assert received == [(1, text.encode()) for text in texts]


async def test_sending_after_the_peer_left_raises_transport_closed() -> None:
    outcome: list[BaseException] = []
    client_gone, done = trio.Event(), trio.Event()

    async def handler(transport: TrioWebSocketTransport) -> None:
        await client_gone.wait()
        try:
            with trio.fail_after(5):
                while True:  # the first writes may land in the socket before the reset
                    await transport.send("anyone?")
                    await trio.sleep(0.01)
        except TransportClosed as closed:
            outcome.append(closed)
        done.set()

    async with served(handler) as client:
        await client.stream.aclose()
        client_gone.set()
        with trio.fail_after(6):
            await done.wait()
    assert isinstance(outcome[0], TransportClosed)


@pytest.mark.parametrize("who", ["server", "client"])
async def test_a_connection_cut_mid_frame_raises_transport_closed(who: str) -> None:
    raised: list[BaseException] = []
    blocked, done = trio.Event(), trio.Event()

    async def handler(transport: TrioWebSocketTransport) -> None:
        async def send_big() -> None:
            try:
                await transport.send("y" * BIG)
            except TransportClosed as closed:
                raised.append(closed)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_big)
            await trio.testing.wait_all_tasks_blocked()  # the rest of the frame waits
            blocked.set()
            if who == "server":
                await transport.abort()  # as the hub cuts a frame that cannot finish

    async with served(handler) as client:
        await blocked.wait()
        if who == "client":
            await client.stream.aclose()  # the peer goes away with unread data: a reset
        with trio.fail_after(5):
            await done.wait()
    assert isinstance(raised[0], TransportClosed)
