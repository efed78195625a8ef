"""Hubs on one Redis are one service: resume anywhere, restart without gaps, survive outages.

Every test starts its own redis-server (the ``redis`` fixture) and runs on the real clock;
waits are for frames and states, each bounded by ``WAIT`` so a bug fails instead of hanging.
The resume and de-duplication tests at the top run against both brokers.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio

from redis_server import RedisServer
from serve_helpers import wshub_serve
from test_asgi import AUTH, KEY, call
from test_client_chaos import ChaosProxy, serve, start_proxy
from wshub.brokers.base import BrokerUnavailable
from wshub.brokers.redis import RedisBroker
from wshub.client.client import Gap, open_client
from wshub.core.config import HubConfig
from wshub.core.protocol import Position
from wshub.hub.hub import Hub, open_hub
from wshub.servers.asgi import create_app
from wshub.testing import ClientClosed, MemoryClient, connect_memory

WAIT = 20.0


def hub_config(kind: str = "redis", url: str = "", **sections: dict[str, Any]) -> HubConfig:
    broker = {"kind": kind, "url": url} if kind == "redis" else {"kind": "memory"}
    return HubConfig.testing().merged({"broker": broker, **sections})


@pytest.fixture(params=["memory", "redis"])
def config_of(request: pytest.FixtureRequest) -> Callable[..., HubConfig]:
    """Hub configs of one broker kind (Redis: a fresh server for the test)."""
    kind: str = request.param
    url = request.getfixturevalue("redis").url if kind == "redis" else ""
    return lambda **sections: hub_config(kind, url, **sections)


async def receive_messages(client: MemoryClient, count: int) -> list[dict[str, Any]]:
    with trio.fail_after(WAIT):
        return [await client.receive() for _ in range(count)]


async def welcome(client: MemoryClient) -> dict[str, Any]:
    with trio.fail_after(WAIT):
        frame = await client.receive()
    assert frame["type"] == "welcome", frame
    return frame


async def nothing_more(client: MemoryClient) -> None:
    """The answer to a ping comes next: nothing else was queued before it."""
    await client.send({"type": "ping"})
    with trio.fail_after(WAIT):
        assert await client.receive() == {"type": "pong"}


async def publish_numbers(hub: Hub, stream: str, numbers: range) -> None:
    for n in numbers:
        await hub.publish(stream, n)


# ---------------------------------------------------------------------- both brokers


async def test_resume_replays_exactly_what_was_missed(config_of: Callable[..., HubConfig]) -> None:
    async with open_hub(config_of()) as hub:
        first = await connect_memory(hub, "alice", subscribe={"news": None})
        epoch = (await welcome(first))["streams"]["news"]["epoch"]
        await publish_numbers(hub, "news", range(1, 4))
        assert [m["offset"] for m in await receive_messages(first, 3)] == [1, 2, 3]
        await first.aclose()
        await publish_numbers(hub, "news", range(4, 8))
        again = await connect_memory(hub, "alice", subscribe={"news": Position(3, epoch)})
        status = (await welcome(again))["streams"]["news"]
        assert status == {"epoch": epoch, "offset": 7, "first": 1, "recovered": True}
        replay = await receive_messages(again, 4)
        assert [(m["offset"], m["data"]) for m in replay] == [(4, 4), (5, 5), (6, 6), (7, 7)]
        await hub.publish("news", 8)
        assert (await receive_messages(again, 1))[0]["offset"] == 8
        await nothing_more(again)
        assert (hub.metrics.resumes_recovered, hub.metrics.replayed) == (1, 4)
        await again.aclose()


async def test_resume_past_history_says_not_recovered_with_the_gap(
    config_of: Callable[..., HubConfig],
) -> None:
    async with open_hub(config_of(history={"size": 5})) as hub:
        await publish_numbers(hub, "news", range(1, 13))  # history holds 8..12
        probe = await connect_memory(hub, "probe", subscribe={"news": None})
        epoch = (await welcome(probe))["streams"]["news"]["epoch"]
        client = await connect_memory(hub, "alice", subscribe={"news": Position(3, epoch)})
        status = (await welcome(client))["streams"]["news"]
        assert status == {"epoch": epoch, "offset": 12, "first": 8, "recovered": False}
        assert [m["offset"] for m in await receive_messages(client, 5)] == [8, 9, 10, 11, 12]
        stale = await connect_memory(hub, "bob", subscribe={"news": Position(3, "gone")})
        assert (await welcome(stale))["streams"]["news"]["recovered"] is False
        await nothing_more(client)
        for each in (probe, client, stale):
            await each.aclose()


async def test_a_first_connect_without_epoch_reads_everything_held(
    config_of: Callable[..., HubConfig],
) -> None:
    async with open_hub(config_of(history={"size": 3})) as hub:
        await publish_numbers(hub, "@alice", range(1, 3))
        alice = await connect_memory(hub, "alice", subscribe={"@alice": Position(0, None)})
        status = (await welcome(alice))["streams"]["@alice"]
        assert (status["offset"], status["first"], status["recovered"]) == (2, 1, True)
        assert [m["data"] for m in await receive_messages(alice, 2)] == [1, 2]
        await publish_numbers(hub, "@bob", range(1, 5))  # history holds 2..4
        bob = await connect_memory(hub, "bob", subscribe={"@bob": Position(0, None)})
        status = (await welcome(bob))["streams"]["@bob"]
        assert (status["offset"], status["first"], status["recovered"]) == (4, 2, False)
        assert [m["data"] for m in await receive_messages(bob, 3)] == [2, 3, 4]
        # Nothing ever sent to carol: nothing was missed, so recovered, and no `first`.
        carol = await connect_memory(hub, "carol", subscribe={"@carol": Position(0, None)})
        status = (await welcome(carol))["streams"]["@carol"]
        assert (status["offset"], "first" in status, status["recovered"]) == (0, False, True)
        for client in (alice, bob, carol):
            await nothing_more(client)
            await client.aclose()


async def test_client_publishes_are_deduplicated_and_conflicts_refused(
    config_of: Callable[..., HubConfig],
) -> None:
    async with open_hub(config_of()) as hub:
        client = await connect_memory(hub, "alice")
        await welcome(client)
        frames = [
            {"type": "publish", "stream": "news", "data": 1, "id": "k", "ref": 1},
            {"type": "publish", "stream": "news", "data": 1, "id": "k", "ref": 2},
            {"type": "publish", "stream": "news", "data": 2, "id": "k", "ref": 3},
            {"type": "publish", "stream": "news", "data": {"a": 1}, "ref": 4},
            {"type": "publish", "stream": "news", "data": {"a": 1}, "ref": 5},
        ]
        answers = []
        for frame in frames:
            await client.send(frame)
            answers.append(await receive_messages(client, 1))
        got = [(a["ref"], a.get("offset"), a.get("duplicate"), a.get("code")) for [a] in answers]
        assert got == [
            (1, 1, False, None),
            (2, 1, True, None),
            (3, None, None, "conflict"),
            (4, 2, False, None),
            (5, 2, True, None),
        ]
        assert (await hub.publish("news", 1, id="k")).duplicate is False  # another publisher
        await client.aclose()


# ---------------------------------------------------------------------- two hubs, one Redis


@asynccontextmanager
async def two_hubs(url: str, **sections: dict[str, Any]) -> AsyncIterator[tuple[Hub, Hub]]:
    config = hub_config("redis", url, **sections)
    async with open_hub(config) as a, open_hub(config) as b:
        for hub in (a, b):
            assert isinstance(hub.broker, RedisBroker)
            with trio.fail_after(WAIT):
                await hub.broker.wait_connected()
        yield a, b


def subscribers_of(redis: RedisServer, stream: str) -> int:
    """How many pub/sub connections Redis counts on the channel of ``stream``."""
    reply = redis.command("PUBSUB", "NUMSUB", f"wshub:{{{stream}}}").decode()
    return int(reply.rsplit(":", 1)[1])


async def wait_for_subscribers(redis: RedisServer, stream: str, count: int) -> None:
    """Wait until Redis counts ``count`` subscriptions of ``stream`` (nodes update it late)."""
    with trio.fail_after(WAIT):
        for _ in iter(int, 1):  # until it holds
            if subscribers_of(redis, stream) == count:
                return
            await trio.sleep(0.01)


async def test_one_pubsub_connection_per_node_subscribed_while_a_stream_is_served(
    redis: RedisServer,
) -> None:
    """Not a connection per client: one per node, on the channels of the streams it serves;
    the first subscriber of a stream subscribes its channel, the last one unsubscribes it."""
    async with two_hubs(redis.url) as (a, _):
        clients = []
        for n in range(6):
            streams = {"news": None, "sport": None} if n % 2 else {"news": None}
            clients.append(await connect_memory(a, f"c{n}", subscribe=streams))
            await welcome(clients[-1])
        pubsub = redis.command("CLIENT", "LIST", "TYPE", "pubsub").decode()
        # One for hub a and its six clients (hub b serves nothing, so Redis lists none for it).
        assert pubsub.count("flags=P ") == 1 and f"name=wshub:{a.node} " in pubsub
        assert [subscribers_of(redis, s) for s in ("news", "sport", "@c0")] == [1, 1, 1]
        for client in clients[1::2]:  # every subscriber of sport leaves
            await client.aclose()
        await wait_for_subscribers(redis, "sport", 0)
        await wait_for_subscribers(redis, "@c1", 0)  # its personal stream too
        assert subscribers_of(redis, "news") == 1  # which the others still hold
        for client in clients[0::2]:
            await client.aclose()
        await wait_for_subscribers(redis, "news", 0)
        again = await connect_memory(a, "late", subscribe={"sport": None})
        await welcome(again)  # a new first subscriber subscribes the channel again
        assert subscribers_of(redis, "sport") == 1
        await again.aclose()


async def test_publish_on_either_hub_reaches_every_subscriber_once_in_order(
    redis: RedisServer,
) -> None:
    async with two_hubs(redis.url) as (a, b):
        alice = await connect_memory(a, "alice", subscribe={"news": None})
        bob = await connect_memory(b, "bob", subscribe={"news": None})
        for client in (alice, bob):
            await welcome(client)
        for n in range(1, 41):
            await (a if n % 2 else b).publish("news", n)
        for client in (alice, bob):
            got = await receive_messages(client, 40)
            assert [(m["offset"], m["data"]) for m in got] == [(n, n) for n in range(1, 41)]
            await nothing_more(client)
            await client.aclose()
        assert a.metrics.published == b.metrics.published == 20


async def test_a_client_dropped_by_one_hub_resumes_on_the_other(redis: RedisServer) -> None:
    async with two_hubs(redis.url) as (a, b):
        alice = await connect_memory(a, "alice", subscribe={"news": None})
        epoch = (await welcome(alice))["streams"]["news"]["epoch"]
        await publish_numbers(a, "news", range(1, 4))
        seen = await receive_messages(alice, 3)
        await alice.aclose()
        await publish_numbers(b, "news", range(4, 8))
        position = Position(seen[-1]["offset"], epoch)
        again = await connect_memory(b, "alice", subscribe={"news": position})
        status = (await welcome(again))["streams"]["news"]
        assert status == {"epoch": epoch, "offset": 7, "first": 1, "recovered": True}
        assert [m["data"] for m in await receive_messages(again, 4)] == [4, 5, 6, 7]
        await a.publish("news", 8)
        assert (await receive_messages(again, 1))[0]["offset"] == 8
        await nothing_more(again)
        await again.aclose()


async def test_a_restarted_hub_keeps_every_epoch_and_its_clients_miss_nothing(
    redis: RedisServer,
) -> None:
    config = hub_config("redis", redis.url)
    async with open_hub(config) as survivor:
        async with open_hub(config) as restarting:
            alice = await connect_memory(restarting, "alice", subscribe={"news": None})
            epoch = (await welcome(alice))["streams"]["news"]["epoch"]
            await publish_numbers(restarting, "news", range(1, 4))
            await receive_messages(alice, 3)
        # That hub is gone (its clients got 1001); the service goes on without it.
        await publish_numbers(survivor, "news", range(4, 6))
        async with open_hub(config) as restarted:
            again = await connect_memory(restarted, "alice", subscribe={"news": Position(3, epoch)})
            status = (await welcome(again))["streams"]["news"]
            assert status == {"epoch": epoch, "offset": 5, "first": 1, "recovered": True}
            assert [m["data"] for m in await receive_messages(again, 2)] == [4, 5]
            await again.aclose()


async def test_sys_streams_stay_on_their_node_and_say_which(redis: RedisServer) -> None:
    """``$sys.metrics`` lives in each node's memory, never in Redis: an admin client of one hub
    gets that hub's snapshots only, each naming its node (both hubs here share one process, so
    one node name, ``host:pid``; the snapshot's ``hub`` tells them apart)."""
    async with two_hubs(redis.url, admin={"api_key": "k"}) as (a, b):
        admins = []
        for hub in (a, b):
            admin = await connect_memory(hub, "ops", token="k", subscribe={"$sys.metrics": None})
            await welcome(admin)
            admins.append((hub, admin))
        a.flush_metrics()
        b.flush_metrics()
        for hub, admin in admins:
            await admin.send({"type": "ping"})
            frames = []
            with trio.fail_after(WAIT):
                while (frame := await admin.receive()) != {"type": "pong"}:
                    frames.append(frame)
            assert frames and {f["stream"] for f in frames} == {"$sys.metrics"}
            assert {(f["data"]["hub"], f["data"]["node"]) for f in frames} == {(hub.id, hub.node)}
            await admin.aclose()
        assert redis.command("KEYS", "*sys*") == b"*0\r\n"  # nothing of $sys in Redis


