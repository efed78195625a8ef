"""The client against in-memory hubs under the mock clock: exact times, exact events."""

from __future__ import annotations

import io
import itertools
import math
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from wshub.client.client import (
    Client,
    ClientError,
    ClientRejected,
    ConnectFailed,
    Gap,
    Message,
    PublishError,
    SubscribeError,
    open_client,
)
from wshub.client.resume import (
    ANY_EPOCH,
    JsonFilePositionStore,
    MemoryPositionStore,
    StreamTracker,
)
from wshub.core import protocol
from wshub.core.backoff import Backoff
from wshub.core.breaker import CircuitBreaker
from wshub.core.config import HubConfig
from wshub.core.errors import TransportClosed
from wshub.core.history import StoredMessage, StreamHistory
from wshub.core.protocol import SUBPROTOCOL, Position, StreamStatus
from wshub.hub.hub import Hub, PublishResult, open_hub
from wshub.hub.transport import RequestInfo
from wshub.testing import MemoryClient, connect_memory
from wshub.tools import PublishHTTPError, publish_http, tail

URL = "ws://hub.test/ws"


def config(**sections: dict[str, Any]) -> HubConfig:
    """The testing preset with some keys changed."""
    return HubConfig.testing().merged(sections)


# --- an in-memory network between the client under test and hubs -------------------------------


class Link:
    """One in-memory WebSocket: the hub serves ``hub_end``, the client uses ``client_end``."""

    def __init__(self, subprotocol: str | None, *, duplicate: bool = False) -> None:
        self.subprotocol = subprotocol
        self.duplicate = duplicate  # deliver every frame holding a message twice
        self.close_code: int | None = None
        self.close_reason = ""
        self.cut_when: str | None = None  # cut instead of delivering a frame holding this text
        self.stalled = False  # swallow the hub's frames
        self.sent: list[tuple[float, str]] = []  # what the client sent, with virtual times
        self.received: list[str] = []  # the frames the client received
        self._to_client, self._client_inbox = trio.open_memory_channel[str](math.inf)
        self._to_hub, self._hub_inbox = trio.open_memory_channel[str](math.inf)
        self.hub_end = _HubEnd(self)
        self.client_end = _ClientEnd(self)

    def cut(self, code: int = 1006, reason: str = "") -> None:
        """Break the link at once, as a lost TCP connection would."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        for channel in (self._to_client, self._client_inbox, self._to_hub, self._hub_inbox):
            channel.close()


class _HubEnd:
    can_ping = True
    peer_close_codes = True
    on_blocked = None

    def __init__(self, link: Link) -> None:
        self.link = link
        self.subprotocol = link.subprotocol

    async def receive(self) -> str | bytes:
        try:
            return await self.link._hub_inbox.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise TransportClosed(self.link.close_code or 1006) from None

    async def send(self, text: str) -> None:
        link = self.link
        try:
            if link.cut_when is not None and link.cut_when in text:
                link.cut()
            elif not link.stalled:
                await link._to_client.send(text)
                if link.duplicate and '"type":"message"' in text:
                    await link._to_client.send(text)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if link.close_code is not None:
            raise TransportClosed(link.close_code)

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self, code: int, reason: str = "") -> None:
        await trio.lowlevel.checkpoint()
        self.link.cut(code, reason)


class _ClientEnd:
    def __init__(self, link: Link) -> None:
        self.link = link

    async def send(self, text: str) -> None:
        self.link.sent.append((trio.current_time(), text))
        try:
            await self.link._to_hub.send(text)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise TransportClosed(self.link.close_code or 1006, self.link.close_reason) from None

    async def receive(self) -> str | bytes:
        try:
            frame = await self.link._client_inbox.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise TransportClosed(self.link.close_code or 1006, self.link.close_reason) from None
        self.link.received.append(frame)
        return frame

    async def aclose(self, code: int = 1000) -> None:
        await trio.lowlevel.checkpoint()
        self.link.cut(code)


@attrs.define
class Network:
    """Routes the client's connection attempts to ``hub``; records when each attempt was made."""

    hub: Hub | None
    attempts: list[float] = attrs.field(factory=list)
    links: list[Link] = attrs.field(factory=list)
    offered: list[tuple[str, ...]] = attrs.field(factory=list)
    duplicate: bool = False

    @asynccontextmanager
    async def connect(self, url: str, subprotocols: Sequence[str]) -> AsyncIterator[_ClientEnd]:
        assert url == URL
        self.attempts.append(trio.current_time())
        self.offered.append(tuple(subprotocols))
        await trio.lowlevel.checkpoint()
        if self.hub is None:
            raise ConnectionRefusedError("no hub")
        link = Link(SUBPROTOCOL if SUBPROTOCOL in subprotocols else None, duplicate=self.duplicate)
        self.links.append(link)
        request = RequestInfo(subprotocols=tuple(subprotocols))
        self.hub.start_soon_in_hub(self.hub.serve_connection, link.hub_end, request)
        try:
            yield link.client_end
        finally:
            link.cut(1000)

    @property
    def link(self) -> Link:
        """The newest link."""
        return self.links[-1]


