"""The fast server over real sockets: whole frames, close codes, and bounded reading.

The first tests drive one ``FastWebSocket`` directly (a handler gets it after the real
handshake) against ``RawClient``, which reads only when told to: its socket fills, so the rest
of a frame has to wait, and the tests check that nothing (a ping, the next frame, a close)
gets into the middle of it. The later tests run a hub behind ``serve_fast`` and talk to it
with the ``websockets`` library and with wshub's own Trio client.
Nothing waits a fixed time: every wait is for a condition, under a bounded deadline.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import h11
import httpx
import pytest
import trio
import trio.testing
from websockets.exceptions import InvalidStatus

from ws_clients import AsyncioThread, HubClient, open_asyncio_thread
from wshub.client import open_client
from wshub.core.config import HubConfig
from wshub.core.errors import TransportClosed
from wshub.hub.hub import Hub, open_hub
from wshub.servers.fast import accept_websocket, serve_fast
from wshub.servers.http import HTTPConnection
from wshub.servers.wsconn import READ_SIZE, FastWebSocket

BIG = 8_000_000  # far more than a loopback socket with a small receive buffer takes at once
LIMIT = 65536

Handler = Callable[[FastWebSocket], Awaitable[None]]


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

    async def handshake(self, port: int, path: str = "/ws", subprotocol: str = "") -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        offer = f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else ""
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n{offer}"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await self.stream.send_all(request.encode())
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += await self.stream.receive_some(4096)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

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

    async def close_code(self) -> int:
        """Read frames until the server's close frame; its code."""
        while True:
            opcode, payload = await self.frame()
            if opcode == 8:
                return int(struct.unpack("!H", payload[:2])[0])

    async def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        """Send one masked frame (the mask is zero, so the payload goes out as it is)."""
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", (0x80 if fin else 0) | opcode, 0x80 | size)
        elif size < 65536:
            head = struct.pack("!BBH", (0x80 if fin else 0) | opcode, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", (0x80 if fin else 0) | opcode, 0x80 | 127, size)
        await self.stream.send_all(head + b"\0\0\0\0" + payload)


@asynccontextmanager
async def served(handler: Handler, limit: int = LIMIT) -> AsyncIterator[RawClient]:
    """A TCP server doing the fast server's handshake, then ``handler`` on the WebSocket."""

    async def accept(stream: trio.SocketStream) -> None:
        http = HTTPConnection(stream, ("127.0.0.1", 0))
        request = await http.next_event()
        assert isinstance(request, h11.Request)
        accepted = await accept_websocket(http, request, limit)
        assert accepted is not None
        await handler(accepted[0])

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, accept, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        await sock.connect(("127.0.0.1", port))
        client = RawClient(trio.SocketStream(sock))
        await client.handshake(port)
        yield client
        await client.stream.aclose()
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- the write path


async def test_small_frames_go_out_whole_and_in_order_while_the_socket_fills() -> None:
    texts = [f"message {n} " + "z" * 1000 for n in range(3000)]  # ~3 MB: the socket fills
    sent = trio.Event()

    async def handler(websocket: FastWebSocket) -> None:
        for text in texts:
            await websocket.send(text)
        sent.set()
        await trio.sleep_forever()

    async with served(handler) as client:
        with trio.fail_after(20):
            await trio.testing.wait_all_tasks_blocked()
            assert not sent.is_set()  # the client has not read: a write is waiting
            received = [await client.frame() for _ in texts]
            await sent.wait()
    assert received == [(1, text.encode()) for text in texts]


async def test_a_ping_queued_behind_a_half_written_8_mb_frame_arrives_after_it_whole() -> None:
    big = "x" * BIG
    filled = trio.Event()

    async def handler(websocket: FastWebSocket) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(websocket.send, big)
            await trio.testing.wait_all_tasks_blocked()  # the socket is full: the rest waits
            nursery.start_soon(websocket.ping)  # must queue behind the unfinished frame
            await trio.testing.wait_all_tasks_blocked()
            filled.set()
            await websocket.send("after")  # and this behind the ping

    async with served(handler) as client:
        await filled.wait()
        with trio.fail_after(20):  # a frame torn by the ping would leave the parser lost
            opcode, payload = await client.frame()
            assert (opcode, len(payload), payload == big.encode()) == (1, BIG, True)
            assert (await client.frame())[0] == 9  # the ping, after the whole frame
            assert await client.frame() == (1, b"after")


async def test_a_close_during_a_partial_write_follows_the_whole_frame() -> None:
    big = "c" * BIG
    done = trio.Event()

    async def handler(websocket: FastWebSocket) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(websocket.send, big)
            await trio.testing.wait_all_tasks_blocked()
            await websocket.close(1001, "going away")  # waits for the frame, then closes
        done.set()

    async with served(handler) as client:
        with trio.fail_after(20):
            opcode, payload = await client.frame()
            assert (opcode, len(payload)) == (1, BIG)
            opcode, payload = await client.frame()
            assert (opcode, struct.unpack("!H", payload[:2])[0]) == (8, 1001)
            assert payload[2:] == b"going away"
            await client.send_frame(8, struct.pack("!H", 1001))
            await done.wait()
            assert await client.stream.receive_some(10) == b""  # then the server hangs up


@pytest.mark.parametrize("who", ["server", "client"])
async def test_a_connection_cut_mid_frame_raises_transport_closed(who: str) -> None:
    raised: list[BaseException] = []
    blocked, done = trio.Event(), trio.Event()

    async def handler(websocket: FastWebSocket) -> None:
        async def send_big() -> None:
            try:
                await websocket.send("y" * BIG)
            except TransportClosed as closed:
                raised.append(closed)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_big)
            await trio.testing.wait_all_tasks_blocked()  # the rest of the frame waits
            blocked.set()
            if who == "server":
                await websocket.abort()  # as the hub cuts a frame that cannot finish

    async with served(handler) as client:
        await blocked.wait()
        if who == "client":
            await client.stream.aclose()  # the peer goes away with unread data: a reset
        with trio.fail_after(10):
            await done.wait()
    assert isinstance(raised[0], TransportClosed)


