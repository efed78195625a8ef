"""The resilient Trio client: subscribe, resume without loss, publish idempotently.

Theory of operation:
- ``open_client`` owns a nursery with one task, a ``Reconnector`` (``reconnect.py``), that keeps
  a connection and hands every event of it to the client's ``ClientState``
  (``state.py``); the ``Client`` is the application's side. When it fails for good
  (ClientRejected, ConnectFailed, a forbidden subscription) the error is raised into the
  nursery: the ``async with`` block is cancelled and the error comes out of it, as a crashed
  child task's would.
- Everything the application receives goes through one bounded channel in the order the hub sent
  it, gaps before the replay they describe. The ``StreamTracker`` drops what was already
  delivered and advances a position only once its event is in the channel, so the next
  ``hello`` resumes exactly after the last event the application will see. The position store
  is written when the application asks for the next event: it has finished with the last one.
- Publishes, subscribes and unsubscribes are sent by the calling task on the current connection.
  A publish is sent again, unchanged (same id, or none, and ``ref``), until its ``published``
  or ``error`` answer arrives; one without an id gets the hub's content id (``publishing.py``).
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import attrs
import trio

from wshub.client.credentials import Credentials, TokenProvider
from wshub.client.publishing import Publisher
from wshub.client.reconnect import (
    ClientError,
    ClientRejected,
    ConnectFailed,
    Reconnector,
    SessionOver,
)
from wshub.client.resume import Gap, MemoryPositionStore, Message, PositionStore
from wshub.client.state import ClientEvent, ClientState, PublishError, SubscribeError
from wshub.client.transport import ClientTransport, Connector, websocket_connector
from wshub.core import protocol
from wshub.core.backoff import Backoff
from wshub.core.breaker import CircuitBreaker
from wshub.core.events import PublishResult
from wshub.core.protocol import Position

__all__ = [
    "Client",
    "ClientError",
    "ClientEvent",
    "ClientRejected",
    "ClientStatistics",
    "ClientTransport",
    "ConnectFailed",
    "Connector",
    "Gap",
    "Message",
    "PublishError",
    "SubscribeError",
    "open_client",
]


@attrs.frozen
class ClientStatistics:
    """A snapshot of a client's counters since it was opened.

    ``reconnects`` counts welcomed connections after the first; ``resumes`` stream resumptions
    that lost nothing; ``messages`` messages delivered; ``duplicates`` messages dropped as
    already delivered; ``publish_retries`` publish frames sent again; ``refreshes`` tokens
    the hub took in a ``refresh`` (see ``open_client``'s ``token``).
    """

    connected: bool
    attempts: int
    failed_attempts: int
    reconnects: int
    resumes: int
    gaps: int
    messages: int
    duplicates: int
    published: int
    publish_retries: int
    last_error: str | None
    refreshes: int = 0


class Client:
    """A connection to a hub that survives drops. Made by ``open_client``.

    ``async for event in client`` yields ``Message`` and ``Gap`` events, in the order the hub sent
    them: per stream in offset order, each message once, each gap before the replay after it.
    """

    def __init__(
        self,
        state: ClientState,
        *,
        retry_backoff: Backoff,
        request_timeout: float,
        max_message_bytes: int,
        content_ids: bool = True,
    ) -> None:
        self._state = state
        self._request_timeout = request_timeout
        self._publisher = Publisher(
            state,
            retry_backoff=retry_backoff,
            request_timeout=request_timeout,
            max_message_bytes=max_message_bytes,
            content_ids=content_ids,
        )
        self._uncommitted: ClientEvent | None = None

    @property
    def client_id(self) -> str:
        """The client id this client connects as."""
        return self._state.client_id

    # ------------------------------------------------------------------ public API

    def __aiter__(self) -> Client:
        """The client itself: iterate it for its events."""
        return self

    async def __anext__(self) -> ClientEvent:
        """The next message or gap; raises the client's error once it has failed for good."""
        self._commit()
        try:
            event = await self._state.deliveries.receive()
        except trio.EndOfChannel:
            if self._state.failure is not None:
                raise self._state.failure from None
            raise StopAsyncIteration from None
        self._uncommitted = event
        return event

    async def subscribe(self, stream: str) -> None:
        """Subscribe to ``stream``, resuming from the client's position in it if it has one.

        Returns once the hub has confirmed (the replay follows among the events). Raises
        ValueError for an invalid name, SubscribeError when the hub refuses, and the client's
        error if it fails for good meanwhile.
        """
        if protocol.stream_kind(stream) is None:
            raise ValueError(f"invalid stream name {stream!r}")
        self._state.wanted[stream] = None
        self._state.subscribe_calls[stream] += 1
        try:
            while True:
                session = await self._state.wait_for_session()
                if stream in session.confirmed:
                    return
                refusal = session.refused.get(stream)
                if refusal is not None:
                    self._state.wanted.pop(stream, None)
                    raise SubscribeError(stream, refusal.code, refusal.message)
                progress = session.progress
                if stream not in session.awaiting:
                    session.awaiting.append(stream)
                    position = self._state.tracker.positions.get(stream)
                    await session.send(protocol.encode_subscribe(stream, position))
                with trio.move_on_after(self._request_timeout) as waited:
                    await progress.wait()
                if waited.cancelled_caught:  # the answer is overdue: start a new connection
                    session.end(SessionOver(f"no answer to subscribe {stream!r}"))
        finally:
            self._state.subscribe_calls[stream] -= 1

    async def unsubscribe(self, stream: str) -> None:
        """Stop receiving ``stream``; its messages not yet delivered are dropped.

        Raises ValueError for the personal stream, which is always subscribed.
        """
        if stream == self._state.personal_stream:
            raise ValueError("the personal stream is always subscribed")
        self._state.wanted.pop(stream, None)
        self._state.tracker.leave(stream)
        session = self._state.session
        if session is None:
            await trio.lowlevel.checkpoint()
            return
        session.confirmed.discard(stream)
        self._state.unsubscribing[stream] += 1
        await session.send(protocol.encode_unsubscribe(stream))

    async def publish(self, stream: str, data: Any, *, id: str | None = None) -> PublishResult:
        """Publish ``data`` to topic ``stream`` and return the hub's answer.

        Without ``id`` the frame carries none and the hub applies its one rule, as for
        ``hub.publish`` and HTTP: with its ``dedup.content_ids`` on (the default) the message id
        is the content id, ``wshub.message_id(stream, data)``, so identical data published again
        within the hub's ``dedup.window`` is not stored twice, and the answer says
        ``duplicate``. (With ``content_ids=False`` at ``open_client`` it is a random id per call
        instead, for a hub whose ``dedup.content_ids`` is off.) Sent again unchanged until
        answered, so the hub stores it once; ``duplicate`` is true when an earlier send had been
        stored already.
        Raises ValueError for an invalid stream or data; PublishError when refused, with its
        code: ``conflict`` when the id was already used for other data, ``forbidden``,
        ``bad_request``, ``too_large`` (without sending when the frame exceeds
        ``max_message_bytes``); only ``unavailable`` and ``rate_limited`` are retried. Raises
        the client's error if it fails for good meanwhile.
        """
        return await self._publisher.publish(stream, data, id=id)

    async def wait_connected(self) -> None:
        """Return once a welcomed connection is up; raises the client's error if it fails."""
        await self._state.wait_for_session()

    @property
    def connected(self) -> bool:
        """Whether a welcomed connection is up."""
        return self._state.session is not None

    @property
    def positions(self) -> dict[str, Position]:
        """The position in each stream: the last offset handed over for delivery, by epoch."""
        return dict(self._state.tracker.positions)

    def statistics(self) -> ClientStatistics:
        """Counters since the client was opened (see ClientStatistics)."""
        counts, connection = self._state.counts, self._state.connection
        return ClientStatistics(
            connected=self.connected,
            attempts=connection.attempts,
            failed_attempts=connection.failed_attempts,
            reconnects=max(connection.welcomes - 1, 0),
            resumes=counts["resumes"],
            gaps=counts["gaps"],
            messages=counts["messages"],
            duplicates=counts["duplicates"],
            published=counts["published"],
            publish_retries=counts["publish_retries"],
            last_error=connection.last_error,
            refreshes=self._state.credentials.refreshes,
        )

    # ------------------------------------------------------------------ lifetime

    def _commit(self) -> None:
        # The application asks for the next event (or leaves the block cleanly): it has
        # finished with the previous one, whose position may now be stored.
        state = self._state
        while state.unsaved:
            state.store.save(*state.unsaved.popitem())
        event, self._uncommitted = self._uncommitted, None
        if event is not None:
            state.store.save(event.stream, event.position)

    async def _run(self, reconnector: Reconnector) -> None:
        try:
            await reconnector.run()
        except ClientError as error:
            self._state.fail(error)
            raise


def _reraise(error: BaseException) -> NoReturn:
    # Raise ``error`` itself, keeping its original context rather than the group it came in.
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context
        del error, context


def _only_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    # The one error a group holds, when it holds one (the client's failure can come twice: from
    # the connection task and from the iterator in the block, as the same object).
    leaves: dict[int, BaseException] = {}
    pending = [group]
    while pending:
        for error in pending.pop().exceptions:
            if isinstance(error, BaseExceptionGroup):
                pending.append(error)
            else:
                leaves[id(error)] = error
    return next(iter(leaves.values())) if len(leaves) == 1 else None


@asynccontextmanager
async def open_client(
    url: str,
    client_id: str,
    *,
    subscribe: Iterable[str] | Mapping[str, Position | None] = (),
    token: str | TokenProvider | None = None,
    positions: PositionStore | None = None,
    backoff_base: float = 0.1,
    backoff_cap: float = 10.0,
    max_attempts: int | None = None,
    connect_breaker: CircuitBreaker | None = None,
    connect: Connector | None = None,
    connect_timeout: float = 10.0,
    heartbeat_timeout: float = 10.0,
    request_timeout: float = 30.0,
    buffer: int = 1000,
    max_message_bytes: int = 65536,
    content_ids: bool = True,
    rng: random.Random | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> AsyncIterator[Client]:
    """Connect to the hub at ``url`` as ``client_id`` and keep connected until the block ends.

    ``subscribe`` names streams (or maps them to positions to start after); positions in
    ``positions`` (default: in memory) are resumed from, and updated as the application consumes
    events. Reconnects wait a full-jitter backoff (``backoff_base``, ``backoff_cap``), guarded
    by ``connect_breaker`` when given; ``connect(url, subprotocols)`` opens one connection
    (default: trio-websocket). ``token`` is sent in every hello: a string, or a token provider
    (a function or an async function returning one) asked before every connection and, when
    its token is a JWT with ``exp``, again at 80 % of the token's lifetime to ``refresh`` it
    on the open connection (``wall_clock``, Unix seconds, is what ``exp`` is compared with).
    The block raises ClientRejected on close 1008, ConnectFailed after ``max_attempts``
    consecutive failed attempts, SubscribeError when a subscription made at connect time is
    forbidden, and ValueError for invalid arguments. ``content_ids`` (default True): a
    publish without an id is sent without one, for the hub to identify by its
    ``dedup.content_ids``; False draws a random id per call, for a hub whose content ids are
    off (see ``Client.publish``).
    """
    if not protocol.is_valid_client_id(client_id):
        raise ValueError(f"client_id must match [A-Za-z0-9_.:-]{{1,128}}, got {client_id!r}")
    wanted: dict[str, Position | None] = (
        dict(subscribe) if isinstance(subscribe, Mapping) else dict.fromkeys(subscribe)
    )
    for stream in wanted:
        if protocol.stream_kind(stream) is None:
            raise ValueError(f"invalid stream name {stream!r}")
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be None or >= 1, got {max_attempts}")
    for name, value in (
        ("connect_timeout", connect_timeout),
        ("heartbeat_timeout", heartbeat_timeout),
        ("request_timeout", request_timeout),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    state = ClientState(
        client_id,
        wanted=wanted,
        credentials=Credentials(token, wall_clock=wall_clock),
        store=positions if positions is not None else MemoryPositionStore(),
        buffer=buffer,
    )
    client = Client(
        state,
        retry_backoff=Backoff(backoff_base, backoff_cap, random.Random()),
        request_timeout=request_timeout,
        max_message_bytes=max_message_bytes,
        content_ids=content_ids,
    )
    reconnector = Reconnector(
        url=url,
        handler=state,
        connect=connect or websocket_connector(connect_timeout=connect_timeout),
        backoff=Backoff(backoff_base, backoff_cap, rng or random.Random()),
        max_attempts=max_attempts,
        breaker=connect_breaker,
        connect_timeout=connect_timeout,
        heartbeat_timeout=heartbeat_timeout,
        counters=state.connection,
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run, reconnector)
            yield client
            client._commit()
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        single = _only_error(group)
        if single is None:
            raise
        _reraise(single)
    finally:
        state.close()
