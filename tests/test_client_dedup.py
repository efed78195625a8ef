"""The Trio client follows the hub's one de-duplication rule (docs/clients.md, Publishing).

With content ids on (the default, as ``dedup.content_ids``) a publish without an id is
identified by its content, so identical data published twice is one message, through the
client as through ``hub.publish`` and HTTP. A ``conflict`` answer is final: never sent again.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

import wshub
from test_client import Network, client_for, config, held, take
from wshub.client.client import Message, PublishError
from wshub.hub.hub import PublishResult, open_hub


def publish_frames(network: Network) -> list[dict[str, Any]]:
    return [
        orjson.loads(frame)
        for link in network.links
        for _, frame in link.sent
        if '"type":"publish"' in frame
    ]


async def test_identical_data_without_an_id_is_one_message(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        network = Network(hub)
        async with client_for(network, subscribe=["news"]) as client:
            await client.wait_connected()
            first = await client.publish("news", {"title": "hi"})
            again = await client.publish("news", {"title": "hi"})
            other = await client.publish("news", {"title": "other"})
            events = await take(client, 2)
        content_id = wshub.message_id("news", {"title": "hi"})
        assert first == PublishResult("news", 1, content_id, duplicate=False)
        assert again == PublishResult("news", 1, content_id, duplicate=True)
        assert other == PublishResult(
            "news", 2, wshub.message_id("news", {"title": "other"}), duplicate=False
        )
        assert [(e.offset, e.id) for e in events if isinstance(e, Message)] == [
            (1, content_id),
            (2, other.id),
        ]
        assert held(hub, "news") == 2
        # The same id the hub gives the same publish through its own API.
        assert (await hub.publish("news", {"title": "hi"})).id == content_id


async def test_a_key_order_does_not_make_other_content(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        network = Network(hub)
        async with client_for(network) as client:
            first = await client.publish("news", {"a": 1, "b": 2})
            again = await client.publish("news", {"b": 2, "a": 1})
        assert again.duplicate and again.offset == first.offset == 1


async def test_without_content_ids_each_call_is_its_own_message(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        network = Network(hub)
        async with client_for(network, content_ids=False) as client:
            first = await client.publish("news", {"title": "hi"})
            again = await client.publish("news", {"title": "hi"})
        assert (first.offset, again.offset) == (1, 2)
        assert not again.duplicate and first.id != again.id
        assert held(hub, "news") == 2


async def test_a_retried_publish_without_an_id_is_still_stored_once(autojump_clock: Any) -> None:
    async with open_hub(config()) as hub:
        network = Network(hub)
        async with client_for(network) as client:
            await client.wait_connected()
            network.link.cut_when = '"type":"published"'  # stored, but the answer is lost
            result = await client.publish("news", {"x": 1})
        sent = publish_frames(network)
        assert len(sent) == 2 and sent[0] == sent[1]
        assert sent[0]["id"] == wshub.message_id("news", {"x": 1})
        assert result == PublishResult("news", 1, sent[0]["id"], duplicate=True)
        assert held(hub, "news") == 1


async def test_a_conflict_is_raised_with_its_code_and_never_sent_again(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_hub(config()) as hub:

        async def conflict(connection: Any, event: Any) -> str:
            await trio.lowlevel.checkpoint()
            message = f"id {event.id!r} was published with other content"
            # Written out: this branch's protocol module does not list "conflict" yet.
            frame = {"type": "error", "code": "conflict", "message": message, "ref": event.ref}
            return orjson.dumps(frame).decode()

        # The hub's side of the rule lives in the brokers; here the hub answers as it would.
        monkeypatch.setattr(hub, "publish_from_client", conflict)
        network = Network(hub)
        async with client_for(network, request_timeout=1.0) as client:
            with pytest.raises(PublishError) as refused:
                await client.publish("news", {"x": 2}, id="evt-1")
            await trio.sleep(5.0)  # several request timeouts: nothing is sent again
            statistics = client.statistics()
        assert refused.value.code == "conflict"
        assert "was published with other content" in str(refused.value)
        assert len(publish_frames(network)) == 1
        assert statistics.publish_retries == 0
