"""The hub over real sockets: wshub's embedded server and clients of the ``websockets`` library.

Each test runs a hub (``open_hub``) and its embedded server on 127.0.0.1, port 0, in the
test's Trio run, and real WebSocket clients on an asyncio loop in a worker thread (see
``ws_clients.py``). Real time passes here, so nothing waits a fixed time to synchronise:
every wait is for a condition, under a generous but bounded deadline (``wait_until``,
``trio.fail_after``). The in-memory, mock-clock tests of the same behaviour are in
``test_hub.py``; these pin what only real sockets show (TCP drops, full kernel buffers,
handshakes, many concurrent clients, shutdown of live connections).
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ws_clients import (
    AsyncioThread,
    HubClient,
    close_all,
    connect_many,
    connect_stalled,
    gather,
    open_asyncio_thread,
    position,
)
from wshub import HubConfig, serve_websocket
from wshub.hub.hub import Hub, open_hub
from wshub.servers.fast import serve_fast

HOST = "127.0.0.1"


#: Real sockets, and clients on a thread that CPU load can starve: a hello or a pong may take
#: seconds on a busy machine (the testing preset's 1 s timeouts once cut 17 of 1200
#: connections with 4004). Tests that are about these timeouts set them themselves.
PATIENT = {"heartbeat": {"interval": 600.0, "timeout": 600.0}, "limits": {"hello_timeout": 600.0}}


def config(**sections: dict[str, Any]) -> HubConfig:
    """The testing preset, patient with slow clients (``PATIENT``), with some keys changed."""
    return HubConfig.testing().merged(PATIENT).merged(sections)


#: The embedded servers every test here runs against; the ``server_kind`` fixture picks one.
SERVERS: dict[str, Callable[..., Awaitable[None]]] = {
    "trio-websocket": serve_websocket,
    "fast": serve_fast,
}
_serving_with: list[Callable[..., Awaitable[None]]] = [serve_websocket]


@pytest.fixture(autouse=True, params=sorted(SERVERS))
def server_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run each test once per embedded server (``serving`` uses the one chosen here)."""
    _serving_with[0] = SERVERS[request.param]
    yield request.param
    _serving_with[0] = serve_websocket


@asynccontextmanager
async def serving(cfg: HubConfig) -> AsyncIterator[tuple[Hub, str]]:
    """A hub and its embedded server; yields the hub and the WebSocket URL.

    On exit the listener stops first, then the hub block ends (draining its connections).
    """
    async with open_hub(cfg) as hub, trio.open_nursery() as nursery:
        server = await nursery.start(_serving_with[0], hub, HOST, 0)
        try:
            yield hub, f"ws://{HOST}:{server.port}{cfg.server.path}"
        finally:
            nursery.cancel_scope.cancel()


