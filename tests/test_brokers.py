"""Both brokers keep one contract: offsets, de-duplication, conflicts, resume, delivery.

The Redis broker runs against a real redis-server (the ``redis`` fixture) on the real clock;
waits are for events (a delivery, a state), never for a guessed amount of time.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

from wshub.brokers.base import Broker, BrokerUnavailable, StaleRead, publish_key
from wshub.brokers.memory import MemoryBroker
from wshub.brokers.redis import RedisBroker
from wshub.core.breaker_registry import BreakerRegistry
from wshub.core.config import ConfigError, HubConfig
from wshub.core.dedup import IdConflict
from wshub.core.events import Position
from wshub.core.history import Replay, StoredMessage
from wshub.core.protocol import encode_message
from wshub.hub.hub import Hub

WAIT = 10.0  # seconds a test waits for a delivery before failing; never reached when right


class Sink:
    """Records what a broker delivers, and wakes waiters."""

    def __init__(self) -> None:
        self.delivered: list[StoredMessage] = []
        self.lost: list[str] = []
        self._changed = trio.Event()

    def deliver(self, message: StoredMessage) -> None:
        self.delivered.append(message)
        self._changed.set()

    def lose(self, stream: str) -> None:
        self.lost.append(stream)
        self._changed.set()

    def offsets(self, stream: str = "news") -> list[int]:
        return [m.offset for m in self.delivered if m.stream == stream]

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        with trio.fail_after(WAIT):
            while not condition():
                self._changed = trio.Event()
                await self._changed.wait()


def make_broker(
    kind: str,
    url: str = "",
    node: str = "n",
    *,
    timeout: float = 2.0,
    meta_ttl: float | None = None,
    **settings: Any,
) -> Broker:
    config = HubConfig.testing()
    values: dict[str, Any] = {
        "history_size": 5,
        "history_ttl": 60.0,
        "dedup_window": 10.0,
        "content_ids": True,
        **settings,
    }
    if kind == "memory":
        return MemoryBroker(max_streams=100, dedup_max_entries=1000, node=node, **values)
    return RedisBroker(
        url=url,
        prefix="test",
        timeout=timeout,
        pool_size=4,
        meta_ttl=values["history_ttl"] + 1 if meta_ttl is None else meta_ttl,
        breakers=BreakerRegistry(config.breaker),
        node=node,
        **values,
    )


@pytest.fixture(params=["memory", "redis"])
def broker_factory(request: pytest.FixtureRequest) -> Callable[..., Broker]:
    """Makes brokers of one kind; all the Redis ones share one fresh redis-server."""
    kind: str = request.param
    url = request.getfixturevalue("redis").url if kind == "redis" else ""
    return lambda **settings: make_broker(kind, url, **settings)


@asynccontextmanager
async def running(broker: Broker) -> AsyncIterator[Sink]:
    sink = Sink()
    async with broker.open(sink):
        if isinstance(broker, RedisBroker):
            with trio.fail_after(WAIT):
                await broker.wait_connected()
        yield sink


async def join(broker: Broker, stream: str, position: Position | None) -> Replay:
    return broker.join_nowait(await broker.prepare(stream, position))


async def test_offsets_are_contiguous_and_frames_are_the_encoded_message(
    broker_factory: Callable[..., Broker],
) -> None:
    broker = broker_factory()
    async with running(broker) as sink:
        await join(broker, "news", None)
        results = [await broker.publish("news", {"n": n}, publisher="", id=None) for n in range(3)]
        assert [r.offset for r in results] == [1, 2, 3]
        assert not any(r.duplicate for r in results)
        await sink.wait_for(lambda: len(sink.delivered) == 3)
        for message in sink.delivered:
            data = {"n": message.offset - 1}
            expected = encode_message("news", message.offset, message.id, data, message.ts)
            assert message.frame == expected


async def test_a_repeated_publish_answers_the_original_offset(
    broker_factory: Callable[..., Broker],
) -> None:
    broker = broker_factory()
    async with running(broker) as sink:
        await join(broker, "news", None)
        first = await broker.publish("news", {"a": 1}, publisher="", id="evt-1")
        await broker.publish("news", {"b": 2}, publisher="", id=None)
        again = await broker.publish("news", {"a": 1}, publisher="", id="evt-1")
        assert (again.offset, again.id, again.duplicate) == (first.offset, "evt-1", True)
        by_content = await broker.publish("news", {"b": 2}, publisher="", id=None)
        assert (by_content.offset, by_content.duplicate) == (2, True)
        repeat = publish_key("news", {"a": 1}, "evt-1", content_ids=True)
        assert await broker.find_duplicate("news", publisher="", key=repeat) == again
        new = publish_key("news", {"z": 0}, "new", content_ids=True)
        assert await broker.find_duplicate("news", publisher="", key=new) is None
        await sink.wait_for(lambda: len(sink.delivered) == 2)
        assert sink.offsets() == [1, 2]


async def test_the_same_id_with_other_content_is_a_conflict(
    broker_factory: Callable[..., Broker],
) -> None:
    broker = broker_factory()
    async with running(broker):
        await broker.publish("news", {"a": 1}, publisher="alice", id="k")
        with pytest.raises(IdConflict) as caught:
            await broker.publish("news", {"a": 2}, publisher="alice", id="k")
        assert (caught.value.stream, caught.value.id, caught.value.offset) == ("news", "k", 1)
        changed = publish_key("news", {"a": 2}, "k", content_ids=True)
        with pytest.raises(IdConflict):
            await broker.find_duplicate("news", publisher="alice", key=changed)
        # Scoped per publisher and per stream: neither is a conflict nor a duplicate.
        other = await broker.publish("news", {"a": 2}, publisher="bob", id="k")
        elsewhere = await broker.publish("sport", {"a": 2}, publisher="alice", id="k")
        assert (other.offset, other.duplicate) == (2, False)
        assert (elsewhere.offset, elsewhere.duplicate) == (1, False)


async def test_without_content_ids_a_publish_without_id_is_never_deduplicated(
    broker_factory: Callable[..., Broker],
) -> None:
    broker = broker_factory(content_ids=False)
    async with running(broker):
        offsets = [(await broker.publish("news", 7, publisher="", id=None)).offset for _ in "ab"]
        assert offsets == [1, 2]
        again = publish_key("news", 7, None, content_ids=False)
        assert await broker.find_duplicate("news", publisher="", key=again) is None
        with_id = [await broker.publish("news", 7, publisher="", id="x") for _ in "ab"]
        assert [(r.offset, r.duplicate) for r in with_id] == [(3, False), (3, True)]


async def test_data_that_is_not_json_is_a_value_error(
    broker_factory: Callable[..., Broker],
) -> None:
    broker = broker_factory()
    async with running(broker):
        with pytest.raises(ValueError, match="JSON"):
            await broker.publish("news", {1: object()}, publisher="", id=None)


async def test_resume_in_every_case_of_the_protocol(
    broker_factory: Callable[..., Broker],
) -> None:
    broker = broker_factory(history_size=5)
    async with running(broker) as sink:
        now = await join(broker, "news", None)
        assert (now.offset, now.first, now.recovered, now.messages) == (0, None, True, [])
        for n in range(1, 10):  # offsets 1..9, history holds 5..9
            await broker.publish("news", n, publisher="", id=None)
        await sink.wait_for(lambda: len(sink.delivered) == 9)
        epoch = now.epoch
        exact = await join(broker, "news", Position(6, epoch))
        assert (exact.epoch, exact.offset, exact.first, exact.recovered) == (epoch, 9, 5, True)
        assert [m.offset for m in exact.messages] == [7, 8, 9]
        current = await join(broker, "news", Position(9, epoch))
        assert (current.recovered, current.messages) == (True, [])
        gap = await join(broker, "news", Position(2, epoch))
        assert (gap.recovered, gap.first) == (False, 5)  # missed 3 and 4
        assert [m.offset for m in gap.messages] == [5, 6, 7, 8, 9]
        other = await join(broker, "news", Position(40, "another-epoch"))
        assert other.recovered is False
        assert [m.offset for m in other.messages] == [5, 6, 7, 8, 9]
        beyond = await join(broker, "news", Position(12, epoch))
        assert beyond.recovered is False
        fresh = await join(broker, "quiet", Position(0, "unknown"))
        assert (fresh.offset, fresh.first, fresh.recovered) == (0, None, False)


async def test_the_first_connect_reads_everything_history_holds(
    broker_factory: Callable[..., Broker],
) -> None:
    broker = broker_factory(history_size=3)
    async with running(broker):
        for n in range(2):
            await broker.publish("@alice", n, publisher="", id=None)
        start = await join(broker, "@alice", None)
        everything = await join(broker, "@alice", Position(0, start.epoch))
        assert everything.recovered is True
        assert [m.offset for m in everything.messages] == [1, 2]


async def test_history_older_than_its_ttl_is_no_longer_replayed(
    broker_factory: Callable[..., Broker],
) -> None:
    """``history.ttl`` bounds history by age (Redis trims by its own clock); the epoch and the
    offsets go on while the stream has a subscriber. Real time: a late check only finds the
    messages older still."""
    broker = broker_factory(history_ttl=1.0, meta_ttl=60.0)
    async with running(broker):
        epoch = (await join(broker, "news", None)).epoch
        for n in (1, 2):
            await broker.publish("news", n, publisher="", id=None)
        await trio.sleep(1.5)
        broker.sweep()
        late = await join(broker, "news", Position(0, epoch))
        assert (late.epoch, late.offset, late.first, late.recovered) == (epoch, 2, None, False)
        assert late.messages == []
        assert (await broker.publish("news", 3, publisher="", id=None)).offset == 3


# ---------------------------------------------------------------------- the redis extra

# A hub on the memory broker, then the names of the coredis modules the process imported.
MEMORY_HUB = """
import sys, trio, wshub
async def main():
    async with wshub.open_hub(wshub.HubConfig.testing()) as hub:
        await hub.publish("news", 1)
