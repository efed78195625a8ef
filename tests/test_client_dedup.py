"""The Trio client follows the hub's one de-duplication rule (docs/clients.md, Publishing).

A publish without an id is sent without one, so the hub's ``dedup.content_ids`` decides for it
as for ``hub.publish`` and HTTP: on (the default), identical data published twice is one
message on every path; off, two on every path. A ``conflict`` answer is final: never sent again.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

import wshub
from test_asgi import AUTH, KEY, call
from test_client import Network, client_for, config, held, take
from wshub.client.client import Message, PublishError
from wshub.hub.hub import PublishResult, open_hub
from wshub.servers.asgi import create_app


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
        assert "id" not in sent[0]  # the hub recognises the resend by its content
        assert result == PublishResult("news", 1, wshub.message_id("news", {"x": 1}), True)
        assert held(hub, "news") == 1


@pytest.mark.parametrize("content_ids", [True, False])
async def test_every_path_follows_the_hubs_content_ids(
    autojump_clock: Any, content_ids: bool
) -> None:
    """Identical data published twice without an id through the server API, HTTP and the Trio
    client (each to its own stream): one message on each with ``dedup.content_ids`` on, two on
    each with it off. The JavaScript client sends such a publish as the Trio client does."""
    hub_config = config(admin={"api_key": KEY}, dedup={"content_ids": content_ids})
    data = {"title": "hi"}
    async with open_hub(hub_config) as hub:
        app = create_app(hub=hub)
        api = [await hub.publish("api", data) for _ in range(2)]
        body = orjson.dumps({"stream": "http", "data": data})
        http = [
            (await call(app, "POST", "/api/publish", headers=AUTH, chunks=[body])).json()
            for _ in range(2)
        ]
        async with client_for(Network(hub)) as client:
            trio_client = [await client.publish("trio", data) for _ in range(2)]
        expected = 1 if content_ids else 2
        assert [held(hub, stream) for stream in ("api", "http", "trio")] == [expected] * 3
        assert [result.duplicate for result in api] == [False, content_ids]
        assert [answer["duplicate"] for answer in http] == [False, content_ids]
        assert [result.duplicate for result in trio_client] == [False, content_ids]
        # The message id is the content id either way (docs/configuration.md, dedup).
        assert {result.id for result in trio_client} == {wshub.message_id("trio", data)}


async def test_a_conflict_is_raised_with_its_code_and_never_sent_again(
    autojump_clock: Any,
) -> None:
    async with open_hub(config()) as hub:
        network = Network(hub)
        async with client_for(network, request_timeout=1.0) as client:
            first = await client.publish("news", {"x": 1}, id="evt-1")
            with pytest.raises(PublishError) as refused:
                await client.publish("news", {"x": 2}, id="evt-1")
            await trio.sleep(5.0)  # several request timeouts: nothing is sent again
            statistics = client.statistics()
        assert first == PublishResult("news", 1, "evt-1", duplicate=False)
        assert refused.value.code == "conflict"
        assert "with different content" in str(refused.value)
        assert len(publish_frames(network)) == 2
        assert statistics.publish_retries == 0
        assert held(hub, "news") == 1
