"""The key credential rules through every server: the embedded ones (``wshub.serve_websocket``
on trio-websocket and ``serve_fast`` on wsproto + h11), hypercorn's trio worker serving the ASGI
app (``hypercorn.trio.serve``, as ``wshub serve --server hypercorn`` runs it), all three on real
sockets on 127.0.0.1 in this process, and the ASGI app alone (in process, as tests/test_asgi.py
drives it). HTTP with tokens through the two servers that have HTTP endpoints (fast and
hypercorn) is at the end (test_http.py has every rule through the ASGI app).

The servers on real sockets run on the real clock, so their expiry tests assert close codes
only. Two run under the mock clock too, where the close is asserted at its exact time: the ASGI
app alone, and the fast server's own handshake and WebSocket over a Unix socket pair
(``fast-pair``: no listener, no network; what one end writes the other reads at once).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import h11
import httpx
import orjson
import pytest
import trio
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import Framework
from trio_websocket import ConnectionClosed, open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Ping, Request, TextMessage

from test_asgi import FakeServer, websocket_scope
from tokens import AUDIENCE, ISSUER, OTHER_SECRET, SECRET, claims, token, unsigned, wall_clock
from wshub.cli_serve import hypercorn_config
from wshub.core.config import HubConfig
from wshub.core.protocol import split_batch
from wshub.hub.hub import Hub, open_hub
from wshub.servers.asgi import create_app
from wshub.servers.fast import accept_websocket, serve_fast
from wshub.servers.http import HTTPConnection
from wshub.servers.websocket import serve_websocket

SERVERS = ["embedded", "fast", "hypercorn", "asgi"]
#: The servers that listen on a socket; fast and hypercorn also serve the HTTP endpoints.
LISTENING = ("embedded", "fast", "hypercorn")
#: What runs under the mock clock: the ASGI app alone, and the fast server's WebSocket on a
#: socket pair (``dial_fast_pair``).
MOCK_CLOCK_SERVERS = ["asgi", "fast-pair"]


def auth_config(leeway: float = 0.0) -> HubConfig:
    return HubConfig.testing().merged(
        {
            "server": {"allow_anonymous": False, "client_publish": False},
            "heartbeat": {"interval": 300.0, "timeout": 10.0},  # no pings to answer here
            "auth": {
                "jwt_secret": SECRET,
                "jwt_audience": AUDIENCE,
                "jwt_issuer": ISSUER,
                "leeway": leeway,
            },
        }
    )


class Peer(Protocol):
    async def send(self, frame: dict[str, Any]) -> None: ...

    async def receive(self) -> dict[str, Any]: ...

    async def closed(self) -> tuple[int, str]: ...


class EmbeddedPeer:
    """A trio-websocket client of the embedded server."""

    def __init__(self, websocket: Any) -> None:
        self.websocket = websocket
        self.pending: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any]) -> None:
        await self.websocket.send_message(orjson.dumps(frame).decode())

    async def receive(self) -> dict[str, Any]:
        while not self.pending:
            with trio.fail_after(10):
                text = await self.websocket.get_message()
            self.pending.extend(orjson.loads(line) for line in split_batch(text))
        return self.pending.pop(0)

    async def closed(self) -> tuple[int, str]:
        try:
            while True:
                await self.receive()
        except ConnectionClosed as closed:
            return closed.reason.code, closed.reason.reason or ""


class ClosingPeer:
    """A peer that records the close it saw in ``close`` and raises ConnectionError after."""

    close: tuple[int, str] | None

    async def receive(self) -> dict[str, Any]:
        raise NotImplementedError

    async def closed(self) -> tuple[int, str]:
        try:
            while True:
                await self.receive()
        except ConnectionError:
            assert self.close is not None
            return self.close


class AsgiPeer(ClosingPeer):
    """The ASGI app's WebSocket, driven with the app's own receive/send events."""

    def __init__(self, fake: FakeServer) -> None:
        self.fake = fake
        self.pending: list[dict[str, Any]] = []
        self.close: tuple[int, str] | None = None

    async def send(self, frame: dict[str, Any]) -> None:
        await self.fake.to_app.send(
            {"type": "websocket.receive", "text": orjson.dumps(frame).decode()}
        )

    async def receive(self) -> dict[str, Any]:
        while not self.pending:
            event = await self.fake.from_app.receive()
            if event["type"] == "websocket.close":
                self.close = (event["code"], event.get("reason", ""))
                raise ConnectionError(self.close)
            if event["type"] == "websocket.send":
                self.pending.extend(orjson.loads(line) for line in split_batch(event["text"]))
        return self.pending.pop(0)


class WsprotoPeer(ClosingPeer):
    """A wsproto client on a trio stream: the fast server's WebSocket over a socket pair."""

    def __init__(self, stream: trio.SocketStream, websocket: WSConnection) -> None:
        self.stream = stream
        self.websocket = websocket
        self.pending: list[dict[str, Any]] = []
        self.text = ""
        self.close: tuple[int, str] | None = None

    async def send(self, frame: dict[str, Any]) -> None:
        await self.stream.send_all(self.websocket.send(Message(orjson.dumps(frame).decode())))

    async def handle(self, events: Iterable[Any]) -> None:
        for event in events:
            if isinstance(event, TextMessage):
                self.text += event.data
                if event.message_finished:
                    self.pending.extend(orjson.loads(line) for line in split_batch(self.text))
                    self.text = ""
            elif isinstance(event, Ping):
                await self.stream.send_all(self.websocket.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close = (event.code, event.reason or "")
                await self.stream.send_all(self.websocket.send(event.response()))

    async def receive(self) -> dict[str, Any]:
        while not self.pending:
            if self.close is not None:
                raise ConnectionError(self.close)
            data = await self.stream.receive_some(65536)
            if not data:
                self.close = (1006, "")
                raise ConnectionError(self.close)
            self.websocket.receive_data(data)
            await self.handle(self.websocket.events())
        return self.pending.pop(0)


@asynccontextmanager
async def dial_fast_pair(
    hub: Hub,
    nursery: trio.Nursery,
    client_id: str,
    signed: str | None,
    subscribe: dict[str, Any] | None,
) -> AsyncIterator[Peer]:
    """The fast server's own handshake (``accept_websocket``) and WebSocket (wsproto on a
    socket, written directly by the flush tick) over a Unix socket pair: no network and no
    listener, so the mock clock can drive it (what one end writes, the other can read at once).
    """
    ours, theirs = trio.socket.socketpair()
    client, served = trio.SocketStream(ours), trio.SocketStream(theirs)
    websocket = WSConnection(ConnectionType.CLIENT)
    upgrade = Request(host="127.0.0.1", target="/ws", subprotocols=["wshub.v1"])
    await client.send_all(websocket.send(upgrade))
    http = HTTPConnection(served, ("127.0.0.1", 1))
    request = await http.next_event()
    assert isinstance(request, h11.Request)
    accepted = await accept_websocket(http, request, hub.config.limits.max_message_bytes)
    assert accepted is not None

    async def serve() -> None:
        try:
            await hub.serve_connection(*accepted)
        finally:
            with trio.CancelScope(shield=True):
                await served.aclose()

    nursery.start_soon(serve)
    events: list[Any] = []
    while not any(isinstance(event, AcceptConnection) for event in events):
        websocket.receive_data(await client.receive_some(65536))
        events.extend(websocket.events())
    peer = WsprotoPeer(client, websocket)
    await peer.handle(events)
    await peer.send(_hello(client_id, signed, subscribe))
    try:
        yield peer
    finally:
        await client.aclose()


Dial = Callable[[str, str | None, dict[str, Any] | None], Any]


async def listen(kind: str, hub: Hub, nursery: trio.Nursery) -> int:
    """Start the server of that ``kind`` for ``hub`` on 127.0.0.1 in ``nursery``; its port."""
    if kind == "hypercorn":
        config = hypercorn_config(hub.config)
        config.bind = ["127.0.0.1:0"]
        app = cast(Framework, create_app(hub=hub))
        binds: list[str] = await nursery.start(hypercorn_serve, app, config)
        port = urlsplit(binds[0]).port
        assert port is not None
        return port
    serve = serve_websocket if kind == "embedded" else serve_fast
    listening = await nursery.start(serve, hub, "127.0.0.1", 0)
    return int(listening.port)


@asynccontextmanager
async def server(kind: str, hub: Hub) -> AsyncIterator[Dial]:
    """A way to open connections to ``hub`` through the server of that ``kind``."""
    async with trio.open_nursery() as nursery:
        if kind in LISTENING:
            url = f"ws://127.0.0.1:{await listen(kind, hub, nursery)}/ws"

            @asynccontextmanager
            async def dial_embedded(
                client_id: str, signed: str | None, subscribe: dict[str, Any] | None
            ) -> AsyncIterator[Peer]:
                async with open_websocket_url(url, subprotocols=["wshub.v1"]) as websocket:
                    peer = EmbeddedPeer(websocket)
                    await peer.send(_hello(client_id, signed, subscribe))
                    yield peer

            yield dial_embedded
        elif kind == "asgi":
            app = create_app(hub=hub)

            @asynccontextmanager
            async def dial_asgi(
                client_id: str, signed: str | None, subscribe: dict[str, Any] | None
            ) -> AsyncIterator[Peer]:
                fake = FakeServer()
                async with trio.open_nursery() as connection:
                    connection.start_soon(app, websocket_scope(), fake.receive, fake.send)
                    await fake.to_app.send({"type": "websocket.connect"})
                    assert (await fake.from_app.receive())["type"] == "websocket.accept"
                    peer = AsgiPeer(fake)
                    await peer.send(_hello(client_id, signed, subscribe))
                    yield peer
                    await fake.to_app.send({"type": "websocket.disconnect", "code": 1000})

            yield dial_asgi
        else:
            assert kind == "fast-pair", kind
            yield partial(dial_fast_pair, hub, nursery)
        nursery.cancel_scope.cancel()


def _hello(client_id: str, signed: str | None, subscribe: dict[str, Any] | None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "hello", "client_id": client_id, "subscribe": subscribe or {}}
    if signed is not None:
        frame["token"] = signed
    return frame


@asynccontextmanager
async def hub_and_dial(kind: str, leeway: float = 0.0) -> AsyncIterator[tuple[Hub, Dial]]:
    async with (
        open_hub(auth_config(leeway), wall_clock=wall_clock) as hub,
        server(kind, hub) as dial,
    ):
        yield hub, dial


# --------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("kind", SERVERS)
async def test_alice_cannot_hello_as_bob(kind: str) -> None:
    async with hub_and_dial(kind) as (_, dial), dial("bob", token("alice"), None) as peer:
        assert await peer.closed() == (1008, "client id 'bob' is not the token's subject ('sub')")


@pytest.mark.parametrize("kind", SERVERS)
async def test_alice_cannot_subscribe_outside_her_rights(kind: str) -> None:
    signed = token("alice", subscribe=["news", "chat.*"], publish=["chat.*"])
    async with hub_and_dial(kind) as (_, dial), dial("alice", signed, None) as peer:
        assert (await peer.receive())["type"] == "welcome"
        for stream, message in [
            ("@bob", "'@bob' is another client's personal stream"),
            ("sports", "'sports' is not among this client's subscribe rights"),
            ("$sys.metrics", "'$sys.metrics' needs the admin right"),
        ]:
            await peer.send({"type": "subscribe", "stream": stream})
            assert await peer.receive() == {
                "type": "error",
                "code": "forbidden",
                "message": message,
            }
        await peer.send({"type": "subscribe", "stream": "chat.room-1"})
        assert (await peer.receive())["type"] == "subscribed"


@pytest.mark.parametrize("kind", SERVERS)
async def test_alice_cannot_publish_without_the_right(kind: str) -> None:
    signed = token("alice", subscribe=["news"], publish=["chat.*"])
    async with hub_and_dial(kind) as (hub, dial), dial("alice", signed, None) as peer:
        assert (await peer.receive())["type"] == "welcome"
        await peer.send({"type": "publish", "stream": "news", "data": "x", "ref": 1})
        assert await peer.receive() == {
            "type": "error",
            "code": "forbidden",
            "message": "'news' is not among this client's publish rights",
            "ref": 1,
        }
        await peer.send({"type": "publish", "stream": "chat.a", "data": "y", "ref": 2})
        answer = await peer.receive()
        assert (answer["type"], answer["ref"]) == ("published", 2)
        assert hub.histories.get("news") is None


@pytest.mark.parametrize("kind", SERVERS)
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: token(ttl=-1), "token expired"),
        (lambda: token(secret=OTHER_SECRET), "token signature is invalid"),
        (lambda: unsigned(claims()), "token algorithm 'none' is not accepted"),
        (lambda: token(aud="someone-else"), "token audience ('aud') is not accepted"),
    ],
    ids=["expired", "other-key", "alg-none", "wrong-audience"],
)
async def test_bad_tokens_close_with_1008(kind: str, make: Any, reason: str) -> None:
    async with hub_and_dial(kind) as (_, dial), dial("alice", make(), None) as peer:
        assert await peer.closed() == (1008, reason)


