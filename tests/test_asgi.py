"""The ASGI app: HTTP endpoints and the WebSocket adapter, in-process and under real hypercorn.

In-process tests call the app directly with fake ``receive``/``send`` (cheap and exact); the
rest run ``wshub serve`` and plain ``hypercorn --worker-class trio wshub.asgi:app`` in
subprocesses and talk to them with httpx and the ``websockets`` library.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from serve_helpers import (
    SUBPROTOCOL,
    Server,
    hello,
    hypercorn,
    objects,
    receive_objects,
    wshub_serve,
)
from wshub.core.config import HubConfig
from wshub.hub.hub import Hub, open_hub
from wshub.servers.asgi import create_app
from wshub.servers.http_messages import Message

KEY = "s3cret-key"
AUTH = {"authorization": f"Bearer {KEY}"}

# Every Prometheus name DESIGN.md promises (counters by their full sample name).
DESIGN_METRICS = [
    "wshub_connections_active",
    "wshub_connections_total",
    "wshub_connections_failed_total",
    "wshub_reconnections_total",
    "wshub_disconnects_total",
    "wshub_messages_published_total",
    "wshub_messages_delivered_total",
    "wshub_messages_deduplicated_total",
    "wshub_messages_expired_total",
    "wshub_messages_dropped_total",
    "wshub_queue_depth",
    "wshub_queue_overflows_total",
    "wshub_resumes_total",
    "wshub_replayed_messages_total",
    "wshub_retry_attempts_total",
    "wshub_breaker_state",
    "wshub_breaker_transitions_total",
    "wshub_cleanup_runs_total",
    "wshub_cleanup_removed_total",
    "wshub_delivery_latency_seconds",
    "wshub_broker_calls_total",
    "wshub_broker_gap_fills_total",
    "wshub_node_info",
]


def hub_config(**sections: dict[str, Any]) -> HubConfig:
    """The testing preset with an API key and some keys changed."""
    return HubConfig.testing().merged({"admin": {"api_key": KEY}, **sections})


@asynccontextmanager
async def serving(config: HubConfig | None = None) -> AsyncIterator[tuple[Hub, Any]]:
    """A running hub and an app serving it."""
    async with open_hub(config or hub_config()) as hub:
        yield hub, create_app(hub=hub)


# --------------------------------------------------------------------------- fake ASGI HTTP


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    reads: int  # how many times the app called receive()

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json"
        return orjson.loads(self.body)


async def call(
    app: Any,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    query: str = "",
    chunks: Sequence[bytes] = (b"",),
) -> Reply:
    """One HTTP request to ``app``; the body arrives in ``chunks``."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8765),
    }
    pending = list(chunks)
    reads = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with trio.fail_after(5):
        await app(scope, receive, send)
    start, body = sent
    assert start["type"] == "http.response.start" and body["type"] == "http.response.body"
    names = [name.decode() for name, _ in start["headers"]]
    assert len(names) == len(set(names)), names
    return Reply(
        start["status"],
        {name.decode(): value.decode() for name, value in start["headers"]},
        body["body"],
        reads,
    )


# --------------------------------------------------------------------------- in-process: health


async def test_health_is_ok_until_the_hub_drains_then_503() -> None:
    async with serving() as (hub, app):
        reply = await call(app, "GET", "/health")
        assert (reply.status, reply.json()) == (200, {"status": "ok"})
        websocket_health = await call(app, "GET", "/health/websocket")
        assert websocket_health.status == 200
        body = websocket_health.json()
        assert body["status"] == "healthy"
        assert {"timestamp_utc", "timestamp_local", "connections", "circuit_breakers"} <= set(body)
        await hub.drain()
        reply = await call(app, "GET", "/health")
        assert (reply.status, reply.json()) == (503, {"status": "shutting_down"})
        websocket_health = await call(app, "GET", "/health/websocket")
        assert websocket_health.status == 503
        assert websocket_health.json()["status"] == "shutting_down"


