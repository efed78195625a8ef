"""Hostile peers over real sockets, against both servers: the embedded one and ``wshub serve``.

A hostile client must read why it was closed (its close code, never a reset that throws the
close frame away), and must not take the server down or hurt another client. The raw client
(``raw_websocket.py``) writes what no WebSocket library would: oversized frames, invalid
UTF-8, broken fragmentation. Writes that fail with a reset (EPIPE, ECONNRESET) are failures:
they mean the server closed its socket while the client was still sending.

``embedded`` runs a hub and ``serve_websocket`` (trio-websocket) in the test's own Trio run,
``fast`` the same with ``serve_fast``; ``serve`` is a ``wshub serve --server hypercorn``
subprocess shared by the module. Everything listens on 127.0.0.1
and every wait is bounded.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from raw_websocket import CONTINUATION, PING, TEXT, RawWebSocket, frame
from serve_helpers import Server, wshub_serve
from wshub import HubConfig, serve_websocket
from wshub.hub.hub import open_hub
from wshub.servers.fast import serve_fast

MB = 1_000_000
LIMIT = 65536
# Shared by both servers: one token a second, so a burst meets the limit however slow the
# machine (a flood is closed after burst + strikes frames).
LIMITS = {"rate": 1.0, "burst": 20, "rate_limit_strikes": 5}


def nested(depth: int) -> Any:
    value: Any = 0
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``wshub serve`` (hypercorn) with the same limits as the embedded hub below."""
    log = tmp_path_factory.mktemp("hostile") / "wshub.log"
    env = {f"WSHUB_LIMITS__{key.upper()}": str(value) for key, value in LIMITS.items()}
    env["WSHUB_METRICS__LOG"] = "false"
    running = wshub_serve(log, "--preset", "development", "--server", "hypercorn", env=env)
    yield running
    running.stop()
    assert "Traceback" not in running.log(), running.log()


@asynccontextmanager
async def embedded(kind: str = "embedded") -> AsyncIterator[int]:
    """A development hub with the same limits, served in this Trio run by ``serve_websocket``
    (trio-websocket) or ``serve_fast``; yields the port."""
    cfg = HubConfig.development().merged({"limits": LIMITS, "metrics": {"log": False}})
    serve_function = serve_fast if kind == "fast" else serve_websocket
    async with open_hub(cfg) as hub, trio.open_nursery() as nursery:
        server = await nursery.start(serve_function, hub, "127.0.0.1", 0)
        yield server.port
        nursery.cancel_scope.cancel()


@pytest.fixture(params=["embedded", "fast", "serve"])
def served_by(request: pytest.FixtureRequest) -> str | Server:
    """The ``wshub serve`` process (hypercorn), or which server to run in-process."""
    kind: str = request.param
    return request.getfixturevalue("serve") if kind == "serve" else kind


@pytest.fixture
async def port(served_by: str | Server) -> AsyncIterator[int]:
    """The port of a running server of any kind."""
    if isinstance(served_by, Server):
        yield served_by.port
        return
    async with embedded(served_by) as bound:
        yield bound


async def welcomed(
    port: int, client_id: str, subscribe: dict[str, Any] | None = None
) -> RawWebSocket:
    client = await RawWebSocket.connect(port)
    await client.send_json({"type": "hello", "client_id": client_id, "subscribe": subscribe or {}})
    welcome = await client.receive()
    assert welcome is not None and welcome["type"] == "welcome", welcome
    return client


async def still_served(port: int) -> None:
    """Another client is welcomed and answered: the server is unharmed."""
    bystander = await welcomed(port, "bystander")
    await bystander.send_json({"type": "ping"})
    assert await bystander.receive() == {"type": "pong"}
    await bystander.aclose()


# --------------------------------------------------------------------------- oversized frames


