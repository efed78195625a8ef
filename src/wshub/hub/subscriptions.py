"""Who is subscribed to what on this node: joining streams, fan-out, leaving.

Theory of operation:
- ``_subscribers`` maps a stream to the connections subscribed to it here, and each
  connection's ``subscriptions`` is the same relation seen from the other side; the two change
  together, only in this module. A broker is told of every membership (``join_nowait`` /
  ``leave``), so it follows a stream exactly while this node has a subscriber to it.
- Joining prepares every stream with its broker first (the I/O: reading history, subscribing
  a Redis channel), then joins them all in one synchronous step and hands back the replays,
  which the caller queues before returning: no checkpoint lies between the replay and the
  first live message, so nothing is lost or repeated between them.
- ``deliver`` is the brokers' way in (the ``StreamSink``): the frame encoded once is appended
  to every subscriber's queue without awaiting, per stream in offset order.
- ``$sys.*`` streams live in the node's own memory broker (``local``), every other stream in
  ``broker`` (the same object unless the broker is Redis).
"""

from __future__ import annotations

import itertools

from wshub.brokers.base import Broker, BrokerUnavailable, Prepared, StaleRead
from wshub.core.config import HubConfig
from wshub.core.history import HistoryFull, Replay, StoredMessage
from wshub.core.metrics import HubMetrics
from wshub.core.protocol import (
    CloseCode,
    Hello,
    Position,
    StreamStatus,
    encode_error,
    encode_subscribed,
    personal_stream,
)
from wshub.hub.access import subscribe_refusal
from wshub.hub.connection import Connection
from wshub.hub.frames import small_frame

__all__ = ["Subscriptions", "status_of"]