async def test_websocket_health_is_503_while_a_breaker_is_forced_open() -> None:
    async with serving() as (hub, app):
        breaker = hub.breakers.get("authenticate")
        breaker.force_open()
        reply = await call(app, "GET", "/health/websocket")
        assert reply.status == 503
        assert reply.json()["status"] == "degraded"
        assert "circuit breaker 'authenticate' is open" in reply.json()["reasons"]
        assert (await call(app, "GET", "/health")).status == 200  # liveness is unaffected
        breaker.reset()
        assert (await call(app, "GET", "/health/websocket")).status == 200


async def test_an_app_whose_hub_is_not_running_answers_503() -> None:
    app = create_app(hub_config())
    with pytest.raises(RuntimeError, match="not running"):
        _ = app.hub
    reply = await call(app, "GET", "/health")
    assert reply.status == 503
    assert reply.json() == {"error": "the hub is not running", "status": "not_running"}
    assert (await call(app, "GET", "/nowhere")).status == 404


# --------------------------------------------------------------------------- in-process: publish


async def test_publish_answers_the_result_and_reports_duplicates() -> None:
    async with serving() as (hub, app):
        body = orjson.dumps({"stream": "news", "data": {"title": "hi"}, "id": "evt-1"})
        first = await call(app, "POST", "/api/publish", headers=AUTH, chunks=[body])
        assert (first.status, first.json()) == (
            200,
            {"stream": "news", "offset": 1, "id": "evt-1", "duplicate": False},
        )
        again = await call(app, "POST", "/api/publish", headers=AUTH, chunks=[body[:5], body[5:]])
        assert again.json() == {"stream": "news", "offset": 1, "id": "evt-1", "duplicate": True}
        direct = orjson.dumps({"stream": "@alice", "data": 1})
        reply = await call(app, "POST", "/api/publish", headers=AUTH, chunks=[direct])
        assert reply.json()["stream"] == "@alice" and reply.json()["offset"] == 1
        assert len(hub.histories.get_or_create("news")) == 1


async def test_publish_reusing_an_id_for_other_data_is_409() -> None:
    async with serving() as (hub, app):
        first = orjson.dumps({"stream": "news", "data": 1, "id": "evt-1"})
        assert (await call(app, "POST", "/api/publish", headers=AUTH, chunks=[first])).status == 200
        other = orjson.dumps({"stream": "news", "data": 2, "id": "evt-1"})
        reply = await call(app, "POST", "/api/publish", headers=AUTH, chunks=[other])
        assert reply.status == 409
        assert reply.json()["status"] == "conflict" and reply.json()["offset"] == 1
        assert len(hub.histories.get_or_create("news")) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "the body must be a JSON object"),
        (b'{"data": 1}', "publish.stream is required"),
        (b'{"stream": 5, "data": 1}', "publish.stream must be a string, got 5"),
        (b'{"stream": "bad name!", "data": 1}', "publish.stream must be a topic"),
        (b'{"stream": "news"}', "publish.data is required"),
        (b'{"stream": "news", "data": 1, "id": ""}', "publish.id must be a string of 1 to 200"),
        (b'{"stream": "$sys.metrics", "data": 1}', "cannot publish to '$sys.metrics'"),
    ],
)
async def test_publish_refuses_a_bad_body_with_400(body: bytes, message: str) -> None:
    async with serving() as (_, app):
        reply = await call(app, "POST", "/api/publish", headers=AUTH, chunks=[body])
        assert reply.status == 400
        assert message in reply.json()["error"]


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({}, 401, "missing credential"),
        ({"authorization": f"Basic {KEY}"}, 401, "missing credential"),
        ({"authorization": "Bearer wrong"}, 403, "invalid API key"),
        ({"authorization": "Bearer s3cret-kéy"}, 403, "invalid API key"),
    ],
)
async def test_publish_needs_the_api_key(
    headers: dict[str, str], status: int, message: str
) -> None:
    async with serving() as (_, app):
        body = b'{"stream": "news", "data": 1}'
        reply = await call(app, "POST", "/api/publish", headers=headers, chunks=[body])
        assert reply.status == status
        assert message in reply.json()["error"]
        assert reply.reads == 0  # the body of a refused caller is never read
        if status == 401:
            assert reply.headers["www-authenticate"] == 'Bearer realm="wshub"'