@pytest.mark.parametrize("size", [5 * MB, 50 * MB])
@pytest.mark.parametrize("before_hello", [True, False])
async def test_an_oversized_frame_gets_1009_and_the_sender_is_never_reset(
    port: int, size: int, before_hello: bool
) -> None:
    # The client writes its whole frame first and reads afterwards, as a blocking client
    # does: the server must keep reading (and discarding) past its 1009, or the client's
    # write fails on a reset and the close frame is lost.
    with trio.fail_after(30):
        if before_hello:
            client = await RawWebSocket.connect(port)
        else:
            client = await welcomed(port, "big")
        await client.send_raw(frame(TEXT, b'"' + b"x" * size + b'"'))
        code, _ = await client.wait_closed()
        assert code == 1009
        await client.aclose()
        await still_served(port)


@pytest.mark.parametrize("kind", ["embedded", "fast"])
async def test_the_embedded_servers_never_buffer_an_oversized_frame(kind: str) -> None:
    # Each keeps at most max_message_bytes of a message; past its 1009 the rest is read and
    # dropped chunk by chunk, never kept.
    async with embedded(kind) as bound:
        client = await welcomed(bound, "big")
        data = frame(TEXT, b'"' + b"x" * (50 * MB) + b'"')  # made before tracing starts
        tracemalloc.start()
        try:
            with trio.fail_after(30):
                await client.send_raw(data)
                assert (await client.wait_closed())[0] == 1009
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await client.aclose()
    assert peak < 4 * MB, peak


# --------------------------------------------------------------------------- floods


async def test_a_flooding_client_reads_4003_and_its_writes_never_fail(port: int) -> None:
    # 20 MB of pings written before reading anything, as a blocking client would: the server
    # closes after burst + strikes of them and must then read the rest, or the client's
    # writes fail on a reset and the 4003 is lost.
    with trio.fail_after(30):
        client = await welcomed(port, "flooder")
        ping = json.dumps({"type": "ping", "pad": "x" * 10_000}).encode()
        for _ in range(2000):
            await client.send_raw(frame(TEXT, ping))
        assert await client.wait_closed() == (4003, "rate limit exceeded repeatedly")
        await client.aclose()
        await still_served(port)


async def test_an_oversized_frame_during_the_closing_handshake_hurts_nobody(port: int) -> None:
    # Closed with 4003, the client answers with a frame over the limit instead of its close:
    # trio-websocket's reader used to raise out of the hub's nursery and stop the hub.
    with trio.fail_after(30):
        client = await welcomed(port, "racer")
        for _ in range(LIMITS["burst"] + LIMITS["rate_limit_strikes"]):
            await client.send_json({"type": "ping"})
        client.answer_close = False
        while await client.receive() is not None:
            pass  # read up to the close frame, without answering it
        assert client.close_code == 4003
        await client.send_raw(frame(TEXT, b'"' + b"x" * (2 * LIMIT) + b'"'))
        with trio.move_on_after(5):  # the server ends the connection when it has waited enough
            while await client.stream.receive_some(65536):
                pass
        await client.aclose()
        await still_served(port)


# --------------------------------------------------------------------------- frozen clients


@pytest.mark.parametrize("kind", ["embedded", "fast"])
async def test_a_frozen_client_is_cut_alone_while_ten_readers_keep_pace(kind: str) -> None:
    # One client stops reading on a 4 KiB receive window while ten read: the hub publishes
    # 400 messages of 4 KB at about 400 a second with queues of 60. A tick that waited on the
    # frozen writer (0.25 s) would let 100 messages pile up for every reader.
    cfg = HubConfig.development().merged(
        {"limits": {"write_delay": 0.003, "max_queue": 60}, "metrics": {"log": False}}
    )
    serve_function = serve_fast if kind == "fast" else serve_websocket
    count = 400
    with trio.fail_after(60):
        async with open_hub(cfg) as hub, trio.open_nursery() as nursery:
            server = await nursery.start(serve_function, hub, "127.0.0.1", 0)
            frozen = await RawWebSocket.connect(server.port, receive_buffer=4096)
            hello = {"type": "hello", "client_id": "frozen", "subscribe": {"news": None}}
            await frozen.send_json(hello)
            assert (await frozen.receive() or {}).get("type") == "welcome"  # then no more reads
            readers = []
            for n in range(10):
                reader = await RawWebSocket.connect(server.port)
                hello = {"type": "hello", "client_id": f"r{n}", "subscribe": {"news": None}}
                await reader.send_json(hello)
                assert (await reader.receive() or {}).get("type") == "welcome"
                readers.append(reader)

            async def read(reader: RawWebSocket) -> None:
                for expected in range(count):
                    message = await reader.receive()
                    assert message is not None, reader.close_code
                    assert message["data"]["n"] == expected

            async with trio.open_nursery() as reading:
                for reader in readers:
                    reading.start_soon(read, reader)
                for n in range(count):
                    await hub.publish("news", {"n": n, "pad": "x" * 4000})
                    await trio.sleep(0.0025)
            assert hub.metrics.queue_overflows == 1
            assert hub.metrics.disconnects.get(4002) == 1
            assert hub.connection_count == 10
            for reader in readers:
                await reader.aclose()
            await frozen.aclose()
            nursery.cancel_scope.cancel()


