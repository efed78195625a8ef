"""The flush tick writes to the fast server's sockets itself: no task woken per client.

``FastWebSocket.send_frame_nowait`` is one non-blocking write; what a full socket does not take is
kept and written first by whatever writes next (``finish_frame``, ``send``, a ping or a close),
so frames stay whole. Through the hub, ``Connection.write_now`` uses it from the tick and hands
a connection to its writer task only when its socket is full. Real sockets; every wait is for
a condition under a bounded deadline, nothing depends on timing.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio
import trio.testing

from test_fast_server import BIG, RawClient, fast_hub, served
from wshub.core.config import HubConfig
from wshub.core.errors import TransportClosed
from wshub.servers.framewriter import encode_text_frame
from wshub.servers.wsconn import FastWebSocket


class WriterSteps(trio.abc.Instrument):
    """Counts the steps taken by the hub's connection writer tasks."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.startswith("wshub.hub.") and task.name.endswith("._writer"):
            self.steps += 1


@contextmanager
def counting_writer_steps() -> Iterator[WriterSteps]:
    instrument = WriterSteps()
    trio.lowlevel.add_instrument(instrument)
    try:
        yield instrument
    finally:
        trio.lowlevel.remove_instrument(instrument)


# --------------------------------------------------------------------------- the transport


async def test_send_frame_nowait_keeps_the_rest_and_every_write_finishes_it_first() -> None:
    big = "n" * BIG
    steps: list[object] = []
    filled = trio.Event()

    async def handler(websocket: FastWebSocket) -> None:
        assert websocket.send_frame_nowait(encode_text_frame("first")) and not websocket.blocked
        assert websocket.send_frame_nowait(
            encode_text_frame(big)
        )  # taken; the socket cannot hold 8 MB
        steps.append(websocket.blocked)
        steps.append(
            websocket.send_frame_nowait(encode_text_frame("refused"))
        )  # nothing starts inside the frame
        async with trio.open_nursery() as nursery:
            nursery.start_soon(websocket.ping)  # queues behind the rest of the frame
            await trio.testing.wait_all_tasks_blocked()
            filled.set()
            await websocket.finish_frame()
            await websocket.send("after")

    async with served(handler) as client:
        await filled.wait()
        assert steps == [True, False]
        with trio.fail_after(20):
            assert await client.frame() == (1, b"first")
            opcode, payload = await client.frame()
            assert (opcode, len(payload), payload == big.encode()) == (1, BIG, True)
            assert (await client.frame())[0] == 9  # the ping, after the whole frame
            assert await client.frame() == (1, b"after")


async def test_a_close_after_send_frame_nowait_left_a_rest_follows_the_whole_frame() -> None:
    big = "c" * BIG

    async def handler(websocket: FastWebSocket) -> None:
        assert websocket.send_frame_nowait(encode_text_frame(big)) and websocket.blocked
        await websocket.close(1001, "going away")

    async with served(handler) as client:
        with trio.fail_after(20):
            opcode, payload = await client.frame()
            assert (opcode, len(payload)) == (1, BIG)
            assert await client.close_code() == 1001


async def test_send_frame_nowait_to_a_closed_peer_raises_transport_closed() -> None:
    raised: list[BaseException] = []
    gone = trio.Event()

    async def handler(websocket: FastWebSocket) -> None:
        await gone.wait()
        with trio.fail_after(20):
            try:
                while True:  # the first writes may still land in the kernel's buffers
                    websocket.send_frame_nowait(encode_text_frame("x" * 65536))
                    await trio.sleep(0.001)
            except TransportClosed as error:
                raised.append(error)

    async with served(handler) as client:
        client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        await client.stream.aclose()
        gone.set()
        with trio.fail_after(20):
            while not raised:  # noqa: ASYNC110 (the handler's outcome is a list)
                await trio.sleep(0.001)
    assert isinstance(raised[0], TransportClosed)


# --------------------------------------------------------------------------- through the hub