async def test_a_killed_pubsub_connection_is_filled_and_no_client_notices(
    redis: RedisServer,
) -> None:
    total = 300
    covered = {"history": {"size": total}, "limits": {"max_queue": 2 * total}}
    async with two_hubs(redis.url, **covered) as (a, b):  # history and queues hold the gap
        clients = [await connect_memory(a, f"c{n}", subscribe={"news": None}) for n in range(3)]
        for client in clients:
            await welcome(client)

        async def publish_all() -> None:
            for n in range(1, total + 1):
                await b.publish("news", n)
                if n == total // 3:  # hub a's connection (b subscribes to nothing)
                    assert redis.command("CLIENT", "KILL", "TYPE", "pubsub") == b":1\r\n"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_all)
            for client in clients:
                got = await receive_messages(client, total)
                assert [m["offset"] for m in got] == list(range(1, total + 1))
        for client in clients:
            await nothing_more(client)  # still connected: nobody was closed
            await client.aclose()
        assert isinstance(a.broker, RedisBroker)
        assert a.broker.statistics()["calls"]["connect"]["ok"] == 2  # it did reconnect
        assert a.broker.lost == 0


# ---------------------------------------------------------------------- Redis down


async def wait_until_published(hub: Hub, stream: str, data: Any) -> int:
    """Publish, retrying while the broker is unavailable; returns the offset."""
    with trio.fail_after(WAIT):
        while True:
            try:
                return (await hub.publish(stream, data, id=f"n{data}")).offset
            except BrokerUnavailable:
                await trio.sleep(0.05)