trio.run(main)
print(sorted(name for name in sys.modules if name.split(".")[0] == "coredis"))
"""


def test_a_memory_hub_never_imports_coredis() -> None:
    """The ``redis`` extra is imported only when the broker is Redis (a fresh interpreter)."""
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_HUB], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_the_redis_broker_without_coredis_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "coredis", None)  # what an install without the extra finds
    with pytest.raises(ConfigError, match=r"broker.kind = 'redis' needs .* 'wshub\[redis\]'"):
        Hub(HubConfig.testing().merged({"broker": {"kind": "redis"}}))


# ---------------------------------------------------------------------- Redis only


async def test_two_nodes_share_offsets_history_and_dedup(redis: Any) -> None:
    a, b = make_broker("redis", redis.url, node="a"), make_broker("redis", redis.url, node="b")
    async with running(a) as sink_a, running(b) as sink_b:
        at_a = await join(a, "news", None)
        at_b = await join(b, "news", None)
        assert at_a.epoch == at_b.epoch
        for n in range(4):
            publisher = a if n % 2 else b
            await publisher.publish("news", n, publisher="", id=f"k{n}")
        again = await b.publish("news", 1, publisher="", id="k1")
        assert (again.offset, again.duplicate) == (2, True)
        await sink_a.wait_for(lambda: len(sink_a.delivered) == 4)
        await sink_b.wait_for(lambda: len(sink_b.delivered) == 4)
        assert sink_a.offsets() == sink_b.offsets() == [1, 2, 3, 4]
        assert [m.frame for m in sink_a.delivered] == [m.frame for m in sink_b.delivered]


async def test_joins_while_another_node_publishes_meet_delivery_exactly(redis: Any) -> None:
    """Subscribe first, read history, merge: between a join's replay and what the node delivers
    after it, nothing is lost or repeated, whenever the join lands: the first join of a node
    (which subscribes the channel) and later ones (which find it subscribed). A node that only
    joined once needed no fill at all: pub/sub carried everything after its read."""
    total = 300
    rng = random.Random(20261206)
    publisher = make_broker("redis", redis.url, node="publisher", history_size=total)
    joiners = [make_broker("redis", redis.url, node=f"n{n}", history_size=total) for n in "abcd"]
    joins: list[tuple[Sink, int, Position | None, Replay]] = []
    published = 0
    waiting: list[tuple[int, trio.Event]] = []

    async def until_published(count: int) -> None:
        if published < count:
            waiting.append((count, event := trio.Event()))
            await event.wait()

    with trio.fail_after(3 * WAIT):
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(running(publisher))
            sinks = [await stack.enter_async_context(running(node)) for node in joiners]
            epoch = (await join(publisher, "news", None)).epoch

            async def publish_all() -> None:
                nonlocal published
                for n in range(1, total + 1):
                    await publisher.publish("news", n, publisher="", id=None)
                    published = n
                    for count, event in waiting:
                        if n >= count:
                            event.set()

            async def keep_joining(node: Broker, sink: Sink, first: int, once: bool) -> None:
                next_join = first  # each node's first join (which subscribes) lands elsewhere
                while next_join <= total:
                    await until_published(next_join)
                    seen = sink.offsets()[-1] if sink.delivered else 0
                    position = Position(rng.randint(0, seen), epoch) if rng.random() < 0.8 else None
                    while True:  # as the hub does: a join whose read fell behind reads again
                        prepared = await node.prepare("news", position)
                        try:
                            replay = node.join_nowait(prepared)
                            break
                        except StaleRead:
                            pass
                    joins.append((sink, len(sink.delivered), position, replay))  # no checkpoint
                    next_join = total + 1 if once else published + rng.randint(5, 40)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish_all)
                for number, (node, sink) in enumerate(zip(joiners, sinks, strict=True)):
                    nursery.start_soon(keep_joining, node, sink, 1 + number * 37, number >= 2)
            for sink in sinks:
                await sink.wait_for(lambda last=sink: last.offsets()[-1:] == [total])
    assert len(joins) >= 12
    assert [node.gap_fills for node in joiners[2:]] == [0, 0]  # the nodes that joined once
    assert len({replay.offset for _, _, _, replay in joins}) >= 10  # they landed all along
    for sink, delivered_before, position, replay in joins:
        after = [m.offset for m in sink.delivered[delivered_before:]]
        assert after == list(range(replay.offset + 1, total + 1))
        replayed = [m.offset for m in replay.messages]
        if position is None:
            assert replayed == []
        else:
            assert replay.recovered is True
            assert replayed == list(range(position.offset + 1, replay.offset + 1))


async def test_concurrent_publishes_share_round_trips_and_keep_their_answers(
    redis: Any,
) -> None:
    broker = make_broker("redis", redis.url, history_size=500)
    assert isinstance(broker, RedisBroker)
    answers: dict[int, Any] = {}
    async with running(broker) as sink:
        await join(broker, "news", None)
        redis.command("SCRIPT", "FLUSH")  # the pipelines must load the script again

        async def publisher(task: int) -> None:
            for n in range(10):
                value = task * 100 + n
                answers[value] = await broker.publish("news", value, publisher="", id=f"{value}")

        async with trio.open_nursery() as nursery:
            for task in range(20):
                nursery.start_soon(publisher, task)
        offsets = sorted(answer.offset for answer in answers.values())
        assert offsets == list(range(1, 201))  # each its own offset, none lost
        assert broker.batcher.batches < 200  # and they shared round trips
        assert ("publish", "error") not in broker.calls
        await sink.wait_for(lambda: len(sink.delivered) == 200)
        by_offset = {m.offset: m.frame for m in sink.delivered}
        for value, answer in answers.items():  # each answer names its own message
            assert f'"data":{value},' in by_offset[answer.offset]
        again = await broker.publish("news", 5, publisher="", id="5")
        assert (again.offset, again.duplicate) == (answers[5].offset, True)


async def test_a_restarted_node_keeps_every_epoch(redis: Any) -> None:
    first = make_broker("redis", redis.url)
    async with running(first):
        before = await join(first, "news", None)
        await first.publish("news", "x", publisher="", id=None)
    second = make_broker("redis", redis.url)
    async with running(second):
        after = await join(second, "news", Position(0, before.epoch))
        assert (after.epoch, after.offset, after.recovered) == (before.epoch, 1, True)
        assert [m.offset for m in after.messages] == [1]


async def test_an_idle_stream_keeps_its_epoch_while_served_and_loses_it_after(
    redis: Any,
) -> None:
    """Nodes refresh the epoch of the streams they serve at every sweep, so an idle stream with
    subscribers keeps it past its expiry; once nobody serves it, it expires, and the next
    join starts a new epoch (PROTOCOL.md: history lost, ``recovered: false``)."""
    broker = make_broker("redis", redis.url, history_ttl=1.0, meta_ttl=2.0)
    async with running(broker):
        epoch = (await join(broker, "news", None)).epoch
        await broker.publish("news", 1, publisher="", id=None)
        for _ in range(6):  # 3 s of sweeps every 0.5 s: past the 2 s expiry, refreshed
            await trio.sleep(0.5)
            broker.sweep()
        kept = await join(broker, "news", Position(1, epoch))
        assert (kept.epoch, kept.offset, kept.first, kept.recovered) == (epoch, 1, None, True)
        for _ in range(2):  # both joins leave: this node serves the stream no more
            broker.leave("news")
        await trio.sleep(2.5)  # past the expiry, with nothing refreshing it
        broker.sweep()
        lost = await join(broker, "news", Position(1, epoch))
        assert lost.epoch != epoch and (lost.offset, lost.recovered) == (0, False)


async def test_a_killed_pubsub_connection_is_filled_from_history(redis: Any) -> None:
    broker = make_broker("redis", redis.url)
    publisher = make_broker("redis", redis.url, node="publisher")
    async with running(broker) as sink, running(publisher):
        await join(broker, "news", None)
        await publisher.publish("news", 1, publisher="", id=None)
        await sink.wait_for(lambda: sink.offsets() == [1])
        assert redis.command("CLIENT", "KILL", "TYPE", "pubsub") == b":1\r\n"
        # Published while this node's pub/sub connection is down (or not yet back):
        for n in range(2, 6):
            await publisher.publish("news", n, publisher="", id=None)
        await sink.wait_for(lambda: len(sink.offsets()) == 5)
        assert sink.offsets() == [1, 2, 3, 4, 5]
        assert sink.lost == []
        assert isinstance(broker, RedisBroker)
        assert broker.statistics()["calls"]["connect"]["ok"] == 2  # it did reconnect


async def test_redis_losing_the_stream_hands_it_back_to_the_hub(redis: Any) -> None:
    broker = make_broker("redis", redis.url)
    async with running(broker) as sink:
        before = await join(broker, "news", None)
        await broker.publish("news", 1, publisher="", id=None)
        await sink.wait_for(lambda: sink.offsets() == [1])
        redis.command("FLUSHALL")
        await broker.publish("news", 2, publisher="", id=None)  # offset 1 of a new epoch
        await sink.wait_for(lambda: sink.lost == ["news"])
        after = await join(broker, "news", Position(1, before.epoch))
        assert after.epoch != before.epoch
        assert (after.offset, after.recovered) == (1, False)
        assert [m.offset for m in after.messages] == [1]


def quoted(word: str) -> str:
    """``word`` as one argument of Redis's inline protocol (JSON holds quotes)."""
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def test_a_gap_history_no_longer_covers_hands_the_stream_back(redis: Any) -> None:
    """Pub/sub missed offsets that history has trimmed since: the node cannot fill the gap, so
    its subscribers are handed back to resume, and a resume tells the exact gap."""
    broker = make_broker("redis", redis.url)  # history holds 5
    assert isinstance(broker, RedisBroker)
    async with running(broker) as sink:
        epoch = (await join(broker, "news", None)).epoch
        for n in range(1, 4):
            await broker.publish("news", n, publisher="", id=None)
        await sink.wait_for(lambda: sink.offsets() == [1, 2, 3])
        # Offsets 4..12 stored but never seen on pub/sub (as while this node's pub/sub
        # connection was down), and trimmed to the newest five:
        for offset in range(4, 13):
            ts = str(time.time_ns() // 1_000_000)
            frame = encode_message("news", offset, f"m{offset}", offset, int(ts))
            fields = ["t", ts, "f", quoted(frame), "i", f"m{offset}"]
            reply = redis.command("XADD", "test:{news}:h", "MAXLEN", "5", f"{offset}-0", *fields)
            assert reply == f"${len(str(offset)) + 2}\r\n{offset}-0\r\n".encode()
        redis.command("HSET", "test:{news}:m", "s", "12")
        assert (await broker.publish("news", 13, publisher="", id=None)).offset == 13
        await sink.wait_for(lambda: sink.lost == ["news"])  # 13 came, 4..8 are gone
        assert sink.offsets() == [1, 2, 3] and (broker.gap_fills, broker.lost) == (1, 1)
        again = await join(broker, "news", Position(3, epoch))
        assert (again.epoch, again.offset, again.first, again.recovered) == (epoch, 13, 9, False)
        assert [m.offset for m in again.messages] == [9, 10, 11, 12, 13]
        await broker.publish("news", 14, publisher="", id=None)  # the stream goes on here
        await sink.wait_for(lambda: sink.offsets() == [1, 2, 3, 14])


async def test_redis_going_back_in_time_hands_the_stream_back(redis: Any) -> None:
    """A failover that lost writes reassigns offsets: never delivered as if nothing happened."""
    broker = make_broker("redis", redis.url)
    async with running(broker) as sink:
        await join(broker, "news", None)
        for n in range(1, 4):
            await broker.publish("news", n, publisher="", id=None)
        await sink.wait_for(lambda: sink.offsets() == [1, 2, 3])
        # What a promoted replica that missed offsets 2 and 3 looks like:
        redis.command("HSET", "test:{news}:m", "s", "1")
        redis.command("DEL", "test:{news}:h")
        again = await broker.publish("news", "new 2", publisher="", id=None)
        assert again.offset == 2  # offset 2 again, other content
        await sink.wait_for(lambda: sink.lost == ["news"])
        assert sink.offsets() == [1, 2, 3]  # the rewritten offset 2 was not delivered


async def test_history_ahead_of_its_offset_starts_a_new_epoch(redis: Any) -> None:
    broker = make_broker("redis", redis.url)
    async with running(broker):
        before = await join(broker, "news", None)
        for n in range(1, 4):
            await broker.publish("news", n, publisher="", id=None)
        redis.command("HSET", "test:{news}:m", "s", "1")  # the history holds 1..3 already
        result = await broker.publish("news", 4, publisher="", id=None)
        assert result.offset == 1
        after = await join(broker, "news", Position(0, before.epoch))
        assert after.epoch != before.epoch and after.recovered is False
        assert [m.offset for m in after.messages] == [1]


async def test_a_slow_redis_times_out_and_a_retry_gets_the_one_offset(redis: Any) -> None:
    """A call Redis does not answer within ``broker.timeout`` fails as ``timeout``; it may
    still be applied later, and a retry with the same id finds it. No late reply is ever
    taken for the answer to another call."""
    broker = make_broker("redis", redis.url, timeout=1.0, history_size=10)
    assert isinstance(broker, RedisBroker)
    async with running(broker) as sink:
        epoch = (await join(broker, "news", None)).epoch
        assert (await broker.publish("news", 1, publisher="", id="one")).offset == 1
        assert redis.command("CLIENT", "PAUSE", "60000", "WRITE") == b"+OK\r\n"
        try:
            with pytest.raises(BrokerUnavailable, match=r"did not answer publish within 1s"):
                await broker.publish("news", 2, publisher="", id="two")
            assert broker.calls[("publish", "timeout")] == 1
        finally:
            assert redis.command("CLIENT", "UNPAUSE") == b"+OK\r\n"
        again = await broker.publish("news", 2, publisher="", id="two")
        assert again.offset == 2  # stored once, whether the paused call or the retry did it
        for n in range(3, 7):  # every later answer is its own call's
            result = await broker.publish("news", n, publisher="", id=f"n{n}")
            assert (result.offset, result.id, result.duplicate) == (n, f"n{n}", False)
        await sink.wait_for(lambda: len(sink.delivered) == 6)
        assert sink.offsets() == [1, 2, 3, 4, 5, 6]
        replay = await join(broker, "news", Position(0, epoch))
        assert [(m.offset, m.id) for m in replay.messages] == [
            (1, "one"), (2, "two"), (3, "n3"), (4, "n4"), (5, "n5"), (6, "n6")
        ]  # fmt: skip


async def test_redis_down_is_unavailable_then_recovers(redis: Any) -> None:
    broker = make_broker("redis", redis.url)
    assert isinstance(broker, RedisBroker)
    async with running(broker) as sink:
        await join(broker, "news", None)
        await broker.publish("news", 1, publisher="", id=None)
        redis.kill()
        for _ in range(3):  # enough failures to open the testing preset's breaker
            with pytest.raises(BrokerUnavailable):
                await broker.publish("news", 2, publisher="", id=None)
        assert broker.unavailable_reason() == "broker unavailable"
        with pytest.raises(BrokerUnavailable):
            await broker.prepare("other", None)
        redis.start()
        with trio.fail_after(WAIT):
            while True:
                try:
                    await broker.publish("news", 2, publisher="", id=None)
                    break
                except BrokerUnavailable:
                    await trio.sleep(0.05)
        # Redis came back empty (no persistence): the stream is lost and restarted.
        await sink.wait_for(lambda: "news" in sink.lost)
        with trio.fail_after(WAIT):
            await broker.wait_connected()
        assert broker.unavailable_reason() is None  # the successful probe closed the breaker
        assert broker.statistics()["calls"]["publish"]["error"] >= 1
