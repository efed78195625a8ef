"""A client that stops reading is cut alone; the others keep their pace and their latency.

In memory, under the mock clock: ``connect_memory(..., buffer=0)`` plays a client whose
socket is full (it never reads again after its welcome), among fast readers, while a
publisher publishes at a steady rate. The real-socket versions are in
``test_hostile_sockets.py``.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from wshub.core.config import HubConfig
from wshub.core.protocol import SUBPROTOCOL, split_batch
from wshub.hub.hub import open_hub
from wshub.hub.transport import RequestInfo
from wshub.servers.asgi import ASGITransport
from wshub.testing import ClientClosed, MemoryClient, connect_memory


def config(**sections: dict[str, Any]) -> HubConfig:
    """The testing preset with some keys changed."""
    return HubConfig.testing().merged(sections)


@pytest.mark.parametrize("readers", [1, 5, 20, 60, 1000])
async def test_a_frozen_client_is_cut_alone_at_any_number_of_subscribers(
    autojump_clock: Any, readers: int
) -> None:
    # 500 messages a second for 0.4 s, queues of 50: one tick stalled on the frozen writer for
    # its old time limit (0.25 s) would let 125 messages pile up for every reader.
    cfg = config(limits={"write_delay": 0.003, "max_queue": 50})
    interval, count = 0.002, 200
    latencies: list[float] = []
    async with open_hub(cfg) as hub:
        frozen = await connect_memory(hub, "frozen", subscribe={"news": None}, buffer=0)
        assert (await frozen.receive())["type"] == "welcome"  # then it never reads again
        clients: list[MemoryClient] = []
        for n in range(readers):
            client = await connect_memory(hub, f"r{n}", subscribe={"news": None})
            assert (await client.receive())["type"] == "welcome"
            clients.append(client)

        async def read(client: MemoryClient) -> None:
            for expected in range(count):
                message = await client.receive()
                assert message["data"]["n"] == expected
                latencies.append(trio.current_time() - message["data"]["at"])

        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(read, client)
            for n in range(count):
                await hub.publish("news", {"n": n, "at": trio.current_time()})
                await trio.sleep(interval)
        assert hub.metrics.queue_overflows == 1  # the frozen one, and no one else
        await trio.sleep(1)  # its frame in flight had FINISH_FRAME_TIMEOUT to end
        assert hub.connection_count == readers
        assert max(latencies) <= 0.02, max(latencies)
        with pytest.raises(ClientClosed):  # cut: 4002, or 1006 when its frame could not end
            await frozen.receive()
        for client in clients:
            await client.aclose()


class ShieldedSender:
    """The ASGI side of one WebSocket as hypercorn runs it for a client that stops reading
    after its welcome: every later send waits, shielded (hypercorn shields its writes), until
    the socket dies on its own (``die``)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.dead = trio.Event()
        self._events, self._incoming = trio.open_memory_channel[dict[str, Any]](math.inf)

    async def receive(self) -> dict[str, Any]:
        return await self._incoming.receive()

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send" and self.sent:
            with trio.CancelScope(shield=True):
                await self.dead.wait()
            raise trio.BrokenResourceError("the peer is gone")
        if message["type"] == "websocket.send":
            self.sent.append(message["text"])
        await trio.lowlevel.checkpoint()

    def die(self) -> None:
        self.dead.set()
        self._events.send_nowait({"type": "websocket.disconnect", "code": 1006})


@pytest.mark.parametrize("readers", [1, 20])
async def test_under_asgi_a_frozen_client_is_forgotten_at_the_4002_decision(
    autojump_clock: Any, readers: int
) -> None:
    # hypercorn's shielded write cannot be cancelled: the hub still drops the client from its
    # own state (subscriptions, queue, slot, the disconnect counted) when it decides 4002,
    # and no flush tick waits for it.
    cfg = config(limits={"write_delay": 0.003, "max_queue": 50})
    interval, count = 0.002, 200
    async with open_hub(cfg) as hub:
        frozen = ShieldedSender()
        try:
            transport = ASGITransport(frozen.receive, frozen.send, SUBPROTOCOL, 65536)
            hub.start_soon_in_hub(hub.serve_connection, transport, RequestInfo())
            frozen._events.send_nowait({"type": "websocket.receive", "text": FROZEN_HELLO})
            clients = []
            for n in range(readers):
                client = await connect_memory(hub, f"r{n}", subscribe={"news": None})
                assert (await client.receive())["type"] == "welcome"
                clients.append(client)
            assert hub.connection_count == readers + 1

            async def read(client: MemoryClient) -> None:
                for expected in range(count):
                    assert (await client.receive())["data"]["n"] == expected

            async with trio.open_nursery() as nursery:
                for client in clients:
                    nursery.start_soon(read, client)
                for n in range(count):
                    await hub.publish("news", {"n": n})
                    await trio.sleep(interval)
                    if n == 60:  # the frozen client's queue overflowed at message 51
                        assert hub.connection_count == readers
                        assert hub.metrics.disconnects == {4002: 1}
                        assert hub.queue_depths()[1] < 50
            await trio.sleep(cfg.metrics.flush_interval)
            assert hub.health()["status"] == "healthy"  # while the socket is still stuck
            for client in clients:
                await client.aclose()
        finally:
            frozen.die()  # the stuck socket dies on its own, at last


FROZEN_HELLO = '{"type":"hello","client_id":"frozen","subscribe":{"news":null}}'


# --------------------------------------------------------------------------- drain on cancel


async def test_cancelling_around_open_hub_still_drains(autojump_clock: Any) -> None:
    # 500 messages queued to each of 50 clients, then the scope around open_hub is cancelled:
    # every client gets all of them, then 1001 with a completed closing handshake.
    cfg = config(limits={"write_delay": 0.003, "max_queue": 1000}, shutdown={"grace": 5.0})
    clients: list[MemoryClient] = []
    with trio.CancelScope() as scope:
        async with open_hub(cfg) as hub:
            for n in range(50):
                client = await connect_memory(hub, f"c{n}", subscribe={"news": None})
                assert (await client.receive())["type"] == "welcome"
                clients.append(client)
            for n in range(500):
                await hub.publish("news", n)  # no checkpoint between: all of them queue
            assert hub.queue_depths()[1] > 0
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    for client in clients:
        received = [message["data"] for message in client_messages(client)]
        assert received == list(range(500))
        assert (client.close_code, client.close_reason) == (1001, "the server is shutting down")


def client_messages(client: MemoryClient) -> list[dict[str, Any]]:
    """Every object the hub sent ``client`` (it has closed), batches split."""
    return [orjson.loads(part) for frame in drain_frames(client) for part in split_batch(frame)]


def drain_frames(client: MemoryClient) -> list[str]:
    frames = []
    while True:
        try:
            frames.append(client._to_client_receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return frames
