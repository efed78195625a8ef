"""Logs: the fields every record carries, the two formats, and the status line's pace."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from serve_helpers import wshub_serve
from wshub.core.config import HubConfig
from wshub.core.logcontext import LogContextFilter
from wshub.hub.hub import open_hub
from wshub.hub.reports import SUMMARY_INTERVAL
from wshub.logs import JSONFormatter, TextFormatter
from wshub.testing import connect_memory

app_logger = logging.getLogger("tests.app")


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    """A JSON handler on the ``wshub`` and ``tests.app`` loggers, at DEBUG."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(LogContextFilter())
    handler.setFormatter(JSONFormatter())
    loggers = [logging.getLogger("wshub"), app_logger]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield out, handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def records(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def test_a_hook_logs_with_the_hub_the_client_and_the_stream(
    autojump_clock: Any, captured: tuple[io.StringIO, logging.Handler]
) -> None:
    out, _ = captured

    async def on_publish(client_id: str, stream: str, data: Any) -> Any:
        await trio.lowlevel.checkpoint()
        app_logger.info("checked %s", data)
        return data

    config = HubConfig.testing().merged({"metrics": {"log": False}})
    async with open_hub(config, on_publish=on_publish) as hub:
        alice = await connect_memory(hub, "alice")
        bob = await connect_memory(hub, "bob")
        for client in (alice, bob):
            assert (await client.receive())["type"] == "welcome"
        await alice.send(json.dumps({"type": "publish", "stream": "news", "data": 1, "ref": 1}))
        await bob.send(json.dumps({"type": "publish", "stream": "chat", "data": 2, "ref": 1}))
        for client in (alice, bob):
            assert (await client.receive())["type"] == "published"
        app_logger.info("outside any connection")
        await alice.aclose()
        await bob.aclose()
    checked = {r["message"]: r for r in records(out) if r["logger"] == "tests.app"}
    assert checked["checked 1"] | {"time": None} == {
        "time": None,
        "level": "INFO",
        "logger": "tests.app",
        "message": "checked 1",
        "hub": hub.id,
        "node": hub.node,
        "client_id": "alice",
        "stream": "news",
    }
    assert (checked["checked 2"]["client_id"], checked["checked 2"]["stream"]) == ("bob", "chat")
    # Inside ``async with open_hub`` but in no connection: the hub's id and node only.
    outside = checked["outside any connection"]
    assert (outside["hub"], outside["node"]) == (hub.id, hub.node)
    assert "client_id" not in outside and "stream" not in outside
    assert hub.node == f"{socket.gethostname()}:{os.getpid()}"  # as the reports' ``node``
    assert hub.stats()["node"] == hub.node
    assert hub.stats()["hub"] == hub.id  # the same id in the reports


async def test_status_is_debug_every_flush_and_info_once_a_minute(
    autojump_clock: Any, captured: tuple[io.StringIO, logging.Handler]
) -> None:
    out, _ = captured
    config = HubConfig.development()  # metrics.flush_interval 1.0, metrics.log on
    assert config.metrics.flush_interval == 1.0 and config.metrics.log
    async with open_hub(config) as hub:
        await trio.sleep(SUMMARY_INTERVAL - 0.5)
        status = [r for r in records(out) if r["logger"] == "wshub.hub"]
        assert [r["level"] for r in status] == ["DEBUG"] * 59  # flushes at t = 1 ... 59
        await hub.publish("news", 1)
        await trio.sleep(1.0)  # the flush at t = 60 is the first that a minute has passed for
        status = [r for r in records(out) if r["logger"] == "wshub.hub"]
        assert [r["level"] for r in status[59:]] == ["DEBUG", "INFO"]
        summary = status[-1]["message"]
        assert summary.startswith("last 60 s: healthy; 0 connections open (0 opened, 0 closed);")
        assert "1 published (0.0/s)" in summary
        assert status[-1]["hub"] == hub.id
        await trio.sleep(SUMMARY_INTERVAL)
        infos = [r for r in records(out) if r["logger"] == "wshub.hub" and r["level"] == "INFO"]
        assert len(infos) == 2
        assert infos[1]["message"].startswith("last 60 s: healthy;")
        assert "0 published (0.0/s)" in infos[1]["message"]


def test_text_lines_end_with_the_context_and_json_carries_the_traceback() -> None:
    record = logging.LogRecord("wshub.hub", logging.ERROR, __file__, 1, "failed %s", ("x",), None)
    record.hub, record.client_id = "abcd", "alice"
    text = TextFormatter().format(record)
    assert text.endswith("ERROR wshub.hub: failed x [hub=abcd client_id=alice]")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    entry = json.loads(JSONFormatter().format(record))
    assert entry["message"] == "failed x" and entry["client_id"] == "alice"
    assert entry["exception"].startswith("Traceback") and "ValueError: boom" in entry["exception"]
    assert TextFormatter().format(record).splitlines()[0].endswith("[hub=abcd client_id=alice]")


def test_serve_logs_one_json_object_per_line(tmp_path: Path) -> None:
    server = wshub_serve(tmp_path / "serve.log", "--log-format", "json", "--log-level", "debug")
    try:
        server.stop()
    finally:
        server.stop()
    lines = server.log().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    listening = [e for e in entries if e["message"].startswith("wshub listening on")]
    assert len(listening) == 1 and listening[0]["logger"] == "wshub.cli"
    assert {"time", "level", "logger", "message", "hub"} <= set(listening[0])
    hub_records = [e for e in entries if e["logger"] == "wshub.hub"]
    assert any(e["level"] == "DEBUG" for e in hub_records)
    # Every record of the hub names its node: this process, as the reports' ``node`` does.
    node = f"{socket.gethostname()}:{server.process.pid}"
    assert {e.get("node") for e in [*listening, *hub_records]} == {node}
