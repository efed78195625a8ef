"""Publishes that wait together reach Redis as one script call per stream, one round trip.

Against a real redis-server. Every publish of a test starts in one nursery without a
checkpoint before it is queued, so all of them are queued before the batcher runs, and the
test checks that they did go as one batch (``batcher.batches``) and as one ``EVALSHA`` per
stream (Redis's own ``INFO commandstats``) before judging the answers. Submission order is
recorded as each task queues its publish; answers must follow it.
"""

from __future__ import annotations

import re
from typing import Any

import trio

from redis_server import RedisServer
from test_brokers import join, make_broker, running
from wshub.brokers.base import BrokerUnavailable
from wshub.brokers.redis import RedisBroker
from wshub.core.dedup import IdConflict
from wshub.core.events import Position, PublishResult


def redis_broker(redis: RedisServer, node: str, **settings: Any) -> RedisBroker:
    broker = make_broker("redis", redis.url, node=node, history_size=500, **settings)
    assert isinstance(broker, RedisBroker)
    return broker


def script_calls(redis: RedisServer) -> int:
    """EVALSHA calls Redis ran since the last ``CONFIG RESETSTAT``, none of them failed."""
    stats = redis.command("INFO", "commandstats").decode()
    found = re.search(r"cmdstat_evalsha:calls=(\d+),.*failed_calls=(\d+)", stats)
    assert found is None or found.group(2) == "0"  # e.g. NOSCRIPT, which would be retried
    return int(found.group(1)) if found else 0


def offsets(answers: list[PublishResult | Exception]) -> list[int]:
    """The offsets of ``answers``, every one of which must be a stored publish."""
    assert all(isinstance(a, PublishResult) and not a.duplicate for a in answers), answers
    return [a.offset for a in answers if isinstance(a, PublishResult)]


async def load_scripts(broker: RedisBroker) -> None:
    """Publish once elsewhere, so Redis knows the publish script before a count starts."""
    await broker.publish("warm-up", 0, publisher="p", id=None)


async def publish_together(
    broker: RedisBroker, publishes: list[tuple[str, Any, str | None]]
) -> tuple[list[tuple[str, Any, str | None]], list[PublishResult | Exception]]:
    """Start every ``(stream, data, id)`` publish at once; returns submission order, answers.

    Answers are in submission order: a result, or the exception the publish raised.
    """
    submitted: list[tuple[str, Any, str | None]] = []
    answers: dict[int, PublishResult | Exception] = {}
    batches = broker.batcher.batches

    async def one(publish: tuple[str, Any, str | None]) -> None:
        stream, data, id = publish
        place = len(submitted)
        submitted.append(publish)  # no checkpoint from here until it is queued
        try:
            answers[place] = await broker.publish(stream, data, publisher="p", id=id)
        except (IdConflict, BrokerUnavailable) as error:
            answers[place] = error

    async with trio.open_nursery() as nursery:
        for publish in publishes:
            nursery.start_soon(one, publish)
    assert broker.batcher.batches == batches + 1  # they did go together
    return submitted, [answers[place] for place in range(len(submitted))]


async def test_one_stream_batch_is_one_script_call_with_gapless_ordered_offsets(
    redis: RedisServer,
) -> None:
    publisher, follower = redis_broker(redis, "a"), redis_broker(redis, "b")
    async with running(publisher), running(follower) as sink:
        await join(follower, "news", None)
        await load_scripts(publisher)
        redis.command("CONFIG", "RESETSTAT")
        submitted, answers = await publish_together(
            publisher, [("news", n, f"id{n}") for n in range(60)]
        )
        assert script_calls(redis) == 1
        assert offsets(answers) == list(range(1, 61))  # in the order they were queued
        # The other node gets every message once, in order, each the one its answer names.
        await sink.wait_for(lambda: len(sink.delivered) == 60)
        assert sink.offsets() == list(range(1, 61))
        for (_, data, id), message in zip(submitted, sink.delivered, strict=True):
            assert (message.id, f'"data":{data},' in message.frame) == (id, True)


