"""The JavaScript client's token provider against a real hub with ``[auth]``, in Node.

The script (tests/js/client_token_node.mjs) asks this test for every token; the test mints
them with PyJWT on the real wall clock. The client's refresh schedule at exact times is pinned
by tests/js/client_unit_test.mjs (node:test's mock clock, run by tests/test_client_js.py).
Real time here is bounded and has slack: the hub's leeway (2 s) is far more than the margin
a loaded machine needs between the client's refresh (at 80 % of the token's life) and the close.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from test_client_js import NodeScript, node_script
from tokens import AUDIENCE, ISSUER, SECRET, token
from wshub.core.config import HubConfig
from wshub.hub.hub import Hub, open_hub
from wshub.servers.websocket import serve_websocket

LEEWAY = 2.0


@asynccontextmanager
async def auth_hub() -> AsyncIterator[tuple[Hub, str]]:
    config = HubConfig.testing().merged(
        {
            "server": {"allow_anonymous": False},
            "heartbeat": {"interval": 30.0, "timeout": 10.0},
            "auth": {
                "jwt_secret": SECRET,
                "jwt_audience": AUDIENCE,
                "jwt_issuer": ISSUER,
                "leeway": LEEWAY,
            },
        }
    )
    async with open_hub(config) as hub, trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
        yield hub, f"ws://127.0.0.1:{server.port}/ws"
        nursery.cancel_scope.cancel()


async def give_token(script: NodeScript, ttl: float) -> None:
    await script.wait_for("token?")
    signed = token("alice", ttl=ttl, subscribe=["news"], now=time.time())
    await script.send("token", token=signed)


async def stats(script: NodeScript) -> dict[str, Any]:
    await script.send("stats")
    return await script.wait_for("stats")


async def test_the_js_client_refreshes_in_time_then_reconnects_with_a_fresh_token(
    node: tuple[str, ...],
) -> None:
    with trio.fail_after(30):
        async with (
            auth_hub() as (hub, url),
            node_script(node, "client_token_node.mjs", url) as script,
        ):
            await give_token(script, ttl=3)
            assert (await script.wait_for("open"))["reconnected"] is False
            # The refresh comes at 80 % of the first token's life, well before exp + leeway.
            await give_token(script, ttl=2)  # margin for a loaded machine: node, then the hub
            while (await stats(script))["refreshes"] < 1:  # noqa: ASYNC110 - polls another process
                await trio.sleep(0.05)
            assert script.seen("close") == []
            await hub.send("alice", "after the refresh")
            assert (await script.wait_for("message"))["data"] == "after the refresh"
            # The next refresh is never answered: the hub closes with 4005 at exp + leeway,
            # and the client reconnects at once, asking for a fresh token.
            close = await script.wait_for("close")
            assert (close["code"], close["reconnecting"]) == (4005, True)
            await give_token(script, ttl=600)
            assert (await script.wait_for("open"))["reconnected"] is True
            assert [event["code"] for event in script.seen("close")] == [4005]
            await script.send("close")