class Subscriptions:
    """This node's subscriptions, and the fan-out the brokers deliver through."""

    def __init__(
        self, config: HubConfig, *, local: Broker, broker: Broker, metrics: HubMetrics
    ) -> None:
        self.local = local
        self.broker = broker
        self.metrics = metrics
        self.max_subscriptions = config.limits.max_subscriptions
        self._subscribers: dict[str, set[Connection]] = {}
        self._small_frame = small_frame(config.limits.max_queue_bytes, config.limits.max_queue)

    # ------------------------------------------------------------------ the brokers' side

    def deliver(self, message: StoredMessage) -> None:
        """Fan a message out to this node's subscribers (the brokers call this, in order)."""
        subscribers = self._subscribers.get(message.stream)
        if subscribers:
            if len(message.frame) <= self._small_frame:  # measured once, not per subscriber
                for connection in subscribers:
                    connection.enqueue_message(message)
            else:
                for connection in subscribers:
                    connection.enqueue(message)

    def lose(self, stream: str) -> None:
        """The broker cannot keep ``stream`` contiguous here: its subscribers resume.

        Each gets what it was already sent, then a close with 1001, and resumes (on any
        node) with ``recovered: false`` and its exact gap, as PROTOCOL.md promises.
        """
        for connection in self._subscribers.pop(stream, ()):
            connection.subscriptions.discard(stream)
            connection.start_closing(CloseCode.GOING_AWAY, f"stream {stream!r} must be resumed")

    # ------------------------------------------------------------------ the clients' side

    async def join_hello(
        self, connection: Connection, hello: Hello
    ) -> tuple[dict[str, Replay], list[str]]:
        """Join the personal stream and at most ``max_subscriptions`` of the hello's streams.

        Returns the replays and the error frames for the refused streams, so that the
        hello's answer (welcome, errors, replays) stays bounded. Raises BrokerUnavailable.
        """
        client_id = connection.client_id
        assert client_id is not None and connection.identity is not None
        requested = dict(hello.subscribe)
        personal = personal_stream(client_id)
        positions = {personal: requested.pop(personal, None)}
        limit = self.max_subscriptions
        positions.update(itertools.islice(requested.items(), limit))
        errors: list[str] = []
        wanted: dict[str, Position | None] = {}
        for stream, position in positions.items():
            refusal = subscribe_refusal(connection.identity, stream)
            if refusal is None:
                wanted[stream] = position
            else:
                errors.append(encode_error("forbidden", refusal))
        if len(requested) > limit:
            errors.append(
                encode_error(
                    "limit_exceeded",
                    f"hello.subscribe lists {len(requested)} streams, more than "
                    f"limits.max_subscriptions ({limit}): the last {len(requested) - limit} "
                    "were not subscribed",
                )
            )
        replays = await self._join(connection, wanted, errors)
        return replays, errors

    async def subscribe(
        self, connection: Connection, stream: str, position: Position | None
    ) -> None:
        """Answer a ``subscribe``: ``subscribed`` and the replay, or an error."""
        assert connection.identity is not None
        refusal = subscribe_refusal(connection.identity, stream)
        if refusal is not None:
            connection.enqueue(encode_error("forbidden", refusal))
            return
        limit = self.max_subscriptions
        if stream not in connection.subscriptions and _topics(connection) >= limit:
            message = (
                f"already subscribed to {limit} streams, the most "
                "limits.max_subscriptions allows on one connection"
            )
            connection.enqueue(encode_error("limit_exceeded", message))
            return
        errors: list[str] = []
        try:
            replays = await self._join(connection, {stream: position}, errors)
        except BrokerUnavailable as error:
            connection.enqueue(encode_error("unavailable", str(error)))
            return
        if errors:
            connection.enqueue(errors[0])
            return
        connection.enqueue(encode_subscribed(stream, status_of(replays[stream])))
        connection.enqueue_replay(replays[stream].messages)

    def unsubscribe(self, connection: Connection, stream: str) -> str | None:
        """Leave a stream; returns an error frame when that is not allowed."""
        if stream == personal_stream(connection.client_id or ""):
            return encode_error("forbidden", "the personal stream is always subscribed")
        if stream in connection.subscriptions:
            connection.subscriptions.discard(stream)
            self._detach(connection, stream)
        return None

    def leave_all(self, connection: Connection) -> None:
        """Leave every stream of a connection that has ended."""
        for stream in connection.subscriptions:
            self._detach(connection, stream)
        connection.subscriptions.clear()

    def counts(self) -> dict[str, int]:
        """Subscribed connections per stream, for the streams that have any."""
        return {stream: len(connections) for stream, connections in self._subscribers.items()}

    # ------------------------------------------------------------------ joining and leaving

    def _broker_for(self, stream: str) -> Broker:
        return self.local if stream.startswith("$") else self.broker

    async def _join(
        self, connection: Connection, positions: dict[str, Position | None], errors: list[str]
    ) -> dict[str, Replay]:
        """Prepare every stream (the I/O), then join them all in one synchronous step.

        Streams that cannot be joined get an error frame in ``errors``; raises
        BrokerUnavailable (after giving back what was prepared) when the broker is down.
        """
        for _attempt in range(3):
            prepared: list[Prepared] = []
            try:
                for stream, position in positions.items():
                    prepared.append(await self._broker_for(stream).prepare(stream, position))
            except BaseException:
                for done in prepared:
                    self._broker_for(done.stream).abandon(done)
                raise
            # From here to the end: no checkpoint, so the replays meet live delivery.
            replays: dict[str, Replay] = {}
            stale = False
            for done in prepared:
                stream = done.stream
                broker = self._broker_for(stream)
                if stale:
                    broker.abandon(done)
                    continue
                try:
                    replay = broker.join_nowait(done)
                except HistoryFull as error:
                    errors.append(encode_error("unavailable", str(error)))
                    continue
                except StaleRead:
                    stale = True  # read again, all of them: the others are given back
                    for stream_joined in replays:
                        self._broker_for(stream_joined).leave(stream_joined)
                    continue
                replays[stream] = replay
            if stale:
                continue
            for stream, replay in replays.items():
                if stream in connection.subscriptions:  # subscribed again: one membership
                    self._broker_for(stream).leave(stream)
                self._subscribers.setdefault(stream, set()).add(connection)
                connection.subscriptions.add(stream)
                if positions[stream] is not None:
                    self.metrics.record_resume(replay.recovered)
                    self.metrics.replayed += len(replay.messages)
            return replays
        raise BrokerUnavailable("the broker kept moving ahead of this node's reads; retry later")

    def _detach(self, connection: Connection, stream: str) -> None:
        subscribers = self._subscribers.get(stream)
        if subscribers is not None and connection in subscribers:
            subscribers.discard(connection)
            if not subscribers:
                del self._subscribers[stream]
            self._broker_for(stream).leave(stream)


def status_of(replay: Replay) -> StreamStatus:
    """The ``welcome`` / ``subscribed`` status of a stream just joined."""
    return StreamStatus(replay.epoch, replay.offset, replay.first, replay.recovered)


def _topics(connection: Connection) -> int:
    """How many streams ``connection`` is subscribed to besides its personal stream."""
    subscribed = connection.subscriptions
    return len(subscribed) - (personal_stream(connection.client_id or "") in subscribed)
