"""Real WebSocket clients for the integration tests, written with the ``websockets`` library.

The hub under test runs in the test's Trio thread; these clients run on an asyncio event loop
in a worker thread (``open_asyncio_thread``), so both sides use real sockets and neither
library is asked to run inside the other's event loop. The Trio test drives the clients with
``await aio.run(coroutine)``, which schedules the coroutine on the asyncio loop and waits for
its result without blocking Trio.

The clients are deliberately independent of wshub's own code: frames are parsed with the
standard ``json`` module and batches split on newlines, exactly as PROTOCOL.md tells any
client to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import trio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin, Subprotocol

__all__ = [
    "SUBPROTOCOL",
    "AsyncioThread",
    "HubClient",
    "close_all",
    "connect_many",
    "connect_stalled",
    "gather",
    "open_asyncio_thread",
    "position",
    "small_buffer_socket",
]

T = TypeVar("T")

SUBPROTOCOL = "wshub.v1"

#: The close code a client reports when the connection ended without a close frame.
ABNORMAL_CLOSURE = 1006


class AsyncioThread:
    """An asyncio event loop running in a worker thread, driven from Trio."""

    def __init__(self, loop: asyncio.AbstractEventLoop, token: trio.lowlevel.TrioToken) -> None:
        self.loop = loop
        self._token = token

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the asyncio loop and return its result (or raise its error).

        Cancelling the Trio caller cancels the asyncio task.
        """
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        done = trio.Event()

        def wake(_: object) -> None:
            # RunFinishedError: the test is over and nobody is waiting any more.
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        # Stopped: cancel whatever the test left behind (clients of a failed test) and let
        # it unwind, so no transport outlives the test.
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@asynccontextmanager
async def open_asyncio_thread() -> AsyncIterator[AsyncioThread]:
    """Run an asyncio event loop in a worker thread for the duration of the block."""
    loop = asyncio.new_event_loop()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, _run_loop, loop)
        try:
            yield AsyncioThread(loop, trio.lowlevel.current_trio_token())
        finally:
            loop.call_soon_threadsafe(loop.stop)


