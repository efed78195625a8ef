"""``top_streams`` in ``hub.stats()``: the per-stream figures behind the dashboard's stream view."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from wshub.core.config import HubConfig
from wshub.hub.hub import open_hub
from wshub.hub.reports import TOP_STREAMS
from wshub.testing import connect_memory

CONFIG = HubConfig.testing()  # metrics.flush_interval is 1.0: flushes at t = 1, 2, ...


def rows_by_stream(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["stream"]: row for row in report["top_streams"]}


async def test_rows_hold_subscribers_offset_history_and_the_rate_since_the_last_flush(
    autojump_clock: Any,
) -> None:
    assert CONFIG.metrics.flush_interval == 1.0
    async with open_hub(CONFIG) as hub:
        alice = await connect_memory(hub, "alice", subscribe={"news": None})
        bob = await connect_memory(hub, "bob", subscribe={"news": None})
        for n in range(4):
            await hub.publish("news", {"n": n})
        await hub.publish("quiet", "one")
        before = rows_by_stream(hub.stats())
        # No flush has listed "news" yet: no rate.
        assert before["news"] == {
            "stream": "news",
            "subscribers": 2,
            "epoch": hub.histories.get_or_create("news").epoch,
            "offset": 4,
            "first": 1,
            "held": 4,
            "rate": None,
        }
        await trio.sleep_until(1.5)  # the flush at t = 1 marked news at offset 4
        for n in range(4, 7):
            await hub.publish("news", {"n": n})
        report = hub.stats()
        news = rows_by_stream(report)["news"]
        assert (news["offset"], news["held"], news["rate"]) == (7, 7, 3 / 0.5)
        assert rows_by_stream(report)["quiet"]["rate"] == 0.0
        assert report["top_streams"][0]["stream"] == "news"  # the most subscribed first
        assert rows_by_stream(report)["@alice"]["subscribers"] == 1
        await alice.aclose()
        await bob.aclose()


async def test_the_list_is_bounded_and_ranks_by_subscribers_then_offset(
    autojump_clock: Any,
) -> None:
    async with open_hub(CONFIG) as hub:
        for n in range(TOP_STREAMS + 5):
            for i in range(n):
                await hub.publish(f"topic-{n}", i)
        watcher = await connect_memory(hub, "watcher", subscribe={"topic-0": None})
        await trio.testing.wait_all_tasks_blocked()
        rows = hub.stats()["top_streams"]
        assert len(rows) == TOP_STREAMS
        # topic-0 (no message) and @watcher have a subscriber; then the highest offsets.
        assert {row["stream"] for row in rows[:2]} == {"topic-0", "@watcher"}
        offsets = [row["offset"] for row in rows[2:]]
        assert offsets == sorted(offsets, reverse=True)
        assert offsets[0] == TOP_STREAMS + 4
        await watcher.aclose()