def client_for(network: Network, client_id: str = "alice", **options: Any) -> Any:
    """``open_client`` over ``network``, with fast test defaults."""
    options.setdefault("rng", random.Random(1))
    return open_client(URL, client_id, connect=network.connect, **options)


def epoch_of(hub: Hub, stream: str) -> str:
    """The epoch of ``stream`` on ``hub``."""
    history = hub.histories.get(stream)
    assert history is not None
    return history.epoch


def held(hub: Hub, stream: str) -> int:
    """How many messages of ``stream`` the hub's history holds."""
    history = hub.histories.get(stream)
    assert history is not None
    return len(history)


async def take(client: Client, count: int) -> list[Message | Gap]:
    """The next ``count`` events."""
    return [await client.__anext__() for _ in range(count)]


def offsets(events: Sequence[Message | Gap]) -> list[int]:
    """The offsets of the messages among ``events``."""
    return [event.offset for event in events if isinstance(event, Message)]


async def wait_until(predicate: Any) -> None:
    """Let virtual time pass (in small steps) until ``predicate()`` holds."""
    while not predicate():  # noqa: ASYNC110 - what the tests wait for has no event of its own
        await trio.sleep(0.001)


# --- receiving -----------------------------------------------------------------------------------


async def test_messages_arrive_in_order_with_every_field(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        network = Network(hub)
        async with client_for(network, subscribe=["news"]) as client:
            await client.wait_connected()
            results = [await hub.publish("news", {"n": n}, id=f"e{n}") for n in range(3)]
            events = await take(client, 3)
        assert network.offered == [(SUBPROTOCOL,)]
        epoch = epoch_of(hub, "news")
        assert all(isinstance(e, Message) and e.ts > 0 for e in events)
        assert [
            (e.stream, e.offset, e.id, e.data, e.epoch) for e in events if isinstance(e, Message)
        ] == [("news", r.offset, r.id, {"n": n}, epoch) for n, r in enumerate(results)]


async def test_batched_frames_are_split(autojump_clock: Any) -> None:
    async with open_hub(config(limits={"write_delay": 0.05, "max_batch": 64})) as hub:
        network = Network(hub)
        async with client_for(network, subscribe=["news"]) as client:
            await client.wait_connected()
            for n in range(50):
                await hub.publish("news", n)
            events = await take(client, 50)
        assert offsets(events) == list(range(1, 51))
        assert any("\n" in frame for frame in network.link.received)  # batches did happen


async def test_personal_stream_is_delivered(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        network = Network(hub)
        async with client_for(network) as client:
            await client.wait_connected()
            await hub.send("alice", {"note": "direct"})
            (event,) = await take(client, 1)
        assert isinstance(event, Message)
        assert (event.stream, event.data) == ("@alice", {"note": "direct"})


async def test_subscribe_and_unsubscribe_while_connected(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        network = Network(hub)
        async with client_for(network) as client:
            await client.subscribe("news")
            await hub.publish("news", 1)
            assert offsets(await take(client, 1)) == [1]
            await client.unsubscribe("news")
            await hub.publish("news", 2)
            await hub.send("alice", "direct")
            (event,) = await take(client, 1)
            assert isinstance(event, Message) and event.stream == "@alice"
            # Subscribing again resumes after the last message delivered: 2 is replayed.
            await client.subscribe("news")
            assert offsets(await take(client, 1)) == [2]
            with pytest.raises(SubscribeError) as refused:
                await client.subscribe("@bob")
            assert refused.value.code == "forbidden"
            with pytest.raises(ValueError, match="invalid stream name"):
                await client.subscribe("no spaces")
            with pytest.raises(ValueError, match="always subscribed"):
                await client.unsubscribe("@alice")
            await hub.publish("news", 3)
            assert offsets(await take(client, 1)) == [3]


async def test_a_forbidden_subscription_at_connect_ends_the_client(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        network = Network(hub)
        with pytest.raises(SubscribeError) as refused:
            async with client_for(network, subscribe=["news", "@bob"]):
                await trio.sleep_forever()
        assert (refused.value.stream, refused.value.code) == ("@bob", "forbidden")
        assert network.attempts == [0.0]


# --- reconnecting --------------------------------------------------------------------------------


def schedule(seed: int, base: float, cap: float, retries: int, start: float = 0.0) -> list[float]:
    """The times of the first attempt and of ``retries`` retries under full jitter."""
    rng = random.Random(seed)
    times = [start]
    for retry in range(retries):
        delay = rng.uniform(0.0, min(cap, base * 2**retry))
        assert 0.0 <= delay <= min(cap, base * 2**retry)
        times.append(times[-1] + delay)
    return times


async def test_backoff_delays_follow_the_full_jitter_schedule(autojump_clock: Any) -> None:
    network = Network(None)
    start = trio.current_time()
    with pytest.raises(ConnectFailed) as failed:
        async with client_for(
            network, backoff_base=0.1, backoff_cap=0.5, max_attempts=7, rng=random.Random(42)
        ):
            await trio.sleep_forever()
    expected = schedule(42, 0.1, 0.5, 6, start)
    assert network.attempts == expected
    assert trio.current_time() == expected[-1]  # gave up right after the seventh attempt
    assert failed.value.attempts == 7
    assert isinstance(failed.value.last_error, ConnectionRefusedError)
    gaps = [later - earlier for earlier, later in itertools.pairwise(expected)]
    assert max(gaps[3:]) <= 0.5  # capped from the fourth retry on (0.1 * 2**3 > 0.5)


def test_backoff_bounds_double_up_to_the_cap() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(0))
    assert [backoff.bound(retry) for retry in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.bound(10_000) == 1.0
    assert all(0.0 <= backoff.delay(retry) <= backoff.bound(retry) for retry in range(50))
    with pytest.raises(ValueError, match="cap must be >= base"):
        Backoff(1.0, 0.5)


async def test_close_1001_after_welcome_reconnects_at_once(autojump_clock: Any) -> None:
    async with open_hub(config()) as first, open_hub(config()) as second:
        network = Network(first)
        async with client_for(network, subscribe=["news"]) as client:
            await client.wait_connected()
            await trio.sleep(5.0 - trio.current_time())
            network.hub = second  # a rolling restart: the next node is up
            await first.drain()
            await wait_until(lambda: len(network.attempts) == 2 and client.connected)
            gaps = await take(client, 2)
        assert network.links[0].close_code == 1001
        assert network.attempts == [0.0, 5.0]
        # The second hub has new epochs: the client says so rather than pretend it resumed.
        assert {(g.stream, g.epoch_changed) for g in gaps if isinstance(g, Gap)} == {
            ("news", True),
            ("@alice", True),
        }


async def test_close_1013_backs_off_until_admitted(autojump_clock: Any) -> None:
    async with open_hub(config(limits={"max_connections": 1})) as hub:
        occupant = await connect_occupant(hub)
        network = Network(hub)
        async with client_for(
            network, backoff_base=0.1, backoff_cap=1.0, rng=random.Random(3)
        ) as client:
            await trio.sleep(2.0)
            await occupant.aclose()
            await client.wait_connected()
            statistics = client.statistics()
        times = schedule(3, 0.1, 1.0, 40)
        admitted = next(i for i, time in enumerate(times) if time > 2.0)
        assert network.attempts == times[: admitted + 1]
        assert [link.close_code for link in network.links[:-1]] == [1013] * admitted
        assert statistics.failed_attempts == admitted
        assert statistics.last_error is not None and "1013" in statistics.last_error


async def connect_occupant(hub: Hub) -> MemoryClient:
    """Take the hub's only connection slot."""
    occupant = await connect_memory(hub, "occupant")
    assert (await occupant.receive())["type"] == "welcome"
    return occupant


async def test_close_1008_raises_client_rejected(autojump_clock: Any) -> None:
    async with open_hub(config(server={"allow_anonymous": False})) as hub:
        network = Network(hub)

        async def consume() -> None:
            async with client_for(network, subscribe=["news"]) as client:
                async for _ in client:
                    pytest.fail("a rejected client received an event")

        with pytest.raises(ClientRejected) as rejected:
            await consume()
        assert rejected.value.code == 1008
        assert "anonymous" in rejected.value.reason
        assert network.attempts == [0.0]  # no retry: the answer would be the same


async def test_rejection_wakes_a_publish_waiting_outside_the_block(autojump_clock: Any) -> None:
    async with open_hub(config(server={"allow_anonymous": False})) as hub:
        network = Network(hub)
        outcome: list[BaseException] = []

        async def publish(client: Client) -> None:
            try:
                await client.publish("news", 1)
            except ClientError as error:
                outcome.append(error)

        with pytest.RaisesGroup(ClientRejected):  # the test's nursery wraps what the block raised
            async with trio.open_nursery() as nursery, client_for(network) as client:
                nursery.start_soon(publish, client)
                await trio.sleep_forever()
        assert len(outcome) == 1 and isinstance(outcome[0], ClientRejected)


async def test_a_silent_hub_is_left_after_heartbeat_and_timeout(autojump_clock: Any) -> None:
    async with open_hub(config(heartbeat={"interval": 2.0, "timeout": 100.0})) as hub:
        network = Network(hub)
        async with client_for(network, heartbeat_timeout=3.0, rng=random.Random(5)) as client:
            await client.wait_connected()
            await trio.sleep(6.5 - trio.current_time())
            network.link.stalled = True  # the hub's frames stop arriving
            await wait_until(lambda: len(network.attempts) == 2)
        pings = [time for time, frame in network.links[0].sent if frame == '{"type":"ping"}']
        assert pings == [2.0, 4.0, 6.0, 8.0, 10.0]  # every heartbeat seconds from the welcome
        # The last frame came at 6.0 (the pong): gone at 6.0 + 2.0 + 3.0, then a backoff.
        assert network.attempts == [0.0, 11.0 + random.Random(5).uniform(0.0, 0.1)]


async def test_connect_breaker_holds_attempts_while_open(autojump_clock: Any) -> None:
    network = Network(None)
    breaker = CircuitBreaker("hub", failure_threshold=2, open_timeout=5.0, max_open_timeout=5.0)
    with pytest.raises(ConnectFailed):
        async with client_for(
            network,
            backoff_base=0.01,
            backoff_cap=0.01,
            max_attempts=4,
            connect_breaker=breaker,
            rng=random.Random(0),
        ):
            await trio.sleep_forever()
    # Two quick failures open the breaker; each later attempt waits for its half-open probe.
    assert network.attempts[2] >= network.attempts[1] + 5.0
    assert network.attempts[3] >= network.attempts[2] + 5.0
    assert breaker.statistics().failures == 4


# --- gaps ----------------------------------------------------------------------------------------


async def partition(network: Network) -> Hub:
    """Cut the client off its hub; returns the hub, to be put back with ``network.hub = hub``."""
    hub = network.hub
    assert hub is not None
    network.hub = None
    network.link.cut()
    await trio.lowlevel.checkpoint()
    return hub


async def test_gap_when_history_was_trimmed_by_size(autojump_clock: Any) -> None:
    async with open_hub(config(history={"size": 5})) as hub:
        network = Network(hub)
        async with client_for(network, subscribe=["news"], backoff_cap=0.5) as client:
            await client.wait_connected()
            await hub.publish("news", 1)
            await hub.publish("news", 2)
            assert offsets(await take(client, 2)) == [1, 2]
            await partition(network)
            for n in range(3, 13):
                await hub.publish("news", n)
            network.hub = hub
            events = await take(client, 6)
        epoch = epoch_of(hub, "news")
        assert events[0] == Gap("news", 3, 7, False, epoch, epoch)
        assert offsets(events) == [8, 9, 10, 11, 12]
        assert client.statistics().gaps == 1


async def test_gap_when_history_expired_by_age(autojump_clock: Any) -> None:
    cleanup = {"interval": 1.0}
    async with open_hub(config(history={"ttl": 5.0}, cleanup=cleanup)) as hub:
        network = Network(hub)
        async with client_for(network, subscribe=["news"], backoff_cap=0.5) as client:
            await client.wait_connected()
            await hub.publish("news", 1)
            assert offsets(await take(client, 1)) == [1]
            await partition(network)
            for n in range(2, 5):
                await hub.publish("news", n)
            await trio.sleep(7.0)  # expired (ttl 5) but the stream not yet forgotten
            assert held(hub, "news") == 0
            network.hub = hub
            await client.wait_connected()
            await hub.publish("news", 5)
            # The idle personal stream was forgotten meanwhile (new epoch): a gap of its own.
            events = [e for e in await take(client, 3) if e.stream == "news"]
        epoch = epoch_of(hub, "news")
        assert events[0] == Gap("news", 2, 4, False, epoch, epoch)
        assert offsets(events) == [5]


async def test_gaps_when_the_epoch_changed(autojump_clock: Any) -> None:
    async with open_hub(config()) as first, open_hub(config(history={"size": 2})) as second:
        network = Network(first)
        async with client_for(network, subscribe=["news"], backoff_cap=0.5) as client:
            await client.wait_connected()
            for n in range(1, 4):
                await first.publish("news", n)
            assert offsets(await take(client, 3)) == [1, 2, 3]
            await partition(network)
            for n in range(1, 6):  # the restarted hub has kept only 4 and 5 of its new epoch
                await second.publish("news", n)
            network.hub = second
            events = [e for e in await take(client, 5) if e.stream == "news"]
        old = epoch_of(first, "news")
        new = epoch_of(second, "news")
        assert events[:2] == [
            Gap("news", 4, None, True, old, new),
            Gap("news", 1, 3, False, new, new),
        ]
        assert offsets(events) == [4, 5]
        assert all(e.epoch == new for e in events if isinstance(e, Message))


# --- duplicates, publishing ----------------------------------------------------------------------


async def test_duplicates_are_dropped(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        network = Network(hub, duplicate=True)
        async with client_for(network, subscribe=["news"]) as client:
            await client.wait_connected()
            for n in range(5):
                await hub.publish("news", n)
            events = await take(client, 5)
            await hub.send("alice", "last")
            (last,) = await take(client, 1)
            await trio.sleep(1.0)  # the copy of the last frame is read too
        assert offsets(events) == [1, 2, 3, 4, 5]
        assert isinstance(last, Message) and last.stream == "@alice"
        assert client.statistics().duplicates == 6


async def test_publish_is_retried_with_the_same_id_after_a_drop(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        network = Network(hub)
        async with client_for(network, subscribe=["news"]) as client:
            await client.wait_connected()
            network.link.cut_when = '"type":"published"'  # stored, but the answer is lost
            result = await client.publish("news", {"x": 1}, id="evt-1")
            (event,) = await take(client, 1)
            statistics = client.statistics()
        sent = [
            orjson.loads(frame)
            for link in network.links
            for _, frame in link.sent
            if '"type":"publish"' in frame
        ]
        assert len(sent) == 2 and sent[0] == sent[1]  # same id, same ref, same data
        assert result == PublishResult("news", 1, "evt-1", duplicate=True)
        assert isinstance(event, Message) and (event.offset, event.id) == (1, result.id)
        assert held(hub, "news") == 1
        assert (statistics.published, statistics.publish_retries) == (1, 1)


async def test_publish_waits_for_a_connection_and_keeps_the_callers_id(
    autojump_clock: Any,
) -> None:
    async with open_hub(config()) as hub:
        network = Network(None)
        async with client_for(network, backoff_cap=1.0) as client:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_later, 3.0, setattr, network, "hub", hub)
                result = await client.publish("news", {"x": 1}, id="k1")
                assert trio.current_time() >= 3.0
            again = await client.publish("news", {"x": 1}, id="k1")
        assert result == PublishResult("news", 1, "k1", duplicate=False)
        assert again == PublishResult("news", 1, "k1", duplicate=True)


async def _later(delay: float, function: Any, *args: Any) -> None:
    await trio.sleep(delay)
    function(*args)


async def test_refused_publish_raises(autojump_clock: Any) -> None:
    async with open_hub(config(server={"client_publish": False})) as hub:
        network = Network(hub)
        async with client_for(network) as client:
            with pytest.raises(PublishError) as refused:
                await client.publish("news", 1)
            assert refused.value.code == "forbidden"
            with pytest.raises(ValueError, match="topics only"):
                await client.publish("@bob", 1)
            with pytest.raises(ValueError, match="JSON"):
                await client.publish("news", object())
            with pytest.raises(PublishError, match="too_large"):
                await client.publish("news", "x" * 70_000)


# --- positions -----------------------------------------------------------------------------------


async def test_positions_are_persisted_and_used_by_a_new_client(
    autojump_clock: Any, tmp_path: Path
) -> None:
    path = tmp_path / "positions.json"
    async with open_hub(config()) as hub:
        network = Network(hub)
        store = JsonFilePositionStore(path)
        async with client_for(network, subscribe=["news"], positions=store) as client:
            await client.wait_connected()
            for n in range(1, 4):
                await hub.publish("news", n)
            assert offsets(await take(client, 3)) == [1, 2, 3]
        epoch = epoch_of(hub, "news")
        assert orjson.loads(path.read_bytes())["news"] == {"offset": 3, "epoch": epoch}
        for n in range(4, 6):
            await hub.publish("news", n)
        # A new process: a new store reads the file and the client resumes after 3.
        restarted = JsonFilePositionStore(path)
        async with client_for(network, subscribe=["news"], positions=restarted) as client:
            events = await take(client, 2)
            assert client.statistics().resumes == 2  # news and @alice
        assert offsets(events) == [4, 5] and all(isinstance(e, Message) for e in events)


async def test_a_position_is_saved_once_the_application_is_done_with_it(
    autojump_clock: Any,
) -> None:
    store = MemoryPositionStore()
    async with open_hub(config()) as hub:
        network = Network(hub)

        async def crash_while_working_on_the_second() -> None:
            async with client_for(network, subscribe=["news"], positions=store) as client:
                await client.wait_connected()
                for n in range(1, 4):
                    await hub.publish("news", n)
                await take(client, 2)
                assert store.positions["news"].offset == 1  # still working on 2
                raise RuntimeError("crash")

        with pytest.raises(RuntimeError, match="crash"):
            await crash_while_working_on_the_second()
        assert store.positions["news"].offset == 1  # 2 was never finished: it comes again


def test_json_position_store_rejects_a_file_that_is_not_positions(tmp_path: Path) -> None:
    path = tmp_path / "positions.json"
    path.write_text('{"news": {"offset": -1, "epoch": "e"}}')
    with pytest.raises(ValueError, match="does not hold wshub positions"):
        JsonFilePositionStore(path)
    path.write_text("not json")
    with pytest.raises(ValueError, match="does not hold wshub positions"):
        JsonFilePositionStore(path)
    assert JsonFilePositionStore(tmp_path / "missing.json").load() == {}


# --- statistics ----------------------------------------------------------------------------------


async def test_statistics_count_reconnects_resumes_gaps_and_messages(autojump_clock: Any) -> None:
    async with open_hub(config(history={"size": 2})) as hub:
        network = Network(hub)
        async with client_for(network, subscribe=["news"], backoff_cap=0.5) as client:
            await client.wait_connected()
            await hub.publish("news", 1)
            await take(client, 1)
            await partition(network)
            for n in range(2, 6):
                await hub.publish("news", n)
            network.hub = hub
            await take(client, 3)  # a gap (2..3), then 4 and 5
            statistics = client.statistics()
        assert statistics.connected
        assert statistics.reconnects == 1
        assert statistics.resumes == 1  # @alice resumed; news did not
        assert statistics.gaps == 1
        assert statistics.messages == 3
        assert statistics.duplicates == 0
        assert statistics.attempts == statistics.failed_attempts + 2
        assert statistics.last_error is not None


# --- command-line helpers ------------------------------------------------------------------------


async def test_tail_prints_json_lines_from_an_offset(autojump_clock: Any) -> None:
    async with open_hub(config(history={"size": 3})) as hub:
        for n in range(1, 6):
            await hub.publish("news", n)
        network = Network(hub)
        out = io.StringIO()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_tail, network, out, 3)
            nursery.start_soon(_tail, network, second_out := io.StringIO(), 0)
            await wait_until(lambda: out.getvalue().count("\n") == 2)
            await wait_until(lambda: second_out.getvalue().count("\n") == 4)
            nursery.cancel_scope.cancel()
        lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
        assert [(line["type"], line["offset"], line["data"]) for line in lines] == [
            ("message", 4, 4),
            ("message", 5, 5),
        ]
        gap, *rest = [orjson.loads(line) for line in second_out.getvalue().splitlines()]
        assert gap["type"] == "gap" and (gap["missing_from"], gap["missing_to"]) == (1, 2)
        assert [line["offset"] for line in rest] == [3, 4, 5]


async def _tail(network: Network, out: io.StringIO, from_offset: int) -> None:
    await tail(URL, "tailer", ["news"], from_offset=from_offset, out=out, connect=network.connect)


async def test_publish_http_posts_and_returns_the_answer() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = orjson.loads(request.content)
        return httpx.Response(200, json={**body, "offset": 7, "duplicate": False})

    result = await publish_http(
        "http://hub.test/",
        "news",
        {"x": 1},
        id="k1",
        api_key="s3cret",
        transport=httpx.MockTransport(answer),
    )
    assert result == {
        "stream": "news",
        "data": {"x": 1},
        "id": "k1",
        "offset": 7,
        "duplicate": False,
    }
    assert str(seen[0].url) == "http://hub.test/api/publish"
    assert seen[0].headers["authorization"] == "Bearer s3cret"


async def test_publish_http_raises_on_refusal_and_when_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "unauthorized", "message": "bad api key"})

    with pytest.raises(PublishHTTPError, match="401: bad api key") as refused:
        await publish_http("http://hub.test", "news", 1, transport=httpx.MockTransport(refuse))
    assert refused.value.status == 401

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(PublishHTTPError, match="cannot reach the hub") as failed:
        await publish_http("http://hub.test", "news", 1, transport=httpx.MockTransport(unreachable))
    assert failed.value.status is None


async def test_invalid_arguments_are_refused() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"client_id": "no spaces"}, "client_id"),
        ({"subscribe": ["bad name"]}, "invalid stream"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"heartbeat_timeout": 0}, "heartbeat_timeout"),
        ({"backoff_base": 1.0, "backoff_cap": 0.5}, "cap must be >= base"),
    ]
    for options, match in cases:
        client_id = options.pop("client_id", "alice")
        with pytest.raises(ValueError, match=match):
            async with open_client(URL, client_id, **options):
                pytest.fail("an invalid client was opened")