@pytest.mark.parametrize("persist", [True, False], ids=["persistent", "volatile"])
async def test_redis_killed_and_restarted_mid_stream(
    redis: RedisServer, tmp_path: Any, persist: bool
) -> None:
    """Breaker open, health 503 and 1013 while down; after: complete, or told the exact gap."""
    if persist:
        redis.stop()
        redis = RedisServer(redis.binary, tmp_path, persist=True)
        redis.start()
    config = hub_config(
        "redis",
        redis.url,
        breaker={"open_timeout": 0.2, "max_open_timeout": 0.5},
        admin={"api_key": KEY},
    )
    try:
        async with open_hub(config) as hub:
            assert isinstance(hub.broker, RedisBroker)
            with trio.fail_after(WAIT):
                await hub.broker.wait_connected()
            app = create_app(hub=hub)
            clients = [
                await connect_memory(hub, f"c{n}", subscribe={"news": None}) for n in range(3)
            ]
            epochs = {(await welcome(c))["streams"]["news"]["epoch"] for c in clients}
            [epoch] = epochs
            for n in range(1, 11):
                await hub.publish("news", n, id=f"n{n}")
            for client in clients:  # delivered before the outage
                assert [m["offset"] for m in await receive_messages(client, 10)] == list(
                    range(1, 11)
                )
            redis.kill()
            for _ in range(3):  # the testing preset's breaker opens after 2 failures
                with pytest.raises(BrokerUnavailable):
                    await hub.publish("news", 11, id="n11")
            assert "broker unavailable" in hub.health()["reasons"]
            assert "circuit breaker 'broker' is open" in hub.health()["reasons"]
            health = await call(app, "GET", "/health/websocket")
            assert health.status == 503 and "broker unavailable" in health.json()["reasons"]
            assert (await call(app, "GET", "/health")).status == 200
            body = b'{"stream": "news", "data": 11, "id": "n11"}'
            reply = await call(app, "POST", "/api/publish", headers=AUTH, chunks=[body])
            assert (reply.status, reply.json()["status"]) == (503, "unavailable")
            text = hub.metrics.exposition()[0].decode()
            assert 'wshub_broker_calls_total{op="publish",outcome="ok"} 10.0' in text
            assert 'wshub_broker_calls_total{op="publish",outcome="rejected"}' in text
            assert f'wshub_node_info{{node="{hub.node}"}} 1.0' in text
            late = await connect_memory(hub, "late", subscribe={"news": None})
            with trio.fail_after(WAIT):
                assert (await late.wait_closed())[0] == 1013
            await clients[0].send({"type": "publish", "stream": "news", "data": 0, "ref": 1})
            answer = (await receive_messages(clients[0], 1))[0]
            assert (answer["type"], answer["code"], answer["ref"]) == ("error", "unavailable", 1)
            redis.start()
            for n in range(11, 21):
                await wait_until_published(hub, "news", n)
            with trio.fail_after(WAIT):
                await hub.broker.wait_connected()
            assert "broker unavailable" not in hub.health()["reasons"]
            for client in clients:
                if persist:  # Redis kept everything: the stream goes on, nothing lost
                    got = await receive_messages(client, 10)
                    assert [(m["offset"], m["data"]) for m in got] == [
                        (n, n) for n in range(11, 21)
                    ]
                    await nothing_more(client)
                else:  # Redis lost it all: each client is closed, and resuming says so
                    with trio.fail_after(WAIT):
                        code, _ = await client.wait_closed()
                    assert code == 1001
            if not persist:
                again = await connect_memory(hub, "c0", subscribe={"news": Position(10, epoch)})
                status = (await welcome(again))["streams"]["news"]
                assert status["epoch"] != epoch and status["recovered"] is False
                assert status["offset"] == 10 and status["first"] == 1  # new epoch: 1..10
                await again.aclose()
            for client in clients:
                await client.aclose()
    finally:
        redis.stop()


