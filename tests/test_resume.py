"""Resume in every case of PROTOCOL.md, and graceful shutdown, over in-memory connections."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from wshub.core.config import HubConfig
from wshub.core.protocol import Position
from wshub.hub.connection import CLOSE_TIMEOUT
from wshub.hub.hub import open_hub
from wshub.testing import MemoryClient, connect_memory


def config(**sections: dict[str, Any]) -> HubConfig:
    return HubConfig.testing().merged(sections)


async def publish_numbers(hub: Any, stream: str, numbers: range) -> None:
    for n in numbers:
        await hub.publish(stream, n)


async def welcome_and_replay(client: MemoryClient, count: int) -> tuple[dict[str, Any], list[Any]]:
    welcome = await client.receive()
    assert welcome["type"] == "welcome"
    replay = [await client.receive() for _ in range(count)]
    return welcome, replay


async def assert_nothing_more(client: MemoryClient) -> None:
    """The next thing the client gets is the answer to a ping: nothing was queued before it."""
    await client.send({"type": "ping"})
    assert await client.receive() == {"type": "pong"}


async def test_exact_resume_replays_everything_after_the_position(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        first = await connect_memory(hub, "alice", subscribe={"news": None})
        welcome = await first.receive()
        epoch = welcome["streams"]["news"]["epoch"]
        await publish_numbers(hub, "news", range(1, 4))
        seen = [await first.receive() for _ in range(3)]
        await first.aclose()
        await publish_numbers(hub, "news", range(4, 8))  # missed while away
        position = Position(seen[-1]["offset"], epoch)
        again = await connect_memory(hub, "alice", subscribe={"news": position})
        welcome, replay = await welcome_and_replay(again, 4)
        status = welcome["streams"]["news"]
        assert status == {"epoch": epoch, "offset": 7, "first": 1, "recovered": True}
        assert [m["offset"] for m in replay] == [4, 5, 6, 7]
        assert [m["data"] for m in replay] == [4, 5, 6, 7]
        await publish_numbers(hub, "news", range(8, 9))
        live = await again.receive()
        assert live["offset"] == 8  # live follows replay with nothing lost or repeated
        await assert_nothing_more(again)
        assert hub.metrics.resumes_recovered == 1
        assert hub.metrics.replayed == 4
        assert hub.metrics.reconnections == 1
        await again.aclose()


async def test_resume_at_the_newest_offset_replays_nothing(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        await publish_numbers(hub, "news", range(3))
        epoch = hub.histories.get_or_create("news").epoch
        client = await connect_memory(hub, "alice", subscribe={"news": Position(3, epoch)})
        welcome = await client.receive()
        assert welcome["streams"]["news"] == {
            "epoch": epoch,
            "offset": 3,
            "first": 1,
            "recovered": True,
        }
        await assert_nothing_more(client)
        await client.aclose()


async def test_gap_when_history_no_longer_holds_the_next_offset(autojump_clock: Any) -> None:
    async with open_hub(config(history={"size": 5})) as hub:
        await publish_numbers(hub, "news", range(1, 13))  # offsets 1..12, history holds 8..12
        epoch = hub.histories.get_or_create("news").epoch
        client = await connect_memory(hub, "alice", subscribe={"news": Position(3, epoch)})
        welcome, replay = await welcome_and_replay(client, 5)
        status = welcome["streams"]["news"]
        assert status == {"epoch": epoch, "offset": 12, "first": 8, "recovered": False}
        # the client knows it missed offsets 4..7 (position + 1 up to first - 1)
        assert [m["offset"] for m in replay] == [8, 9, 10, 11, 12]
        await assert_nothing_more(client)
        assert hub.metrics.resumes_unrecovered == 1
        await client.aclose()


async def test_epoch_change_replays_all_held_and_says_not_recovered(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        await publish_numbers(hub, "news", range(1, 4))
        epoch = hub.histories.get_or_create("news").epoch
        stale = Position(40, "an-epoch-from-before-a-restart")
        client = await connect_memory(hub, "alice", subscribe={"news": stale})
        welcome, replay = await welcome_and_replay(client, 3)
        assert welcome["streams"]["news"] == {
            "epoch": epoch,
            "offset": 3,
            "first": 1,
            "recovered": False,
        }
        assert [m["offset"] for m in replay] == [1, 2, 3]
        await assert_nothing_more(client)
        await client.aclose()


async def test_resume_after_history_ttl_expired_everything(autojump_clock: Any) -> None:
    cfg = config(history={"ttl": 60.0}, cleanup={"interval": 10.0})
    async with open_hub(cfg) as hub:
        client = await connect_memory(hub, "alice", subscribe={"news": None})
        epoch = (await client.receive())["streams"]["news"]["epoch"]
        await publish_numbers(hub, "news", range(1, 4))
        assert [(await client.receive())["offset"] for _ in range(3)] == [1, 2, 3]
        await client.aclose()
        await publish_numbers(hub, "news", range(4, 6))  # 4 and 5 published at t=0
        await trio.sleep(60)  # the sweeper at t=60 trims everything stored at t=0
        assert trio.current_time() == 60
        again = await connect_memory(hub, "alice", subscribe={"news": Position(3, epoch)})
        welcome = await again.receive()
        assert welcome["streams"]["news"] == {"epoch": epoch, "offset": 5, "recovered": False}
        assert hub.metrics.expired == 5
        await assert_nothing_more(again)
        await again.aclose()


async def test_history_ttl_trims_exactly_at_ttl(autojump_clock: Any) -> None:
    cfg = config(history={"ttl": 30.0}, cleanup={"interval": 1.0})
    async with open_hub(cfg) as hub:
        await hub.publish("news", "old")
        await trio.sleep(5)
        await hub.publish("news", "newer")
        history = hub.histories.get_or_create("news")
        await trio.sleep_until(29.5)
        assert history.first_offset == 1
        await trio.sleep_until(30.5)  # the sweep at 30.0 removed the message from t=0
        assert history.first_offset == 2
        await trio.sleep_until(35.5)
        assert history.first_offset is None
        assert history.last_offset == 2


async def test_subscribe_frame_with_position_resumes_too(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        await publish_numbers(hub, "news", range(1, 6))
        epoch = hub.histories.get_or_create("news").epoch
        client = await connect_memory(hub, "alice")
        await client.receive()
        position = {"offset": 2, "epoch": epoch}
        await client.send({"type": "subscribe", "stream": "news", "position": position})
        subscribed = await client.receive()
        assert subscribed == {
            "type": "subscribed",
            "stream": "news",
            "epoch": epoch,
            "offset": 5,
            "first": 1,
            "recovered": True,
        }
        assert [(await client.receive())["offset"] for _ in range(3)] == [3, 4, 5]
        await assert_nothing_more(client)
        await client.aclose()


async def test_personal_stream_recovers_direct_messages(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        client = await connect_memory(hub, "alice")
        epoch = (await client.receive())["streams"]["@alice"]["epoch"]
        await hub.send("alice", "one")
        assert (await client.receive())["data"] == "one"
        await client.aclose()
        await hub.send("alice", "two")
        again = await connect_memory(hub, "alice", subscribe={"@alice": Position(1, epoch)})
        welcome, replay = await welcome_and_replay(again, 1)
        assert welcome["streams"]["@alice"]["recovered"] is True
        assert replay[0]["data"] == "two" and replay[0]["offset"] == 2
        await again.aclose()


async def test_replay_larger_than_the_queue_limit_is_delivered(autojump_clock: Any) -> None:
    cfg = config(limits={"max_queue": 10}, history={"size": 100})
    async with open_hub(cfg) as hub:
        await publish_numbers(hub, "news", range(1, 51))
        epoch = hub.histories.get_or_create("news").epoch
        client = await connect_memory(hub, "alice", subscribe={"news": Position(0, epoch)})
        welcome, replay = await welcome_and_replay(client, 50)
        assert welcome["streams"]["news"]["recovered"] is True
        assert [m["offset"] for m in replay] == list(range(1, 51))
        await hub.publish("news", "live")
        assert (await client.receive())["offset"] == 51
        await client.aclose()


async def test_shutdown_flushes_queues_then_closes_with_1001(autojump_clock: Any) -> None:
    clients = []
    async with open_hub(config()) as hub:
        for n in range(20):
            client = await connect_memory(hub, f"c{n}", subscribe={"news": None})
            await client.receive()
            clients.append(client)
        for n in range(5):
            await hub.publish("news", n)
        # leaving the block drains: everything queued is delivered, then 1001
    for client in clients:
        got = [await client.receive() for _ in range(5)]
        assert [m["data"] for m in got] == list(range(5))
        assert await client.wait_closed() == (1001, "the server is shutting down")
    assert hub.connection_count == 0
    assert hub.metrics.disconnects == {1001: 20}
    assert hub.draining


async def test_shutdown_cuts_a_stuck_client_after_grace(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        stuck = await connect_memory(hub, "stuck", subscribe={"news": None}, buffer=0)
        fine = await connect_memory(hub, "fine", subscribe={"news": None})
        await fine.receive()
        await hub.publish("news", 1)
        assert (await fine.receive())["data"] == 1
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
    # the stuck client's writer could not flush: it was cut at exactly shutdown.grace,
    # without a close frame (it could not read one); the other got its 1001
    assert trio.current_time() - started == pytest.approx(hub.config.shutdown.grace)
    assert stuck.close_code == 1006
    assert fine.close_code == 1001
    assert hub.connection_count == 0


async def test_a_peer_that_never_answers_the_close_is_left_after_close_timeout(
    autojump_clock: Any,
) -> None:
    async with open_hub(config()) as hub:
        mute = await connect_memory(hub, "mute", answer_close=False)
        await mute.receive()
        started = trio.current_time()
    # 1001 went out at once; the closing handshake was abandoned after exactly CLOSE_TIMEOUT
    # (longer than shutdown.grace here, so the drain waited for it, and no longer)
    assert hub.config.shutdown.grace < CLOSE_TIMEOUT
    assert trio.current_time() - started == CLOSE_TIMEOUT
    assert mute.close_code == 1001
    assert hub.connection_count == 0


async def test_health_reports_shutting_down_while_draining(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        stuck = await connect_memory(hub, "stuck", buffer=0)
        await trio.testing.wait_all_tasks_blocked()
        assert hub.health()["status"] == "healthy"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.drain)
            await trio.testing.wait_all_tasks_blocked()
            report = hub.health()
            assert report["status"] == "shutting_down"
        assert stuck.close_code == 1006  # it never read; cut after the grace
        refused = await connect_memory(hub, "late")
        assert (await refused.wait_closed())[0] == 1001