async def test_a_batch_over_several_streams_is_one_call_per_stream_in_one_round_trip(
    redis: RedisServer,
) -> None:
    streams = ["s1", "s2", "s3"]
    publisher, follower = redis_broker(redis, "a"), redis_broker(redis, "b")
    async with running(publisher), running(follower) as sink:
        for stream in streams:
            await join(follower, stream, None)
        await load_scripts(publisher)
        redis.command("CONFIG", "RESETSTAT")
        submitted, answers = await publish_together(
            publisher, [(streams[n % 3], n, None) for n in range(45)]
        )
        assert script_calls(redis) == 3
        await sink.wait_for(lambda: len(sink.delivered) == 45)
        for stream in streams:
            mine = [
                (data, a) for (s, data, _), a in zip(submitted, answers, strict=True) if s == stream
            ]
            assert offsets([a for _, a in mine]) == list(range(1, 16))
            delivered = [m for m in sink.delivered if m.stream == stream]
            assert [m.offset for m in delivered] == list(range(1, 16))
            for (data, _), message in zip(mine, delivered, strict=True):
                assert f'"data":{data},' in message.frame


async def test_repeats_and_conflicts_inside_one_batch_answer_as_if_sent_one_by_one(
    redis: RedisServer,
) -> None:
    broker = redis_broker(redis, "a")
    async with running(broker) as sink:
        await join(broker, "news", None)
        await broker.publish("news", "old", publisher="p", id="early")  # offset 1
        redis.command("CONFIG", "RESETSTAT")
        submitted, answers = await publish_together(
            broker,
            [
                ("news", "a", "k"),
                ("news", "a", "k"),  # the same publish twice in one batch
                ("news", "b", "k"),  # the same id with other content
                ("news", "old", "early"),  # a repeat of a publish of an earlier batch
                ("news", "x", "other"),
                ("other", "a", "k"),  # the same id on another stream is its own
            ],
        )
        assert script_calls(redis) == 2
        # Exactly what publishing them one by one, in the order they were queued, answers:
        earlier = {("news", "early"): (1, "old")}
        assert [outcome(answer) for answer in answers] == one_by_one(submitted, earlier)
        await sink.wait_for(lambda: len(sink.delivered) == 3)
        assert sink.offsets() == [1, 2, 3]  # each stored message delivered once


def outcome(answer: PublishResult | Exception) -> tuple[str, int]:
    if isinstance(answer, IdConflict):
        return ("conflict", answer.offset)
    assert isinstance(answer, PublishResult)
    return ("duplicate" if answer.duplicate else "ok", answer.offset)


def one_by_one(
    publishes: list[tuple[str, Any, str | None]], earlier: dict[tuple[str, str], tuple[int, Any]]
) -> list[tuple[str, int]]:
    """The answers of ``publishes`` sent one at a time, after ``earlier`` publishes.

    ``earlier`` maps (stream, id) to (offset, data) of what was published before.
    """
    seen: dict[tuple[str, str | None], tuple[int, Any]] = dict(earlier)
    tops: dict[str, int] = {}
    for (stream, _), (offset, _) in earlier.items():
        tops[stream] = max(tops.get(stream, 0), offset)
    expected = []
    for stream, data, id in publishes:
        if (stream, id) in seen:
            offset, content = seen[stream, id]
            expected.append(("duplicate" if content == data else "conflict", offset))
        else:
            tops[stream] = tops.get(stream, 0) + 1
            seen[stream, id] = (tops[stream], data)
            expected.append(("ok", tops[stream]))
    return expected


