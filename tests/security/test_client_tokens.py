"""The Trio client's token provider: a fresh token per connection, refreshes before expiry.

Against an in-memory hub with ``[auth]`` on, under the mock clock, with a wall clock that
follows it (tests/security/tokens.py), so every refresh and close happens at an exact time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import trio
import trio.lowlevel

from test_client import Network, client_for
from tokens import AUDIENCE, ISSUER, SECRET, WALL_BASE, token, wall_clock
from wshub.client.client import ClientRejected
from wshub.client.credentials import unverified_expiry
from wshub.core.config import HubConfig
from wshub.hub.hub import Hub, open_hub

LEEWAY = 2.0
TTL = 100


@asynccontextmanager
async def auth_hub() -> AsyncIterator[Hub]:
    config = HubConfig.testing().merged(
        {
            "server": {"allow_anonymous": False},
            "auth": {
                "jwt_secret": SECRET,
                "jwt_audience": AUDIENCE,
                "jwt_issuer": ISSUER,
                "leeway": LEEWAY,
            },
        }
    )
    async with open_hub(config, wall_clock=wall_clock) as hub:
        yield hub


def sent(network: Network, kind: str) -> list[tuple[float, dict[str, Any]]]:
    """Every frame of type ``kind`` the client sent, over every link, with its time."""
    frames = []
    for link in network.links:
        for at, text in link.sent:
            frame = orjson.loads(text)
            if frame["type"] == kind:
                frames.append((at, frame))
    return frames


class Provider:
    """A token provider that counts its calls and can be made to fail."""

    def __init__(self, ttl: float = TTL) -> None:
        self.ttl = ttl
        self.calls: list[float] = []
        self.failing = False

    def __call__(self) -> str:
        self.calls.append(trio.current_time())
        if self.failing:
            raise ConnectionError("the token service is down")
        return token("alice", ttl=self.ttl, subscribe=["news"])


async def test_the_provider_is_asked_for_a_fresh_token_before_every_connection(
    autojump_clock: Any,
) -> None:
    async with auth_hub() as hub:
        network = Network(hub)
        provider = Provider()
        async with client_for(network, token=provider, wall_clock=wall_clock) as client:
            await client.wait_connected()
            await trio.sleep(10)
            network.link.cut()
            await trio.sleep(1)
            await client.wait_connected()
            hellos = [frame["token"] for _, frame in sent(network, "hello")]
            assert len(hellos) == 2 and len(provider.calls) == 2
            # Each hello carries the token the provider gave for that connection.
            expiries = [unverified_expiry(hello) for hello in hellos]
            assert expiries == [int(WALL_BASE + at + TTL) for at in provider.calls]
            assert provider.calls[0] == 0.0 and provider.calls[1] > 10


async def test_an_async_provider_works_too(autojump_clock: Any) -> None:
    async def provider() -> str:
        await trio.sleep(0.5)  # a round trip to the application's backend
        return token("alice")

    async with auth_hub() as hub:
        network = Network(hub)
        async with client_for(network, token=provider, wall_clock=wall_clock) as client:
            await client.wait_connected()
            assert network.attempts == [0.5]  # the token first, then the connection


async def test_the_client_refreshes_at_80_percent_of_the_lifetime_and_stays_connected(
    autojump_clock: Any,
) -> None:
    async with auth_hub() as hub:
        network = Network(hub)
        provider = Provider()
        async with client_for(network, token=provider, wall_clock=wall_clock) as client:
            await client.wait_connected()
            await trio.sleep(250)
            refreshes = sent(network, "refresh")
            # Tokens live 100 s: refreshed at 80, then 80 s after each refreshed answer.
            assert [at for at, _ in refreshes] == [80.0, 160.0, 240.0]
            assert provider.calls == [0.0, 80.0, 160.0, 240.0]
            assert network.attempts == [0.0]  # one connection all along: never closed 4005
            assert client.connected
            assert client.statistics().refreshes == 3


async def test_a_provider_failing_at_refresh_time_is_asked_again_halfway_to_the_expiry(
    autojump_clock: Any,
) -> None:
    async with auth_hub() as hub:
        network = Network(hub)
        provider = Provider()
        async with client_for(network, token=provider, wall_clock=wall_clock) as client:
            await client.wait_connected()
            provider.failing = True
            await trio.sleep(85)
            provider.failing = False
            await trio.sleep(20)
            # 80 failed (20 s left: try at 90); 90 worked.
            assert provider.calls == [0.0, 80.0, 90.0]
            assert [at for at, _ in sent(network, "refresh")] == [90.0]
            assert network.attempts == [0.0]


async def test_a_token_that_expires_unrefreshed_reconnects_at_once_with_a_fresh_one(
    autojump_clock: Any,
) -> None:
    async with auth_hub() as hub:
        network = Network(hub)
        provider = Provider()
        async with client_for(network, token=provider, wall_clock=wall_clock) as client:
            await client.wait_connected()
            provider.failing = True  # every refresh fails until the hub closes with 4005
            await trio.sleep(TTL + LEEWAY - 1)
            provider.failing = False
            await trio.sleep(2)
            assert network.links[0].close_code == 4005
            assert network.attempts == [0.0, TTL + LEEWAY]  # no backoff after 4005
            await client.wait_connected()


async def test_a_fixed_expired_token_is_rejected_after_the_4005(autojump_clock: Any) -> None:
    async with auth_hub() as hub:
        network = Network(hub)

        async def run_until_rejected() -> None:
            signed = token("alice", ttl=10)
            async with client_for(network, token=signed, wall_clock=wall_clock) as client:
                await client.wait_connected()
                await trio.sleep_forever()

        with pytest.raises(ClientRejected) as caught:
            await run_until_rejected()
        assert (caught.value.code, caught.value.reason) == (1008, "token expired")
        assert network.attempts == [0.0, 10 + LEEWAY]
        assert sent(network, "refresh") == []  # nothing to refresh with


async def test_a_provider_failing_before_a_connection_fails_that_attempt(
    autojump_clock: Any,
) -> None:
    async with auth_hub() as hub:
        network = Network(hub)
        provider = Provider()
        provider.failing = True
        async with client_for(
            network, token=provider, wall_clock=wall_clock, backoff_base=1.0
        ) as client:
            await trio.lowlevel.checkpoint()
            with trio.move_on_after(1.5):
                await client.wait_connected()
            assert network.attempts == []  # never connected without a token
            provider.failing = False
            await client.wait_connected()
            statistics = client.statistics()
            assert statistics.failed_attempts >= 1
            assert "token provider failed" in (statistics.last_error or "")


async def test_streams_a_refreshed_token_no_longer_allows_are_not_asked_for_again(
    autojump_clock: Any,
) -> None:
    calls: list[float] = []

    def narrowing() -> str:  # the first token may read chat.*, the later ones may not
        calls.append(trio.current_time())
        return token(
            "alice", ttl=TTL, subscribe=["news", "chat.*"] if len(calls) == 1 else ["news"]
        )

    async with auth_hub() as hub:
        network = Network(hub)
        subscribe = ["news", "chat.a"]
        async with client_for(
            network, token=narrowing, wall_clock=wall_clock, subscribe=subscribe
        ) as client:
            await client.wait_connected()
            await trio.sleep(81)  # refreshed at 80 with rights to news only
            assert sent(network, "refresh")[0][0] == 80.0
            await client.unsubscribe("news")  # its own answer is not mistaken for the hub's
            await client.subscribe("news")
            network.link.cut()
            await trio.sleep(1)
            await client.wait_connected()  # no forbidden chat.a in the new hello: still alive
            hello = sent(network, "hello")[-1][1]
            assert set(hello["subscribe"]) == {"@alice", "news"}
            await hub.publish("news", "after")
            event = await client.__anext__()
            assert event.data == "after"


@pytest.mark.parametrize(
    ("exp", "expected"),
    [(WALL_BASE + 60, WALL_BASE + 60.0), (10**400, None), ("soon", None), (True, None)],
    ids=["seconds", "past-a-float", "string", "bool"],
)
async def test_the_client_reads_only_a_usable_expiry(exp: Any, expected: float | None) -> None:
    # The client reads exp unverified to plan refreshes; a value no float holds (JSON integers
    # have no limit) means no refresh plan, not an OverflowError out of the connection attempt.
    assert unverified_expiry(token("alice", exp=exp)) == expected
