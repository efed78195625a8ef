"""The hub's side of each connection's life: admitting it, welcoming it, forgetting it.

Theory of operation:
- A connection's task puts it in ``Lifetime.connections`` when it starts; admission counts
  those, so a flood of connections that never say hello is refused too (1013), as is every
  new one while the hub drains (1001) and one from an origin not listed (1008).
- ``register`` is the welcome, in one step the connection's reader waits for: subscribe to the
  hello's streams, then queue the welcome, the refusals and the replays, in that order, before
  any frame of the client's is served. A connection welcomed while the hub drains still gets
  them all, then closes with 1001 once they are flushed. A broker that cannot be reached
  closes it with 1013 and welcomes nothing.
- Between a successful ``register`` and ``unregister`` a connection has ``stats`` and is
  counted in ``registered`` (the hub's ``connection_count``); one that never got there counts
  as a failed connection.
- ``unregister`` is idempotent: a connection calls it as soon as it is decided to end (so a
  writer stuck in a send keeps no subscription, queue or slot) and again when its task is over.
  It counts the close once, with the code that is true: the hub's own when it closed first,
  else the peer's where the server reports it, else ``PEER_CLOSED``.
"""

from __future__ import annotations

from wshub.brokers.base import BrokerUnavailable
from wshub.core.breaker_registry import BreakerRegistry
from wshub.core.config import HubConfig
from wshub.core.metrics import PEER_CLOSED, HubMetrics
from wshub.core.protocol import CloseCode, Hello, encode_welcome
from wshub.hub.access import authenticate
from wshub.hub.auth import TokenVerifier
from wshub.hub.connection import Connection
from wshub.hub.hooks import AuthenticateHook, Identity
from wshub.hub.lifetime import Lifetime
from wshub.hub.subscriptions import Subscriptions, status_of
from wshub.hub.transport import RequestInfo

__all__ = ["ConnectionRegistry"]


class ConnectionRegistry:
    """Admission, identification, welcome and farewell of one hub's connections, and the
    figures over their queues. ``Hub`` implements ``ConnectionHost`` with it."""

    def __init__(
        self,
        config: HubConfig,
        *,
        lifetime: Lifetime,
        subscriptions: Subscriptions,
        metrics: HubMetrics,
        breakers: BreakerRegistry,
        tokens: TokenVerifier | None,
        authenticate: AuthenticateHook | None,
    ) -> None:
        self.config = config
        self.lifetime = lifetime
        self.subscriptions = subscriptions
        self.metrics = metrics
        self.breakers = breakers
        self.tokens = tokens
        self.authenticate = authenticate
        #: Connections between ``register`` and ``unregister``.
        self.registered = 0

    def admission_refusal(self, request: RequestInfo) -> tuple[int, str] | None:
        """Why a new connection must be closed at once, or None to go on."""
        if self.lifetime.draining:
            return CloseCode.GOING_AWAY, "the server is shutting down"
        origins = self.config.server.origins
        if origins and request.header("origin") not in origins:
            return CloseCode.POLICY_VIOLATION, "origin not allowed"
        if len(self.lifetime.connections) > self.config.limits.max_connections:
            return CloseCode.TRY_AGAIN_LATER, "connection limit reached; retry later"
        return None

    async def authenticate_hello(self, hello: Hello, request: RequestInfo) -> Identity:
        """Decide who a hello is; raises AuthenticationError or HookUnavailable."""
        return await authenticate(
            hello,
            request,
            hook=self.authenticate,
            tokens=self.tokens,
            config=self.config,
            breakers=self.breakers,
            metrics=self.metrics,
        )

    async def register(self, connection: Connection, hello: Hello) -> bool:
        """Welcome a connection: subscribe it, queue welcome and replays.

        Returns False after closing the connection with 1013 when the broker is unavailable.
        """
        client_id = connection.client_id
        assert client_id is not None
        try:
            replays, errors = await self.subscriptions.join_hello(connection, hello)
        except BrokerUnavailable:
            connection.abort(CloseCode.TRY_AGAIN_LATER, "the broker is unavailable; retry later")
            return False
        metrics = self.metrics
        connection.stats = stats = metrics.connection_opened(client_id)
        if stats.disconnects:  # back after a disconnect (a second tab alongside is not)
            metrics.reconnections += 1
        self.registered += 1
        statuses = {stream: status_of(replay) for stream, replay in replays.items()}
        interval = self.config.heartbeat.interval
        connection.enqueue(encode_welcome(client_id, connection.session, interval, statuses))
        connection.enqueue_answer(errors)
        for replay in replays.values():
            connection.enqueue_replay(replay.messages)
        if self.lifetime.draining:
            connection.start_closing(CloseCode.GOING_AWAY, "the server is shutting down")
        return True

    def unregister(self, connection: Connection) -> None:
        """Forget a connection that is ending, drop its queue, and count how it ended.

        Idempotent: called once the connection is decided to end, and again when its task
        is over.
        """
        if connection.unregistered:
            return
        connection.unregistered = True
        connection.queue.clear()
        self.lifetime.connections.discard(connection)
        self.subscriptions.leave_all(connection)
        stats = connection.stats
        if stats is None:
            self.metrics.connections_failed += 1
            return
        connection.stats = None
        self.registered -= 1
        # What the hub decided (1000, 1001, 4002, ...) when it closed first; else the peer's
        # code where the server reports it truly, PEER_CLOSED where it cannot (hypercorn).
        code: int | str = connection.close_code
        if connection.peer_close_code is not None:
            truthful = connection.transport.peer_close_codes
            code = connection.peer_close_code if truthful else PEER_CLOSED
        self.metrics.connection_closed(stats.client_id, code)

    def record_overflow(self, dropped: int) -> None:
        """Count a slow consumer whose queue overflowed."""
        self.metrics.queue_overflows += 1
        self.metrics.record_drop("slow_consumer", dropped)
        self.metrics.record_queue_depth(dropped)

    def queue_depths(self) -> tuple[int, int]:
        """Total and largest outbound queue length over all connections."""
        depths = [len(c.queue) for c in self.lifetime.connections]
        total, largest = (sum(depths), max(depths)) if depths else (0, 0)
        self.metrics.queue_depth = total
        return total, largest

    def queued_by_client(self) -> dict[str, int]:
        """Messages waiting in outbound queues, summed per client id (over its tabs)."""
        queued: dict[str, int] = {}
        for connection in self.lifetime.connections:
            if connection.client_id is not None:
                queued[connection.client_id] = queued.get(connection.client_id, 0) + len(
                    connection.queue
                )
        return queued