async def test_under_hypercorn_frozen_clients_are_forgotten_at_the_4002_decision(
    tmp_path: Path,
) -> None:
    # Ten clients stop reading on 4 KiB windows while 6 MB is published to them: hypercorn's
    # shielded writes hold their sockets, but the hub drops them from its own state when it
    # decides 4002 (they used to stay registered, /health/websocket at 503, for over 71 s).
    key = "k" * 32
    env = {"WSHUB_ADMIN__API_KEY": key, "WSHUB_LIMITS__MAX_QUEUE": "20"}
    env["WSHUB_METRICS__LOG"] = "false"
    argv = ("--preset", "development", "--server", "hypercorn")
    server = await trio.to_thread.run_sync(
        lambda: wshub_serve(tmp_path / "wshub.log", *argv, env=env)
    )
    http = httpx.AsyncClient(base_url=server.http, headers={"authorization": f"Bearer {key}"})

    async def active() -> int:
        connections: int = (await http.get("/api/stats")).json()["connections"]["active"]
        return connections

    try:
        with trio.fail_after(120):  # a bound, not a timing
            clients = []
            for n in range(10):
                client = await RawWebSocket.connect(server.port, receive_buffer=4096)
                hello = {"type": "hello", "client_id": f"f{n}", "subscribe": {"news": None}}
                await client.send_json(hello)
                assert (await client.receive() or {}).get("type") == "welcome"
                clients.append(client)  # and never read again
            assert await active() == 10
            for n in range(100):
                body = {"stream": "news", "data": {"n": n, "pad": "x" * 60_000}}
                assert (await http.post("/api/publish", json=body)).status_code == 200
            # Polling another process's figures: nothing here could be awaited instead.
            while await active():  # noqa: ASYNC110
                await trio.sleep(0.1)
            while (await http.get("/health/websocket")).status_code != 200:  # noqa: ASYNC110
                await trio.sleep(0.1)
            for client in clients:
                await client.aclose()
    finally:
        await http.aclose()
        await trio.to_thread.run_sync(server.stop)
    assert "Traceback" not in server.log()


# --------------------------------------------------------------------------- drain on cancel


@pytest.mark.parametrize("kind", ["embedded", "fast"])
async def test_cancelling_around_open_hub_drains_fifty_real_clients(kind: str) -> None:
    # 500 messages queued to each of 50 clients, then the scope around open_hub is cancelled:
    # each client reads all 500, then 1001, answers it, and sees the server close TCP (EOF),
    # not a reset.
    cfg = HubConfig.development().merged(
        {
            "limits": {"write_delay": 0.003, "max_queue": 1000},
            "shutdown": {"grace": 10.0},
            "metrics": {"log": False},
        }
    )
    serve_function = serve_fast if kind == "fast" else serve_websocket
    outcomes: list[tuple[list[int], int, str, bytes]] = []

    async def read(client: RawWebSocket) -> None:
        numbers = []
        while (message := await client.receive()) is not None:
            numbers.append(message["data"])
        with trio.move_on_after(5):  # after our answer to its close, the server closes TCP
            rest = await client.stream.receive_some(65536)
        outcomes.append((numbers, client.close_code or 0, client.close_reason, rest))
        await client.aclose()

    with trio.fail_after(60):
        async with trio.open_nursery() as readers:
            with trio.CancelScope() as scope:
                async with open_hub(cfg) as hub, trio.open_nursery() as nursery:
                    server = await nursery.start(serve_function, hub, "127.0.0.1", 0)
                    for n in range(50):
                        client = await welcomed(server.port, f"c{n}", {"news": None})
                        readers.start_soon(read, client)
                    for n in range(500):
                        await hub.publish("news", n)
                    scope.cancel()
                    await trio.sleep_forever()
    assert len(outcomes) == 50
    for numbers, code, reason, rest in outcomes:
        assert numbers == list(range(500))
        assert (code, reason, rest) == (1001, "the server is shutting down", b"")