# --- the tracker, sans-IO ------------------------------------------------------------------------


def status(epoch: str, offset: int, first: int | None) -> StreamStatus:
    """A stream status as the hub reports it (``recovered`` is not read by the tracker)."""
    return StreamStatus(epoch, offset, first, recovered=False)


@pytest.mark.parametrize(
    ("held", "reported", "gaps", "position"),
    [
        (None, status("E", 7, 3), [], Position(7, "E")),  # first subscription: from now on
        (Position(5, "E"), status("E", 7, 3), [], Position(5, "E")),  # 6 and 7 are replayed
        (Position(7, "E"), status("E", 7, None), [], Position(7, "E")),  # up to date, trimmed
        (Position(2, "E"), status("E", 9, 6), [Gap("s", 3, 5, False, "E", "E")], None),
        (Position(2, "E"), status("E", 9, None), [Gap("s", 3, 9, False, "E", "E")], None),
        (Position(4, "E"), status("F", 3, 1), [Gap("s", 5, None, True, "E", "F")], None),
        (
            Position(4, "E"),
            status("F", 9, 7),
            [Gap("s", 5, None, True, "E", "F"), Gap("s", 1, 6, False, "F", "F")],
            None,
        ),
        (Position(9, "E"), status("E", 3, 1), [Gap("s", 10, None, True, "E", "E")], None),
        (Position(4, ANY_EPOCH), status("E", 9, 2), [], Position(4, "E")),
        (Position(4, ANY_EPOCH), status("E", 9, 8), [Gap("s", 5, 7, False, "E", "E")], None),
    ],
)
def test_tracker_reports_exactly_the_missing_offsets(
    held: Position | None, reported: StreamStatus, gaps: list[Gap], position: Position | None
) -> None:
    tracker = StreamTracker({} if held is None else {"s": held})
    assert tracker.on_status("s", reported) == gaps
    for gap in gaps:
        tracker.advance(gap)
    expected = position or Position(gaps[-1].position.offset, reported.epoch)
    assert tracker.positions["s"] == expected


