"""How one node follows the streams it serves: one pub/sub connection, a feed per stream.

Theory of operation:
- Messages reach this node only over its one pub/sub connection, subscribed to the channels of
  the streams it has subscribers for (the first joiner subscribes, the last leaver
  unsubscribes, both under one lock so they apply in order). Each stream's ``Feed`` delivers
  offsets in order and asks for a fill when pub/sub skips one; the filler task reads history
  after the last delivered offset and feeds it through.
- When the connection drops, the listener reconnects with backoff (its connect and subscribe
  are one call under the ``broker`` breaker), resubscribes every channel and asks for a fill
  of every feed: whatever was published meanwhile comes from history, in order, once.
- A feed whose stream Redis lost (another epoch, a gap history no longer covers, an offset
  rewritten by a failover) is handed to the hub's ``StreamSink.lose`` and restarted where the
  stream now stands: its subscribers on this node resume and learn their exact gap.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from wshub.brokers.base import BrokerUnavailable, StaleRead, StreamSink
from wshub.brokers.feed import Feed
from wshub.brokers.redis_calls import BREAKER, HistoryRead, RedisCalls, describe, stored_at
from wshub.core.backoff import Backoff
from wshub.core.breaker_state import CircuitOpenError
from wshub.core.events import Position
from wshub.core.history import Replay, StoredMessage, resume_plan

if TYPE_CHECKING:
    import coredis
    from coredis.patterns.pubsub import PubSub

__all__ = ["Follower"]

logger = logging.getLogger("wshub.broker")


class Follower:
    """The feeds of one node, the pub/sub connection that fills them, and the filler."""

    def __init__(
        self,
        redis: RedisCalls,
        *,
        recent_size: int,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.redis = redis
        self.recent_size = recent_size
        self.clock = clock
        self.feeds: dict[str, Feed] = {}
        self.gap_fills = 0
        """Fills from history that found a skipped offset (or a lost stream)."""
        self.lost = 0
        """Streams handed back to the hub because Redis no longer covered their gap."""
        self._sink: StreamSink | None = None
        self._nursery: trio.Nursery | None = None
        self._pubsub: PubSub[bytes] | None = None
        self._connected = trio.Event()
        self._channel_lock = trio.Lock()
        self._fills_wanted: dict[str, None] = {}  # streams to fill, in request order
        self._fill_requested = trio.Event()
        self._progress: dict[str, trio.Event] = {}

    def start(self, nursery: trio.Nursery, client: coredis.Redis[bytes], sink: StreamSink) -> None:
        """Run the listener and the filler in ``nursery`` (the broker's), delivering to sink."""
        self._sink, self._nursery = sink, nursery
        nursery.start_soon(self._listen, client)
        nursery.start_soon(self._filler)

    def stop(self) -> None:
        """Forget the sink and the connection (the nursery is being cancelled)."""
        self._sink = self._nursery = self._pubsub = None

    @property
    def connected(self) -> bool:
        """Whether the pub/sub connection is up and subscribed."""
        return self._pubsub is not None

    async def wait_connected(self) -> None:
        """Wait until the pub/sub connection is up (at once if it is)."""
        await self._connected.wait()

    # ------------------------------------------------------------------ joining

    def feed(self, stream: str) -> Feed:
        """The feed of ``stream``, made (not yet started) if there is none."""
        feed = self.feeds.get(stream)
        if feed is None:
            feed = self.feeds[stream] = Feed(stream, self.recent_size)
        return feed

    async def subscribe(self, feed: Feed) -> None:
        """Subscribe the feed's channel on this node's connection. Raises BrokerUnavailable."""
        if feed.subscribed:
            return
        if self._pubsub is None:  # reconnecting, perhaps: give it one timeout
            with trio.move_on_after(self.redis.timeout):
                await self._connected.wait()
        async with self._channel_lock:
            pubsub = self._pubsub
            if feed.subscribed:
                return
            if pubsub is None:
                raise BrokerUnavailable("not connected to redis (pub/sub); retry later")
            channel = self.redis.channel(feed.stream)
            await self.redis.call("subscribe", lambda: pubsub.subscribe(channel))
            if self._pubsub is pubsub:  # else a reconnect subscribed it with every other
                feed.subscribed = True

    async def catch_up(self, feed: Feed, read: HistoryRead) -> None:
        """Wait until this node has delivered up to ``read.top`` (same epoch), bounded."""
        with trio.move_on_after(self.redis.timeout) as waiting:
            while feed.started and feed.epoch == read.epoch and feed.delivered < read.top:
                # In flight on pub/sub or skipped by it: a fill settles both.
                feed.gap = True
                self._want_fill(feed)
                event = self._progress.setdefault(feed.stream, trio.Event())
                await event.wait()
        if waiting.cancelled_caught:
            self.redis.count("catch_up", "timeout")
            raise BrokerUnavailable("this node fell behind redis; retry later")

    def join(self, feed: Feed, read: HistoryRead, position: Position | None) -> Replay:
        """Join: the read's replay plus what this node delivered since. Raises StaleRead."""
        if not feed.started:
            self._deliver(feed, feed.start(read.epoch, read.top))
        elif feed.epoch != read.epoch:
            self._lose(feed, read.epoch, read.top)
        extra = feed.since(read.top)
        if extra is None or feed.delivered < read.top or feed.epoch != read.epoch:
            self.release_if_unused(feed)
            raise StaleRead(feed.stream)
        held = read.messages + extra
        first = read.first if read.first is not None else (held[0].offset if held else None)
        recovered, start = resume_plan(position, read.epoch, feed.delivered, first)
        messages = [] if start is None else [m for m in held if m.offset >= start]
        feed.subscribers += 1
        return Replay(read.epoch, feed.delivered, first, recovered, messages)

    def release_if_unused(self, feed: Feed) -> None:
        """Forget a feed nobody uses any more, and unsubscribe its channel (in the background)."""
        if feed.in_use or self.feeds.get(feed.stream) is not feed:
            return
        del self.feeds[feed.stream]
        self._fills_wanted.pop(feed.stream, None)
        if feed.subscribed and self._nursery is not None:
            self._nursery.start_soon(self._unsubscribe, feed.stream)

    async def _unsubscribe(self, stream: str) -> None:
        async with self._channel_lock:
            pubsub = self._pubsub
            if stream in self.feeds or pubsub is None:
                return  # joined again meanwhile, or the connection is gone (and with it)
            channel = self.redis.channel(stream)
            # On failure its messages find no feed and are dropped.
            with contextlib.suppress(BrokerUnavailable):
                await self.redis.call("unsubscribe", lambda: pubsub.unsubscribe(channel))

    # ------------------------------------------------------------------ delivery

    def _deliver(self, feed: Feed, messages: list[StoredMessage]) -> None:
        sink = self._sink
        if messages and sink is not None:
            for message in messages:
                sink.deliver(message)
        if feed.gap:
            self._want_fill(feed)
        event = self._progress.pop(feed.stream, None)
        if event is not None:
            event.set()

    def _lose(self, feed: Feed, epoch: str, top: int) -> None:
        """Redis lost the stream, or no longer covers a gap: its subscribers must resume."""
        self.lost += 1
        logger.warning(
            "stream %r: redis no longer holds what this node must deliver next; "
            "its %d subscribers here are closed to resume",
            feed.stream,
            feed.subscribers,
        )
        feed.subscribers = 0
        if self._sink is not None:
            self._sink.lose(feed.stream)
        self._deliver(feed, feed.restart(epoch, top))

    def _on_message(self, channel: bytes, payload: bytes) -> None:
        stream = self.redis.stream_of(channel)
        feed = self.feeds.get(stream)
        if feed is None:
            return
        header, _, rest = payload.partition(b"\n")
        offset, epoch, ts, length = header.split(b" ")
        size = int(length)
        ts_ms = int(ts)
        message = StoredMessage(
            stream,
            int(offset),
            rest[:size].decode(),
            None,
            ts_ms,
            rest[size:].decode(),
            stored_at(ts_ms, self.clock(), time.time()),
        )
        self._deliver(feed, feed.receive(epoch.decode(), message))

    # ------------------------------------------------------------------ filling gaps

    def _want_fill(self, feed: Feed) -> None:
        if feed.started and feed.stream not in self._fills_wanted:
            self._fills_wanted[feed.stream] = None
            self._fill_requested.set()

    async def _filler(self) -> None:
        timeout = self.redis.timeout
        backoff = Backoff(base=min(0.05, timeout), cap=max(timeout, 0.05))
        failures = 0
        while True:
            await self._fill_requested.wait()
            self._fill_requested = trio.Event()
            while self._fills_wanted:
                stream = next(iter(self._fills_wanted))
                del self._fills_wanted[stream]
                feed = self.feeds.get(stream)
                if feed is None or not feed.started or not feed.gap:
                    continue
                try:
                    await self._fill(feed)
                except BrokerUnavailable:
                    self._want_fill(feed)  # again once redis answers
                    failures += 1
                    await trio.sleep(backoff.delay(failures))
                else:
                    failures = 0

    async def _fill(self, feed: Feed) -> None:
        assert feed.epoch is not None
        position = Position(feed.delivered, feed.epoch)
        read = await self.redis.read(feed.stream, position, "fill")
        if self.feeds.get(feed.stream) is not feed or feed.epoch != position.epoch:
            return  # released or restarted meanwhile
        recovered, _ = resume_plan(position, read.epoch, read.top, read.first)
        if feed.diverged or (not recovered and feed.delivered == position.offset):
            self.gap_fills += 1
            self._lose(feed, read.epoch, read.top)
            return
        before = feed.delivered
        delivered = feed.fill(read.top, read.messages)
        if feed.delivered > before:
            self.gap_fills += 1
        self._deliver(feed, delivered)

    # ------------------------------------------------------------------ pub/sub

    async def _listen(self, client: coredis.Redis[bytes]) -> None:
        """Keep one pub/sub connection subscribed to every feed's channel; reconnect."""
        timeout = self.redis.timeout
        backoff = Backoff(base=min(0.1, timeout), cap=max(5.0, timeout))
        failures = 0
        while True:
            wait: float | None = None
            try:
                await self._listen_once(client)
            except CircuitOpenError as error:
                wait = error.retry_after
            except Exception as error:
                if failures == 0:
                    logger.warning("redis pub/sub: %s", describe(error))
            finally:
                if self._pubsub is not None:
                    failures = 0  # it was up: the next failure is a new outage
                    self._connected = trio.Event()
                self._pubsub = None
                for feed in self.feeds.values():
                    feed.subscribed = False
            failures += 1
            await trio.sleep(backoff.delay(failures - 1) if wait is None else max(wait, 0.01))

    async def _listen_once(self, client: coredis.Redis[bytes]) -> None:
        """Connect and subscribe (one call under the breaker), then deliver until it drops."""
        redis = self.redis
        breaker = redis.breakers.get(BREAKER)
        try:
            permit = breaker.acquire_nowait()
        except CircuitOpenError:
            redis.count("connect", "rejected")
            raise
        try:
            with trio.CancelScope(deadline=trio.current_time() + redis.timeout) as connecting:
                async with client.pubsub(
                    ignore_subscribe_messages=True,
                    retry_policy=None,
                    subscription_timeout=redis.timeout,
                ) as pubsub:
                    await self._resubscribe(pubsub)
                    connecting.deadline = math.inf
                    redis.count("connect", "ok")
                    breaker.release(permit)
                    while True:
                        message = await pubsub.get_message()
                        if message is not None and message["type"] == "message":
                            channel, data = message["channel"], message["data"]
                            assert isinstance(channel, bytes) and isinstance(data, bytes)
                            self._on_message(channel, data)
        except BaseException as error:
            if not permit.released:
                redis.count("connect", "error")
                breaker.release(permit, error)
            raise
        if connecting.cancelled_caught:
            redis.count("connect", "timeout")
            breaker.release(permit, trio.TooSlowError())
            raise BrokerUnavailable("redis pub/sub did not connect in time")

    async def _resubscribe(self, pubsub: PubSub[bytes]) -> None:
        async with self._channel_lock:
            feeds = list(self.feeds.values())
            if feeds:
                await pubsub.subscribe(*(self.redis.channel(feed.stream) for feed in feeds))
            self._pubsub = pubsub
            self._connected.set()
            for feed in feeds:
                feed.subscribed = True
                if feed.started:  # whatever was published while away: fill from history
                    feed.gap = True
                    self._want_fill(feed)