@pytest.fixture
async def aio() -> AsyncIterator[AsyncioThread]:
    """An asyncio loop in a worker thread, for the clients."""
    async with open_asyncio_thread() as thread:
        yield thread


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds; fail the test after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        # Polling: the conditions read hub figures and the clients' thread, which signal
        # nothing that could be awaited.
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.005)
        return
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def running_tasks() -> int:
    """How many tasks this Trio run has, all of them, from the root task down."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    count, stack = 0, [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


# --------------------------------------------------------------------------- 1. lifecycle


async def test_resume_after_a_drop_replays_exactly_the_missed_messages(
    aio: AsyncioThread,
) -> None:
    with trio.fail_after(20):
        async with serving(config()) as (hub, url):
            client = await aio.run(HubClient.connect(url, "alice", subscribe={"news": None}))
            welcome = await aio.run(client.welcome())
            news = welcome["streams"]["news"]
            assert news["offset"] == 0 and news["recovered"] is True
            epoch = news["epoch"]

            for n in range(1, 6):
                await hub.publish("news", {"n": n})
            got = await aio.run(client.messages(5))
            assert [(m["stream"], m["offset"], m["data"]) for m in got] == [
                ("news", n, {"n": n}) for n in range(1, 6)
            ]
            last_seen = got[-1]["offset"]

            await aio.run(client.abort())
            await wait_until(lambda: hub.connection_count == 0, "the hub to notice the drop")
            for n in range(6, 11):
                await hub.publish("news", {"n": n})

            again = await aio.run(
                HubClient.connect(url, "alice", subscribe={"news": position(last_seen, epoch)})
            )
            welcome = await aio.run(again.welcome())
            assert welcome["streams"]["news"] == {
                "epoch": epoch,
                "offset": 10,
                "first": 1,
                "recovered": True,
            }
            replay = await aio.run(again.messages(5))
            assert [(m["offset"], m["data"]) for m in replay] == [
                (n, {"n": n}) for n in range(6, 11)
            ]
            for n in range(11, 13):
                await hub.publish("news", {"n": n})
            live = await aio.run(again.messages(2))
            assert [(m["offset"], m["data"]) for m in live] == [(11, {"n": 11}), (12, {"n": 12})]
            # Nothing else was queued before the answer to this ping.
            await aio.run(again.send({"type": "ping"}))
            assert await aio.run(again.receive()) == {"type": "pong"}

            assert hub.metrics.resumes_recovered == 1
            assert hub.metrics.resumes_unrecovered == 0
            assert hub.metrics.replayed == 5
            assert hub.metrics.clients["alice"].connects == 2
            await aio.run(again.close())


# --------------------------------------------------------------------------- 2. fan-out


async def test_fifty_concurrent_clients_each_receive_every_message(aio: AsyncioThread) -> None:
    clients_n, messages_n = 50, 200
    ids = [f"fan-{i:02d}" for i in range(clients_n)]
    with trio.fail_after(30):
        async with serving(config(limits={"max_queue": 1000})) as (hub, url):
            clients = await aio.run(connect_many(url, ids, subscribe={"news": None}))
            assert hub.connection_count == clients_n
            for n in range(messages_n):
                await hub.publish("news", {"n": n})

            for got in await aio.run(gather(*(c.messages(messages_n) for c in clients))):
                assert [m["offset"] for m in got] == list(range(1, messages_n + 1))
                assert [m["data"]["n"] for m in got] == list(range(messages_n))

            clients_stats = hub.metrics.clients
            # A writer counts a frame once its send returns, which may be just after the
            # client read it.
            await wait_until(
                lambda: all(clients_stats[i].messages_out == messages_n for i in ids),
                "every client's messages_out to reach the messages delivered",
            )
            for client_id in ids:
                stats = clients_stats[client_id]
                assert (stats.connects, stats.connections, stats.disconnects) == (1, 1, 0)
                assert stats.messages_out == messages_n
            report = hub.stats()
            assert report["clients"]["connected"] == clients_n
            assert report["clients"]["tracked"] == clients_n
            busiest = report["busiest_clients"]
            assert len(busiest) == 10
            for row in busiest:
                assert row["client_id"] in ids
                assert row["messages_out"] == messages_n
                assert row["connects"] == 1 and row["connections"] == 1
            assert hub.metrics.delivered == clients_n * messages_n

            await aio.run(close_all(clients))
            await wait_until(lambda: hub.connection_count == 0, "every connection to end")
            assert all(clients_stats[i].disconnects == 1 for i in ids)
            assert hub.metrics.disconnects == {1000: clients_n}


# --------------------------------------------------------------------------- 3. TCP drops


@dataclass
class ResumeReport:
    """What one resuming subscriber saw."""

    client_id: str
    applied: dict[str, list[int]]  # offsets handed to the application, in order, per stream
    wire_messages: int = 0
    duplicates: int = 0  # messages at or below the position already applied (filtered out)
    lost: int = 0  # offsets skipped over between two applied messages
    aborts: int = 0
    welcomed_resumes: int = 0
    problems: list[str] = field(default_factory=list)


async def resuming_subscriber(
    url: str,
    client_id: str,
    streams: list[str],
    seed: int,
    ready: list[str],
    finished: asyncio.Event,
    finals: dict[str, int],
) -> ResumeReport:
    """Subscribe, drop the TCP connection at random points, resume, until it has every message.

    Like a real application it applies each message once, filtering by (stream, offset), and
    persists its position only every few messages: it resumes from that older position, so
    the hub replays some messages it has already applied (duplicates on the wire).
    """
    rng = random.Random(seed)
    commit_every = rng.randint(1, 40)
    report = ResumeReport(client_id, {stream: [] for stream in streams})
    applied = dict.fromkeys(streams, 0)
    committed = dict.fromkeys(streams, 0)
    epochs: dict[str, str] = {}
    subscribe: dict[str, dict[str, Any] | None] = dict.fromkeys(streams)  # from now on

    def done() -> bool:
        return finished.is_set() and all(applied[s] >= finals[s] for s in streams)

    while True:
        client = await HubClient.connect(url, client_id, subscribe=subscribe)
        if subscribe[streams[0]] is not None and not finished.is_set() and rng.random() < 0.15:
            await client.abort()  # gone before even reading the welcome
            report.aborts += 1
            continue
        welcome = await client.welcome()
        expected: dict[str, int] = {}
        for stream in streams:
            status = welcome["streams"][stream]
            start = subscribe[stream]
            if start is None:
                epochs[stream] = status["epoch"]
                expected[stream] = status["offset"] + 1
                continue
            if status["epoch"] != epochs[stream] or status["recovered"] is not True:
                report.problems.append(f"resume not recovered: {stream} {status}")
            expected[stream] = start["offset"] + 1
        if subscribe[streams[0]] is None:
            ready.append(client_id)
        else:
            report.welcomed_resumes += 1
        abort_after = rng.randint(20, 400)
        received = 0
        while True:
            if done():
                await client.close()
                return report
            try:
                item = await asyncio.wait_for(client.receive(), 0.1)
            except TimeoutError:
                continue
            if item["type"] != "message":
                report.problems.append(f"unexpected {item}")
                continue
            stream, offset = item["stream"], item["offset"]
            report.wire_messages += 1
            if offset != expected[stream]:
                report.problems.append(f"{stream}: got {offset}, expected {expected[stream]}")
            expected[stream] = offset + 1
            if item["data"] != {"stream": stream, "k": offset}:
                report.problems.append(f"{stream} {offset}: wrong data {item['data']}")
            if offset <= applied[stream]:
                report.duplicates += 1
            else:
                report.lost += offset - applied[stream] - 1
                applied[stream] = offset
                report.applied[stream].append(offset)
            received += 1
            if received % commit_every == 0:
                committed = dict(applied)
            if received >= abort_after and not finished.is_set():
                await client.abort()
                report.aborts += 1
                break
        subscribe = {s: position(committed[s], epochs[s]) for s in streams}


async def test_abrupt_tcp_drops_then_resume_lose_nothing(aio: AsyncioThread) -> None:
    streams = [f"feed-{i}" for i in range(4)]
    clients_n, total, interval = 8, 2000, 0.0015
    cfg = config(history={"size": 1000})  # every message of a stream: covers any drop
    ready: list[str] = []
    finals: dict[str, int] = {}
    finished = asyncio.Event()
    reports: list[ResumeReport] = []

    async def run_subscribers() -> None:
        subscribers = [
            resuming_subscriber(url, f"sub-{i}", streams, i, ready, finished, finals)
            for i in range(clients_n)
        ]
        reports.extend(await aio.run(gather(*subscribers)))

    with trio.fail_after(40):
        async with serving(cfg) as (hub, url), trio.open_nursery() as nursery:
            nursery.start_soon(run_subscribers)
            await wait_until(lambda: len(ready) == clients_n, "every subscriber's welcome")
            start = trio.current_time()
            for i in range(total):
                stream = streams[i % len(streams)]
                k = i // len(streams) + 1
                result = await hub.publish(stream, {"stream": stream, "k": k})
                assert result.offset == k
                await trio.sleep_until(start + (i + 1) * interval)
            finals.update({stream: total // len(streams) for stream in streams})
            aio.loop.call_soon_threadsafe(finished.set)

    assert len(reports) == clients_n
    lost = sum(r.lost for r in reports)
    duplicates = sum(r.duplicates for r in reports)
    aborts = sum(r.aborts for r in reports)
    print(
        f"\n{clients_n} clients x {len(streams)} streams, {total} messages: "
        f"{aborts} TCP drops, {sum(r.wire_messages for r in reports)} messages on the wire, "
        f"lost={lost} duplicates={duplicates} (filtered)"
    )
    for report in reports:
        assert report.problems == [], (report.client_id, report.problems[:5])
        for stream in streams:  # exactly once, in order
            assert report.applied[stream] == list(range(1, finals[stream] + 1))
    assert lost == 0
    assert aborts >= clients_n  # the drops really happened
    assert hub.metrics.resumes_unrecovered == 0
    assert hub.metrics.resumes_recovered >= len(streams) * sum(r.welcomed_resumes for r in reports)


# --------------------------------------------------------------------------- 4. memory


async def test_a_thousand_clients_come_and_go_and_memory_returns_to_baseline(
    aio: AsyncioThread,
) -> None:
    cfg = config(
        metrics={"client_ttl": 0.05, "flush_interval": 1000.0},  # no $sys.metrics growth
        history={"ttl": 0.05},  # idle personal streams are forgotten quickly
        cleanup={"interval": 0.05},
    )
    batch = 200

    async def churn(url: str, ids: list[str]) -> None:
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            clients = await aio.run(connect_many(url, chunk, subscribe={"news": None}))
            await aio.run(close_all(clients))

    async def settle(hub: Hub, tasks: int) -> None:
        def quiet() -> bool:
            hub.sweep()
            return (
                hub.connection_count == 0
                and hub.metrics.connections_active == 0
                and len(hub.metrics.clients) == 0
                and len(hub.histories) == 0  # no personal stream, no "news": no subscriber
                and running_tasks() == tasks  # every connection's tasks have ended too
            )

        await wait_until(quiet, "connections, client stats and idle streams to be gone", 60)
        gc.collect()

    with trio.fail_after(240):  # a bound for a starved machine, not a timing
        async with serving(cfg) as (hub, url):
            tasks = running_tasks()
            await churn(url, [f"warm-{i}" for i in range(batch)])
            await settle(hub, tasks)
            tracemalloc.start()
            try:
                baseline_snapshot = tracemalloc.take_snapshot()
                baseline, _ = tracemalloc.get_traced_memory()
                await churn(url, [f"client-{i}" for i in range(1000)])
                await settle(hub, tasks)
                after, peak = tracemalloc.get_traced_memory()
                growth = after - baseline
                top = tracemalloc.take_snapshot().compare_to(baseline_snapshot, "lineno")[:8]
            finally:
                tracemalloc.stop()
            print(
                f"\n1000 clients: traced memory grew {growth / 1024:.0f} KiB "
                f"(peak {peak / 1024:.0f} KiB)"
            )
            assert growth < 2 * 1024 * 1024, "\n".join(map(str, top))
            assert hub.metrics.connections_total == 1200
            assert hub.metrics.disconnects == {1000: 1200}
            assert hub.queue_depths() == (0, 0)
            stats = hub.stats()
            assert stats["clients"] == {"tracked": 0, "connected": 0}
            assert stats["streams"]["streams"] == 0


# --------------------------------------------------------------------------- 5. slow consumer


async def test_a_client_that_never_reads_is_cut_and_others_keep_pace(aio: AsyncioThread) -> None:
    fast_n, messages_n = 20, 500
    cfg = config(
        limits={"max_queue": 20},
        heartbeat={"interval": 30.0},  # the stuck client is cut for its queue, not its pings
    )
    with trio.fail_after(30):
        async with serving(cfg) as (hub, url):
            slow = await aio.run(connect_stalled(url, "slow", {"news": None}))
            fast = await aio.run(
                connect_many(url, [f"fast-{i}" for i in range(fast_n)], subscribe={"news": None})
            )

            async def keep_pace(client: HubClient) -> tuple[list[int], float]:
                offsets: list[int] = []
                worst = 0.0
                while len(offsets) < messages_n:
                    message = await client.receive()
                    assert message["type"] == "message", message
                    offsets.append(message["offset"])
                    worst = max(worst, time.time() - message["ts"] / 1000)
                return offsets, worst

            async with trio.open_nursery() as nursery:
                results: list[tuple[list[int], float]] = []

                async def receive() -> None:
                    results.extend(await aio.run(gather(*(keep_pace(c) for c in fast))))

                nursery.start_soon(receive)
                start = trio.current_time()
                for n in range(messages_n):
                    await hub.publish("news", {"n": n, "pad": "x" * 200})
                    await trio.sleep_until(start + (n + 1) * 0.002)
            took = trio.current_time() - start

            assert hub.metrics.queue_overflows >= 1
            await wait_until(lambda: hub.metrics.queue_overflows == 1, "the overflow")
            assert hub.metrics.clients["slow"].connections == 0
            worst_latency = max(worst for _, worst in results)
            print(f"\nfast clients done {took:.2f} s; worst latency {worst_latency * 1000:.0f} ms")
            for offsets, _ in results:
                assert offsets == list(range(1, messages_n + 1))
            assert worst_latency < 2.0  # nobody waited on the stuck client
            assert all(
                hub.metrics.clients[c].connections == 1 for c in hub.metrics.clients if c != "slow"
            )

            async def slow_outcome() -> tuple[int, str]:
                slow.resume_reading()
                return await slow.wait_closed()

            code, reason = await aio.run(slow_outcome())
            print(f"the slow client saw close code {code} {reason!r}")
            # it stayed stalled past FINISH_FRAME_TIMEOUT: cut mid-frame, without a close
            # frame that would have landed inside the unfinished one
            assert code == 1006
            await aio.run(close_all(fast))


async def test_a_slow_consumer_cut_mid_frame_gets_whole_frames_then_4002(
    aio: AsyncioThread,
) -> None:
    # Every frame is bigger than the client's TCP window, so when its queue overflows the
    # hub's writer is blocked part-way through sending a frame. The client starts reading
    # again as soon as its queue has overflowed, within the hub's FINISH_FRAME_TIMEOUT: it
    # must see whole frames only, then the close frame with 4002, as PROTOCOL.md promises.
    # (A client that stays stalled past that timeout is cut without a close frame; the
    # in-memory tests pin that case.)
    cfg = config(limits={"max_queue": 5}, heartbeat={"interval": 30.0})
    with trio.fail_after(20):
        async with serving(cfg) as (hub, url):
            slow = await aio.run(connect_stalled(url, "slow", {"news": None}))
            start = trio.current_time()
            for n in range(500):
                if hub.metrics.queue_overflows:
                    break
                await hub.publish("news", {"n": n, "pad": "x" * 5000})
                await trio.sleep_until(start + (n + 1) * 0.002)
            await wait_until(lambda: hub.metrics.queue_overflows == 1, "the overflow")

            async def read_to_the_end() -> tuple[list[int], int | None, str]:
                slow.resume_reading()
                offsets: list[int] = []
                try:
                    while True:
                        offsets.append((await slow.receive())["offset"])
                except ConnectionClosed as closed:
                    code = closed.rcvd.code if closed.rcvd is not None else None
                    return offsets, code, f"{closed!r} caused by {closed.__cause__!r}"

            offsets, code, how = await aio.run(read_to_the_end())
            assert offsets == list(range(1, len(offsets) + 1))
            assert code == 4002, f"after {len(offsets)} whole messages: {how}"
            assert hub.metrics.disconnects.get(4002) == 1


# --------------------------------------------------------------------------- 6. shutdown


async def test_shutdown_closes_two_hundred_clients_with_1001(aio: AsyncioThread) -> None:
    clients_n = 200
    outcomes: list[tuple[list[int], int]] = []

    async def until_closed(client: HubClient) -> tuple[list[int], int]:
        offsets: list[int] = []
        code = 0
        try:
            while True:
                message = await client.receive()
                offsets.append(message["offset"])
        except ConnectionClosed:
            code, _ = await client.wait_closed()
        return offsets, code

    tasks = running_tasks()
    with trio.fail_after(30):
        async with trio.open_nursery() as watchers:
            async with serving(config()) as (hub, url):
                clients = await aio.run(
                    connect_many(
                        url, [f"c-{i}" for i in range(clients_n)], subscribe={"news": None}
                    )
                )
                grace = hub.config.shutdown.grace

                async def watch() -> None:
                    outcomes.extend(await aio.run(gather(*(until_closed(c) for c in clients))))

                watchers.start_soon(watch)
                for n in range(3):  # queued just before shutdown: flushed before the close
                    await hub.publish("news", n)
                started = trio.current_time()
            elapsed = trio.current_time() - started

    print(f"\nshutdown with {clients_n} clients took {elapsed:.3f} s")
    assert elapsed < grace + 1.0
    assert running_tasks() == tasks  # no task of the hub, its server or a connection is left
    assert hub.connection_count == 0
    assert hub.metrics.connections_active == 0
    assert hub.health()["status"] == "shutting_down"
    assert len(outcomes) == clients_n
    assert all(outcome == ([1, 2, 3], 1001) for outcome in outcomes), outcomes[:3]
    assert hub.metrics.disconnects == {1001: clients_n}
    with pytest.raises(ConnectionRefusedError):  # the listener is gone too
        await aio.run(HubClient.connect(url, "late"))


# --------------------------------------------------------------------------- 7. bad input

GOOD_ORIGIN = "http://good.example"


async def test_every_bad_input_gets_its_answer_while_a_bystander_is_served(
    aio: AsyncioThread,
) -> None:
    # One token a second: a burst of frames meets the rate limit however slow the machine.
    cfg = config(
        server={"origins": [GOOD_ORIGIN]},
        limits={"max_connections": 4, "rate": 1.0, "hello_timeout": 1.0},  # 4000 is tested
    )
    limits = cfg.limits
    latencies: list[float] = []
    offsets: list[int] = []

    async def connect(client_id: str | None = None, origin: str | None = GOOD_ORIGIN) -> HubClient:
        return await HubClient.connect(url, client_id, origin=origin)

    async def bystander_reads(client: HubClient) -> None:
        try:
            while True:
                message = await client.receive()
                assert message["type"] == "message", message
                offsets.append(message["offset"])
                latencies.append(time.time() - message["ts"] / 1000)
        except ConnectionClosed:
            return

    async def first_frame_then_close(frame: str | None) -> tuple[int, str]:
        client = await connect()
        if frame is not None:
            await client.send(frame)
        return await client.wait_closed()

    async def refused_origin(origin: str | None) -> tuple[int, str]:
        # Refused right after the upgrade, before any hello: so none is sent (it could race
        # the close).
        client = await connect(origin=origin)
        return await client.wait_closed()

    async def after_welcome_then_close(client_id: str, frame: str | bytes) -> tuple[int, str]:
        client = await connect(client_id)
        await client.welcome()
        await client.send(frame)
        return await client.wait_closed()

    async def answers_to_bad_frames() -> list[dict[str, Any]]:
        client = await connect("picky")
        await client.welcome()
        answers = []
        for frame in (
            "{nope",
            '{"type": "publish", "data": 1, "ref": 7}',
            '{"type": "teleport", "ref": "t"}',
            '{"no_type": true}',
            '{"type": "ping"}',
        ):
            await client.send(frame)
            answers.append(await client.receive())
        await client.close()
        return answers

    async def over_the_connection_limit() -> tuple[int, str]:
        fillers = await connect_many(
            url, [f"filler-{i}" for i in range(limits.max_connections - 1)], origin=GOOD_ORIGIN
        )
        extra = await connect()  # refused before its hello is read: sends none
        outcome = await extra.wait_closed()
        await close_all(fillers)
        return outcome

    async def flood() -> tuple[list[dict[str, Any]], tuple[int, str]]:
        client = await connect("flooder")
        await client.welcome()
        # One frame short of a close: at most rate_limit_strikes - 1 strikes in a row.
        sent = limits.burst + limits.rate_limit_strikes - 1
        for _ in range(sent):
            await client.send({"type": "ping"})
        answers = [await client.receive() for _ in range(sent)]
        try:
            for _ in range(10 * limits.burst):
                await client.send({"type": "ping"})
        except ConnectionClosed:
            pass
        return answers, await client.wait_closed()

    async def wrong_path() -> int:
        try:
            client = await HubClient.connect(url.replace("/ws", "/nope"), "lost")
        except InvalidStatus as refused:
            return refused.response.status_code
        await client.close()
        return 101

    with trio.fail_after(30):
        async with serving(cfg) as (hub, url), trio.open_nursery() as nursery:
            # The bystander stays connected throughout, reading a steady stream of news.
            bystander = await aio.run(
                HubClient.connect(url, "bystander", subscribe={"news": None}, origin=GOOD_ORIGIN)
            )
            await aio.run(bystander.welcome())
            nursery.start_soon(aio.run, bystander_reads(bystander))
            published = 0
            stop = trio.Event()

            async def publish_steadily() -> None:
                nonlocal published
                while not stop.is_set():
                    published += 1
                    await hub.publish("news", {"n": published})
                    with trio.move_on_after(0.01):
                        await stop.wait()

            nursery.start_soon(publish_steadily)

            started = trio.current_time()
            code, reason = await aio.run(first_frame_then_close(None))
            waited = trio.current_time() - started
            assert (code, "no hello" in reason) == (4000, True)
            assert limits.hello_timeout * 0.9 <= waited < limits.hello_timeout + 1.0

            for frame in (
                '{"type": "hello", "client_id": "bad id!"}',
                '{"type": "hello"}',
                "not json",
                '{"type": "ping"}',
            ):
                code, reason = await aio.run(first_frame_then_close(frame))
                assert code == 4000, (frame, code, reason)

            assert (await aio.run(after_welcome_then_close("binary", b"\x00\x01")))[0] == 1003
            too_large = "x" * (limits.max_message_bytes + 1)
            assert (await aio.run(after_welcome_then_close("big", too_large)))[0] == 1009

            answers = await aio.run(answers_to_bad_frames())
            assert [(a["type"], a.get("code"), a.get("ref")) for a in answers] == [
                ("error", "bad_request", None),
                ("error", "bad_request", 7),
                ("error", "unknown_type", "t"),
                ("error", "bad_request", None),
                ("pong", None, None),
            ]

            await wait_until(lambda: hub.connection_count == 1, "only the bystander to remain")
            assert (await aio.run(over_the_connection_limit()))[0] == 1013

            for origin in ("http://evil.example", None):
                code, reason = await aio.run(refused_origin(origin))
                assert (code, reason) == (1008, "origin not allowed")

            await wait_until(lambda: hub.connection_count == 1, "the fillers to be gone")
            answers, (code, reason) = await aio.run(flood())
            errors = [a for a in answers if a["type"] == "error"]
            assert 1 <= len(errors) <= limits.rate_limit_strikes - 1
            assert all(e["code"] == "rate_limited" for e in errors)
            assert all(a == {"type": "pong"} for a in answers if a["type"] != "error")
            assert (code, reason) == (4003, "rate limit exceeded repeatedly")

            assert await aio.run(wrong_path()) == 404

            stop.set()
            await wait_until(lambda: len(offsets) == published, "the bystander to catch up")
            assert offsets == list(range(1, published + 1))
            assert hub.metrics.clients["bystander"].connects == 1
            print(
                f"\nbystander: {published} messages, worst latency {max(latencies) * 1000:.0f} ms"
            )
            assert max(latencies) < 1.0
            disconnects = hub.metrics.disconnects
            assert (disconnects[1003], disconnects[1009], disconnects[4003]) == (1, 1, 1)
            assert hub.metrics.connections_failed == 5 + 1 + 2  # 4000s, 1013, 1008s
            await aio.run(bystander.close())


# --------------------------------------------------------------------------- 8. plain clients


async def test_a_client_without_the_subprotocol_gets_one_object_per_frame(
    aio: AsyncioThread,
) -> None:
    messages_n = 100
    cfg = config(limits={"write_delay": 0.005, "max_queue": 1000})
    with trio.fail_after(20):
        async with serving(cfg) as (hub, url):

            async def connect_both() -> tuple[HubClient, HubClient]:
                subscribe: dict[str, Any] = {"news": None}
                plain = await HubClient.connect(
                    url, "plain", subscribe=subscribe, subprotocol=False, record_frames=True
                )
                batched = await HubClient.connect(
                    url, "batched", subscribe=subscribe, record_frames=True
                )
                await plain.welcome()
                await batched.welcome()
                return plain, batched

            plain, batched = await aio.run(connect_both())
            assert plain.websocket.subprotocol is None
            assert batched.websocket.subprotocol == "wshub.v1"
            for n in range(messages_n):
                await hub.publish("news", {"n": n, "text": "line one\nline two"})
            for client in (plain, batched):
                got = await aio.run(client.messages(messages_n))
                assert [m["data"]["n"] for m in got] == list(range(messages_n))
                assert all(m["data"]["text"] == "line one\nline two" for m in got)
            assert plain.objects_per_frame == [1] * (1 + messages_n)
            # The same burst was batched for the wshub.v1 client, so batching was possible.
            assert max(batched.objects_per_frame) > 1
            await aio.run(close_all([plain, batched]))