def test_tracker_ignores_a_stream_it_left_until_its_next_status() -> None:
    tracker = StreamTracker()
    assert tracker.on_status("s", status("E", 4, 1)) == []
    assert tracker.on_message(protocol.Message("s", 5, "m5", 5, 0)) == [
        Message("s", 5, "m5", 5, 0, "E")
    ]
    tracker.advance(Message("s", 5, "m5", 5, 0, "E"))
    tracker.leave("s")  # unsubscribed: 6 and 7 are dropped on the way
    assert tracker.on_message(protocol.Message("s", 8, "m8", 8, 0)) is None  # not a gap
    assert tracker.on_status("s", status("E", 8, 1)) == []  # subscribed again: replay 6..8
    assert tracker.on_message(protocol.Message("s", 5, "m5", 5, 0)) == []  # a duplicate
    assert tracker.on_message(protocol.Message("s", 6, "m6", 6, 0)) == [
        Message("s", 6, "m6", 6, 0, "E")
    ]


_operations = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 4)),
        st.tuples(st.just("receive"), st.integers(1, 4)),
        st.tuples(st.just("reconnect"), st.just(0)),
        st.tuples(st.just("restart"), st.integers(1, 6)),
        st.tuples(st.just("stale"), st.integers(0, 10)),
    ),
    max_size=40,
)