# ---------------------------------------------------------------------- chaos


class HoppingProxy(ChaosProxy):
    """A ChaosProxy that sends each new connection to one of several hubs at random."""

    ports: list[int]
    chosen: list[int]

    async def handle(self, downstream: trio.SocketStream) -> None:
        """Pick a hub, then forward and cut as ChaosProxy does."""
        self.target_port = self.rng.choice(self.ports)
        self.chosen.append(self.target_port)
        await super().handle(downstream)


async def test_chaos_clients_hopping_between_two_hubs_lose_and_repeat_nothing(
    redis: RedisServer,
) -> None:
    streams = ["hop.0", "hop.1"]
    per_stream = 1000  # 2,000 messages, published alternately through both hubs
    started = time.monotonic()
    proxy = HoppingProxy(random.Random(20261206))
    sections = {
        "history": {"size": 2 * per_stream, "ttl": 600.0},
        "limits": {"max_queue": 20_000, "write_delay": 0.002},
        "heartbeat": {"interval": 5.0, "timeout": 5.0},
    }
    with trio.fail_after(90):
        async with two_hubs(redis.url, **sections) as (a, b), trio.open_nursery() as nursery:
            proxy.ports = [await serve(nursery, a), await serve(nursery, b)]
            proxy.chosen = []
            url = f"ws://127.0.0.1:{await start_proxy(nursery, proxy)}/ws"
            async with open_client(
                url,
                "hopper",
                subscribe=streams,
                backoff_base=0.005,
                backoff_cap=0.1,
                connect_timeout=2.0,
                rng=random.Random(3),
            ) as client:
                await client.wait_connected()

                async def publish() -> None:
                    for n in range(per_stream):
                        for index, stream in enumerate(streams):
                            await (a if (n + index) % 2 else b).publish(stream, {"n": n + 1})
                        if n % 4 == 0:
                            await trio.sleep(0.003)

                nursery.start_soon(publish)
                expected = len(streams) * per_stream
                received, gaps = await collect(client, streams, expected)
                statistics = client.statistics()
            nursery.cancel_scope.cancel()
    unique = {(stream, offset) for stream, offset, _ in received}
    lost, duplicates = expected - len(unique), len(received) - len(unique)
    print(
        f"\nhopping chaos: {len(received)} received, lost {lost}, duplicates {duplicates}, "
        f"gaps {len(gaps)}; proxy: {proxy.connections} connections, {proxy.cuts} cuts; "
        f"{statistics.reconnects} reconnects; {time.monotonic() - started:.1f} s"
    )
    assert (lost, duplicates, gaps) == (0, 0, [])
    for stream in streams:
        got = [(offset, data) for s, offset, data in received if s == stream]
        assert got == [(n, {"n": n}) for n in range(1, per_stream + 1)]
    # The client really hopped: it resumed, on both hubs, across cuts.
    assert statistics.reconnects >= 2 and set(proxy.chosen) == set(proxy.ports)


