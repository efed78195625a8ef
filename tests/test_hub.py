"""The hub over in-memory connections, under the mock clock: exact behaviour, exact times."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

import wshub
from wshub.core.config import HubConfig
from wshub.hub.hooks import Identity, PublishRejected
from wshub.hub.hub import open_hub
from wshub.testing import connect_memory


def config(**sections: dict[str, Any]) -> HubConfig:
    """The testing preset with some keys changed."""
    return HubConfig.testing().merged(sections)


async def test_hello_is_welcomed_with_the_personal_stream(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        client = await connect_memory(hub, "alice")
        welcome = await client.receive()
        assert welcome["type"] == "welcome"
        assert welcome["client_id"] == "alice"
        assert welcome["heartbeat"] == hub.config.heartbeat.interval
        assert set(welcome["streams"]) == {"@alice"}
        personal = welcome["streams"]["@alice"]
        assert personal["offset"] == 0 and personal["recovered"] is True
        assert "first" not in personal
        await client.aclose()


async def test_published_message_reaches_subscribers_in_order(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        alice = await connect_memory(hub, "alice", subscribe={"news": None})
        bob = await connect_memory(hub, "bob", subscribe={"news": None})
        for client in (alice, bob):
            assert (await client.receive())["type"] == "welcome"
        results = [await hub.publish("news", {"n": n}) for n in range(5)]
        assert [r.offset for r in results] == [1, 2, 3, 4, 5]
        for client in (alice, bob):
            got = [await client.receive() for _ in range(5)]
            assert [m["offset"] for m in got] == [1, 2, 3, 4, 5]
            assert [m["data"] for m in got] == [{"n": n} for n in range(5)]
            assert all(m["type"] == "message" and m["stream"] == "news" for m in got)
            assert [m["id"] for m in got] == [r.id for r in results]
        await alice.aclose()
        await bob.aclose()


async def test_send_reaches_only_the_personal_stream(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        alice = await connect_memory(hub, "alice")
        bob = await connect_memory(hub, "bob")
        await alice.receive()
        await bob.receive()
        result = await hub.send("alice", {"note": "direct"})
        assert result.stream == "@alice" and result.offset == 1
        message = await alice.receive()
        assert message["stream"] == "@alice" and message["data"] == {"note": "direct"}
        with trio.move_on_after(1):
            await bob.receive()
            pytest.fail("bob received alice's direct message")
        await alice.aclose()
        await bob.aclose()


async def test_duplicate_publish_returns_the_original_offset(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        first = await hub.publish("news", {"title": "hi"}, id="evt-1")
        again = await hub.publish("news", {"title": "hi"}, id="evt-1")
        assert first == wshub.PublishResult("news", 1, "evt-1", False)
        assert again == wshub.PublishResult("news", 1, "evt-1", True)
        implicit = await hub.publish("news", {"b": 1, "a": 2})
        reordered = await hub.publish("news", {"a": 2, "b": 1})
        assert implicit.id == wshub.message_id("news", {"a": 2, "b": 1})
        assert reordered == attrs.evolve(implicit, duplicate=True)
        assert hub.metrics.deduplicated == 2
        assert hub.metrics.published == 2


async def test_the_same_id_with_other_data_raises_id_conflict(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        await hub.publish("news", {"title": "hi"}, id="evt-1")
        with pytest.raises(wshub.IdConflict) as caught:
            await hub.publish("news", {"title": "changed"}, id="evt-1")
        assert (caught.value.stream, caught.value.id, caught.value.offset) == ("news", "evt-1", 1)
        assert hub.metrics.published == 1
        assert hub.metrics.deduplicated == 0


async def test_duplicate_window_ends_exactly_at_dedup_window(autojump_clock: Any) -> None:
    async with open_hub(config(cleanup={"interval": 1000.0})) as hub:
        window = hub.config.dedup.window
        await hub.publish("news", 1, id="k")
        await trio.sleep(window - 0.001)
        assert (await hub.publish("news", 1, id="k")).duplicate
        await trio.sleep(0.001)
        assert trio.current_time() == pytest.approx(window)
        again = await hub.publish("news", 1, id="k")
        assert not again.duplicate and again.offset == 2


async def test_publish_rejects_bad_arguments(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        with pytest.raises(ValueError, match="not a topic or personal stream"):
            await hub.publish("$sys.metrics", {})
        with pytest.raises(ValueError, match="not a topic or personal stream"):
            await hub.publish("bad name!", {})
        with pytest.raises(ValueError, match="id must be a string"):
            await hub.publish("news", {}, id="")
        with pytest.raises(ValueError, match="JSON"):
            await hub.publish("news", {"x": object()})
        assert hub.metrics.published == 0


async def test_hello_timeout_closes_with_4000_at_exactly_hello_timeout(
    autojump_clock: Any,
) -> None:
    async with open_hub(config()) as hub:
        client = await connect_memory(hub)  # no hello
        code, reason = await client.wait_closed()
        assert code == 4000
        assert "no hello" in reason
        assert trio.current_time() == hub.config.limits.hello_timeout
        assert hub.metrics.connections_failed == 1


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"type": "ping"}', "first frame must be a hello"),
        ("not json", "bad hello"),
        ('{"type": "hello", "client_id": "bad id!"}', "client_id"),
    ],
)
async def test_bad_hello_closes_with_4000(autojump_clock: Any, frame: str, reason: str) -> None:
    async with open_hub(config()) as hub:
        client = await connect_memory(hub)
        await client.send(frame)
        code, text = await client.wait_closed()
        assert code == 4000
        assert reason in text
        assert trio.current_time() == 0


async def test_heartbeat_closes_with_4004_at_interval_plus_timeout(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        client = await connect_memory(hub, "alice", answer_pings=False)
        await client.receive()
        code, _ = await client.wait_closed()
        assert code == 4004
        heartbeat = hub.config.heartbeat
        assert trio.current_time() == heartbeat.interval + heartbeat.timeout


async def test_heartbeat_keeps_a_live_client(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        client = await connect_memory(hub, "alice")
        await client.receive()
        await trio.sleep(100)
        await client.send({"type": "ping"})
        assert await client.receive() == {"type": "pong"}
        await client.aclose()


async def test_heartbeat_pings_only_after_an_interval_of_silence(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:  # heartbeat interval 2, timeout 1
        client = await connect_memory(hub, "alice")
        await client.receive()
        await trio.sleep_until(4.5)
        assert client.pings == [2, 4]  # answered at once, so the silence restarts at each
        await client.send({"type": "ping"})  # any frame from the client counts as life
        assert await client.receive() == {"type": "pong"}
        await trio.sleep_until(9)
        assert client.pings == [2, 4, 6.5, 8.5]
        assert client.close_code is None
        await client.aclose()


async def test_a_client_busy_sending_is_never_pinged(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        client = await connect_memory(hub, "alice", answer_pings=False)
        await client.receive()
        for _ in range(10):
            await trio.sleep(1.5)
            await client.send({"type": "ping"})
            assert await client.receive() == {"type": "pong"}
        assert client.pings == []
        assert client.close_code is None
        await trio.sleep_until(15 + 2 + 1)  # then silence: a ping at 2 s, unanswered for 1 s
        await trio.testing.wait_all_tasks_blocked()
        assert client.pings == [15 + 2]
        assert client.close_code == 4004


async def test_frames_waiting_behind_a_slow_hook_count_as_life(autojump_clock: Any) -> None:
    async def slow(client_id: str, stream: str, data: Any) -> Any:
        await trio.sleep(0.9)  # under call_timeout (1 s)
        return data

    async with open_hub(config(), on_publish=slow) as hub:  # heartbeat interval 2, timeout 1
        client = await connect_memory(hub, "alice", answer_pings=False)
        await client.receive()
        for n in range(8):  # each publish waits 0.9 s for the hook; they queue up behind it
            await client.send({"type": "publish", "stream": "news", "data": n, "ref": n})
        answers = [await client.receive() for _ in range(8)]
        assert [answer["ref"] for answer in answers] == list(range(8))
        assert trio.current_time() == pytest.approx(8 * 0.9)  # 7.2 s with no wait for a frame
        assert client.pings == []  # so no ping, and no 4004 for the silence
        # then a real silence: a ping 2 s later, unanswered, and 4004 after 1 s more
        assert (await client.wait_closed())[0] == 4004
        assert client.pings == [pytest.approx(7.2 + 2)]
        assert trio.current_time() == pytest.approx(7.2 + 2 + 1)


async def test_binary_frame_closes_with_1003(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        client = await connect_memory(hub, "alice")
        await client.receive()
        await client.send(b"\x00\x01")
        assert (await client.wait_closed())[0] == 1003


async def test_bad_frames_get_errors_and_the_connection_stays_up(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        client = await connect_memory(hub, "alice")
        await client.receive()
        await client.send("{nope")
        error = await client.receive()
        assert error["type"] == "error" and error["code"] == "bad_request"
        await client.send({"type": "teleport", "ref": 7})
        error = await client.receive()
        assert error["code"] == "unknown_type" and error["ref"] == 7
        await client.send({"type": "publish", "stream": 5, "data": 1, "ref": "r"})
        error = await client.receive()
        assert error["code"] == "bad_request" and error["ref"] == "r"
        await client.send({"type": "subscribe", "stream": "@bob"})
        assert (await client.receive())["code"] == "forbidden"
        await client.send({"type": "subscribe", "stream": "$sys.other"})
        assert (await client.receive())["code"] == "forbidden"
        await client.send({"type": "unsubscribe", "stream": "@alice"})
        assert (await client.receive())["code"] == "forbidden"
        await client.send({"type": "hello", "client_id": "alice"})
        assert (await client.receive())["code"] == "bad_request"
        await client.send({"type": "ping"})
        assert await client.receive() == {"type": "pong"}
        await client.aclose()


async def test_subscribe_and_unsubscribe(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        client = await connect_memory(hub, "alice")
        await client.receive()
        await client.send({"type": "subscribe", "stream": "news"})
        subscribed = await client.receive()
        assert subscribed["type"] == "subscribed" and subscribed["stream"] == "news"
        assert subscribed["offset"] == 0 and subscribed["recovered"] is True
        await hub.publish("news", "one")
        assert (await client.receive())["data"] == "one"
        await client.send({"type": "unsubscribe", "stream": "news"})
        assert await client.receive() == {"type": "unsubscribed", "stream": "news"}
        await hub.publish("news", "two")
        await client.send({"type": "ping"})
        assert await client.receive() == {"type": "pong"}
        await client.aclose()


async def test_client_publish_is_answered_and_deduplicated(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        client = await connect_memory(hub, "alice", subscribe={"news": None})
        await client.receive()
        await client.send({"type": "publish", "stream": "news", "data": 1, "id": "k", "ref": 1})
        got = await client.receive_until("published")
        assert got[-1] == {
            "type": "published",
            "ref": 1,
            "stream": "news",
            "offset": 1,
            "id": "k",
            "duplicate": False,
        }
        assert got[0]["type"] == "message" and got[0]["offset"] == 1
        await client.send({"type": "publish", "stream": "news", "data": 1, "id": "k", "ref": 2})
        answer = await client.receive()
        assert answer["duplicate"] is True and answer["offset"] == 1 and answer["ref"] == 2
        # Another publisher's identical id is its own message: keys are scoped per publisher.
        assert not (await hub.publish("news", 1, id="k")).duplicate
        await client.aclose()


async def test_client_reusing_an_id_for_other_data_gets_conflict(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        client = await connect_memory(hub, "alice")
        await client.receive()
        await client.send({"type": "publish", "stream": "news", "data": 1, "id": "k", "ref": 1})
        assert (await client.receive())["offset"] == 1
        await client.send({"type": "publish", "stream": "news", "data": 2, "id": "k", "ref": 2})
        error = await client.receive()
        assert (error["type"], error["code"], error["ref"]) == ("error", "conflict", 2)
        assert "'k'" in error["message"] and "offset 1" in error["message"]
        assert hub.metrics.published == 1 and hub.metrics.deduplicated == 0
        await client.aclose()


async def test_a_hook_that_changes_data_keeps_retries_duplicates(autojump_clock: Any) -> None:
    async def stamp(client_id: str, stream: str, data: Any) -> Any:
        return {"by": client_id, "data": data}

    async with open_hub(config(), on_publish=stamp) as hub:
        client = await connect_memory(hub, "alice", subscribe={"news": None})
        await client.receive()
        for ref in (1, 2):  # the same request twice: the key is what the client sent
            frame = {"type": "publish", "stream": "news", "data": 7, "id": "k", "ref": ref}
            await client.send(frame)
        answers = [m for m in await client.receive_until("published")]
        second = await client.receive()
        assert answers[0]["data"] == {"by": "alice", "data": 7}
        assert (answers[-1]["duplicate"], second["duplicate"]) == (False, True)
        assert second["offset"] == 1
        await client.aclose()


async def test_client_publish_forbidden_when_config_says_so(autojump_clock: Any) -> None:
    cfg = config(server={"client_publish": False})
    async with open_hub(cfg) as hub:
        client = await connect_memory(hub, "alice")
        await client.receive()
        await client.send({"type": "publish", "stream": "news", "data": 1})
        assert (await client.receive())["code"] == "forbidden"
        await client.send({"type": "publish", "stream": "@bob", "data": 1})
        assert (await client.receive())["code"] == "forbidden"
        assert hub.metrics.published == 0
        await client.aclose()


async def test_concurrent_identical_publish_waits_for_the_first(autojump_clock: Any) -> None:
    calls: list[float] = []

    async def slow_check(client_id: str, stream: str, data: Any) -> Any:
        calls.append(trio.current_time())
        await trio.sleep(0.5)
        return data

    async with open_hub(config(), on_publish=slow_check) as hub:
        one = await connect_memory(hub, "alice")
        two = await connect_memory(hub, "alice")
        await one.receive()
        await two.receive()
        frame = {"type": "publish", "stream": "news", "data": {"x": 1}, "id": "same"}
        await one.send(frame)
        await trio.sleep(0.1)
        await two.send(frame)
        first, second = await one.receive(), await two.receive()
        assert first["offset"] == second["offset"] == 1
        assert (first["duplicate"], second["duplicate"]) == (False, True)
        assert calls == [0.0]  # the second publish never reached the hook
        assert hub.metrics.reconnections == 0  # a second tab alongside is no reconnection
        assert trio.current_time() == 0.5
        await one.aclose()
        await two.aclose()


async def test_on_publish_rejection_and_outage(autojump_clock: Any) -> None:
    async def check(client_id: str, stream: str, data: Any) -> Any:
        if data == "bad":
            raise PublishRejected("no bad words")
        if data == "boom":
            raise RuntimeError("database down")
        return {"checked": data}

    async with open_hub(config(), on_publish=check) as hub:
        client = await connect_memory(hub, "alice", subscribe={"news": None})
        await client.receive()
        await client.send({"type": "publish", "stream": "news", "data": "bad"})
        error = await client.receive()
        assert error["code"] == "forbidden" and error["message"] == "no bad words"
        await client.send({"type": "publish", "stream": "news", "data": "ok"})
        got = await client.receive_until("published")
        assert got[0]["data"] == {"checked": "ok"}
        await client.send({"type": "publish", "stream": "news", "data": "boom"})
        assert (await client.receive())["code"] == "unavailable"
        # testing preset: 1 retry after 0.1 s, the breaker trips after 2 failures
        assert hub.metrics.retry_attempts == {"retry": 1, "exhausted": 1}
        assert hub.health()["status"] == "degraded"
        await client.aclose()


async def test_authenticate_hook_decides_identity_and_outage_gives_1013(
    autojump_clock: Any,
) -> None:
    down = False

    async def authenticate(hello: Any, request: Any) -> Identity:
        if down:
            raise OSError("auth server unreachable")
        if hello.token != "secret":
            raise wshub.AuthenticationError("bad token")
        return Identity(hello.client_id, admin=True)

    async with open_hub(config(), authenticate=authenticate) as hub:
        refused = await connect_memory(hub, "alice", token="wrong")
        assert await refused.wait_closed() == (1008, "bad token")
        admitted = await connect_memory(
            hub, "alice", token="secret", subscribe={"$sys.metrics": None}
        )
        welcome = await admitted.receive()
        assert "$sys.metrics" in welcome["streams"]
        await admitted.aclose()
        down = True
        unavailable = await connect_memory(hub, "alice", token="secret")
        assert (await unavailable.wait_closed())[0] == 1013


async def test_sys_metrics_needs_admin_when_an_api_key_is_set(autojump_clock: Any) -> None:
    async with open_hub(config(admin={"api_key": "k"})) as hub:
        anonymous = await connect_memory(hub, "viewer", subscribe={"$sys.metrics": None})
        welcome = await anonymous.receive()
        assert "$sys.metrics" not in welcome["streams"]
        assert (await anonymous.receive())["code"] == "forbidden"
        admin = await connect_memory(hub, "ops", token="k", subscribe={"$sys.metrics": None})
        assert "$sys.metrics" in (await admin.receive())["streams"]
        await trio.sleep(hub.config.metrics.flush_interval)
        point = await admin.receive()
        assert point["stream"] == "$sys.metrics" and "connections" in point["data"]
        assert hub.metrics.published == 0  # the hub's own reports are not counted as traffic
        await anonymous.aclose()
        await admin.aclose()


async def test_production_refuses_anonymous_clients(autojump_clock: Any) -> None:
    cfg = attrs.evolve(HubConfig.production(), metrics=HubConfig.testing().metrics)
    async with open_hub(cfg) as hub:
        client = await connect_memory(hub, "alice")
        assert await client.wait_closed() == (1008, "anonymous clients are not allowed")


async def test_origin_not_allowed_closes_with_1008(autojump_clock: Any) -> None:
    async with open_hub(config(server={"origins": ["https://good.example"]})) as hub:
        bad = await connect_memory(
            hub, "alice", request=wshub.RequestInfo(headers=(("origin", "https://evil"),))
        )
        assert (await bad.wait_closed())[0] == 1008
        good = await connect_memory(
            hub, "bob", request=wshub.RequestInfo(headers=(("origin", "https://good.example"),))
        )
        assert (await good.receive())["type"] == "welcome"
        await good.aclose()


async def test_connection_limit_closes_with_1013(autojump_clock: Any) -> None:
    async with open_hub(config(limits={"max_connections": 2})) as hub:
        first = await connect_memory(hub, "a")
        second = await connect_memory(hub, "b")
        await first.receive()
        await second.receive()
        third = await connect_memory(hub, "c")
        assert (await third.wait_closed())[0] == 1013
        await first.aclose()
        await second.aclose()


async def test_rate_limited_frames_get_errors(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        limits = hub.config.limits
        client = await connect_memory(hub, "alice")
        await client.receive()
        over = limits.rate_limit_strikes - 1  # one short of being closed
        for _ in range(limits.burst + over - 1):
            await client.send({"type": "ping"})
        await client.send({"type": "publish", "stream": "news", "data": 1, "ref": "p1"})
        received = [await client.receive() for _ in range(limits.burst + over)]
        assert received.count({"type": "pong"}) == limits.burst
        errors = [r for r in received if r["type"] == "error"]
        assert len(errors) == over
        assert all(e["code"] == "rate_limited" for e in errors)
        assert "retry in 0.020 s" in errors[0]["message"]  # 1 token at 50/s
        assert errors[-1]["ref"] == "p1"  # the refused publish is named by its ref
        assert hub.metrics.published == 0
        # a token is back after 1/rate seconds, and a good frame resets the strikes
        await trio.sleep(1 / limits.rate)
        await client.send({"type": "ping"})
        assert await client.receive() == {"type": "pong"}
        await client.aclose()


async def test_persistent_flood_closes_with_4003(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        limits = hub.config.limits
        client = await connect_memory(hub, "alice")
        await client.receive()
        for _ in range(limits.burst + limits.rate_limit_strikes):
            await client.send({"type": "ping"})
        code, reason = await client.wait_closed()
        assert (code, reason) == (4003, "rate limit exceeded repeatedly")
        assert trio.current_time() < 0.01
        assert hub.metrics.disconnects == {4003: 1}


async def test_slow_consumer_is_closed_with_4002_and_others_keep_pace(
    autojump_clock: Any,
) -> None:
    async with open_hub(config(limits={"max_queue": 10})) as hub:
        slow = await connect_memory(hub, "slow", subscribe={"news": None}, buffer=0)
        fast = await connect_memory(hub, "fast", subscribe={"news": None})
        await fast.receive()
        await trio.sleep(0.1)  # the slow client's writer is now stuck sending its welcome
        for n in range(30):
            await hub.publish("news", n)
            await trio.sleep(0.01)
        got = [await fast.receive() for _ in range(30)]
        assert [m["data"] for m in got] == list(range(30))
        assert hub.metrics.queue_overflows == 1
        assert hub.metrics.dropped["slow_consumer"] == 11
        # The hub forgot the slow client at the 4002 decision: its queue is dropped and it no
        # longer counts, even while its frame in flight may still finish.
        assert hub.connection_count == 1
        rows = {row["client_id"]: row for row in hub.stats()["busiest_clients"]}
        assert "slow" not in rows or rows["slow"]["queue"] == 0
        assert rows["fast"]["queue"] == 0
        # The slow client reads again: the frame that was in flight arrives whole, then 4002.
        assert (await slow.receive())["type"] == "welcome"
        assert await slow.wait_closed() == (4002, "outbound queue overflowed; resume from history")
        await fast.aclose()


async def test_a_consumer_that_never_reads_is_cut_after_the_frame_timeout(
    autojump_clock: Any,
) -> None:
    async with open_hub(config(limits={"max_queue": 10})) as hub:
        stuck = await connect_memory(hub, "stuck", subscribe={"news": None}, buffer=0)
        await trio.testing.wait_all_tasks_blocked()
        for n in range(11):
            await hub.publish("news", n)  # the 11th overflows at t=0
        timeout = wshub.hub.connection.FINISH_FRAME_TIMEOUT
        await trio.testing.wait_all_tasks_blocked()
        # The hub forgets it at once (subscriptions, queue, slot, the disconnect counted)...
        assert hub.connection_count == 0
        assert hub.metrics.disconnects == {4002: 1}
        await trio.sleep_until(timeout - 0.001)
        assert stuck.close_code is None  # ...while its welcome frame still may finish
        await trio.sleep_until(timeout)
        await trio.testing.wait_all_tasks_blocked()
        # it could not finish: cut without a close frame (it could not have read one)
        assert stuck.close_code == 1006


async def test_sweeper_removes_idle_client_stats_after_client_ttl(autojump_clock: Any) -> None:
    async with open_hub(config(metrics={"client_ttl": 10.0}, cleanup={"interval": 0.5})) as hub:
        client = await connect_memory(hub, "alice")
        await client.receive()
        await client.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert hub.connection_count == 0
        assert trio.current_time() == 0  # idle from 0; sweeps at 0.5, 1.0, ...
        await trio.sleep_until(9.999)
        assert "alice" in hub.metrics.clients
        await trio.sleep_until(10.001)
        assert "alice" not in hub.metrics.clients
        assert hub.metrics.cleanup_removed["clients"] == 1
        assert hub.metrics.cleanup_runs == 20


async def test_writer_batches_queued_messages_into_one_frame(autojump_clock: Any) -> None:
    cfg = config(limits={"write_delay": 0.005, "max_batch": 4})
    async with open_hub(cfg) as hub:
        batched = await connect_memory(hub, "a", subscribe={"news": None})
        plain = await connect_memory(hub, "b", subscribe={"news": None}, subprotocol=None)
        await batched.receive()
        await plain.receive()
        await trio.sleep(1)  # a quiet hub: the next message goes out at once
        start = trio.current_time()
        for n in range(10):
            await hub.publish("news", n)  # all at t=1, faster than one tick
        arrivals = []
        for _ in range(10):
            message = await batched.receive()
            arrivals.append((message["data"], trio.current_time()))
        got_plain = [await plain.receive() for _ in range(10)]
        assert [data for data, _ in arrivals] == list(range(10))
        assert [m["data"] for m in got_plain] == list(range(10))
        assert arrivals[0][1] == start  # the first message did not wait for a tick
        assert arrivals[-1][1] == start + 0.005  # the rest were released by the next tick
        sizes = [f.count("\n") + 1 for f in batched.frames[1:]]
        assert sum(sizes) == 10
        assert max(sizes) <= 4  # max_batch
        assert len(sizes) <= 4  # one early frame, then 9 or fewer in frames of 4
        assert all("\n" not in f for f in plain.frames)
        await batched.aclose()
        await plain.aclose()


def slow_first_sends(hub: Any, clock: trio.testing.MockClock, seconds: float) -> None:
    """Make the next flush take ``seconds`` of the writers' own time, shared by every
    connection (as a big fan-out takes CPU time), not a wait on a peer: the tick waits for
    that, since writers keep finishing one after the other."""
    connections = list(hub.lifetime.connections)
    for connection in connections:
        original = connection.transport.send
        durations = [seconds / len(connections)]

        async def send(text: str, original: Any = original, durations: Any = durations) -> None:
            if durations:
                clock.jump(durations.pop())
            await original(text)

        connection.transport.send = send


@pytest.mark.parametrize(("ratio", "pause"), [(1.0, 0.1), (0.5, 0.05), (0.0, 0.005)])
async def test_publishers_get_a_pause_as_long_as_the_flush_took(
    autojump_clock: Any, ratio: float, pause: float
) -> None:
    cfg = config(limits={"write_delay": 0.005, "flush_pause_ratio": ratio})
    async with open_hub(cfg) as hub:
        client = await connect_memory(hub, "a", subscribe={"news": None})
        assert (await client.receive())["type"] == "welcome"
        others = [await connect_memory(hub, f"o{n}", subscribe={"news": None}) for n in range(19)]
        await trio.sleep(1)  # a quiet hub: the next message is released at once
        slow_first_sends(hub, autojump_clock, 0.1)  # that flush takes 0.1 s
        await hub.publish("news", "first")
        assert (await client.receive())["data"] == "first"
        flushed = trio.current_time()
        await hub.publish("news", "second")  # during the pause after that flush

        async def busy_publisher() -> None:  # never blocks: the pause goes past write_delay
            while True:
                autojump_clock.jump(0.0005)  # the time its work takes
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(busy_publisher)
            assert (await client.receive())["data"] == "second"
            nursery.cancel_scope.cancel()
        # released when the pause ends: max(write_delay, ratio * 0.1) after the flush. The
        # busy publisher moves the clock 0.5 ms per scheduler pass, so the frame reaches the
        # client a few passes after that (2-3.5 ms here; 4 ms allowed), never before.
        elapsed = trio.current_time() - flushed
        assert pause - 1e-9 <= elapsed <= pause + 8 * 0.0005 + 1e-9
        await client.aclose()
        for other in others:
            await other.aclose()


async def test_the_pause_ends_once_every_task_waits(autojump_clock: Any) -> None:
    # Past write_delay, publishers that are all idle have nothing to add to the batches.
    cfg = config(limits={"write_delay": 0.005, "flush_pause_ratio": 1.0})
    async with open_hub(cfg) as hub:
        client = await connect_memory(hub, "a", subscribe={"news": None})
        assert (await client.receive())["type"] == "welcome"
        await trio.sleep(1)
        slow_first_sends(hub, autojump_clock, 0.1)  # a pause of up to 0.1 s follows
        await hub.publish("news", "first")
        assert (await client.receive())["data"] == "first"
        flushed = trio.current_time()
        await hub.publish("news", "second")
        assert (await client.receive())["data"] == "second"
        assert trio.current_time() - flushed == pytest.approx(0.005)  # write_delay only
        await client.aclose()


@pytest.mark.parametrize(("queued", "arrival"), [(9, 1.0), (10, 0.0)])
async def test_a_queue_at_high_water_ends_the_publishers_pause(
    autojump_clock: Any, queued: int, arrival: float
) -> None:
    # max_queue 40: high water is a quarter of it, 10 (max_batch 4 is smaller)
    cfg = config(limits={"write_delay": 1.0, "max_queue": 40, "max_batch": 4})
    async with open_hub(cfg) as hub:
        assert hub.flush.high_water == 10
        client = await connect_memory(hub, "a", subscribe={"news": None})
        await client.receive()
        await trio.sleep(5)  # a quiet hub
        start = trio.current_time()
        await hub.publish("news", "first")  # released at once; a 1 s pause follows
        assert (await client.receive())["data"] == "first"
        await trio.testing.wait_all_tasks_blocked()
        for n in range(queued):
            await hub.publish("news", n)
        got = [await client.receive() for _ in range(queued)]
        assert [m["data"] for m in got] == list(range(queued))
        # 9 queued wait for the pause to end; the 10th reaches high water and ends it now
        assert trio.current_time() - start == pytest.approx(arrival)
        await client.aclose()


@pytest.mark.parametrize(("fast_clients", "second_at"), [(1, 1.005), (50, 1.005)])
async def test_the_tick_never_waits_for_a_writer_whose_peer_does_not_read(
    autojump_clock: Any, fast_clients: int, second_at: float
) -> None:
    # write_delay 0.005, flush_pause_ratio 0: the pause is write_delay. The stuck writer's
    # transport reports that it waits for its peer, so no tick waits for it, among one other
    # writer or fifty (it used to hold a tick for its time limit, 0.25 s, below 50 writers).
    cfg = config(limits={"write_delay": 0.005, "flush_pause_ratio": 0.0})
    async with open_hub(cfg) as hub:
        stuck = await connect_memory(hub, "stuck", subscribe={"news": None}, buffer=0)
        assert (await stuck.receive())["type"] == "welcome"  # then it never reads again
        fast = [
            await connect_memory(hub, f"f{n}", subscribe={"news": None})
            for n in range(fast_clients)
        ]
        for client in fast:
            await client.receive()
        await trio.sleep_until(1)  # a quiet hub
        await hub.publish("news", "first")  # released at once; the stuck writer blocks
        for client in fast:
            assert (await client.receive())["data"] == "first"
        assert trio.current_time() == 1
        await hub.publish("news", "second")
        for client in fast:
            assert (await client.receive())["data"] == "second"
        assert trio.current_time() == pytest.approx(second_at)  # only the pause after "first"
        await trio.sleep_until(2)
        await hub.publish("news", "third")  # the stuck writer is not waited for again
        for client in fast:
            assert (await client.receive())["data"] == "third"
        assert trio.current_time() == 2
        for client in fast:
            await client.aclose()


async def test_without_ping_frames_silence_closes_4004_at_interval_plus_timeout(
    autojump_clock: Any,
) -> None:
    async with open_hub(config()) as hub:  # heartbeat interval 2, timeout 1
        silent = await connect_memory(hub, "silent", can_ping=False)
        chatty = await connect_memory(hub, "chatty", can_ping=False)
        await silent.receive()
        await chatty.receive()
        await trio.sleep_until(2)
        await chatty.send({"type": "ping"})  # its own ping, as welcome.heartbeat asks
        assert await chatty.receive() == {"type": "pong"}
        await trio.sleep_until(2.999)
        assert silent.close_code is None
        await trio.sleep_until(3)  # interval + timeout after its hello
        await trio.testing.wait_all_tasks_blocked()
        assert silent.close_code == 4004
        await trio.sleep_until(4.999)  # chatty: 2 + interval + timeout is 5
        await chatty.send({"type": "ping"})
        assert await chatty.receive() == {"type": "pong"}
        assert hub.metrics.disconnects == {4004: 1}
        await chatty.aclose()


async def test_a_hanging_hook_times_out_and_is_retried_on_schedule(autojump_clock: Any) -> None:
    calls: list[float] = []

    async def hangs(client_id: str, stream: str, data: Any) -> Any:
        calls.append(trio.current_time())
        await trio.sleep_forever()

    async with open_hub(config(), on_publish=hangs) as hub:  # call_timeout 1, 1 retry after 0.1
        client = await connect_memory(hub, "alice")
        await client.receive()
        await client.send({"type": "publish", "stream": "news", "data": 1, "ref": "r"})
        answer = await client.receive()
        assert (answer["code"], answer["ref"]) == ("unavailable", "r")
        assert calls == [0.0, 1.1]  # timed out at 1.0, retried after the 0.1 backoff
        assert trio.current_time() == pytest.approx(2.1)
        assert hub.metrics.retry_attempts == {"retry": 1, "exhausted": 1}
        await client.aclose()