@pytest.mark.parametrize("kind", SERVERS)
async def test_an_unrefreshed_token_closes_with_4005(kind: str) -> None:
    # Real time: the token must outlive the hello however loaded the machine (at 1 s a
    # loaded run refused the hello itself as expired); the exact time is tested under MockClock.
    async with hub_and_dial(kind) as (_, dial), dial("alice", token(ttl=3), None) as peer:
        assert (await peer.receive())["type"] == "welcome"
        code, reason = await peer.closed()
        assert (code, reason) == (4005, "credential expired; reconnect with a fresh one")


@pytest.mark.parametrize("kind", SERVERS)
async def test_a_refreshed_token_keeps_the_connection(kind: str) -> None:
    async with hub_and_dial(kind) as (hub, dial), dial("alice", token(ttl=3), None) as peer:
        assert (await peer.receive())["type"] == "welcome"
        await peer.send({"type": "refresh", "token": token(ttl=600)})
        assert (await peer.receive())["type"] == "refreshed"
        await trio.sleep(4)  # past the first token's expiry
        await hub.send("alice", "still connected")
        assert (await peer.receive())["data"] == "still connected"


@pytest.mark.parametrize("kind", MOCK_CLOCK_SERVERS)
async def test_closed_4005_at_exactly_exp_plus_leeway(kind: str, autojump_clock: Any) -> None:
    async with (
        hub_and_dial(kind, leeway=1.5) as (_, dial),
        dial("alice", token(ttl=60), None) as peer,
    ):
        assert (await peer.receive())["type"] == "welcome"
        assert (await peer.closed())[0] == 4005
        assert trio.current_time() == 60 + 1.5