@given(size=st.integers(1, 6), operations=_operations)
def test_tracker_delivers_each_offset_once_or_reports_it(
    size: int, operations: list[tuple[str, int]]
) -> None:
    """Against the real history: every offset is delivered once, in order, or named by a gap."""
    history = StreamHistory("s", size, 1e9, clock=lambda: 0.0)
    tracker = StreamTracker()
    in_flight: list[StoredMessage] = []  # on the wire to the client on this connection
    seen: list[protocol.Message] = []
    events: list[Message | Gap] = []

    def deliver(delivered: list[Gap | Message]) -> None:
        for event in delivered:
            tracker.advance(event)
            events.append(event)

    def connect() -> None:
        tracker.begin_connection()
        replay = history.read_from(tracker.positions.get("s"))
        deliver(
            list(
                tracker.on_status(
                    "s", StreamStatus(replay.epoch, replay.offset, replay.first, replay.recovered)
                )
            )
        )
        in_flight[:] = replay.messages

    def receive(count: int) -> None:
        for stored in in_flight[:count]:
            message = protocol.Message(
                stored.stream, stored.offset, stored.id, stored.data, stored.ts
            )
            seen.append(message)
            deliver(tracker.on_message(message) or [])
        del in_flight[:count]

    connect()
    start = Position(history.last_offset, history.epoch)
    for operation, amount in operations:
        if operation == "publish":
            for _ in range(amount):
                offset = history.next_offset
                stored = StoredMessage("s", offset, f"m{offset}", offset, 0, "", 0.0)
                history.append(stored)
                in_flight.append(stored)
        elif operation == "receive":
            receive(amount)
        elif operation == "reconnect":
            connect()  # what was in flight is lost
        elif operation == "restart":
            history = StreamHistory("s", amount, 1e9, clock=lambda: 0.0)
            in_flight.clear()
        elif operation == "stale" and seen:
            deliver(tracker.on_message(seen[amount % len(seen)]) or [])  # a late copy
    connect()
    receive(len(in_flight))

    # Walk the events: each epoch's offsets are accounted for exactly once, in order.
    expected = {start.epoch: start.offset + 1}
    epoch = start.epoch
    for event in events:
        if isinstance(event, Gap) and event.epoch_changed:
            assert event.old_epoch == epoch and event.missing_from == expected[epoch]
            epoch = event.new_epoch
            expected[epoch] = 1
        elif isinstance(event, Gap):
            assert event.missing_to is not None
            assert event.missing_from == expected[epoch] <= event.missing_to
            expected[epoch] = event.missing_to + 1
        else:
            assert (event.epoch, event.offset) == (epoch, expected[epoch])
            expected[epoch] += 1
    assert epoch == history.epoch
    assert expected[epoch] == history.last_offset + 1  # caught up: nothing missing unreported