async def test_publish_is_refused_with_413_before_reading_past_the_limit() -> None:
    async with serving(hub_config(limits={"max_message_bytes": 100})) as (_, app):
        declared = await call(
            app, "POST", "/api/publish", headers={**AUTH, "content-length": "101"}
        )
        assert declared.status == 413
        assert declared.json() == {"error": "the body exceeds limits.max_message_bytes (100 bytes)"}
        assert declared.reads == 0
        chunks = [b"x" * 60, b"x" * 60, b"x" * 60, b"x" * 60]
        streamed = await call(app, "POST", "/api/publish", headers=AUTH, chunks=chunks)
        assert streamed.status == 413
        assert streamed.reads == 2  # stopped at the chunk that crossed the limit


async def test_publish_is_503_without_a_configured_key_and_while_draining() -> None:
    async with serving(HubConfig.testing()) as (_, app):
        reply = await call(app, "POST", "/api/publish", headers=AUTH, chunks=[b"{}"])
        assert reply.status == 503
        assert "neither admin.api_key nor [auth] is configured" in reply.json()["error"]
    async with serving() as (hub, app):
        await hub.drain()
        body = b'{"stream": "news", "data": 1}'
        reply = await call(app, "POST", "/api/publish", headers=AUTH, chunks=[body])
        assert (reply.status, reply.json()) == (503, {"error": "the server is shutting down"})


# --------------------------------------------------------------------------- in-process: the rest


@pytest.mark.parametrize("path", ["/metrics", "/api/stats"])
async def test_monitoring_endpoints_need_the_key_when_protected(path: str) -> None:
    async with serving() as (_, app):
        assert (await call(app, "GET", path)).status == 401
        assert (await call(app, "GET", path, headers={"authorization": "Bearer no"})).status == 403
        assert (await call(app, "GET", path, query="api_key=no")).status == 403
        assert (await call(app, "GET", path, headers=AUTH)).status == 200
        assert (await call(app, "GET", path, query=f"api_key={KEY}")).status == 200
    async with serving(hub_config(admin={"protect_monitoring": False})) as (_, app):
        assert (await call(app, "GET", path)).status == 200


async def test_the_dashboard_page_holds_no_figures_and_is_served_with_its_login_form() -> None:
    async with serving() as (_, app):
        reply = await call(app, "GET", "/dashboard")
        assert reply.status == 200
        assert b'<form id="login"' in reply.body


async def test_health_endpoints_stay_open_when_monitoring_is_protected() -> None:
    async with serving() as (_, app):
        assert (await call(app, "GET", "/health")).status == 200
        assert (await call(app, "GET", "/health/websocket")).status == 200
        assert (await call(app, "GET", "/client.js")).status in {200, 404}


async def test_metrics_negotiate_openmetrics_by_accept_header() -> None:
    async with serving() as (_, app):
        text = await call(app, "GET", "/metrics", headers=AUTH)
        assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
        names = {family.name for family in text_string_to_metric_families(text.body.decode())}
        assert {name.removesuffix("_total") for name in DESIGN_METRICS} <= names
        accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        open_metrics = await call(app, "GET", "/metrics", headers={**AUTH, "accept": accept})
        assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
        assert open_metrics.body.endswith(b"# EOF\n")


async def test_stats_include_the_series_only_when_asked() -> None:
    async with serving() as (hub, app):
        hub.flush_metrics()
        plain = (await call(app, "GET", "/api/stats", headers=AUTH)).json()
        assert "series" not in plain and plain["status"] == "healthy"
        with_series = await call(app, "GET", "/api/stats", headers=AUTH, query="series=true")
        assert len(with_series.json()["series"]) == 1


