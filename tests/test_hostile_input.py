"""Hostile input against the hub (in memory, under the mock clock) and the HTTP publish endpoint.

Every bad frame gets the PROTOCOL.md answer (an ``error`` frame or a close code), the
connection that sent it is the only one affected, and nothing is logged at ERROR (any client
could otherwise flood the log). The same inputs over real sockets, on both servers, are in
``test_hostile_sockets.py``.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wshub.core.config import HubConfig
from wshub.hub.hub import open_hub
from wshub.servers.asgi import create_app
from wshub.testing import connect_memory

KEY = "s3cret-key"
AUTH = {"authorization": f"Bearer {KEY}"}
DEPTH_MESSAGE = "a frame nests deeper than limits.max_depth (32 levels)"


def config(**sections: dict[str, Any]) -> HubConfig:
    """The testing preset with some keys changed."""
    return HubConfig.testing().merged(sections)


def nested(depth: int, leaf: Any = 0) -> Any:
    """``leaf`` inside ``depth`` levels of alternating arrays and objects."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --------------------------------------------------------------------------- deep nesting


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "bogus", "ref": nested(300)},
        {"type": "publish", "stream": "news", "data": nested(300), "ref": "r1"},
        {"type": "publish", "stream": "news", "data": 1, "ref": nested(300)},
        {"type": "subscribe", "stream": "news", "position": nested(300)},
    ],
)
async def test_a_deeply_nested_frame_gets_bad_request_and_the_connection_stays_up(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture, frame: dict[str, Any]
) -> None:
    async with open_hub(config()) as hub:
        client = await connect_memory(hub, "alice")
        await client.receive()
        await client.send(json.dumps(frame))  # ~620 bytes: orjson cannot even write it
        error = await client.receive()
        assert (error["type"], error["code"], error["message"]) == (
            "error",
            "bad_request",
            DEPTH_MESSAGE,
        )
        assert error.get("ref") == ("r1" if frame.get("ref") == "r1" else None)
        await client.send({"type": "ping"})
        assert await client.receive() == {"type": "pong"}
        assert len(hub.histories.get_or_create("news")) == 0
        await client.aclose()
    assert errors_logged(caplog) == []