async def test_a_cancelled_partial_write_writes_nothing_more() -> None:
    outcome: list[BaseException] = []
    done = trio.Event()

    async def handler(websocket: FastWebSocket) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(websocket.send, "t" * BIG)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()  # the frame is torn on the wire
        try:
            await websocket.send("never")
        except TransportClosed as closed:
            outcome.append(closed)
        await websocket.close(1000)  # cuts instead: a close frame would land mid-frame
        done.set()

    async with served(handler) as client:
        with trio.fail_after(10):
            await done.wait()
            received = b""
            while chunk := await client.stream.receive_some(1 << 20):
                received += chunk
    assert isinstance(outcome[0], TransportClosed)
    assert len(received) < BIG  # the torn frame, and nothing after it
    assert b"never" not in received


# --------------------------------------------------------------------------- the read path


async def test_a_ping_from_the_client_is_answered_with_its_payload() -> None:
    async def handler(websocket: FastWebSocket) -> None:
        assert await websocket.receive() == "then text"
        await websocket.send("got it")
        await trio.sleep_forever()

    async with served(handler) as client:
        with trio.fail_after(10):
            await client.send_frame(9, b"are you there")
            await client.send_frame(1, b"then text")
            assert await client.frame() == (10, b"are you there")
            assert await client.frame() == (1, b"got it")


async def test_fragments_are_joined_and_ping_waits_for_the_pong() -> None:
    received: list[str | bytes] = []
    pong_seen = trio.Event()

    async def handler(websocket: FastWebSocket) -> None:
        received.append(await websocket.receive())
        await websocket.ping()
        received.append("pong seen")
        pong_seen.set()
        await trio.sleep_forever()

    async with served(handler) as client:
        with trio.fail_after(10):
            await client.send_frame(1, "héllo ".encode(), fin=False)
            await client.send_frame(0, b"world")
            opcode, payload = await client.frame()
            assert opcode == 9
            await client.send_frame(10, payload)
            await pong_seen.wait()
    assert received == ["héllo world", "pong seen"]