async def test_unknown_paths_are_404_and_wrong_methods_405() -> None:
    async with serving() as (_, app):
        missing = await call(app, "GET", "/nowhere")
        assert (missing.status, missing.json()) == (404, {"error": "not found", "path": "/nowhere"})
        wrong = await call(app, "POST", "/health")
        assert wrong.status == 405
        assert wrong.headers["allow"] == "GET, HEAD"
        assert wrong.json()["error"] == "method POST not allowed on /health"
        assert (await call(app, "GET", "/api/publish", headers=AUTH)).status == 405
        head = await call(app, "HEAD", "/health")
        assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "15")


async def test_the_websocket_path_without_an_upgrade_is_426_not_404() -> None:
    async with serving() as (_, app):
        for method in ("GET", "POST"):
            plain = await call(app, method, "/ws")
            assert plain.status == 426, method
            assert plain.headers["upgrade"] == "websocket"
            assert plain.json() == {
                "error": "/ws is the WebSocket endpoint: connect with a WebSocket client "
                "(Upgrade: websocket)",
                "path": "/ws",
            }
    async with serving(hub_config(server={"path": "/hub"})) as (_, app):
        assert (await call(app, "GET", "/hub")).status == 426
        assert (await call(app, "GET", "/ws")).status == 404


def test_under_asyncio_the_lifespan_refuses_to_start_naming_the_trio_worker() -> None:
    import asyncio

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(create_app(hub_config())({"type": "lifespan"}, receive, send))
    assert sent == [
        {
            "type": "lifespan.startup.failed",
            "message": "wshub runs on Trio, not asyncio: start hypercorn with --worker-class "
            "trio (hypercorn --worker-class trio wshub.asgi:app), or use wshub serve",
        }
    ]


async def test_cors_header_and_preflight_when_configured() -> None:
    async with serving() as (_, app):
        reply = await call(app, "GET", "/health")
        assert "access-control-allow-origin" not in reply.headers
        assert (await call(app, "OPTIONS", "/api/publish")).status == 405
    config = hub_config(server={"cors_origin": "https://admin.example.com"})
    async with serving(config) as (_, app):
        reply = await call(app, "GET", "/health")
        assert reply.headers["access-control-allow-origin"] == "https://admin.example.com"
        preflight = await call(app, "OPTIONS", "/api/publish")
        assert preflight.status == 204 and preflight.body == b""
        assert preflight.headers["access-control-allow-origin"] == "https://admin.example.com"
        assert preflight.headers["access-control-allow-methods"] == "OPTIONS, POST"
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        assert (await call(app, "OPTIONS", "/health")).status == 405  # only /api/* is preflighted


async def test_static_files_are_served_from_the_package_or_404(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "client.js").write_text("export const x = 1;\n")
    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)
    async with serving(hub_config(admin={"protect_monitoring": False})) as (_, app):
        script = await call(app, "GET", "/client.js")
        assert script.status == 200
        assert script.headers["content-type"] == "application/javascript; charset=utf-8"
        assert script.body == b"export const x = 1;\n"
        page = await call(app, "GET", "/dashboard")
        assert page.status == 404
        assert page.json() == {
            "error": "static file dashboard.html is not installed",
            "path": "/dashboard",
        }


# --------------------------------------------------------------------------- in-process: lifespan


class FakeServer:
    """The server's side of a lifespan or WebSocket call: push events, read what the app sent."""

    def __init__(self) -> None:
        self.to_app, self._app_receive = trio.open_memory_channel[Message](math.inf)
        self._app_send, self.from_app = trio.open_memory_channel[Message](math.inf)

    async def receive(self) -> Message:
        return await self._app_receive.receive()

    async def send(self, message: Message) -> None:
        await self._app_send.send(message)

    async def next(self) -> Message:
        with trio.fail_after(5):
            return await self.from_app.receive()


async def test_lifespan_runs_the_hub_from_the_environment_and_drains_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WSHUB_PRESET", "testing")
    monkeypatch.setenv("WSHUB_LIMITS__MAX_QUEUE", "7")
    app = create_app()
    server = FakeServer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, {"type": "lifespan"}, server.receive, server.send)
        await server.to_app.send({"type": "lifespan.startup"})
        assert await server.next() == {"type": "lifespan.startup.complete"}
        hub = app.hub
        assert hub.config.limits.max_queue == 7 and not hub.draining
        await server.to_app.send({"type": "lifespan.shutdown"})
        assert await server.next() == {"type": "lifespan.shutdown.complete"}
    assert hub.draining