async def test_a_deeply_nested_hello_closes_4000_naming_the_limit(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_hub(config()) as hub:
        client = await connect_memory(hub)
        hello = {"type": "hello", "client_id": "alice", "ref": nested(300)}
        await client.send(json.dumps(hello))
        with trio.fail_after(1):
            assert await client.wait_closed() == (4000, f"bad hello: {DEPTH_MESSAGE}")
    assert errors_logged(caplog) == []


async def test_max_depth_is_configurable(autojump_clock: Any) -> None:
    async with open_hub(config(limits={"max_depth": 5})) as hub:
        client = await connect_memory(hub, "alice")
        await client.receive()
        await client.send({"type": "publish", "stream": "news", "data": nested(4)})
        assert (await client.receive())["type"] == "published"
        await client.send({"type": "publish", "stream": "news", "data": nested(5)})
        error = await client.receive()
        assert error["message"] == "a frame nests deeper than limits.max_depth (5 levels)"
        await client.aclose()


async def test_a_rate_limited_deep_frame_is_answered_without_its_ref(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(limits={"burst": 1, "rate": 0.001, "rate_limit_strikes": 10})
    async with open_hub(cfg) as hub:
        client = await connect_memory(hub, "alice")
        await client.receive()
        await client.send({"type": "ping"})
        assert await client.receive() == {"type": "pong"}
        await client.send(json.dumps({"type": "bogus", "ref": nested(300)}))
        error = await client.receive()
        assert error["code"] == "rate_limited" and "ref" not in error
        await client.aclose()
    assert errors_logged(caplog) == []


# --------------------------------------------------------------------------- subscriptions


async def test_subscriptions_past_max_subscriptions_get_limit_exceeded(autojump_clock: Any) -> None:
    async with open_hub(config(limits={"max_subscriptions": 3})) as hub:
        client = await connect_memory(hub, "alice", subscribe={"a": None})
        welcome = await client.receive()
        assert set(welcome["streams"]) == {"@alice", "a"}  # the personal stream is not counted
        for stream in ("b", "c", "a"):  # subscribing again to "a" takes no second place
            await client.send({"type": "subscribe", "stream": stream})
            assert (await client.receive())["type"] == "subscribed"
        await client.send({"type": "subscribe", "stream": "d"})
        assert await client.receive() == {
            "type": "error",
            "code": "limit_exceeded",
            "message": "already subscribed to 3 streams, the most limits.max_subscriptions "
            "allows on one connection",
        }
        await client.send({"type": "unsubscribe", "stream": "a"})
        assert (await client.receive())["type"] == "unsubscribed"
        await client.send({"type": "subscribe", "stream": "d"})
        assert (await client.receive())["type"] == "subscribed"
        assert client.close_code is None
        await client.aclose()


@pytest.mark.parametrize("kind", ["forbidden", "allowed"])
async def test_a_hello_listing_1100_streams_gets_its_welcome_and_bounded_errors(
    autojump_clock: Any, kind: str
) -> None:
    # Each refused stream used to queue its own error before the welcome was even sent: 1,100
    # errors overflowed the queue (4002) and the client never learnt why.
    names = [f"@other-{i}" if kind == "forbidden" else f"topic-{i}" for i in range(1100)]
    async with open_hub(config()) as hub:
        limit = hub.config.limits.max_subscriptions
        assert limit <= hub.config.limits.max_queue < 1100  # one error each would overflow
        client = await connect_memory(hub, "alice", subscribe=dict.fromkeys(names))
        welcome = await client.receive()
        assert welcome["type"] == "welcome"
        await client.send({"type": "ping"})
        answers = await client.receive_until("pong")
        errors = answers[:-1]
        assert {e["type"] for e in errors} == {"error"}
        if kind == "forbidden":
            assert set(welcome["streams"]) == {"@alice"}
            assert [e["code"] for e in errors] == ["forbidden"] * limit + ["limit_exceeded"]
        else:
            assert set(welcome["streams"]) == {"@alice", *names[:limit]}
            assert [e["code"] for e in errors] == ["limit_exceeded"]
        assert errors[-1]["message"] == (
            f"hello.subscribe lists 1100 streams, more than limits.max_subscriptions ({limit}): "
            f"the last {1100 - limit} were not subscribed"
        )
        assert client.close_code is None
        await client.aclose()


async def test_subscribing_alone_cannot_crowd_out_publishing_and_personal_streams(
    autojump_clock: Any,
) -> None:
    cfg = config(
        history={"max_streams": 10, "max_subscribed_streams": 5},
        limits={"max_subscriptions": 50},
    )
    async with open_hub(cfg) as hub:
        attacker = await connect_memory(hub, "attacker")
        await attacker.receive()
        for i in range(20):
            await attacker.send({"type": "subscribe", "stream": f"grab-{i}"})
        answers = [await attacker.receive() for _ in range(20)]
        assert [a["type"] for a in answers] == ["subscribed"] * 5 + ["error"] * 15
        assert answers[-1]["code"] == "unavailable"
        assert "history.max_subscribed_streams" in answers[-1]["message"]
        # A new client still gets its personal stream, and publishing still creates streams,
        # including one of the attacker's (which moves to the main pool on its first message).
        for i in range(5):
            bob = await connect_memory(hub, f"bob-{i}", subscribe={"grab-0": None})
            assert set((await bob.receive())["streams"]) == {f"@bob-{i}", "grab-0"}
        assert (await hub.publish("fresh", {"n": 1})).offset == 1
        assert (await hub.publish("grab-1", {"n": 1})).offset == 1
        assert (await attacker.receive())["stream"] == "grab-1"
        stats = hub.histories.statistics()
        assert (stats.streams, stats.subscribed_only) == (1 + 5 + 5 + 1, 4)
        await attacker.aclose()


# --------------------------------------------------------------------------- queued bytes

MIB = 1024 * 1024


async def test_a_few_huge_messages_cut_a_client_that_stops_reading_long_before_max_queue(
    autojump_clock: Any,
) -> None:
    cfg = config(limits={"max_queue": 100, "max_queue_bytes": MIB})
    async with open_hub(cfg) as hub:
        stuck = await connect_memory(hub, "stuck", subscribe={"news": None}, buffer=0)
        reader = await connect_memory(hub, "reader", subscribe={"news": None})
        await reader.receive()
        await trio.testing.wait_all_tasks_blocked()  # stuck's writer waits on its welcome
        big = "x" * 300_000
        for n in range(1, 4):
            await hub.publish("news", [n, big])
            assert hub.metrics.queue_overflows == 0, n
        await hub.publish("news", [4, big])  # the 4th would make 1.2 MB queued: over the bound
        assert hub.metrics.queue_overflows == 1
        assert hub.metrics.dropped["slow_consumer"] == 4
        assert [(await reader.receive())["data"][0] for _ in range(4)] == [1, 2, 3, 4]
        assert (await stuck.receive())["type"] == "welcome"  # the frame in flight, then 4002
        assert (await stuck.wait_closed())[0] == 4002
        await reader.aclose()


async def test_one_message_bigger_than_the_byte_bound_still_reaches_a_reader(
    autojump_clock: Any,
) -> None:
    async with open_hub(config(limits={"max_queue_bytes": 1024})) as hub:
        reader = await connect_memory(hub, "reader", subscribe={"news": None})
        await reader.receive()
        for n in range(3):
            await hub.publish("news", {"n": n, "pad": "y" * 5000})
            assert (await reader.receive())["data"]["n"] == n  # an empty queue takes any frame
        assert hub.metrics.queue_overflows == 0
        await reader.aclose()


async def test_big_replies_count_towards_the_byte_bound(autojump_clock: Any) -> None:
    # A client that publishes with a 60 KB ref and never reads fills its queue with echoes.
    cfg = config(limits={"max_queue": 100, "max_queue_bytes": 256 * 1024, "burst": 50})
    async with open_hub(cfg) as hub:
        client = await connect_memory(hub, "echo", buffer=0)
        await trio.testing.wait_all_tasks_blocked()
        ref = "r" * 60_000
        for n in range(10):
            await client.send({"type": "publish", "stream": "news", "data": n, "ref": ref})
        await trio.testing.wait_all_tasks_blocked()
        assert hub.metrics.queue_overflows == 1
        assert len(hub.histories.get_or_create("news")) == 5  # 4 echoes queued, the 5th cut
        await client.aclose()


# --------------------------------------------------------------------------- the admin key


async def test_the_hello_token_is_compared_with_the_api_key_in_constant_time(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Constant time cannot be timed reliably in a test; what can be pinned is that the
    # comparison is hmac.compare_digest's (as on the HTTP side), on bytes, so any token works.
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(given: bytes, expected: bytes) -> bool:
        compared.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    cfg = config(admin={"api_key": "s3cret"}, server={"allow_anonymous": False})
    async with open_hub(cfg) as hub:
        admin = await connect_memory(hub, "ops", token="s3cret", subscribe={"$sys.metrics": None})
        welcome = await admin.receive()
        assert welcome["type"] == "welcome" and "$sys.metrics" in welcome["streams"]
        for token in ("s3crex", "x3cret", "clé", ""):
            refused = await connect_memory(hub, "eve", token=token)
            assert (await refused.wait_closed())[0] == 1008
        await admin.aclose()
    assert compared[0] == (b"s3cret", b"s3cret")
    assert [given for given, _ in compared[1:]] == [b"s3crex", b"x3cret", "clé".encode(), b""]


# --------------------------------------------------------------------------- HTTP publish


async def http_publish(app: Any, body: bytes) -> tuple[int, Any]:
    """POST /api/publish to the ASGI app with ``body``; the status and the JSON answer."""
    sent: list[dict[str, Any]] = []
    chunks = [body]

    async def receive() -> dict[str, Any]:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(), "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/publish",
        "query_string": b"",
        "headers": [(b"authorization", AUTH["authorization"].encode())],
    }
    await app(scope, receive, send)
    return sent[0]["status"], orjson.loads(sent[1]["body"])


@pytest.mark.parametrize(
    "body",
    [
        {"stream": "news", "data": nested(300)},
        {"stream": "news", "data": 1, "ref": nested(300)},
        {"stream": "news", "data": 1, "id": nested(300)},
    ],
)
async def test_http_publish_of_deep_json_is_400_naming_the_limit(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture, body: dict[str, Any]
) -> None:
    cfg = HubConfig.development().merged({"admin": {"api_key": KEY}, "metrics": {"log": False}})
    async with open_hub(cfg) as hub:
        app = create_app(hub=hub)
        status, answer = await http_publish(app, json.dumps(body).encode())
        assert (status, answer) == (
            400,
            {"error": "the body nests deeper than limits.max_depth (32 levels)"},
        )
        assert len(hub.histories.get_or_create("news")) == 0
    assert errors_logged(caplog) == []


# --------------------------------------------------------------------------- fuzzing

#: JSON text a hostile client might send: deep nesting, huge and tiny numbers, odd strings.
HUGE_NUMBERS = st.sampled_from(
    ["1e400", "-1e400", "1e-400", "18446744073709551616", "-9223372036854775809", "1" * 400]
) | st.integers().map(str)
NESTING = st.integers(min_value=0, max_value=400).map(lambda depth: "[" * depth + "]" * depth)
FIELDS = st.one_of(
    HUGE_NUMBERS,
    NESTING,
    st.integers(min_value=0, max_value=300).map(lambda depth: json.dumps(nested(depth))),
    st.text(max_size=20).map(json.dumps),
)


@st.composite
def hostile_frames(draw: st.DrawFn) -> str:
    """A frame-shaped JSON object whose fields hold hostile values."""
    kind = draw(st.sampled_from(["publish", "subscribe", "ping", "bogus", "hello"]))
    # Subscribed to a stream nobody publishes to, so every frame gets exactly one answer.
    stream = "quiet" if kind == "subscribe" else "news"
    fields = {"type": json.dumps(kind), "stream": json.dumps(stream)}
    for name in draw(st.lists(st.sampled_from(["data", "ref", "id", "position"]), unique=True)):
        fields[name] = draw(FIELDS)
    return "{" + ",".join(f'"{name}":{value}' for name, value in fields.items()) + "}"


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(hostile_frames(), min_size=1, max_size=8))
async def test_hostile_frames_get_answers_and_never_break_the_connection(
    frames: list[str],
) -> None:
    # Each frame gets exactly one answer (an error, published, subscribed or pong), in order,
    # and the connection stays up: a ping after them is still answered.
    logged: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = logged.append  # type: ignore[method-assign]
    logging.getLogger("wshub").addHandler(handler)
    try:
        with trio.fail_after(10):
            async with open_hub(config(limits={"burst": 100})) as hub:
                client = await connect_memory(hub, "fuzz")
                await client.receive()
                for frame in frames:
                    await client.send(frame)
                    answer = await client.receive()
                    assert answer["type"] in {"error", "published", "subscribed", "pong"}, answer
                await client.send({"type": "ping"})
                assert await client.receive() == {"type": "pong"}
                await client.aclose()
    finally:
        logging.getLogger("wshub").removeHandler(handler)
    assert logged == []