async def subscriber(
    port: int,
    client_id: str,
    *,
    rcvbuf: int = 65536,
    streams: tuple[str, ...] = ("news",),
    subprotocol: str = "",
) -> RawClient:
    """A raw client, hello'd and subscribed to ``streams`` (its welcome read)."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", port))
    client = RawClient(trio.SocketStream(sock))
    await client.handshake(port, subprotocol=subprotocol)
    hello = {"type": "hello", "client_id": client_id, "subscribe": dict.fromkeys(streams)}
    await client.send_frame(1, json.dumps(hello).encode())
    welcome = json.loads((await client.frame())[1])
    assert welcome["type"] == "welcome", welcome
    return client


async def messages(client: RawClient, count: int) -> list[int]:
    """The ``n`` of the next ``count`` messages (frames may hold several, newline-joined)."""
    found: list[int] = []
    while len(found) < count:
        opcode, payload = await client.frame()
        assert opcode == 1
        found += [json.loads(line)["data"]["n"] for line in payload.split(b"\n")]
    return found


async def framed(client: RawClient, count: int) -> tuple[list[bytes], list[tuple[str, int]]]:
    """The frames the next ``count`` messages came in, and each message's stream and n."""
    frames: list[bytes] = []
    found: list[tuple[str, int]] = []
    while len(found) < count:
        opcode, payload = await client.frame()
        assert opcode == 1
        frames.append(payload)
        for line in payload.split(b"\n"):
            message = json.loads(line)
            found.append((message["stream"], message["data"]["n"]))
    return frames, found