# --------------------------------------------------------------------------- deep nesting


async def test_deep_nesting_gets_bad_request_over_the_wire(port: int) -> None:
    with trio.fail_after(10):
        client = await welcomed(port, "deep")
        await client.send_text(json.dumps({"type": "bogus", "ref": nested(300)}))
        error = await client.receive()
        assert error == {
            "type": "error",
            "code": "bad_request",
            "message": "a frame nests deeper than limits.max_depth (32 levels)",
        }
        await client.send_json({"type": "ping"})
        assert await client.receive() == {"type": "pong"}
        await client.aclose()


# --------------------------------------------------------------------------- subscriptions


async def test_a_hello_listing_1100_forbidden_streams_is_welcomed_with_bounded_errors(
    port: int,
) -> None:
    with trio.fail_after(20):
        client = await RawWebSocket.connect(port)
        streams = {f"@someone-{i}": None for i in range(1100)}
        await client.send_json({"type": "hello", "client_id": "greedy", "subscribe": streams})
        welcome = await client.receive()
        assert welcome is not None and welcome["type"] == "welcome"
        assert set(welcome["streams"]) == {"@greedy"}
        await client.send_json({"type": "ping"})
        codes = []
        while (answer := await client.receive()) != {"type": "pong"}:
            assert answer is not None, client.close_code
            codes.append(answer["code"])
        assert codes == ["forbidden"] * 100 + ["limit_exceeded"]  # limits.max_subscriptions
        await client.aclose()


# --------------------------------------------------------------------------- frames wsproto refuses


BROKEN_FRAMES = {
    "invalid UTF-8": (frame(TEXT, b'{"type":"ping","x":"\xff\xfe"}'), 1007),
    "continuation without a start": (frame(CONTINUATION, b'{"type":"ping"}'), 1002),
    "new message inside a fragmented one": (
        frame(TEXT, b'{"type":', fin=False) + frame(TEXT, b'{"type":"ping"}'),
        1002,
    ),
    "fragmented control frame": (frame(PING, b"ab", fin=False), 1002),
}


@pytest.mark.parametrize("kind", ["embedded", "fast"])
@pytest.mark.parametrize("name", sorted(BROKEN_FRAMES))
async def test_frames_wsproto_refuses_close_with_the_rfc_code_on_the_embedded_servers(
    name: str, kind: str
) -> None:
    data, expected = BROKEN_FRAMES[name]
    with trio.fail_after(10):
        async with embedded(kind) as bound:
            client = await welcomed(bound, "broken")
            await client.send_raw(data)
            assert (await client.wait_closed())[0] == expected
            await client.aclose()
            await still_served(bound)


@pytest.mark.parametrize("name", sorted(BROKEN_FRAMES))
async def test_frames_wsproto_refuses_end_the_connection_under_hypercorn(
    serve: Server, name: str
) -> None:
    # hypercorn closes the TCP connection without a close frame and tells the app only
    # "disconnect" (docs/operations.md): the client sees 1006, the server keeps serving.
    data, _ = BROKEN_FRAMES[name]
    with trio.fail_after(10):
        client = await welcomed(serve.port, "broken")
        await client.send_raw(data)
        assert (await client.wait_closed())[0] == 1006
        await client.aclose()
        await still_served(serve.port)