async def test_reconnects_after_a_drop_at_an_exact_time(autojump_clock: Any) -> None:
    # The example of docs/clients.md.
    async with open_hub(HubConfig.testing()) as hub:
        network = Network(hub)
        async with open_client(
            URL, "alice", subscribe=["news"], connect=network.connect, rng=random.Random(1)
        ) as client:
            await client.wait_connected()
            network.link.cut()  # a TCP drop
            await hub.publish("news", {"n": 1})
            event = await client.__anext__()  # replayed after the reconnect
            assert network.attempts == [0.0, random.Random(1).uniform(0, 0.1)]
        assert isinstance(event, Message) and event.data == {"n": 1}


async def test_an_unavailable_subscription_is_retried_on_the_next_connection(
    autojump_clock: Any,
) -> None:
    async with open_hub(config(history={"max_subscribed_streams": 1})) as hub:
        # The hub holds its maximum of topics that exist only by subscription.
        grabber = await connect_memory(hub, "grabber", subscribe={"other": None})
        await grabber.receive()
        network = Network(hub)
        async with client_for(network, subscribe=["news"], backoff_cap=0.5) as client:
            await wait_until(lambda: len(network.attempts) >= 3)
            assert not client.connected or "news" not in hub.histories
            hub.histories.remove("other")
            await wait_until(lambda: "news" in hub.histories)
            await client.wait_connected()
            await hub.publish("news", "finally")
            (event,) = await take(client, 1)
        assert isinstance(event, Message) and event.data == "finally"
        assert client.statistics().last_error is not None