@pytest.fixture
def encoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the fast server encodes into a frame, in order."""
    texts: list[str] = []

    def counting(text: str) -> bytes:
        texts.append(text)
        return encode_text_frame(text)

    monkeypatch.setattr(FastWebSocket, "encode_frame", staticmethod(counting))
    return texts


async def test_a_frame_is_encoded_once_per_tick_for_every_connection_sent_it(
    encoded: list[str],
) -> None:
    # Ten clients on news, ten on news and sport (batching, wshub.v1): each tick's queues
    # come in at most two kinds, and each kind's frame is encoded once, not once a client.
    # Every client still gets exactly its streams, in publish order.
    config = HubConfig.testing().merged({"limits": {"write_delay": 0.003}})
    v1 = "wshub.v1"
    with trio.fail_after(30):
        async with fast_hub(config) as (hub, port):
            news = [await subscriber(port, f"n{n}", subprotocol=v1) for n in range(10)]
            both = [
                await subscriber(port, f"b{n}", streams=("news", "sport"), subprotocol=v1)
                for n in range(10)
            ]
            await trio.testing.wait_all_tasks_blocked()
            encoded.clear()
            for n in range(30):
                await hub.publish("news" if n % 3 else "sport", {"n": n})
            sent: list[bytes] = []
            expected = [("news" if n % 3 else "sport", n) for n in range(30)]
            for client in news:
                frames, got = await framed(client, 20)
                assert got == [message for message in expected if message[0] == "news"]
                sent += frames
            for client in both:
                frames, got = await framed(client, 30)
                assert got == expected
                sent += frames
    # Each distinct frame was encoded once, however many clients were sent it.
    assert sorted(text.encode() for text in encoded) == sorted(set(sent))
    assert len(encoded) < len(sent) / 5


async def test_queues_that_share_their_ends_get_their_own_frames(encoded: list[str]) -> None:
    # Clients on news and sport, and clients on news and weather. The tick's second round
    # holds news, sport, weather, news: both kinds of queue have three messages, the same
    # first and the same last, and differ in between. Each kind gets its own frame, encoded
    # once.
    # The round that writes news 0 is followed by a pause of a second: the other four are all
    # published within it (once one client has news 0), so they share the next round.
    limits = {"write_delay": 1.0}
    config = HubConfig.testing().merged({"limits": limits, "heartbeat": {"interval": 60.0}})
    v1 = "wshub.v1"
    sequence = [("news", 0), ("news", 1), ("sport", 2), ("weather", 3), ("news", 4)]
    with trio.fail_after(30):
        async with fast_hub(config) as (hub, port):
            kinds = {
                streams: [
                    await subscriber(port, f"{streams[1]}{n}", streams=streams, subprotocol=v1)
                    for n in range(5)
                ]
                for streams in (("news", "sport"), ("news", "weather"))
            }
            await trio.testing.wait_all_tasks_blocked()
            encoded.clear()
            await hub.publish("news", {"n": 0})
            first = kinds["news", "sport"][0]
            early = await framed(first, 1)  # news 0's round is written: the pause is on
            for stream, n in sequence[1:]:
                await hub.publish(stream, {"n": n})
            sent: list[bytes] = []
            for streams, clients in kinds.items():
                for client in clients:
                    if client is first:
                        frames, got = await framed(client, 3)
                        frames, got = early[0] + frames, early[1] + got
                    else:
                        frames, got = await framed(client, 4)
                    assert got == [message for message in sequence if message[0] in streams]
                    assert [len(frame.split(b"\n")) for frame in frames] == [1, 3]
                    sent += frames
    second = {frame for frame in sent if frame.count(b"\n") == 2}
    assert len(second) == 2  # the same ends, other items between: two frames
    assert len({(frame.split(b"\n")[0], frame.split(b"\n")[-1]) for frame in second}) == 1
    assert sorted(text.encode() for text in encoded) == sorted(set(sent))  # 3 encodings


async def test_the_tick_writes_every_subscriber_without_waking_a_writer_task() -> None:
    with trio.fail_after(30):
        async with fast_hub() as (hub, port):
            clients = [await subscriber(port, f"c{n}") for n in range(20)]
            await trio.testing.wait_all_tasks_blocked()
            with counting_writer_steps() as writers:
                for n in range(10):
                    await hub.publish("news", {"n": n})
                    await trio.testing.wait_all_tasks_blocked()  # the tick has written
                for client in clients:
                    assert await messages(client, 10) == list(range(10))
            assert writers.steps == 0
            assert hub.metrics.delivered == 200


async def test_the_rest_of_a_last_frame_is_sent_with_no_message_after_it() -> None:
    # One 8 MB message to a client that does not read yet: the tick's one write leaves most
    # of the frame unsent, and no message follows to wake anything. Once the client reads,
    # the whole frame arrives: the writer the tick started finishes it.
    big = "n" * BIG
    # No heartbeat within the test: a ping would write the rest on its way out.
    config = HubConfig.testing().merged({"heartbeat": {"interval": 60.0}})
    with trio.fail_after(20):
        async with fast_hub(config) as (hub, port):
            client = await subscriber(port, "late", rcvbuf=4096)
            with counting_writer_steps() as writers:
                await hub.publish("news", {"n": 1, "big": big})
                await trio.testing.wait_all_tasks_blocked()
                opcode, payload = await client.frame()
            assert opcode == 1
            assert json.loads(payload)["data"] == {"n": 1, "big": big}
            assert writers.steps > 0  # the rest went out through the writer task


async def test_a_full_socket_is_handed_to_its_writer_and_gets_every_frame_whole() -> None:
    # 200 messages of 20 KB (4 MB) to a client that reads nothing until the end: its socket
    # fills, so the tick hands it to its writer task; a reading client keeps getting every
    # message from the tick meanwhile. Then the slow one reads: all of them, whole, in order.
    limits = {"max_queue": 1000, "max_queue_bytes": 64 * 1024 * 1024, "write_delay": 0.003}
    config = HubConfig.testing().merged({"limits": limits, "heartbeat": {"interval": 60.0}})
    blob = "b" * 20_000
    with trio.fail_after(60):
        async with fast_hub(config) as (hub, port):
            slow = await subscriber(port, "slow", rcvbuf=4096)
            quick = await subscriber(port, "quick")
            received: list[int] = []

            async def read_quick() -> None:
                received.extend(await messages(quick, 200))

            with counting_writer_steps() as writers:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_quick)
                    for n in range(200):
                        await hub.publish("news", {"n": n, "blob": blob})
                assert received == list(range(200))
                assert writers.steps > 0  # the slow client's socket filled: its writer took over
                assert await messages(slow, 200) == list(range(200))
            assert hub.connection_count == 2