async def test_an_oversized_frame_is_closed_1009_before_it_is_held() -> None:
    stats: dict[str, int] = {}

    async def handler(websocket: FastWebSocket) -> None:
        with pytest.raises(TransportClosed) as closed:
            await websocket.receive()
        assert closed.value.code == 1009
        stats.update(websocket.statistics())
        await websocket.close(closed.value.code)

    async with served(handler) as client, trio.open_nursery() as nursery:
        # The client sends its 8 MB frame while reading: the server must read and drop it.
        nursery.start_soon(client.send_frame, 1, b"a" * BIG)
        with trio.fail_after(20):
            assert await client.close_code() == 1009
    assert LIMIT < stats["largest_partial"] <= LIMIT + READ_SIZE


@pytest.mark.parametrize(
    ("opcode", "payload", "code"),
    [
        (2, b"binary", None),  # returned as bytes: the hub answers 1003
        (1, b"\xff\xfe not utf-8", 1007),
        (0, b"a continuation with nothing to continue", 1002),
        (3, b"a reserved opcode", 1002),
    ],
)
async def test_bad_frames_are_answered_with_their_close_code(
    opcode: int, payload: bytes, code: int | None
) -> None:
    outcome: list[Any] = []

    async def handler(websocket: FastWebSocket) -> None:
        try:
            outcome.append(await websocket.receive())
            await websocket.close(1003)
        except TransportClosed as closed:
            outcome.append(closed.code)
            await websocket.close(1011)  # what the hub would say: the found code wins

    async with served(handler) as client:
        await client.send_frame(opcode, payload)
        with trio.fail_after(10):
            assert await client.close_code() == (code or 1003)
    assert outcome == [code or payload]


# --------------------------------------------------------------------------- the whole server


@asynccontextmanager
async def fast_hub(config: HubConfig | None = None) -> AsyncIterator[tuple[Hub, int]]:
    """A hub served by ``serve_fast`` on 127.0.0.1; yields the hub and the port."""
    async with open_hub(config or HubConfig.testing()) as hub, trio.open_nursery() as nursery:
        server = await nursery.start(serve_fast, hub, "127.0.0.1", 0)
        try:
            yield hub, server.port
        finally:
            nursery.cancel_scope.cancel()


@pytest.fixture
async def aio() -> AsyncIterator[AsyncioThread]:
    """An asyncio loop in a worker thread, for the ``websockets`` clients."""
    async with open_asyncio_thread() as thread:
        yield thread


async def test_websockets_clients_get_messages_and_the_close_codes(aio: AsyncioThread) -> None:
    with trio.fail_after(30):
        async with fast_hub() as (hub, port):
            url = f"ws://127.0.0.1:{port}/ws"
            alice = await aio.run(HubClient.connect(url, "alice", subscribe={"news": None}))
            assert alice.websocket.subprotocol == "wshub.v1"
            assert (await aio.run(alice.welcome()))["client_id"] == "alice"
            for n in range(1, 4):
                await hub.publish("news", {"n": n})
            got = await aio.run(alice.messages(3))
            assert [m["data"] for m in got] == [{"n": 1}, {"n": 2}, {"n": 3}]

            plain = await aio.run(HubClient.connect(url, "plain", subprotocol=False))
            assert plain.websocket.subprotocol is None
            await aio.run(plain.welcome())
            await aio.run(plain.send(b"\x00binary"))
            assert (await aio.run(plain.wait_closed()))[0] == 1003

            big = await aio.run(HubClient.connect(url, "big", max_size=None))
            await aio.run(big.welcome())
            await aio.run(big.send(json.dumps({"type": "ping", "pad": "x" * (4 * LIMIT)})))
            assert (await aio.run(big.wait_closed()))[0] == 1009

            late = await aio.run(HubClient.connect(url))  # no hello at all
            await aio.run(late.send({"type": "subscribe", "stream": "news"}))
            assert (await aio.run(late.wait_closed()))[0] == 4000

            # A peer reset mid-frame ends only its own connection.
            reset = await aio.run(HubClient.connect(url, "reset"))
            await aio.run(reset.welcome())
            await aio.run(reset.abort())
            await hub.publish("news", {"n": 4})
            assert (await aio.run(alice.messages(1)))[0]["data"] == {"n": 4}

            await hub.drain()
            assert (await aio.run(alice.wait_closed()))[0] == 1001


