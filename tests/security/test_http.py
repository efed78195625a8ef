"""HTTP with tokens (the ASGI app in process): publishing with a token's rights, de-duplication
scoped to its ``sub``, and the monitoring endpoints with an admin token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from test_asgi import call
from tokens import AUDIENCE, ISSUER, OTHER_SECRET, SECRET, claims, token, unsigned, wall_clock
from wshub.core.config import HubConfig
from wshub.hub.hub import Hub, open_hub
from wshub.servers.asgi import create_app
from wshub.testing import connect_memory

ADMIN_KEY = "the-admin-key"


def config(*, api_key: str | None = ADMIN_KEY) -> HubConfig:
    return HubConfig.testing().merged(
        {
            "server": {"allow_anonymous": False},
            "admin": {"api_key": api_key},
            "auth": {"jwt_secret": SECRET, "jwt_audience": AUDIENCE, "jwt_issuer": ISSUER},
        }
    )


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[tuple[Hub, Any]]:
    async with open_hub(config(**options), wall_clock=wall_clock) as hub:
        yield hub, create_app(hub=hub)


def bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


async def publish(app: Any, credential: str, body: dict[str, Any]) -> Any:
    return await call(
        app, "POST", "/api/publish", headers=bearer(credential), chunks=[orjson.dumps(body)]
    )


async def test_a_token_with_the_right_publishes_over_http() -> None:
    async with serving() as (_hub, app):
        reply = await publish(
            app, token("alice", publish=["chat.*"]), {"stream": "chat.a", "data": 1}
        )
        assert reply.status == 200
        assert reply.json() == {
            "stream": "chat.a",
            "offset": 1,
            "id": reply.json()["id"],
            "duplicate": False,
        }


@pytest.mark.parametrize("stream", ["news", "@alice", "@bob"])
async def test_a_token_without_the_right_is_403_naming_the_stream(stream: str) -> None:
    async with serving() as (hub, app):
        reply = await publish(
            app, token("alice", publish=["chat.*"]), {"stream": stream, "data": 1}
        )
        assert (reply.status, reply.json()) == (
            403,
            {"error": f"{stream!r} is not among this token's publish rights"},
        )
        assert hub.histories.get(stream) is None


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: token(ttl=-1, publish=["*"]), "token expired"),
        (lambda: token(secret=OTHER_SECRET, publish=["*"]), "token signature is invalid"),
        (lambda: unsigned(claims(publish=["*"])), "token algorithm 'none' is not accepted"),
        (lambda: token(aud="elsewhere", publish=["*"]), "token audience ('aud') is not accepted"),
        (lambda: "not-the-key", "token is malformed (not a signed JWT)"),
    ],
    ids=["expired", "other-key", "alg-none", "audience", "wrong-key"],
)
async def test_a_bad_token_is_401_saying_why_and_nothing_is_read(make: Any, reason: str) -> None:
    async with serving() as (_hub, app):
        reply = await publish(app, make(), {"stream": "news", "data": 1})
        assert (reply.status, reply.json()) == (401, {"error": f"invalid credential: {reason}"})
        assert reply.headers["www-authenticate"] == 'Bearer realm="wshub", error="invalid_token"'
        assert reply.reads == 0
        assert SECRET not in reply.body.decode()


async def test_deduplication_is_scoped_to_the_tokens_subject() -> None:
    async with serving() as (_hub, app):
        alice = token("alice", publish=["news"])
        bob = token("bob", publish=["news"])
        body = {"stream": "news", "data": {"n": 1}, "id": "evt-1"}
        first = (await publish(app, alice, body)).json()
        again = (await publish(app, alice, body)).json()
        by_bob = (await publish(app, bob, body)).json()
        by_admin = (await publish(app, ADMIN_KEY, body)).json()
        assert (first["offset"], first["duplicate"]) == (1, False)
        assert (again["offset"], again["duplicate"]) == (1, True)
        # Bob (and the server API) cannot suppress alice's message by reusing its id.
        assert (by_bob["offset"], by_bob["duplicate"]) == (2, False)
        assert (by_admin["offset"], by_admin["duplicate"]) == (3, False)


async def test_alices_http_and_websocket_publishes_share_one_scope() -> None:
    async with serving() as (hub, app):
        signed = token("alice", publish=["news"])
        body = {"stream": "news", "data": {"n": 1}, "id": "evt-1"}
        assert (await publish(app, signed, body)).json()["duplicate"] is False
        client = await connect_memory(hub, "alice", token=signed)
        assert (await client.receive())["type"] == "welcome"
        await client.send({"type": "publish", **body, "ref": 1})
        answer = await client.receive()
        assert (answer["type"], answer["offset"], answer["duplicate"]) == ("published", 1, True)
        await client.aclose()


@pytest.mark.parametrize("path", ["/metrics", "/api/stats"])
async def test_monitoring_takes_the_admin_key_or_an_admin_token(path: str) -> None:
    async with serving() as (_, app):
        assert (await call(app, "GET", path)).status == 401
        assert (await call(app, "GET", path, headers=bearer(ADMIN_KEY))).status == 200
        admin = token("ops", subscribe=[], admin=True)
        assert (await call(app, "GET", path, headers=bearer(admin))).status == 200
        plain = await call(app, "GET", path, headers=bearer(token("alice", subscribe=["*"])))
        assert (plain.status, plain.json()) == (403, {"error": "this token has no admin right"})
        forged = await call(
            app, "GET", path, headers=bearer(token("ops", admin=True, secret=OTHER_SECRET))
        )
        assert forged.status == 401


async def test_auth_alone_protects_monitoring_and_enables_http_publishing() -> None:
    async with serving(api_key=None) as (_, app):
        assert (await call(app, "GET", "/api/stats")).status == 401
        admin = token("ops", admin=True)
        assert (await call(app, "GET", "/api/stats", headers=bearer(admin))).status == 200
        reply = await publish(app, token("alice", publish=["news"]), {"stream": "news", "data": 1})
        assert reply.status == 200


async def test_the_dashboard_page_is_served_without_a_credential() -> None:
    async with serving() as (_, app):
        page = await call(app, "GET", "/dashboard")
        assert page.status == 200
        assert b'id="login"' in page.body
        assert b"api_key" not in page.body  # the page never puts a key in a URL
