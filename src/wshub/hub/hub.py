"""The hub: streams, subscriptions, publishing, and the task tree that owns them.

Theory of operation:
- Streams live in a broker (``wshub.brokers``): offsets, epochs, history and de-duplication.
  ``$sys.*`` streams always live in this node's own ``MemoryBroker`` (``local``); the others in
  ``broker``, which is that same memory broker unless ``broker.kind`` is ``redis``.
- The broker hands every message to ``deliver`` (this node's fan-out), per stream in offset
  order: the frame encoded once is appended to every subscriber's queue without awaiting. With
  the memory broker a publish is synchronous from de-duplication to fan-out.
- Subscribing, and the fan-out itself, live in ``subscriptions.py``; a client's publish in
  ``client_publishing.py``. Publishes are de-duplicated per (stream, publisher, message id)
  within ``dedup.window``; the same id with other content is a conflict.
- ``open_hub`` owns a nursery: the writer flush tick, the sweeper, the metrics flusher and,
  for the embedded servers, every connection. Leaving it drains connections (1001 after their
  queues are flushed, within ``shutdown.grace``), flushes metrics once more, then cancels. The
  nursery sits behind a shield, so a cancelled caller drains too (``lifetime.py``).
- Connections reach the hub only through ``ConnectionHost`` (``connection.py``), which the
  hub implements: admitting, welcoming and forgetting them is ``ConnectionRegistry``'s
  (``registry.py``), their requests go to subscriptions, publishing and ``access.py``. The
  reports read the hub through ``ReportSource`` (``reports.py``).
- With ``[auth]``, a hello's token is verified once (``auth.py``) and its expiry becomes the
  connection's deadline on the trio clock; a ``refresh`` with a token for the same subject
  moves the deadline and replaces the rights, leaving any stream the new rights no longer
  allow. ``wall_clock`` is what tokens' ``exp`` is read against (tests give one that follows
  the trio clock).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio

from wshub.brokers.base import Broker
from wshub.brokers.memory import MemoryBroker
from wshub.brokers.redis import RedisBroker
from wshub.core.breaker_registry import BreakerRegistry
from wshub.core.config import HubConfig
from wshub.core.dedup import Deduplicator
from wshub.core.events import PublishResult
from wshub.core.history import HistoryStore
from wshub.core.logcontext import log_context
from wshub.core.metrics import HubMetrics
from wshub.core.protocol import (
    Hello,
    Publish,
    Refresh,
    Subscribe,
    encode_unsubscribed,
    personal_stream,
    stream_kind,
)
from wshub.hub.access import SYS_METRICS, refresh_credential
from wshub.hub.auth import TokenVerifier
from wshub.hub.client_publishing import ClientPublishing
from wshub.hub.connection import Connection, Request
from wshub.hub.flush import FlushTick
from wshub.hub.hooks import AuthenticateHook, Identity, OnPublishHook
from wshub.hub.lifetime import Lifetime, every
from wshub.hub.registry import ConnectionRegistry
from wshub.hub.reports import health_report, stats_report
from wshub.hub.subscriptions import Subscriptions
from wshub.hub.transport import RequestInfo, Transport
from wshub.hub.upkeep import Upkeep

__all__ = ["SYS_METRICS", "Hub", "PublishResult", "open_hub"]

logger = logging.getLogger("wshub.hub")

SERVER_PUBLISHER = ""  # the server API's publisher scope; no client id can be empty


class Hub:
    """Streams, subscriptions and connections. Create it with ``open_hub(config)``.

    Raises ConfigError when ``[auth]``'s public key cannot be read or used, and ValueError
    when an ``authenticate`` hook is given together with ``[auth]`` (one of them decides).
    """

    def __init__(
        self,
        config: HubConfig,
        *,
        authenticate: AuthenticateHook | None = None,
        on_publish: OnPublishHook | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if authenticate is not None and config.auth.enabled:
            raise ValueError(
                "give either an authenticate hook or [auth] JWT keys, not both: "
                "each decides alone who a client is"
            )
        #: Verifies JWTs when ``[auth]`` is on (None otherwise); also used by HTTP endpoints.
        self.tokens = TokenVerifier.from_config(config.auth, wall_clock=wall_clock)
        if self.tokens is not None and config.server.allow_anonymous:
            logger.warning(
                "[auth] is on but server.allow_anonymous is true: clients without a token "
                "still connect, with every topic; set it to false to require tokens"
            )
        self.config = config
        self.metrics = HubMetrics(
            client_ttl=config.metrics.client_ttl, sample_rate=config.metrics.sample_rate
        )
        self.breakers = BreakerRegistry(config.breaker, max_breakers=config.breaker.max_breakers)
        self.breakers.add_listener(self.metrics.on_breaker_transition)
        self.node = f"{socket.gethostname()}:{os.getpid()}"
        self.local = MemoryBroker.from_config(config, node=self.node)
        self.broker: Broker = self.local
        if config.broker.kind == "redis":
            self.broker = RedisBroker.from_config(config, breakers=self.breakers, node=self.node)
        self.metrics.node, self.metrics.broker = self.node, self.broker
        self.started_at = trio.current_time()
        self.lifetime = Lifetime(config.shutdown.grace)  # connection tasks and the drain
        self._on_publish = on_publish
        self._connections = self.lifetime.connections
        self.client_publishing = ClientPublishing(
            config,
            broker=self.broker,
            breakers=self.breakers,
            metrics=self.metrics,
            on_publish=on_publish,
            count=self._count,
        )
        self.subscriptions = Subscriptions(
            config, local=self.local, broker=self.broker, metrics=self.metrics
        )
        #: Admits, welcomes and forgets connections (the hub's ``ConnectionHost`` methods).
        self.registry = ConnectionRegistry(
            config,
            lifetime=self.lifetime,
            subscriptions=self.subscriptions,
            metrics=self.metrics,
            breakers=self.breakers,
            tokens=self.tokens,
            authenticate=authenticate,
        )
        self.flush = FlushTick(config.limits)  # releases the writers; see flush.py
        #: The sweeper's and the metrics flusher's work (``upkeep.py``).
        self.upkeep = Upkeep(
            config,
            local=self.local,
            broker=self.broker,
            metrics=self.metrics,
            started_at=self.started_at,
        )
        #: The flushed snapshots, oldest first (at most ``metrics.history_points``).
        self.series = self.upkeep.series
        self.status_log = self.upkeep.status_log
        #: This hub among others in the logs (the ``hub`` field) and in its reports.
        self.id = secrets.token_hex(4)
        #: The servers carrying its connections ("fast", "hypercorn", ...), in start order.
        self.servers: list[str] = []

    # ------------------------------------------------------------------ public API

    async def publish(self, stream: str, data: Any, *, id: str | None = None) -> PublishResult:
        """Publish ``data`` to a topic or personal stream, idempotently by message id.

        Raises ValueError for an invalid stream name or id, or data that is not JSON;
        ``wshub.IdConflict`` when ``id`` was published to ``stream`` with other data within
        ``dedup.window``; ``wshub.BrokerUnavailable`` while the broker (Redis) cannot be
        reached; ``HistoryFull`` when the memory broker holds ``history.max_streams`` streams.
        """
        await trio.lowlevel.checkpoint()
        if stream_kind(stream) not in ("topic", "personal"):
            raise ValueError(f"cannot publish to {stream!r}: not a topic or personal stream name")
        _check_id(id)
        if self.broker is self.local:  # the fast path: synchronous from dedup to fan-out
            result = self.local.publish_nowait(stream, data, publisher=SERVER_PUBLISHER, id=id)
            if result.duplicate:
                self.metrics.deduplicated += 1
            else:
                self.metrics.published += 1
            return result
        return await self._publish(stream, data, SERVER_PUBLISHER, id)

    async def send(self, client_id: str, data: Any, *, id: str | None = None) -> PublishResult:
        """Publish ``data`` to the personal stream ``@client_id``."""
        return await self.publish(personal_stream(client_id), data, id=id)

    def health(self) -> dict[str, Any]:
        """The body of ``/health/websocket``: status, reasons and the figures behind them."""
        return health_report(self)

    def stats(self, *, series: bool = False) -> dict[str, Any]:
        """The body of ``/api/stats``; with ``series`` the recent flushed snapshots too."""
        return stats_report(self, series=series)

    @property
    def histories(self) -> HistoryStore:
        """This node's own histories: ``$sys.*``, and every stream with the memory broker."""
        return self.local.histories

    @property
    def dedup(self) -> Deduplicator:
        """This node's own de-duplication table (every publish's, with the memory broker)."""
        return self.local.dedup

    @property
    def connection_count(self) -> int:
        """Connections that completed their hello."""
        return self.registry.registered

    @property
    def draining(self) -> bool:
        """Whether the hub is shutting down (new connections are refused with 1001)."""
        return self.lifetime.draining

    @property
    def nursery(self) -> trio.Nursery:
        """The hub's nursery, for tasks that must end no later than the hub (connections).

        Raises RuntimeError outside ``open_hub``.
        """
        if self.lifetime.nursery is None:
            raise RuntimeError("the hub is not running; use open_hub()")
        return self.lifetime.nursery

    async def serve_connection(self, transport: Transport, request: RequestInfo) -> None:
        """Serve one accepted WebSocket until it closes (used by every transport adapter)."""
        connection = Connection(self, transport, request)
        del request  # the connection drops its headers after the hello: keep no other copy
        with log_context(hub=self.id, node=self.node):  # and client_id once welcomed
            await self.lifetime.run(connection)

    def served_by(self, server: str) -> None:
        """Note that ``server`` carries this hub's connections (the reports' ``server``)."""
        if server not in self.servers:
            self.servers.append(server)

    def start_soon_in_hub(self, function: Any, *args: Any) -> None:
        """Run a task in the hub's nursery, so that it ends no later than the hub."""
        self.lifetime.start_soon(function, *args)

    async def drain(self) -> None:
        """Stop accepting, flush every queue and close each connection with 1001.

        Connections get ``shutdown.grace`` seconds to flush before they are cut; then the
        metrics are flushed one last time. Idempotent: a second call waits for the first.
        """
        await self.lifetime.drain(self.flush_metrics)

    # ------------------------------------------------------------------ publishing

    def _count(self, result: PublishResult) -> None:
        if result.duplicate:
            self.metrics.deduplicated += 1
        else:
            self.metrics.published += 1

    async def publish_for(
        self, client_id: str, stream: str, data: Any, *, id: str | None = None
    ) -> PublishResult:
        """Publish to topic ``stream`` as ``client_id`` (de-duplicated in that client's scope,
        as its WebSocket publishes are); for HTTP publishers holding a token. Rights are the
        caller's to check. Raises ValueError as ``publish`` does, for any stream but a topic.
        """
        await trio.lowlevel.checkpoint()
        if stream_kind(stream) != "topic":
            raise ValueError(f"cannot publish to {stream!r} as a client: not a topic")
        _check_id(id)
        return await self._publish(stream, data, client_id, id)

    async def _publish(
        self, stream: str, data: Any, publisher: str, id: str | None
    ) -> PublishResult:
        result = await self.broker.publish(stream, data, publisher=publisher, id=id)
        self._count(result)
        return result

    async def handle_request(self, connection: Connection, request: Request) -> None:
        """Serve a client's publish, subscribe, unsubscribe or refresh; answers go to its
        queue."""
        if isinstance(request, Publish):
            connection.enqueue(await self.publish_from_client(connection, request))
        elif isinstance(request, Subscribe):
            await self.subscriptions.subscribe(connection, request.stream, request.position)
        elif isinstance(request, Refresh):
            self.refresh(connection, request.token)
        else:
            refusal = self.subscriptions.unsubscribe(connection, request.stream)
            connection.enqueue(refusal or encode_unsubscribed(request.stream))

    async def publish_from_client(self, connection: Connection, event: Publish) -> str:
        """Publish for a client; returns the frame to answer with (published or error)."""
        return await self.client_publishing.publish(connection, event)

    def refresh(self, connection: Connection, token: str) -> None:
        """Answer a ``refresh``: ``refreshed`` with the new expiry, an error, or close 1008."""
        refresh_credential(connection, token, self.tokens, leave=self.subscriptions.unsubscribe)

    # ------------------------------------------------------------------ connections

    def admission_refusal(self, request: RequestInfo) -> tuple[int, str] | None:
        """Why a new connection must be closed at once, or None to go on."""
        return self.registry.admission_refusal(request)

    async def authenticate_hello(self, hello: Hello, request: RequestInfo) -> Identity:
        """Decide who a hello is; raises AuthenticationError or HookUnavailable."""
        return await self.registry.authenticate_hello(hello, request)

    async def register(self, connection: Connection, hello: Hello) -> bool:
        """Welcome a connection: subscribe it, queue welcome and replays.

        Returns False after closing the connection with 1013 when the broker is unavailable.
        """
        return await self.registry.register(connection, hello)

    def unregister(self, connection: Connection) -> None:
        """Forget a connection that is ending (idempotent), and count how it ended."""
        self.registry.unregister(connection)

    # ------------------------------------------------------------------ writers and queues

    def record_overflow(self, dropped: int) -> None:
        """Count a slow consumer whose queue overflowed."""
        self.registry.record_overflow(dropped)

    def queue_depths(self) -> tuple[int, int]:
        """Total and largest outbound queue length over all connections."""
        return self.registry.queue_depths()

    def queued_by_client(self) -> dict[str, int]:
        """Messages waiting in outbound queues, summed per client id (over its tabs)."""
        return self.registry.queued_by_client()

    def subscriber_counts(self) -> dict[str, int]:
        """Subscribed connections per stream, for the streams that have any."""
        return self.subscriptions.counts()

    # ------------------------------------------------------------------ background tasks

    def sweep(self) -> dict[str, int]:
        """Expire history, dedup keys, idle client stats and forgotten streams."""
        return self.upkeep.sweep()

    def flush_metrics(self) -> dict[str, Any]:
        """Take a snapshot: into the ring buffer, onto ``$sys.metrics``, and to the log."""
        return self.upkeep.flushed(self.stats())

    @property
    def stream_marks(self) -> dict[str, tuple[str, int, float]]:
        """Per stream listed at the last metrics flush: (epoch, offset, time)."""
        return self.upkeep.stream_marks

    @property
    def overflowing(self) -> bool:
        """Whether a queue overflowed since the last metrics flush."""
        return self.upkeep.overflowing