@pytest.mark.parametrize("kind", MOCK_CLOCK_SERVERS)
async def test_refreshed_in_time_is_not_closed(kind: str, autojump_clock: Any) -> None:
    async with (
        hub_and_dial(kind, leeway=1.5) as (_, dial),
        dial("alice", token(ttl=60), None) as peer,
    ):
        assert (await peer.receive())["type"] == "welcome"
        await trio.sleep(60)  # refreshed 1.5 s before the close: exactly in time
        await peer.send({"type": "refresh", "token": token(ttl=60)})
        assert (await peer.receive())["type"] == "refreshed"
        assert (await peer.closed())[0] == 4005
        assert trio.current_time() == 120 + 1.5


@pytest.mark.parametrize("kind", ["fast", "hypercorn"])
async def test_the_http_endpoints_take_tokens(kind: str) -> None:
    config = auth_config().merged({"admin": {"api_key": "the-admin-key"}})
    async with (
        open_hub(config, wall_clock=wall_clock) as hub,
        trio.open_nursery() as nursery,
        httpx.AsyncClient() as http,
    ):
        base = f"http://127.0.0.1:{await listen(kind, hub, nursery)}"

        def bearer(signed: str) -> dict[str, str]:
            return {"authorization": f"Bearer {signed}"}

        async def publish(credential: str, body: dict[str, Any]) -> httpx.Response:
            return await http.post(f"{base}/api/publish", json=body, headers=bearer(credential))

        body = {"stream": "chat.a", "data": 1, "id": "k1"}
        alice = token("alice", publish=["chat.*"])
        published = await publish(alice, body)
        assert (published.status_code, published.json()) == (
            200,
            {"stream": "chat.a", "offset": 1, "id": "k1", "duplicate": False},
        )
        # De-duplication is scoped to the token's sub: alice again is a duplicate; bob and the
        # admin key (the server API's scope) reusing her id are not.
        again = (await publish(alice, body)).json()
        by_bob = (await publish(token("bob", publish=["chat.*"]), body)).json()
        by_admin = (await publish("the-admin-key", body)).json()
        assert [(r["offset"], r["duplicate"]) for r in (again, by_bob, by_admin)] == [
            (1, True),
            (2, False),
            (3, False),
        ]
        refused = await publish(alice, {**body, "stream": "news"})
        assert (refused.status_code, refused.json()) == (
            403,
            {"error": "'news' is not among this token's publish rights"},
        )
        assert hub.histories.get("news") is None
        forged = await publish(token(secret=OTHER_SECRET, publish=["chat.*"]), body)
        assert (forged.status_code, forged.json()) == (
            401,
            {"error": "invalid credential: token signature is invalid"},
        )
        admin = bearer(token("ops", admin=True))
        plain = bearer(token("alice"))
        for path in ("/metrics", "/api/stats"):
            assert (await http.get(f"{base}{path}")).status_code == 401
            assert (await http.get(f"{base}{path}", headers=admin)).status_code == 200
            assert (await http.get(f"{base}{path}", headers=plain)).status_code == 403
        dashboard = await http.get(f"{base}/dashboard")
        assert dashboard.status_code == 200 and 'id="login"' in dashboard.text
        nursery.cancel_scope.cancel()