async def small_buffer_socket(port: int, receive_buffer: int = 4096) -> socket.socket:
    """A TCP socket connected to ``127.0.0.1:port`` with a small receive buffer.

    The buffer is set before connecting so that the advertised TCP window stays small: a
    client on such a socket that stops reading fills it after a few kilobytes.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


def position(offset: int, epoch: str) -> dict[str, Any]:
    """A position in a stream, as ``hello`` and ``subscribe`` take it."""
    return {"offset": offset, "epoch": epoch}


class HubClient:
    """One client connection to the hub. Its coroutines run on the asyncio loop."""

    def __init__(self, websocket: ClientConnection, *, record_frames: bool = False) -> None:
        self.websocket = websocket
        self.record_frames = record_frames
        self.pending: deque[dict[str, Any]] = deque()
        self.frames = 0  # WebSocket frames received
        self.batched_frames = 0  # of which held more than one object
        self.objects_per_frame: list[int] = []  # filled when record_frames is true

    @classmethod
    async def connect(
        cls,
        url: str,
        client_id: str | None = None,
        *,
        subscribe: Mapping[str, Mapping[str, Any] | None] | None = None,
        subprotocol: bool = True,
        origin: str | None = None,
        sock: socket.socket | None = None,
        max_size: int | None = 2**22,
        max_queue: int | None = 64,
        record_frames: bool = False,
    ) -> HubClient:
        """Open a connection; send a hello when ``client_id`` is given.

        Raises the ``websockets`` handshake errors (``InvalidStatus`` for a refused upgrade).
        """
        websocket = await connect(
            url,
            subprotocols=[Subprotocol(SUBPROTOCOL)] if subprotocol else None,
            origin=Origin(origin) if origin is not None else None,
            sock=sock,
            proxy=None,
            compression=None,
            open_timeout=10,
            close_timeout=5,
            ping_interval=None,  # the hub pings; websockets answers its pings by itself
            max_size=max_size,
            max_queue=max_queue,
        )
        client = cls(websocket, record_frames=record_frames)
        if client_id is not None:
            hello: dict[str, Any] = {"type": "hello", "client_id": client_id}
            if subscribe is not None:
                hello["subscribe"] = dict(subscribe)
            await client.send(hello)
        return client

    async def send(self, frame: Mapping[str, Any] | str | bytes) -> None:
        """Send an object as JSON text, or a str or bytes frame as it is."""
        if isinstance(frame, Mapping):
            frame = json.dumps(frame)
        await self.websocket.send(frame)

    async def receive(self) -> dict[str, Any]:
        """The next object from the hub; raises ``ConnectionClosed`` once the hub closed."""
        while not self.pending:
            frame = await self.websocket.recv()
            assert isinstance(frame, str), f"the hub sent a binary frame: {frame!r}"
            parts = frame.split("\n")
            self.frames += 1
            if self.record_frames:
                self.objects_per_frame.append(len(parts))
            if len(parts) > 1:
                self.batched_frames += 1
            self.pending.extend(json.loads(part) for part in parts)
        return self.pending.popleft()

    async def receive_until(self, kind: str) -> list[dict[str, Any]]:
        """Objects up to and including the first whose type is ``kind``."""
        received = []
        while True:
            received.append(await self.receive())
            if received[-1]["type"] == kind:
                return received

    async def welcome(self) -> dict[str, Any]:
        """The next object, which must be the welcome."""
        welcome = await self.receive()
        assert welcome["type"] == "welcome", welcome
        return welcome

    async def messages(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` objects, which must all be messages."""
        got = [await self.receive() for _ in range(count)]
        assert all(m["type"] == "message" for m in got), got
        return got

    async def wait_closed(self) -> tuple[int, str]:
        """Read (and drop) everything until the hub closes; return its close code and reason.

        A connection that ended without a close frame from the hub reports 1006.
        """
        try:
            while True:
                await self.receive()
        except ConnectionClosed as closed:
            if closed.rcvd is None:
                return ABNORMAL_CLOSURE, ""
            return closed.rcvd.code, closed.rcvd.reason

    def stop_reading(self) -> None:
        """Stop reading from the socket: the hub's frames pile up in the kernel buffers."""
        self.websocket.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the socket again after ``stop_reading``."""
        self.websocket.transport.resume_reading()

    async def abort(self) -> None:
        """Drop the TCP connection at once, without a close handshake."""
        self.websocket.transport.abort()
        await self.websocket.wait_closed()

    async def close(self) -> None:
        """Close normally (1000) and wait for the close handshake."""
        await self.websocket.close()


async def connect_many(
    url: str,
    client_ids: list[str],
    *,
    subscribe: Mapping[str, Mapping[str, Any] | None] | None = None,
    origin: str | None = None,
) -> list[HubClient]:
    """Connect every client at once, each with a hello; return them once all are welcomed."""

    async def one(client_id: str) -> HubClient:
        client = await HubClient.connect(url, client_id, subscribe=subscribe, origin=origin)
        await client.welcome()
        return client

    return list(await asyncio.gather(*(one(client_id) for client_id in client_ids)))


async def close_all(clients: list[HubClient]) -> None:
    """Close every client normally, all at once."""
    await asyncio.gather(*(client.close() for client in clients))


async def gather(*coroutines: Coroutine[Any, Any, T]) -> list[T]:
    """Run coroutines concurrently on the asyncio loop: ``await aio.run(gather(...))``."""
    return list(await asyncio.gather(*coroutines))


async def connect_stalled(
    url: str, client_id: str, subscribe: Mapping[str, Mapping[str, Any] | None]
) -> HubClient:
    """A client that is welcomed and then stops reading, on a socket with a small window."""
    port = urlsplit(url).port
    assert port is not None
    client = await HubClient.connect(
        url, client_id, subscribe=subscribe, sock=await small_buffer_socket(port)
    )
    await client.welcome()
    client.stop_reading()
    return client
