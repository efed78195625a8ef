"""Figures that tell the truth (issue 16): live latency only, honest close codes, the server
that runs the hub, timeouts by kind, the longest queue, retry success, mean latency."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import hypercorn  # noqa: F401  # this process hosts hypercorn, as `wshub serve` does
import pytest
import trio
import trio.testing
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from serve_helpers import Server
from test_asgi import KEY, FakeServer, hub_config, serving, websocket
from wshub import serve_websocket
from wshub.core.config import HubConfig
from wshub.core.exposition import HubCollector
from wshub.core.metrics import PEER_CLOSED
from wshub.core.protocol import Position
from wshub.hub.hooks import Identity
from wshub.hub.hub import open_hub
from wshub.servers.fast import serve_fast
from wshub.testing import connect_memory

CONFIG = HubConfig.testing()  # hello_timeout 1, heartbeat interval 2 + timeout 1


async def test_a_replay_is_delivered_but_not_timed_as_latency(autojump_clock: Any) -> None:
    async with open_hub(CONFIG.merged({"metrics": {"flush_interval": 1000.0}})) as hub:
        for n in range(5):
            await hub.publish("news", n)
        await trio.sleep(30.0)  # the resume comes 30 s after the messages were stored
        client = await connect_memory(hub, "late", subscribe={"news": Position(0, None)})
        got = [await client.receive() for _ in range(6)]
        assert [frame["type"] for frame in got] == ["welcome"] + ["message"] * 5
        await trio.testing.wait_all_tasks_blocked()  # the writer counts once its send returns
        metrics = hub.metrics
        assert (metrics.replayed, metrics.delivered, metrics.latency_count) == (5, 5, 0)
        assert hub.stats()["latency"]["p99"] is None  # not 30 s: nothing live was timed
        await hub.publish("news", 5)
        assert (await client.receive())["offset"] == 6
        await trio.testing.wait_all_tasks_blocked()
        assert (metrics.delivered, metrics.latency_count) == (6, 1)
        assert metrics.latency_sum == 0.0  # sent at once, on the mock clock
        assert hub.stats()["latency"]["mean"] == 0.0
        await client.aclose()


async def test_timeouts_are_counted_by_kind_at_their_exact_times(autojump_clock: Any) -> None:
    async with open_hub(CONFIG) as hub:
        silent = await connect_memory(hub)  # never says hello
        code, reason = await silent.wait_closed()
        assert (code, reason.endswith("no hello within 1 seconds")) == (4000, True)
        assert trio.current_time() == CONFIG.limits.hello_timeout
        assert hub.metrics.timeouts == {"hello": 1}
        deaf = await connect_memory(hub, "deaf", answer_pings=False)
        assert (await deaf.receive())["type"] == "welcome"
        welcomed = trio.current_time()
        code, _ = await deaf.wait_closed()
        assert code == 4004
        beat = CONFIG.heartbeat
        assert trio.current_time() == welcomed + beat.interval + beat.timeout
        assert hub.metrics.timeouts == {"hello": 1, "heartbeat": 1}
        assert hub.stats()["connections"]["timeouts"] == {"hello": 1, "heartbeat": 1}


async def test_the_longest_queue_seen_is_kept(autojump_clock: Any) -> None:
    async with open_hub(CONFIG) as hub:
        stuck = await connect_memory(hub, "stuck", subscribe={"news": None}, buffer=0)
        await trio.testing.wait_all_tasks_blocked()  # its writer holds the welcome frame
        for n in range(7):
            await hub.publish("news", n)
        assert hub.metrics.queue_depth_max == 1  # only the welcome reached the writer yet
        assert (await stuck.receive())["type"] == "welcome"
        for _ in range(7):
            await stuck.receive()
        assert hub.metrics.queue_depth_max == 7
        assert hub.stats()["queues"]["depth_max"] == 7
        await stuck.aclose()


async def test_the_retry_success_ratio_counts_retries_that_saved_a_call(
    autojump_clock: Any,
) -> None:
    failures = {"flaky": 1, "down": 99}

    async def authenticate(hello: Any, request: Any) -> Identity:
        await trio.lowlevel.checkpoint()
        if failures.get(hello.client_id, 0) > 0:
            failures[hello.client_id] -= 1
            raise ConnectionError("the auth service hiccuped")
        return Identity(hello.client_id)

    config = CONFIG.merged({"breaker": {"retries": 1, "failure_threshold": 10}})
    async with open_hub(config, authenticate=authenticate) as hub:
        assert hub.stats()["retry_success_ratio"] is None
        flaky = await connect_memory(hub, "flaky")
        assert (await flaky.receive())["type"] == "welcome"  # its one retry succeeded
        assert hub.stats()["retry_success_ratio"] == 1.0
        down = await connect_memory(hub, "down")
        assert (await down.wait_closed())[0] == 1013  # its retry failed too
        assert hub.metrics.retry_attempts["recovered"] == 1
        assert hub.metrics.retry_attempts["exhausted"] == 1
        assert hub.stats()["retry_success_ratio"] == 0.5
        await flaky.aclose()


# --------------------------------------------------------------------------- close codes


async def test_what_the_hub_decided_is_counted_whatever_the_server_reports() -> None:
    """Under ASGI: the drain's 1001 is the hub's; a client's own close is PEER_CLOSED, since
    hypercorn reports 1006 for a clean 1000 and a lost connection alike."""
    async with serving(hub_config()) as (hub, app):
        async with websocket(app) as ws:  # leaves with a websocket.disconnect, code 1000
            assert (await ws.next())["type"] == "websocket.accept"
            await ws.to_app.send({"type": "websocket.receive", "text": hello_text("alice")})
            assert json.loads((await ws.next())["text"])["type"] == "welcome"
        fake = FakeServer()
        async with trio.open_nursery() as nursery:
            from test_asgi import websocket_scope

            nursery.start_soon(app, websocket_scope(), fake.receive, fake.send)
            await fake.to_app.send({"type": "websocket.connect"})
            assert (await fake.next())["type"] == "websocket.accept"
            await fake.to_app.send({"type": "websocket.receive", "text": hello_text("bob")})
            assert json.loads((await fake.next())["text"])["type"] == "welcome"
            await fake.to_app.send({"type": "websocket.disconnect", "code": 1006})
        assert hub.metrics.disconnects == {PEER_CLOSED: 2}
        async with websocket(app) as ws:
            assert (await ws.next())["type"] == "websocket.accept"
            await ws.to_app.send({"type": "websocket.receive", "text": hello_text("carol")})
            assert json.loads((await ws.next())["text"])["type"] == "welcome"
            await hub.drain()  # the hub closes with 1001 first
            assert (await ws.next()) == {
                "type": "websocket.close",
                "code": 1001,
                "reason": "the server is shutting down",
            }
        assert hub.metrics.disconnects == {PEER_CLOSED: 2, 1001: 1}
        assert hub.stats()["connections"]["disconnects"] == {"1001": 1, "peer": 2}


async def test_a_server_that_reports_the_peers_code_keeps_it(autojump_clock: Any) -> None:
    async with open_hub(CONFIG) as hub:
        client = await connect_memory(hub, "alice")
        assert (await client.receive())["type"] == "welcome"
        await client.aclose(1000)
        await trio.testing.wait_all_tasks_blocked()
        assert hub.metrics.disconnects == {1000: 1}


def hello_text(client_id: str) -> str:
    return json.dumps({"type": "hello", "client_id": client_id, "token": KEY})


# --------------------------------------------------------------------------- which server


async def test_the_stats_say_which_server_carries_the_hub() -> None:
    async with open_hub(CONFIG) as hub:
        assert hub.stats()["server"] is None  # in-memory connections only
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
            assert hub.stats()["server"] == "trio-websocket"
            await nursery.start(serve_fast, hub, "127.0.0.1", 0)
            assert hub.stats()["server"] == "trio-websocket, fast"
            nursery.cancel_scope.cancel()
    app_config = hub_config()
    async with serving(app_config) as (hub, app):
        fake = FakeServer()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app, {"type": "lifespan"}, fake.receive, fake.send)
            await fake.to_app.send({"type": "lifespan.startup"})
            assert await fake.next() == {"type": "lifespan.startup.complete"}
            assert hub.stats()["server"] == "hypercorn"  # the ASGI server this process runs
            await fake.to_app.send({"type": "lifespan.shutdown"})
            assert await fake.next() == {"type": "lifespan.shutdown.complete"}


#: What each server reports for a client's own clean close (1000): hypercorn 0.18 says 1006
#: for it as for a lost connection, so the hub counts it as ``peer``; the fast server reads it.
CLIENT_CLOSE_AS_COUNTED = {"hypercorn": "peer", "fast": "1000"}


async def test_the_embedded_server_answers_a_plain_get_of_the_path_with_400() -> None:
    """docs/protocol.md, What each bad input gets: ``wshub serve``'s servers answer 426
    (tests/test_asgi.py); ``serve_websocket`` leaves the failed handshake to trio-websocket."""
    async with open_hub(CONFIG) as hub, trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive_some(4096)
        assert answer.startswith(b"HTTP/1.1 400 ")
        await stream.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["hypercorn", "fast"])
def test_wshub_serve_names_its_server_counts_close_codes_honestly_and_times_live_only(
    kind: str, tmp_path: Any
) -> None:
    """A real ``wshub serve --server KIND`` (development: every delivery sampled): the stats
    name the server; a disconnect is counted under the code the hub decided (1003 for a binary
    frame) or, for a client's own close, the client's code where the server reports it truly,
    else ``peer``, never 1006; a late resume's replays are counted, not timed as latency."""
    from serve_helpers import hello, receive_objects, wshub_serve

    server: Server = wshub_serve(
        tmp_path / "serve.log", "--server", kind, env={"WSHUB_METRICS__LOG": "false"}
    )
    try:
        stats = httpx.get(f"{server.http}/api/stats", timeout=5.0).json()
        assert stats["server"] == kind
        assert stats["latency"]["mean"] is None and stats["queues"]["depth_max"] >= 0
        with connect(f"{server.ws}/ws", open_timeout=5) as clean:
            clean.send(hello("clean"))
            assert receive_objects(clean, 1)[0]["type"] == "welcome"
        assert clean.close_code == 1000  # what this client sent
        with connect(f"{server.ws}/ws", open_timeout=5) as binary:
            binary.send(hello("binary"))
            assert receive_objects(binary, 1)[0]["type"] == "welcome"
            binary.send(b"\x00")
            with pytest.raises(ConnectionClosed):
                binary.recv(5)
        assert binary.close_code == 1003  # what the hub decided
        deadline = time.monotonic() + 10
        while sum((disconnects := stats["connections"]["disconnects"]).values()) < 2:
            assert time.monotonic() < deadline, disconnects
            time.sleep(0.05)
            stats = httpx.get(f"{server.http}/api/stats", timeout=5.0).json()
        assert disconnects == {"1003": 1, CLIENT_CLOSE_AS_COUNTED[kind]: 1}
        prometheus = httpx.get(f"{server.http}/metrics", timeout=5.0).text
        assert f'wshub_disconnects_total{{code="{CLIENT_CLOSE_AS_COUNTED[kind]}"}} 1.0' in (
            prometheus
        )
        assert 'code="1006"' not in prometheus

        def publish(ws: Any, n: int) -> None:
            ws.send(json.dumps({"type": "publish", "stream": "news", "data": n, "ref": n}))

        with connect(f"{server.ws}/ws", open_timeout=5) as publisher:
            publisher.send(hello("publisher"))
            assert receive_objects(publisher, 1)[0]["type"] == "welcome"
            for n in range(5):
                publish(publisher, n)
            assert [a["offset"] for a in receive_objects(publisher, 5)] == [1, 2, 3, 4, 5]
            with connect(f"{server.ws}/ws", open_timeout=5) as late:  # a tail --from 0
                late.send(hello("late", {"news": {"offset": 0}}))
                replayed = receive_objects(late, 6)
                assert [f["type"] for f in replayed] == ["welcome"] + ["message"] * 5
                publish(publisher, 5)
                assert receive_objects(late, 1)[0]["offset"] == 6  # live
                deadline = time.monotonic() + 10
                while (stats := httpx.get(f"{server.http}/api/stats", timeout=5.0).json())[
                    "messages"
                ]["delivered"] < 6:  # counted once the write returns
                    assert time.monotonic() < deadline, stats["messages"]
                    time.sleep(0.05)
        assert (stats["messages"]["replayed"], stats["messages"]["delivered"]) == (5, 6)
        assert stats["latency"]["count"] == 1  # the live one only
    finally:
        server.stop()