async def follow(
    url: str,
    client_id: str,
    streams: list[str],
    expected: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> dict[str, Any]:
    """Run a resilient client until it holds ``expected`` distinct messages of ``streams``.

    Started (``nursery.start``) once its first hello is welcomed: it subscribed "from now on".
    """
    async with open_client(
        url,
        client_id,
        subscribe=streams,
        backoff_base=0.005,
        backoff_cap=0.1,
        connect_timeout=5.0,
        rng=random.Random(client_id),
    ) as client:
        await client.wait_connected()
        task_status.started()
        received, gaps = await collect(client, streams, expected)
        return {"received": received, "gaps": gaps, "statistics": client.statistics()}


async def collect(
    client: Any, streams: list[str], expected: int
) -> tuple[list[tuple[str, int, Any]], list[Gap]]:
    """A client's messages of ``streams`` (stream, offset, data) and its gaps, until it holds
    ``expected`` distinct messages."""
    received: list[tuple[str, int, Any]] = []
    gaps: list[Gap] = []
    async for event in client:
        if isinstance(event, Gap):
            gaps.append(event)
        elif event.stream in streams:
            received.append((event.stream, event.offset, event.data))
        if len({(s, o) for s, o, _ in received}) >= expected:
            break
    return received, gaps


async def test_chaos_clients_hopping_between_two_serve_processes_lose_and_repeat_nothing(
    redis: RedisServer, tmp_path: Any
) -> None:
    """Two ``wshub serve`` processes and an embedded hub on one Redis are one service.

    The embedded hub publishes 2,000 distinct messages on two streams while three clients hop
    between the two processes through a proxy that cuts connections at random points: each
    client ends with every message, in order, none lost, none repeated, no gap reported.
    """
    streams = ["hop.0", "hop.1"]
    per_stream = 1000
    started = time.monotonic()
    proxy = HoppingProxy(random.Random(20261207))
    sections = {"history": {"size": 2 * per_stream, "ttl": 600.0}}
    env = {
        "WSHUB_BROKER__KIND": "redis",
        "WSHUB_BROKER__URL": redis.url,
        "WSHUB_HISTORY__SIZE": str(2 * per_stream),  # a resume reads up to this many
        "WSHUB_HISTORY__TTL": "600",
        "WSHUB_LIMITS__MAX_QUEUE": "20000",
        "WSHUB_HEARTBEAT__INTERVAL": "5",
        "WSHUB_HEARTBEAT__TIMEOUT": "5",
    }
    servers = []
    try:
        for number in range(2):
            log = tmp_path / f"serve-{number}.log"
            servers.append(await trio.to_thread.run_sync(partial(wshub_serve, log, env=env)))
        results: dict[str, dict[str, Any]] = {}
        config = hub_config("redis", redis.url, **sections)
        with trio.fail_after(120):
            async with open_hub(config) as publisher, trio.open_nursery() as nursery:
                proxy.ports = [server.port for server in servers]
                proxy.chosen = []
                url = f"ws://127.0.0.1:{await start_proxy(nursery, proxy)}/ws"

                async def one(client_id: str, task_status: trio.TaskStatus[None]) -> None:
                    expected = len(streams) * per_stream
                    results[client_id] = await follow(
                        url, client_id, streams, expected, task_status=task_status
                    )

                async with trio.open_nursery() as clients:
                    for number in range(3):
                        await clients.start(one, f"hopper-{number}")
                    for n in range(per_stream):
                        for stream in streams:
                            await publisher.publish(stream, {"n": n + 1})
                        if n % 4 == 0:
                            await trio.sleep(0.003)
                nursery.cancel_scope.cancel()
    finally:
        for server in servers:
            server.stop(signal.SIGTERM, timeout=20)
    reconnects = 0
    for client_id, result in sorted(results.items()):
        received, statistics = result["received"], result["statistics"]
        unique = {(stream, offset) for stream, offset, _ in received}
        lost, duplicates = len(streams) * per_stream - len(unique), len(received) - len(unique)
        print(
            f"\n{client_id}: {len(received)} received, lost {lost}, duplicates {duplicates}, "
            f"gaps {len(result['gaps'])}; {statistics.reconnects} reconnects, "
            f"{statistics.duplicates} repeats dropped by the client"
        )
        assert (lost, duplicates, result["gaps"]) == (0, 0, [])
        for stream in streams:
            got = [(offset, data) for s, offset, data in received if s == stream]
            assert got == [(n, {"n": n}) for n in range(1, per_stream + 1)]
        reconnects += statistics.reconnects
    print(
        f"proxy: {proxy.connections} connections, {proxy.cuts} cuts; "
        f"{time.monotonic() - started:.1f} s"
    )
    # The clients really hopped: they resumed, on both processes, across cuts.
    assert len(results) == 3 and reconnects >= 3 and set(proxy.chosen) == set(proxy.ports)


async def test_hellos_fail_fast_while_redis_is_unreachable(tmp_path: Any) -> None:
    """A hub whose Redis never answers starts, refuses hellos with 1013, and stays alive.

    Once the ``broker`` breaker is open (for a minute here), HTTP publishes get 503 with the
    Retry-After the breaker knows, and ``BrokerUnavailable`` carries it.
    """
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = hub_config(
        "redis",
        f"redis://127.0.0.1:{port}/0",
        breaker={"open_timeout": 60.0, "max_open_timeout": 60.0},
        admin={"api_key": KEY},
    )
    async with open_hub(config) as hub:
        client = await connect_memory(hub, "alice")
        with trio.fail_after(WAIT):
            assert (await client.wait_closed())[0] == 1013
        with pytest.raises(BrokerUnavailable):
            await hub.publish("news", 1)
        assert hub.health()["status"] == "degraded"
        with pytest.raises(ClientClosed):
            await client.send({"type": "ping"})
        for _ in range(config.breaker.failure_threshold):  # enough failures to open it
            with contextlib.suppress(BrokerUnavailable):
                await hub.publish("news", 1)
        assert hub.breakers.get("broker").state.value == "open"
        with pytest.raises(BrokerUnavailable) as refused:
            await hub.publish("news", 1)
        assert refused.value.retry_after is not None and 0 < refused.value.retry_after <= 60
        body = b'{"stream": "news", "data": 1}'
        reply = await call(create_app(hub=hub), "POST", "/api/publish", headers=AUTH, chunks=[body])
        assert (reply.status, reply.json()["status"]) == (503, "unavailable")
        assert 1 <= int(reply.headers["retry-after"]) <= 60
        assert (await call(create_app(hub=hub), "GET", "/health")).status == 200