async def test_every_caller_of_a_failing_batch_gets_broker_unavailable(
    redis: RedisServer,
) -> None:
    """Pins what main did too: one call failing fails the whole round trip's callers."""
    broker = redis_broker(redis, "a")
    async with running(broker):
        redis.command("SET", "test:{broken}:m", "not-a-hash")  # its script fails: WRONGTYPE
        publishes = [("broken", n, None) for n in range(3)] + [("news", n, None) for n in range(3)]
        _, answers = await publish_together(broker, publishes)
        assert all(isinstance(answer, BrokerUnavailable) for answer in answers)
        _, answers = await publish_together(broker, [("broken", n, None) for n in range(3)])
        assert all(isinstance(answer, BrokerUnavailable) for answer in answers)
        assert broker.calls[("publish", "error")] == 2


async def test_a_publish_the_script_refuses_fails_alone_and_takes_no_offset(
    redis: RedisServer,
) -> None:
    broker = redis_broker(redis, "a")
    async with running(broker) as sink:
        await join(broker, "news", None)
        redis.command("SET", "test:{news}:d:1:p:bad", "not-a-hash")  # its dedup record
        submitted, answers = await publish_together(
            broker, [("news", n, "bad" if n == 2 else f"id{n}") for n in range(5)]
        )
        refused = [a for (_, _, id), a in zip(submitted, answers, strict=True) if id == "bad"]
        assert len(refused) == 1 and isinstance(refused[0], BrokerUnavailable)
        assert "WRONGTYPE" in str(refused[0])
        stored = [a for a in answers if a is not refused[0]]
        assert offsets(stored) == [1, 2, 3, 4]
        await sink.wait_for(lambda: len(sink.delivered) == 4)
        assert sink.offsets() == [1, 2, 3, 4]


async def test_a_lost_history_met_inside_a_batch_starts_one_new_epoch(redis: RedisServer) -> None:
    """Pins the single script's rule for history ahead of the offset, mid-batch."""
    broker = redis_broker(redis, "a")
    async with running(broker):
        before = await join(broker, "news", None)
        for n in range(3):
            await broker.publish("news", n, publisher="p", id=None)
        redis.command("HSET", "test:{news}:m", "s", "1")  # history holds 1..3 already
        _, answers = await publish_together(broker, [("news", n, None) for n in range(10, 14)])
        assert offsets(answers) == [1, 2, 3, 4]
        after = await join(broker, "news", None)
        assert after.epoch != before.epoch and after.offset == 4
        replay = await join(broker, "news", Position(0, after.epoch))
        assert replay.recovered and [m.offset for m in replay.messages] == [1, 2, 3, 4]


async def test_a_batch_over_several_streams_loads_a_script_redis_forgot(
    redis: RedisServer,
) -> None:
    broker = redis_broker(redis, "a")
    async with running(broker):
        await load_scripts(broker)
        redis.command("SCRIPT", "FLUSH")  # as after a restart: EVALSHA answers NOSCRIPT
        submitted, answers = await publish_together(
            broker, [(stream, n, None) for n in range(3) for stream in ("s1", "s2")]
        )
        for stream in ("s1", "s2"):
            mine = [a for (s, _, _), a in zip(submitted, answers, strict=True) if s == stream]
            assert offsets(mine) == [1, 2, 3]
        assert ("publish", "error") not in broker.calls


def test_each_script_carries_only_the_helpers_it_calls() -> None:
    """Redis compiles every script whole: a helper a script never calls is dead weight there."""
    import inspect

    from wshub.brokers import lua

    for name in lua.__all__:
        script: str = getattr(lua, name)
        defined = re.findall(r"local function (\w+)\(", script)
        for helper in defined:
            calls = len(re.findall(rf"\b{helper}\(", script)) - 1  # less its definition
            assert calls >= 1, f"{name} defines {helper}() but never calls it"
    # ... and each helper's Lua text is written once in the module, not once per script.
    source = inspect.getsource(lua)
    for helper in re.findall(r"local function (\w+)\(", source):
        assert source.count(f"local function {helper}(") == 1, helper