async def test_a_client_reset_mid_frame_leaves_the_hub_serving_others() -> None:
    with trio.fail_after(30):
        async with fast_hub() as (hub, port):
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", port))
            client = RawClient(trio.SocketStream(sock))
            await client.handshake(port)
            hello = json.dumps({"type": "hello", "client_id": "cut"}).encode()
            await client.send_frame(1, hello)
            assert (await client.frame())[0] == 1  # the welcome
            head = struct.pack("!BBQ", 0x81, 0x80 | 127, 50_000) + b"\0\0\0\0"
            await client.stream.send_all(head + b"{" * 1000)  # then reset mid-frame
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await client.stream.aclose()
            while hub.connection_count:  # noqa: ASYNC110 (a hub figure signals nothing)
                await trio.sleep(0.005)
            async with open_client(f"ws://127.0.0.1:{port}/ws", "next", subscribe=["news"]) as c:
                await c.wait_connected()  # the wshub Trio client, over trio-websocket
                await hub.publish("news", {"still": "serving"})
                async for message in c:
                    assert message.data == {"still": "serving"}
                    break


async def test_http_endpoints_and_refusals_through_the_fast_server() -> None:
    config = HubConfig.testing().merged({"admin": {"api_key": "k" * 32}})
    auth = {"authorization": f"Bearer {'k' * 32}"}
    with trio.fail_after(30):
        async with fast_hub(config) as (_, port), httpx.AsyncClient() as http:
            base = f"http://127.0.0.1:{port}"
            health = await http.get(f"{base}/health")
            assert (health.status_code, health.json()) == (200, {"status": "ok"})
            assert (await http.get(f"{base}/health/websocket")).json()["status"] == "healthy"
            metrics = await http.get(f"{base}/metrics", headers=auth)
            assert metrics.status_code == 200 and "wshub_connections_active" in metrics.text
            assert "connections" in (await http.get(f"{base}/api/stats", headers=auth)).json()
            publish = await http.post(
                f"{base}/api/publish", json={"stream": "news", "data": 1, "id": "a"}, headers=auth
            )
            assert publish.json() == {"stream": "news", "offset": 1, "id": "a", "duplicate": False}
            too_big = await http.post(
                f"{base}/api/publish", json={"stream": "news", "data": "x" * 70_000}, headers=auth
            )
            assert too_big.status_code == 413
            dashboard = await http.get(f"{base}/dashboard", headers=auth)
            assert dashboard.status_code == 200 and "text/html" in dashboard.headers["content-type"]
            client_js = await http.get(f"{base}/client.js")
            assert (
                client_js.status_code == 200 and "javascript" in client_js.headers["content-type"]
            )
            missing = await http.get(f"{base}/nope")
            assert (missing.status_code, missing.json()) == (
                404,
                {"error": "not found", "path": "/nope"},
            )
            wrong = await http.delete(f"{base}/health")
            assert wrong.status_code == 405 and wrong.json()["allowed"] == ["GET", "HEAD"]
            head = await http.head(f"{base}/health")
            assert (head.status_code, head.content) == (200, b"")
            plain_get = await http.get(f"{base}/ws")
            assert plain_get.status_code == 426 and plain_get.headers["upgrade"] == "websocket"
            bad_upgrade = await http.get(
                f"{base}/ws", headers={"upgrade": "websocket", "connection": "upgrade"}
            )
            assert bad_upgrade.status_code in (400, 426)
            assert bad_upgrade.json()["error"].startswith("bad WebSocket upgrade")


async def test_a_wrong_websocket_path_is_refused_with_404(aio: AsyncioThread) -> None:
    with trio.fail_after(20):
        async with fast_hub() as (_, port):
            with pytest.raises(InvalidStatus) as refused:
                await aio.run(HubClient.connect(f"ws://127.0.0.1:{port}/elsewhere"))
            assert refused.value.response.status_code == 404


async def test_a_peer_that_never_sends_its_close_is_closed_within_the_bound() -> None:
    async with fast_hub() as (hub, port):
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", port))
        client = RawClient(trio.SocketStream(sock))
        await client.handshake(port)
        await client.send_frame(2, b"binary")  # closed 1003; the client never answers
        with trio.fail_after(10):
            assert await client.close_code() == 1003
            assert await client.stream.receive_some(10) == b""  # hung up without the answer
        assert hub.connection_count == 0