# --------------------------------------------------------------------------- the docs


def documented_metric_names() -> set[str]:
    """The names in the metrics table of docs/operations.md."""
    text = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    table = text[text.index("\n## Metrics\n") : text.index("Suggested alerts")]
    return set(re.findall(r"^\| `(wshub_\w+)` \|", table, re.M))


async def test_every_family_served_is_in_the_operations_metrics_table_and_no_other() -> None:
    async with open_hub(CONFIG) as hub:
        families = list(HubCollector(hub.metrics).collect())
    # prometheus_client names a counter family without its ``_total``; its samples have it.
    served = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    assert len(served) == len(families)
    assert served == documented_metric_names()
    issue_16 = {"wshub_connection_timeouts_total", "wshub_queue_depth_max"}
    assert issue_16 <= served


def documented_stats_fields() -> set[str]:
    """The fields named in the first column of the stats table of docs/operations.md."""
    text = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    table = text[text.index("\n## The stats report\n") : text.index("\n## Metrics\n")]
    names = set()
    for first_column in re.findall(r"^\| ([^|]+) \|", table, re.M):
        names |= set(re.findall(r"`(\w+)`", first_column))
    return names


async def test_every_stats_field_is_in_the_operations_stats_table_and_no_other() -> None:
    async with open_hub(CONFIG) as hub:
        fields = set(hub.stats()) | {"series"}  # ``series`` with ``?series=true``
    assert fields == documented_stats_fields()
    assert {"server", "latency", "retry_success_ratio"} <= fields