async def test_lifespan_startup_fails_with_the_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WSHUB_LIMITS__MAX_QUEUE", "-3")
    app = create_app()
    server = FakeServer()
    await server.to_app.send({"type": "lifespan.startup"})
    with trio.fail_after(5):
        await app({"type": "lifespan"}, server.receive, server.send)
    failed = await server.next()
    assert failed == {
        "type": "lifespan.startup.failed",
        "message": "limits.max_queue must be an integer >= 1, got -3",
    }


def test_an_app_takes_a_hub_or_what_builds_one_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        create_app(HubConfig.testing(), hub=object())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- in-process: WebSocket


def websocket_scope(path: str = "/ws", subprotocols: Sequence[str] = ("wshub.v1",)) -> Any:
    return {
        "type": "websocket",
        "path": path,
        "query_string": b"token=x",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50001),
        "subprotocols": list(subprotocols),
        "extensions": {"websocket.http.response": {}},
    }


@asynccontextmanager
async def websocket(
    app: Any, path: str = "/ws", subprotocols: Sequence[str] = ("wshub.v1",)
) -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, websocket_scope(path, subprotocols), fake.receive, fake.send)
        await fake.to_app.send({"type": "websocket.connect"})
        yield fake
        with trio.fail_after(5):  # the app ends on its own once the connection is closed
            await fake.to_app.send({"type": "websocket.disconnect", "code": 1000})


async def test_websocket_serves_hello_and_live_messages_then_closes_1009_on_a_big_frame() -> None:
    config = hub_config(limits={"max_message_bytes": 200})
    async with serving(config) as (hub, app), websocket(app) as ws:
        assert await ws.next() == {"type": "websocket.accept", "subprotocol": "wshub.v1"}
        await ws.to_app.send({"type": "websocket.receive", "text": hello("alice", {"news": None})})
        welcome = objects((await ws.next())["text"])[0]
        assert welcome["type"] == "welcome" and set(welcome["streams"]) == {"news", "@alice"}
        result = await hub.publish("news", {"n": 1}, id="m1")
        message = objects((await ws.next())["text"])[0]
        assert message == {
            "type": "message",
            "stream": "news",
            "offset": result.offset,
            "id": "m1",
            "data": {"n": 1},
            "ts": message["ts"],
        }
        await ws.to_app.send({"type": "websocket.receive", "text": "é" * 101})  # 202 bytes
        close = await ws.next()
        assert close["type"] == "websocket.close" and close["code"] == 1009
        assert "limits.max_message_bytes (200 bytes)" in close["reason"]


async def test_websocket_without_subprotocol_binary_frame_closes_1003() -> None:
    async with serving() as (_, app), websocket(app, subprotocols=()) as ws:
        assert await ws.next() == {"type": "websocket.accept", "subprotocol": None}
        await ws.to_app.send({"type": "websocket.receive", "bytes": b"\x00"})
        close = await ws.next()
        assert (close["type"], close["code"]) == ("websocket.close", 1003)


async def test_websocket_is_closed_1001_while_the_hub_drains() -> None:
    async with serving() as (hub, app):
        await hub.drain()
        async with websocket(app) as ws:
            assert (await ws.next())["type"] == "websocket.accept"
            close = await ws.next()
            assert (close["code"], close["reason"]) == (1001, "the server is shutting down")


async def test_websocket_on_another_path_is_refused_with_404() -> None:
    async with serving() as (_, app):
        fake = FakeServer()
        await fake.to_app.send({"type": "websocket.connect"})
        with trio.fail_after(5):
            await app(websocket_scope("/other"), fake.receive, fake.send)
        start, body = await fake.next(), await fake.next()
        assert (start["type"], start["status"]) == ("websocket.http.response.start", 404)
        assert orjson.loads(body["body"]) == {"error": "not found", "path": "/other"}


# --------------------------------------------------------------------------- real: wshub serve