def _check_id(id: object) -> None:
    if id is not None and (not isinstance(id, str) or not 1 <= len(id) <= 200):
        raise ValueError(f"id must be a string of 1 to 200 characters, got {id!r}")


@asynccontextmanager
async def open_hub(
    config: HubConfig | None = None,
    *,
    authenticate: AuthenticateHook | None = None,
    on_publish: OnPublishHook | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> AsyncIterator[Hub]:
    """Run a hub for the duration of the ``async with`` block.

    ``config`` defaults to ``HubConfig()`` (the production values). On exit, even when
    cancelled, the hub drains its connections within ``shutdown.grace`` before stopping.
    ``wall_clock`` (Unix seconds) is what JWT ``exp`` and ``nbf`` are checked against; a test
    under ``trio.testing.MockClock`` passes ``lambda: base + trio.current_time()`` so that
    token expiry happens at exact virtual times. Raises what ``Hub`` raises.
    """
    hub = Hub(
        config or HubConfig(),
        authenticate=authenticate,
        on_publish=on_publish,
        wall_clock=wall_clock,
    )
    # The hub's own tasks (and the caller's block) log with its id and node.
    with log_context(hub=hub.id, node=hub.node):
        async with AsyncExitStack() as brokers:
            await brokers.enter_async_context(hub.local.open(hub.subscriptions))
            if hub.broker is not hub.local:
                await brokers.enter_async_context(hub.broker.open(hub.subscriptions))
            # Leaving this block drains the hub first, even when cancelled (``lifetime.py``).
            async with hub.lifetime.running(hub.flush_metrics) as nursery:
                nursery.start_soon(hub.flush.run)
                nursery.start_soon(every, hub.config.cleanup.interval, hub.sweep)
                nursery.start_soon(every, hub.config.metrics.flush_interval, hub.flush_metrics)
                yield hub
