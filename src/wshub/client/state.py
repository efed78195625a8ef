"""What a client knows, and how each event from the hub changes it.

Theory of operation: ``ClientState`` is the ``SessionHandler`` the ``Reconnector`` serves. It holds
the streams the application wants (an ordered set: the hello asks for them in that order), the
positions (through the ``StreamTracker``), the channel of events for the application, the
publishes waiting for an answer, and the current session. Every event of a connection passes
through ``on_event`` in order, in the connection's reader task; the public ``Client`` methods run
in the application's tasks and meet the reader only through this object and trio Events.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping
from typing import Any, TypeAlias

import attrs
import trio

from wshub.client.credentials import Credentials
from wshub.client.reconnect import ClientError, Counters, Session, SessionOver
from wshub.client.resume import Gap, Message, PositionStore, StreamTracker
from wshub.core import protocol
from wshub.core.protocol import NO_REF, Position, StreamStatus

__all__ = ["ClientEvent", "ClientState", "PendingPublish", "PublishError", "SubscribeError"]

#: What ``async for event in client`` yields.
ClientEvent: TypeAlias = Message | Gap


class PublishError(ClientError):
    """The hub refused a publish (``code`` is a protocol error code such as ``forbidden``)."""

    def __init__(self, stream: str, code: str, message: str) -> None:
        super().__init__(f"publish to {stream!r} refused ({code}): {message}")
        self.stream = stream
        self.code = code
        self.message = message


class SubscribeError(ClientError):
    """The hub refused a subscription (``code``: ``forbidden`` or ``unavailable``)."""

    def __init__(self, stream: str, code: str, message: str) -> None:
        super().__init__(f"subscription to {stream!r} refused ({code}): {message}")
        self.stream = stream
        self.code = code
        self.message = message


@attrs.define(eq=False)
class PendingPublish:
    """A publish waiting for its answer; ``wake`` is set on an answer or a lost session."""

    wake: trio.Event = attrs.field(factory=trio.Event)
    answer: protocol.Published | protocol.Error | None = None


class ClientState:
    """The streams, positions, deliveries and pending requests of one client."""

    def __init__(
        self,
        client_id: str,
        *,
        wanted: Mapping[str, Position | None],
        credentials: Credentials,
        store: PositionStore,
        buffer: int,
    ) -> None:
        self.client_id = client_id
        self.personal_stream = protocol.personal_stream(client_id)
        self.credentials = credentials
        self.store = store
        self.tracker = StreamTracker(store.load())
        for stream, position in wanted.items():
            if position is not None:
                self.tracker.positions[stream] = position
        self.wanted = dict.fromkeys([self.personal_stream, *wanted])  # an ordered set
        self.deliver_send, self.deliveries = trio.open_memory_channel[ClientEvent](buffer)
        self.session: Session | None = None
        self.session_ready = trio.Event()
        self.failure: ClientError | None = None
        self.closed = False
        self.publishes: dict[int, PendingPublish] = {}
        self.refs = itertools.count(1)
        self.subscribe_calls: Counter[str] = Counter()
        self.unsubscribing: Counter[str] = Counter()  # unsubscribes sent on this session
        self.counts: Counter[str] = Counter()
        self.connection = Counters()
        # Where first subscriptions started, to be stored in the application's task (a store
        # error must reach the application, not pass for a connection failure).
        self.unsaved: dict[str, Position] = {}

    async def wait_for_session(self) -> Session:
        """The current session, once there is one; raises the failure or when closed."""
        while True:
            if self.failure is not None:
                raise self.failure
            if self.closed:
                raise ClientError("the client is closed")
            if self.session is not None:
                return self.session
            await self.session_ready.wait()

    def fail(self, error: ClientError) -> None:
        """The client has failed for good: every waiter and the iterator raise ``error``."""
        self.failure = error
        self.connection.last_error = repr(error)
        self.deliver_send.close()  # iterators raise it after what is buffered
        self.close()

    def close(self) -> None:
        """Wake every waiter: the client is over."""
        self.closed = True
        self.session_ready.set()
        for pending in self.publishes.values():
            pending.wake.set()

    # ------------------------------------------------------------------ the SessionHandler

    async def hello(self) -> tuple[str, list[str]]:
        """The ``hello`` for a new connection: a fresh token, every wanted stream from its
        position. Raises SessionOver when the token provider fails."""
        token = await self.credentials.obtain()
        positions = {
            stream: self.tracker.positions.get(stream)
            for stream in self.wanted
            if stream != self.personal_stream or stream in self.tracker.positions
        }
        frame = protocol.encode_hello(self.client_id, token=token, subscribe=positions)
        return frame, list(positions)

    async def on_welcome(self, session: Session, welcome: protocol.Welcome) -> None:
        """Check every stream of the welcome for gaps; then the session is ready for use."""
        self.tracker.begin_connection()
        for stream, status in welcome.streams.items():
            await self._on_status(session, stream, status)
        self.session = session
        self.session_ready.set()

    async def keep_credential(self, session: Session) -> None:
        """Refresh the token on this connection before it expires (see credentials.py)."""
        await self.credentials.keep_fresh(session.send)

    def on_session_end(self, session: Session) -> None:
        """Forget the session and wake every task waiting on it."""
        if self.session is session:
            self.session = None
            self.session_ready = trio.Event()
            self.unsubscribing.clear()  # the answers of a lost connection never come
        session.notify()
        for pending in self.publishes.values():
            pending.wake.set()

    async def on_event(self, session: Session, event: protocol.ServerEvent) -> None:
        """Deliver messages, note statuses and answers, attribute errors."""
        if isinstance(event, protocol.Message):
            deliveries = self.tracker.on_message(event) if event.stream in self.wanted else None
            if deliveries == []:
                self.counts["duplicates"] += 1
            for delivery in deliveries or ():
                await self._deliver(delivery)
        elif isinstance(event, protocol.Subscribed):
            if event.stream in session.awaiting:
                session.awaiting.remove(event.stream)
            if event.stream in self.wanted:
                await self._on_status(session, event.stream, event.status)
        elif isinstance(event, protocol.Published):
            self._answer(event.ref, event)
        elif isinstance(event, protocol.Refreshed):
            self.credentials.on_refreshed(event)
        elif isinstance(event, protocol.Unsubscribed):
            self._on_unsubscribed(session, event.stream)
        elif isinstance(event, protocol.Error):
            self._on_error(session, event)
        elif isinstance(event, protocol.Welcome):
            raise protocol.ProtocolError("bad_request", "a second welcome on one connection")

    def _on_unsubscribed(self, session: Session, stream: str) -> None:
        if self.unsubscribing[stream]:
            self.unsubscribing[stream] -= 1  # the answer to ``Client.unsubscribe``
        elif stream in self.wanted:
            # Not asked for: a refreshed token's rights no longer allow the stream. Asking for
            # it again would only be refused.
            self.wanted.pop(stream, None)
            self.tracker.leave(stream)
            session.confirmed.discard(stream)

    async def _on_status(self, session: Session, stream: str, status: StreamStatus) -> None:
        held = self.tracker.positions.get(stream)
        gaps = self.tracker.on_status(stream, status)
        if held is None:  # a first subscription starts now: nothing to deliver before it
            self.unsaved[stream] = self.tracker.positions[stream]
        elif not gaps:
            self.counts["resumes"] += 1
        for gap in gaps:
            await self._deliver(gap)
        session.confirmed.add(stream)
        session.notify()

    async def _deliver(self, event: ClientEvent) -> None:
        # Hand over first, then advance: a position never runs ahead of what was handed over.
        # (send_nowait first, so that counters are up to date when the application gets it.)
        try:
            self.deliver_send.send_nowait(event)
        except trio.WouldBlock:
            await self.deliver_send.send(event)
        self.tracker.advance(event)
        self.counts["gaps" if isinstance(event, Gap) else "messages"] += 1

    def _answer(self, ref: Any, answer: protocol.Published | protocol.Error) -> None:
        pending = self.publishes.get(ref) if isinstance(ref, int) else None
        if pending is not None:  # else: an answer to a send that was answered already
            pending.answer = answer
            pending.wake.set()

    def _on_error(self, session: Session, error: protocol.Error) -> None:
        self.connection.last_error = f"{error.code}: {error.message}"
        if error.ref is not NO_REF:
            self._answer(error.ref, error)
            return
        if error.code == "rate_limited" or not session.awaiting:
            # A frame was dropped and the hub does not say which: overdue requests are sent
            # again after request_timeout.
            return
        # Subscription refusals carry no ref; the hub answers subscriptions in order.
        stream = session.awaiting.popleft()
        session.refused[stream] = error
        session.notify()
        if self.subscribe_calls[stream]:
            return  # the subscribe() call raises it
        if error.code == "forbidden":
            self.wanted.pop(stream, None)
            raise SubscribeError(stream, error.code, error.message)
        raise SessionOver(f"subscription to {stream!r} unavailable: {error.message}")