@pytest.fixture(scope="module", params=["hypercorn", "fast"])
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    """``wshub serve --server KIND`` with an API key, shared by this module's real-server
    tests: the endpoints answer the same on both servers."""
    log = tmp_path_factory.mktemp("serve") / "wshub.log"
    env = {"WSHUB_ADMIN__API_KEY": KEY, "WSHUB_METRICS__LOG": "false"}
    running = wshub_serve(log, "--preset", "development", "--server", request.param, env=env)
    yield running
    running.stop()


def test_real_health_endpoints_answer(server: Server) -> None:
    health = httpx.get(f"{server.http}/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert health.headers["content-type"] == "application/json"
    websocket_health = httpx.get(f"{server.http}/health/websocket")
    assert websocket_health.status_code == 200
    assert websocket_health.json()["status"] == "healthy"


def test_real_metrics_hold_every_design_name_in_both_formats(server: Server) -> None:
    assert httpx.get(f"{server.http}/metrics").status_code == 401
    text = httpx.get(f"{server.http}/metrics", headers=AUTH)
    assert text.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(text.text)}
    assert {name.removesuffix("_total") for name in DESIGN_METRICS} <= set(families)
    assert families["wshub_delivery_latency_seconds"].type == "histogram"
    assert families["wshub_connections_active"].type == "gauge"
    accept = {**AUTH, "accept": "application/openmetrics-text; version=1.0.0"}
    open_metrics = httpx.get(f"{server.http}/metrics", headers=accept)
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    parsed = openmetrics_families(open_metrics.text)  # type: ignore[no-untyped-call]
    names = {family.name for family in parsed}
    assert {name.removesuffix("_total") for name in DESIGN_METRICS} <= names


def test_real_stats_answer_json(server: Server) -> None:
    stats = httpx.get(f"{server.http}/api/stats", params={"series": "true"}, headers=AUTH)
    assert stats.status_code == 200
    assert {"status", "messages", "clients", "series"} <= set(stats.json())
    by_query = httpx.get(f"{server.http}/api/stats", params={"api_key": KEY})
    assert by_query.status_code == 200 and "series" not in by_query.json()


def test_real_publish_reaches_a_subscribed_websocket_client(server: Server) -> None:
    with connect(f"{server.ws}/ws", subprotocols=[SUBPROTOCOL], open_timeout=5) as ws:
        assert ws.subprotocol == "wshub.v1"
        ws.send(hello("reader-1", {"real.news": None}))
        (welcome,) = receive_objects(ws, 1)
        assert welcome["type"] == "welcome" and "real.news" in welcome["streams"]
        reply = httpx.post(
            f"{server.http}/api/publish",
            headers=AUTH,
            json={"stream": "real.news", "data": {"title": "hello"}, "id": "real-1"},
        )
        assert reply.status_code == 200
        assert reply.json() == {
            "stream": "real.news",
            "offset": 1,
            "id": "real-1",
            "duplicate": False,
        }
        (message,) = receive_objects(ws, 1)
        assert message == {
            "type": "message",
            "stream": "real.news",
            "offset": 1,
            "id": "real-1",
            "data": {"title": "hello"},
            "ts": message["ts"],
        }
        assert isinstance(message["ts"], int)


