"""The hub's credential rules over in-memory connections, under the mock clock (exact times).

Every rule of PROTOCOL.md "Credentials" is tried here once; ``test_servers.py`` tries the key
ones again through both real servers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio

from tokens import (
    AUDIENCE,
    ISSUER,
    OTHER_SECRET,
    SECRET,
    WALL_BASE,
    claims,
    ec_key,
    hmac_signed,
    public_pem,
    token,
    unsigned,
    wall_clock,
)
from wshub.core.config import HubConfig
from wshub.core.protocol import Position
from wshub.hub.auth import Rights
from wshub.hub.hooks import Identity
from wshub.hub.hub import Hub, open_hub
from wshub.testing import MemoryClient, connect_memory

ADMIN_KEY = "the-admin-key"
LEEWAY = 2.0


def auth_config(**auth: Any) -> HubConfig:
    """The testing preset with tokens required (no anonymous clients)."""
    return HubConfig.testing().merged(
        {
            "server": {"allow_anonymous": False, "client_publish": False},
            "admin": {"api_key": ADMIN_KEY},
            "auth": {
                "jwt_secret": SECRET,
                "jwt_audience": AUDIENCE,
                "jwt_issuer": ISSUER,
                "leeway": LEEWAY,
                **auth,
            },
        }
    )


@asynccontextmanager
async def running(**auth: Any) -> AsyncIterator[Hub]:
    async with open_hub(auth_config(**auth), wall_clock=wall_clock) as hub:
        yield hub


async def welcomed(hub: Hub, client_id: str, signed: str, **options: Any) -> MemoryClient:
    client = await connect_memory(hub, client_id, token=signed, **options)
    welcome = await client.receive()
    assert welcome["type"] == "welcome", welcome
    return client


# --------------------------------------------------------------------------- hello


async def test_a_valid_token_is_welcomed_with_its_streams(autojump_clock: Any) -> None:
    async with running() as hub:
        client = await connect_memory(hub, "alice", token=token("alice"), subscribe={"news": None})
        welcome = await client.receive()
        assert welcome["type"] == "welcome"
        assert set(welcome["streams"]) == {"@alice", "news"}
        await client.aclose()


async def test_alice_cannot_hello_as_bob(autojump_clock: Any) -> None:
    async with running() as hub:
        client = await connect_memory(hub, "bob", token=token("alice"))
        assert await client.wait_closed() == (
            1008,
            "client id 'bob' is not the token's subject ('sub')",
        )


async def test_the_subject_reason_fits_a_close_frame_with_the_longest_client_id(
    autojump_clock: Any,
) -> None:
    # A close frame carries at most 123 bytes of reason; servers cut what is longer, which
    # would cut off which check failed. The longest client id is 128 characters.
    async with running() as hub:
        long_id = "b" * 128
        client = await connect_memory(hub, long_id, token=token("alice"))
        code, reason = await client.wait_closed()
        assert (code, reason) == (
            1008,
            f"client id '{'b' * 48}...' is not the token's subject ('sub')",
        )
        longest = await welcomed(hub, long_id, token(long_id))
        await longest.send({"type": "refresh", "token": token("alice")})
        _, refused = await longest.wait_closed()
        assert (
            refused
            == f"refresh refused: client id '{'b' * 48}...' is not the token's subject ('sub')"
        )
        assert len(refused.encode()) <= 123


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: token(ttl=-LEEWAY), "token expired"),  # expired exactly now
        (lambda: token(secret=OTHER_SECRET), "token signature is invalid"),
        (lambda: unsigned(claims()), "token algorithm 'none' is not accepted"),
        (lambda: token(aud="another-service"), "token audience ('aud') is not accepted"),
        (lambda: token(iss="https://evil.example"), "token issuer ('iss') is not accepted"),
        (lambda: token(exp=None), "token has no 'exp' claim"),
        (lambda: "not-a-jwt", "token is malformed (not a signed JWT)"),
    ],
    ids=["expired", "other-key", "alg-none", "audience", "issuer", "no-exp", "garbage"],
)
async def test_a_bad_token_closes_with_1008_saying_why(
    make: Any, reason: str, autojump_clock: Any
) -> None:
    async with running() as hub:
        client = await connect_memory(hub, "alice", token=make())
        assert await client.wait_closed() == (1008, reason)


@pytest.mark.parametrize(
    ("claim", "value"),
    [("exp", 10**400), ("exp", -(10**400)), ("nbf", 10**400)],
    ids=["exp-huge", "exp-huge-negative", "nbf-huge"],
)
async def test_a_time_claim_no_float_can_hold_is_refused_and_the_hub_goes_on(
    claim: str, value: int, autojump_clock: Any
) -> None:
    # JSON integers have no size limit; one past a float's range is a backend's bug, and must
    # end that connection with 1008 like any bad claim, not escape as an OverflowError.
    async with running() as hub:
        client = await connect_memory(hub, "alice", token=token(**{claim: value}))
        assert await client.wait_closed() == (
            1008,
            f"token claim {claim!r} must be a number of Unix seconds",
        )
        alice = await welcomed(hub, "alice", token("alice"))
        await alice.aclose()


async def test_a_token_within_its_leeway_is_still_accepted(autojump_clock: Any) -> None:
    async with running() as hub:
        signed = token(ttl=10)
        await trio.sleep(10 + LEEWAY - 0.5)
        client = await welcomed(hub, "alice", signed)
        await client.aclose()


async def test_no_token_is_refused_when_anonymous_clients_are_not_allowed(
    autojump_clock: Any,
) -> None:
    async with running() as hub:
        client = await connect_memory(hub, "alice")
        assert await client.wait_closed() == (1008, "anonymous clients are not allowed")


async def test_the_admin_key_still_opens_the_door(autojump_clock: Any) -> None:
    async with running() as hub:
        client = await connect_memory(
            hub, "ops", token=ADMIN_KEY, subscribe={"$sys.metrics": None, "anything": None}
        )
        welcome = await client.receive()
        assert set(welcome["streams"]) == {"@ops", "$sys.metrics", "anything"}
        await client.aclose()


async def test_a_hook_and_auth_together_are_refused(autojump_clock: Any) -> None:
    async def hook(hello: Any, request: Any) -> Identity:
        return Identity(hello.client_id)

    with pytest.raises(ValueError, match="either an authenticate hook or"):
        async with open_hub(auth_config(), authenticate=hook):
            pass


async def test_a_public_key_file_admits_its_tokens_and_no_hmac_forgery(
    tmp_path: Path, autojump_clock: Any
) -> None:
    pem = public_pem(ec_key())
    key_file = tmp_path / "jwt-public.pem"
    key_file.write_bytes(pem)
    config = HubConfig.testing().merged(
        {
            "server": {"allow_anonymous": False},
            "auth": {
                "jwt_public_key": str(key_file),
                "jwt_algorithms": ["ES256"],
                "jwt_audience": AUDIENCE,
                "jwt_issuer": ISSUER,
            },
        }
    )
    async with open_hub(config, wall_clock=wall_clock) as hub:
        signed = jwt.encode(claims("carol"), ec_key(), algorithm="ES256")
        carol = await welcomed(hub, "carol", signed)
        await carol.aclose()
        # Algorithm confusion: HS256 "signed" with the public key the attacker can read.
        forged = await connect_memory(hub, "carol", token=hmac_signed(claims("carol"), pem))
        assert await forged.wait_closed() == (1008, "token algorithm 'HS256' is not accepted")


# --------------------------------------------------------------------------- rights


async def test_alice_cannot_subscribe_to_bobs_personal_stream(autojump_clock: Any) -> None:
    async with running() as hub:
        client = await welcomed(hub, "alice", token("alice", subscribe=["*"]))
        await client.send({"type": "subscribe", "stream": "@bob"})
        error = await client.receive()
        assert error == {
            "type": "error",
            "code": "forbidden",
            "message": "'@bob' is another client's personal stream",
        }
        await client.aclose()


async def test_subscriptions_outside_the_patterns_are_forbidden_naming_the_stream(
    autojump_clock: Any,
) -> None:
    async with running() as hub:
        client = await welcomed(hub, "alice", token("alice", subscribe=["news", "chat.*"]))
        for stream, allowed in [("chat.room-1", True), ("sports", False), ("chat", False)]:
            await client.send({"type": "subscribe", "stream": stream})
            answer = await client.receive()
            if allowed:
                assert (answer["type"], answer["stream"]) == ("subscribed", stream)
            else:
                assert answer == {
                    "type": "error",
                    "code": "forbidden",
                    "message": f"{stream!r} is not among this client's subscribe rights",
                }
        await client.aclose()


async def test_a_forbidden_stream_in_the_hello_is_left_out_of_the_welcome(
    autojump_clock: Any,
) -> None:
    async with running() as hub:
        client = await connect_memory(
            hub, "alice", token=token("alice"), subscribe={"news": None, "secret": None}
        )
        welcome = await client.receive()
        assert set(welcome["streams"]) == {"@alice", "news"}
        error = await client.receive()
        assert (error["code"], error["message"]) == (
            "forbidden",
            "'secret' is not among this client's subscribe rights",
        )
        await client.aclose()


async def test_publishing_needs_the_right_for_that_stream(autojump_clock: Any) -> None:
    async with running() as hub:
        client = await welcomed(hub, "alice", token("alice", publish=["chat.*"]))
        await client.send({"type": "publish", "stream": "news", "data": 1, "ref": 1})
        assert await client.receive() == {
            "type": "error",
            "code": "forbidden",
            "message": "'news' is not among this client's publish rights",
            "ref": 1,
        }
        await client.send({"type": "publish", "stream": "chat.room", "data": 2, "ref": 2})
        published = await client.receive()
        assert (published["type"], published["offset"], published["ref"]) == ("published", 1, 2)
        assert hub.histories.get("news") is None  # nothing was stored for the refusal
        await client.aclose()


async def test_no_publish_right_means_no_publishing_at_all(autojump_clock: Any) -> None:
    async with running() as hub:
        client = await welcomed(hub, "alice", token("alice", subscribe=["news"]))
        await client.send({"type": "publish", "stream": "news", "data": 1})
        answer = await client.receive()
        assert (answer["code"], answer["message"]) == (
            "forbidden",
            "'news' is not among this client's publish rights",
        )
        await client.aclose()


async def test_system_metrics_need_the_admin_claim(autojump_clock: Any) -> None:
    async with running() as hub:
        plain = await welcomed(hub, "alice", token("alice", subscribe=["*"]))
        await plain.send({"type": "subscribe", "stream": "$sys.metrics"})
        assert (await plain.receive())["message"] == "'$sys.metrics' needs the admin right"
        admin = await welcomed(hub, "ops", token("ops", subscribe=[], admin=True))
        await admin.send({"type": "subscribe", "stream": "$sys.metrics"})
        assert (await admin.receive())["type"] == "subscribed"
        await plain.aclose()
        await admin.aclose()


async def test_offset_zero_reads_direct_messages_sent_before_the_first_connect(
    autojump_clock: Any,
) -> None:
    async with running() as hub:
        await hub.send("alice", {"n": 1})
        await hub.send("alice", {"n": 2})
        client = await connect_memory(
            hub, "alice", token=token("alice"), subscribe={"@alice": Position(0, None)}
        )
        welcome = await client.receive()
        status = welcome["streams"]["@alice"]
        assert (status["offset"], status["first"], status["recovered"]) == (2, 1, True)
        replay = [await client.receive() for _ in range(2)]
        assert [m["data"] for m in replay] == [{"n": 1}, {"n": 2}]
        await client.aclose()


# --------------------------------------------------------------------------- expiry and refresh


async def test_a_token_expiring_mid_connection_closes_4005_at_exactly_exp_plus_leeway(
    autojump_clock: Any,
) -> None:
    async with running() as hub:
        await trio.sleep(3)
        client = await welcomed(hub, "alice", token("alice", ttl=60))
        code, reason = await client.wait_closed()
        assert (code, reason) == (4005, "credential expired; reconnect with a fresh one")
        assert trio.current_time() == 3 + 60 + LEEWAY


async def test_a_refresh_in_time_keeps_the_connection_until_the_new_expiry(
    autojump_clock: Any,
) -> None:
    async with running() as hub:
        client = await welcomed(hub, "alice", token("alice", ttl=60))
        await trio.sleep(50)
        await client.send({"type": "refresh", "token": token("alice", ttl=60)})
        assert await client.receive() == {"type": "refreshed", "expires": WALL_BASE + 110}
        await hub.send("alice", "still here at 100")
        with trio.move_on_after(100 - 50):
            while True:
                message = await client.receive()  # no close at 62: the connection goes on
                assert message["data"] == "still here at 100"
        assert trio.current_time() == 100
        code, _ = await client.wait_closed()
        assert (code, trio.current_time()) == (4005, 110 + LEEWAY)


async def test_a_refresh_for_another_subject_closes_with_1008(autojump_clock: Any) -> None:
    async with running() as hub:
        client = await welcomed(hub, "alice", token("alice"))
        await client.send({"type": "refresh", "token": token("bob")})
        assert await client.wait_closed() == (
            1008,
            "refresh refused: client id 'alice' is not the token's subject ('sub')",
        )


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: token(secret=OTHER_SECRET), "token signature is invalid"),
        (lambda: unsigned(claims(ttl=3600)), "token algorithm 'none' is not accepted"),
        (lambda: token(ttl=-5), "token expired"),
    ],
    ids=["other-key", "alg-none", "expired"],
)
async def test_a_bad_refresh_closes_with_1008_saying_why(
    make: Any, reason: str, autojump_clock: Any
) -> None:
    async with running() as hub:
        client = await welcomed(hub, "alice", token("alice"))
        await client.send({"type": "refresh", "token": make()})
        assert await client.wait_closed() == (1008, f"refresh refused: {reason}")


async def test_a_refresh_with_narrower_rights_leaves_the_streams_they_no_longer_allow(
    autojump_clock: Any,
) -> None:
    async with running() as hub:
        client = await connect_memory(
            hub,
            "alice",
            token=token("alice", subscribe=["news", "chat.*"]),
            subscribe={"news": None, "chat.a": None},
        )
        assert (await client.receive())["type"] == "welcome"
        await client.send({"type": "refresh", "token": token("alice", subscribe=["news"])})
        assert await client.receive() == {"type": "unsubscribed", "stream": "chat.a"}
        assert (await client.receive())["type"] == "refreshed"
        await hub.publish("chat.a", "not for alice any more")
        await hub.publish("news", "for alice")
        assert (await client.receive())["data"] == "for alice"
        await client.aclose()


async def test_a_refresh_without_an_expiring_credential_is_a_bad_request(
    autojump_clock: Any,
) -> None:
    async with running() as hub:
        client = await connect_memory(hub, "ops", token=ADMIN_KEY)
        assert (await client.receive())["type"] == "welcome"
        await client.send({"type": "refresh", "token": token("ops")})
        assert await client.receive() == {
            "type": "error",
            "code": "bad_request",
            "message": "this connection's credential has no expiry to refresh",
        }
        await client.aclose()


async def test_an_expired_hmac_token_signed_long_ago_is_refused_however_valid_otherwise(
    autojump_clock: Any,
) -> None:
    # A replayed token: right key, right claims, but its exp is in the past.
    body = claims(ttl=60)
    old = jwt.encode(body, SECRET, algorithm="HS256")
    async with running() as hub:
        await trio.sleep(60 + LEEWAY)
        client = await connect_memory(hub, "alice", token=old)
        assert await client.wait_closed() == (1008, "token expired")


async def test_an_authenticate_hook_may_return_the_same_rights_and_a_deadline(
    autojump_clock: Any,
) -> None:
    async def hook(hello: Any, request: Any) -> Identity:
        rights = Rights(subscribe=["news"], publish=["news"])
        return Identity(hello.client_id, rights=rights, deadline=trio.current_time() + 30)

    config = HubConfig.testing().merged({"server": {"client_publish": False}})
    async with open_hub(config, authenticate=hook) as hub:
        client = await connect_memory(hub, "carol", subscribe={"news": None, "sports": None})
        assert set((await client.receive())["streams"]) == {"@carol", "news"}
        assert (await client.receive())["message"] == (
            "'sports' is not among this client's subscribe rights"
        )
        await client.send({"type": "publish", "stream": "news", "data": 1, "ref": 1})
        answers = await client.receive_until("published")  # despite client_publish off
        assert [answer["type"] for answer in answers] == ["message", "published"]
        await client.send({"type": "publish", "stream": "other", "data": 1, "ref": 2})
        assert (await client.receive())["code"] == "forbidden"
        code, _ = await client.wait_closed()
        assert (code, trio.current_time()) == (4005, 30)


async def test_a_hooks_deadline_cannot_be_refreshed_and_says_so(autojump_clock: Any) -> None:
    # Only [auth] verifies refresh tokens, and a hook cannot be combined with [auth]: the
    # answer says why instead of claiming that the credential does not expire.
    async def hook(hello: Any, request: Any) -> Identity:
        return Identity(hello.client_id, deadline=trio.current_time() + 30)

    async with open_hub(HubConfig.testing(), authenticate=hook) as hub:
        client = await welcomed(hub, "carol", "opaque-credential")
        await trio.sleep(10)
        await client.send({"type": "refresh", "token": "another-opaque-credential"})
        assert await client.receive() == {
            "type": "error",
            "code": "bad_request",
            "message": "this connection's credential cannot be refreshed ([auth] is off); "
            "reconnect with a fresh one before it expires",
        }
        code, _ = await client.wait_closed()
        assert (code, trio.current_time()) == (4005, 30)
