"""The Redis broker: many nodes, one history, restarts without loss.

Theory of operation:
- Redis holds each stream's epoch, offsets, history and de-duplication records; the publish
  script stores, publishes and records atomically (``lua.py``), one call for all the
  publishes to one stream that wait at the same time. A node never assigns an
  offset, so every node, restarted or not, agrees on every stream.
- A node delivers only what its pub/sub connection brings, through a ``Feed`` per stream that
  keeps offsets in order and fills skipped ones from history (``follower.py``).
- Joining subscribes the stream's channel first, then reads history; the feed starts at (or
  waits until it has delivered) the read's newest offset, and ``join_nowait`` adds what the
  feed delivered since the read, so the replay meets delivery exactly.
- Every call has ``broker.timeout`` and runs under the hub's ``broker`` circuit breaker; all
  failures become ``BrokerUnavailable`` (``redis_calls.py``). Publishes that wait at once share
  one round trip and one script call per stream (``batch.py``).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from wshub.brokers.base import BrokerUnavailable, Prepared, PublishKey, StreamSink, publish_key
from wshub.brokers.batch import PublishBatcher
from wshub.brokers.feed import Feed
from wshub.brokers.follower import Follower
from wshub.brokers.redis_calls import BREAKER, HistoryRead, RedisCalls
from wshub.core.breaker_registry import BreakerRegistry
from wshub.core.config import ConfigError, HubConfig
from wshub.core.dedup import IdConflict
from wshub.core.encoding import encode_message_parts
from wshub.core.events import Position, PublishResult
from wshub.core.history import Replay

__all__ = ["BREAKER", "RedisBroker"]


class RedisBroker:
    """Streams in Redis, shared by every node that uses the same ``url`` and ``prefix``."""

    def __init__(
        self,
        *,
        url: str,
        prefix: str,
        timeout: float,
        pool_size: int,
        history_size: int,
        history_ttl: float,
        meta_ttl: float,
        dedup_window: float,
        content_ids: bool,
        breakers: BreakerRegistry,
        node: str,
        recent_size: int = 256,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.node = node
        self.url = url
        self.pool_size = pool_size
        self.content_ids = content_ids
        self._window_ms = max(1, round(dedup_window * 1000))
        self._breakers = breakers
        self.redis = RedisCalls(
            prefix=prefix,
            timeout=timeout,
            breakers=breakers,
            history_size=history_size,
            history_ttl_ms=max(1, round(history_ttl * 1000)),
            meta_ttl_ms=max(1, round(meta_ttl * 1000)),
            clock=clock,
        )
        self.follower = Follower(self.redis, recent_size=recent_size, clock=clock)
        self.batcher = PublishBatcher(self.redis)
        self._nursery: trio.Nursery | None = None

    @classmethod
    def from_config(cls, config: HubConfig, *, breakers: BreakerRegistry, node: str) -> RedisBroker:
        """The Redis broker that ``config`` describes.

        Raises ConfigError when coredis (the ``redis`` extra) is not installed.
        """
        if importlib.util.find_spec("coredis") is None:
            raise ConfigError(
                "broker.kind = 'redis' needs the coredis package: pip install 'wshub[redis]'"
            )
        broker = config.broker
        return cls(
            url=broker.url,
            prefix=broker.prefix,
            timeout=broker.timeout,
            pool_size=broker.pool_size,
            history_size=config.history.size,
            history_ttl=config.history.ttl,
            # An epoch outlives its history by a sweep, and nodes refresh it every sweep
            # while they serve the stream: idle streams keep their epoch while subscribed.
            meta_ttl=config.history.ttl + 2 * config.cleanup.interval,
            dedup_window=config.dedup.window,
            content_ids=config.dedup.content_ids,
            breakers=breakers,
            node=node,
        )

    @property
    def calls(self) -> dict[tuple[str, str], int]:
        """Calls to Redis by (operation, outcome): ok, error, timeout, rejected."""
        return self.redis.calls

    @property
    def gap_fills(self) -> int:
        """Fills from history that found a skipped offset (or a lost stream)."""
        return self.follower.gap_fills

    @property
    def lost(self) -> int:
        """Streams handed back to the hub because Redis no longer covered their gap."""
        return self.follower.lost

    # ------------------------------------------------------------------ lifetime

    @asynccontextmanager
    async def open(self, sink: StreamSink) -> AsyncIterator[None]:
        """Connect lazily, run the pub/sub listener and the filler while the block runs."""
        import coredis  # the ``redis`` extra: imported only when this broker is used
        from coredis.retry import NoRetryPolicy

        client: coredis.Redis[bytes] = coredis.Redis.from_url(
            self.url,
            decode_responses=False,
            max_connections=self.pool_size,
            connect_timeout=self.redis.timeout,
            retry_policy=NoRetryPolicy(),
            client_name=f"wshub:{self.node}",
        )
        async with client, trio.open_nursery() as nursery:
            self._nursery = nursery
            self.redis.bind(client)
            self.follower.start(nursery, client, sink)
            nursery.start_soon(self.batcher.run)
            # A node whose Redis is up starts ready; one whose Redis is down starts anyway,
            # unavailable (1013 to hellos, 503 to publishes) until Redis answers.
            with trio.move_on_after(self.redis.timeout):
                await self.follower.wait_connected()
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
                self.follower.stop()
                self.redis.bind(None)
                self._nursery = None

    # ------------------------------------------------------------------ publishing

    async def publish(
        self,
        stream: str,
        data: Any,
        *,
        publisher: str,
        id: str | None,
        key: PublishKey | None = None,
    ) -> PublishResult:
        """Store, publish and record in one script. Raises IdConflict, BrokerUnavailable."""
        if key is None:
            key = publish_key(stream, data, id, content_ids=self.content_ids)
        mid, content, deduplicate = key
        try:
            head, middle = encode_message_parts(stream, mid, data)
        except TypeError as error:
            raise ValueError(f"data is not JSON-serialisable: {error}") from None
        window = self._window_ms if deduplicate else 0
        dedup_key = self.redis.dedup_key(stream, publisher, mid)
        entry = [head, middle, window, content, mid]
        kind, offset, _epoch = await self.batcher.submit(stream, dedup_key, entry)
        if kind == b"conflict":
            raise IdConflict(stream, mid, int(offset))
        return PublishResult(stream, int(offset), mid, kind == b"duplicate")

    async def find_duplicate(
        self, stream: str, *, publisher: str, key: PublishKey
    ) -> PublishResult | None:
        """The earlier publish that one with ``key`` repeats within the window, or None."""
        if not key.deduplicate:
            await trio.lowlevel.checkpoint()
            return None
        redis = self.redis
        keys = [redis.key(stream, "m"), redis.dedup_key(stream, publisher, key.id)]
        reply = await redis.script("duplicate", "duplicate", keys, [key.content])
        if reply[0] == b"none":
            return None
        if reply[0] == b"conflict":
            raise IdConflict(stream, key.id, int(reply[1]))
        return PublishResult(stream, int(reply[1]), key.id, True)

    # ------------------------------------------------------------------ joining

    async def prepare(self, stream: str, position: Position | None) -> Prepared:
        """Subscribe the stream's channel (first joiner), then read its history.

        Raises BrokerUnavailable.
        """
        follower = self.follower
        feed = follower.feed(stream)
        feed.preparing += 1
        try:
            await follower.subscribe(feed)
            read = await self.redis.read(stream, position)
            await follower.catch_up(feed, read)
        except BaseException:
            feed.preparing -= 1
            follower.release_if_unused(feed)
            raise
        return Prepared(stream, position, (feed, read))

    def join_nowait(self, prepared: Prepared) -> Replay:
        """Join: the read's replay plus what this node delivered since. Raises StaleRead."""
        feed, read = prepared.state
        assert isinstance(feed, Feed) and isinstance(read, HistoryRead)
        feed.preparing -= 1
        return self.follower.join(feed, read, prepared.position)

    def abandon(self, prepared: Prepared) -> None:
        """Give up a prepared join: the feed may be released."""
        feed, _ = prepared.state
        feed.preparing -= 1
        self.follower.release_if_unused(feed)

    def leave(self, stream: str) -> None:
        """One subscriber of this node left; the last one unsubscribes the channel."""
        feed = self.follower.feeds.get(stream)
        if feed is not None:
            feed.subscribers = max(0, feed.subscribers - 1)
            self.follower.release_if_unused(feed)

    # ------------------------------------------------------------------ upkeep and reports

    def sweep(self) -> dict[str, int]:
        """Refresh the epochs of the streams served here (in the background)."""
        if self.follower.feeds and self._nursery is not None:
            self._nursery.start_soon(self._touch, list(self.follower.feeds))
        return {}

    async def _touch(self, streams: list[str]) -> None:
        redis = self.redis
        client = redis.client
        if client is None:
            return

        async def touch() -> None:
            async with client.pipeline(transaction=False) as pipe:
                for stream in streams:
                    pipe.pexpire(redis.key(stream, "m"), redis.meta_ttl_ms)

        with contextlib.suppress(BrokerUnavailable):  # the next sweep tries again
            await redis.call("touch", touch)

    @property
    def connected(self) -> bool:
        """Whether the pub/sub connection is up and subscribed."""
        return self.follower.connected

    async def wait_connected(self) -> None:
        """Wait until the pub/sub connection is up (at once if it is)."""
        await self.follower.wait_connected()

    def unavailable_reason(self) -> str | None:
        """``broker unavailable`` while pub/sub is down or the breaker is not closed."""
        if not self.connected or self._breakers.get(BREAKER).state.value != "closed":
            return "broker unavailable"
        return None

    def statistics(self) -> dict[str, Any]:
        """Connection state, feeds, calls by outcome, gap fills."""
        calls: dict[str, dict[str, int]] = {}
        for (op, outcome), count in sorted(self.calls.items()):
            calls.setdefault(op, {})[outcome] = count
        return {
            "kind": "redis",
            "node": self.node,
            "connected": self.connected,
            "streams": {"served": len(self.follower.feeds)},
            "calls": calls,
            "gap_fills": self.gap_fills,
            "lost": self.lost,
            "publish_round_trips": self.batcher.batches,
        }