def test_real_publish_refusals(server: Server) -> None:
    url = f"{server.http}/api/publish"
    good = {"stream": "news", "data": 1}
    assert httpx.post(url, json=good).status_code == 401
    assert httpx.post(url, json=good, headers={"authorization": "Bearer x"}).status_code == 403
    bad = httpx.post(url, content=b"{oops", headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error"].startswith("invalid JSON")
    big = {"stream": "news", "data": "x" * 70_000}
    too_large = httpx.post(url, json=big, headers=AUTH)
    assert too_large.status_code == 413
    assert "limits.max_message_bytes (65536 bytes)" in too_large.json()["error"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit applies to what is read
        yield b'{"stream": "news", "data": "'
        for _ in range(10):
            yield b"x" * 8000

    streamed = httpx.post(url, content=chunked(), headers=AUTH)
    assert streamed.status_code == 413


def test_real_unknown_paths_and_methods(server: Server) -> None:
    missing = httpx.get(f"{server.http}/nope")
    assert (missing.status_code, missing.json()) == (404, {"error": "not found", "path": "/nope"})
    assert httpx.delete(f"{server.http}/health").status_code == 405
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{server.ws}/elsewhere", open_timeout=5)
    assert refused.value.response.status_code == 404


def test_real_websocket_path_without_an_upgrade_is_426(server: Server) -> None:
    plain = httpx.get(f"{server.ws.replace('ws://', 'http://')}/ws")
    assert plain.status_code == 426
    assert plain.headers["upgrade"] == "websocket"
    assert "connect with a WebSocket client" in plain.json()["error"]


def test_hypercorn_without_the_trio_worker_stops_at_start_naming_it(tmp_path: Path) -> None:
    """Not a 503 on every request later: the worker fails its lifespan and nothing serves."""
    done = subprocess.run(
        [sys.executable, "-m", "hypercorn", "--bind", "127.0.0.1:0", "wshub.asgi:app"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("WSHUB_")},
    )
    output = done.stdout + done.stderr
    assert "Running on" not in output
    assert "wshub runs on Trio, not asyncio: start hypercorn with --worker-class trio" in output


def test_real_websocket_frame_over_the_limit_is_closed_1009(server: Server) -> None:
    with connect(f"{server.ws}/ws", open_timeout=5, max_size=None) as ws:
        ws.send(hello("big-1"))
        receive_objects(ws, 1)
        ws.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
        with pytest.raises(ConnectionClosed):
            ws.recv(5)
        assert ws.close_code == 1009


# --------------------------------------------------------------------------- real: plain hypercorn


def test_plain_hypercorn_serves_publish_subscribe_and_cuts_with_1001(tmp_path: Path) -> None:
    env = {"WSHUB_PRESET": "development", "WSHUB_ADMIN__API_KEY": KEY, "WSHUB_METRICS__LOG": "0"}
    server = hypercorn(tmp_path / "hypercorn.log", "--graceful-timeout", "1", env=env)
    try:
        with connect(f"{server.ws}/ws", subprotocols=[SUBPROTOCOL], open_timeout=5) as ws:
            ws.send(hello("plain-1", {"news": None}))
            assert receive_objects(ws, 1)[0]["type"] == "welcome"
            body = {"stream": "news", "data": [1, 2], "id": "p-1"}
            reply = httpx.post(f"{server.http}/api/publish", json=body, headers=AUTH)
            assert reply.json() == {"stream": "news", "offset": 1, "id": "p-1", "duplicate": False}
            (message,) = receive_objects(ws, 1)
            assert (message["type"], message["id"], message["data"]) == ("message", "p-1", [1, 2])
            # Hypercorn's own limit is 16 MiB here: the adapter enforces max_message_bytes.
            with connect(f"{server.ws}/ws", open_timeout=5, max_size=None) as big:
                big.send(hello("plain-big"))
                receive_objects(big, 1)
                big.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
                with pytest.raises(ConnectionClosed):
                    big.recv(5)
                assert big.close_code == 1009
            # Nobody drains the hub under plain hypercorn: its deadline cuts the connection,
            # which the hub reports as going away.
            server.stop(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                ws.recv(5)
            assert ws.close_code == 1001
    finally:
        server.stop(signal.SIGKILL)


async def test_lifespan_startup_fails_naming_an_unreadable_public_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    monkeypatch.setenv("WSHUB_AUTH__JWT_PUBLIC_KEY", str(missing))
    monkeypatch.setenv("WSHUB_AUTH__JWT_ALGORITHMS", "ES256")
    app = create_app()
    server = FakeServer()
    await server.to_app.send({"type": "lifespan.startup"})
    with trio.fail_after(5):
        await app({"type": "lifespan"}, server.receive, server.send)
    assert await server.next() == {
        "type": "lifespan.startup.failed",
        "message": f"auth.jwt_public_key: cannot read {str(missing)!r}: No such file or directory",
    }
