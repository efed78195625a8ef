"""The Redis broker: many nodes, one history, restarts without loss.

Theory of operation:
- Redis holds each stream's epoch, offsets, history and de-duplication records; one Lua script
  per publish stores, publishes and records atomically (``lua.py``). A node never assigns an
  offset, so every node, restarted or not, agrees on every stream.
- Each node has one pub/sub connection, subscribed to the channels of the streams it has
  subscribers for (the first joiner subscribes, the last leaver unsubscribes). Messages are
  delivered only from pub/sub, through a ``Feed`` per stream that keeps offsets in order and
  asks for a fill from history when one is skipped (``feed.py``); a single filler task reads.
- Joining subscribes the channel first, then reads history; the feed starts at (or waits
  until it has delivered) the read's newest offset, and ``join_nowait`` adds what the feed
  delivered since the read, so the replay meets delivery exactly.
- Every call has ``broker.timeout`` and runs under the hub's ``broker`` circuit breaker; all of
  their failures become ``BrokerUnavailable``. When the pub/sub connection drops, the listener
  reconnects with backoff, resubscribes everything, and fills every feed from history: a
  stream Redis still holds loses nothing; one whose epoch changed or whose gap history no
  longer covers is handed to the hub (``StreamSink.lose``) so that its subscribers resume
  and learn their exact gap.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

from wshub.brokers.base import (
    BrokerUnavailable,
    Prepared,
    PublishKey,
    StaleRead,
    StreamSink,
    publish_key,
)
from wshub.brokers.feed import Feed
from wshub.brokers.lua import DUPLICATE, PUBLISH, READ
from wshub.core.backoff import Backoff
from wshub.core.breaker import CircuitOpenError
from wshub.core.breaker_registry import BreakerRegistry
from wshub.core.config import ConfigError, HubConfig
from wshub.core.dedup import IdConflict
from wshub.core.events import Position, PublishResult
from wshub.core.history import Replay, StoredMessage, new_epoch, resume_plan
from wshub.core.protocol import encode_message_parts

if TYPE_CHECKING:
    import coredis
    from coredis.patterns.pubsub import PubSub

__all__ = ["BREAKER", "RedisBroker"]

logger = logging.getLogger("wshub.broker")

BREAKER = "broker"  # the name of the hub's circuit breaker around Redis
T = TypeVar("T")


@attrs.frozen
class _Answer:
    """A history read: where the stream stands and the entries the read returned."""

    epoch: str
    top: int
    first: int | None
    messages: list[StoredMessage]


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
        self.prefix = prefix
        self.timeout = timeout
        self.pool_size = pool_size
        self.history_size = history_size
        self.content_ids = content_ids
        self._history_ttl_ms = max(1, round(history_ttl * 1000))
        self._meta_ttl_ms = max(1, round(meta_ttl * 1000))
        self._window_ms = max(1, round(dedup_window * 1000))
        self._breakers = breakers
        self._recent_size = recent_size
        self._clock = clock
        self._client: coredis.Redis[bytes] | None = None
        self._pubsub: PubSub[bytes] | None = None
        self._nursery: trio.Nursery | None = None
        self._sink: StreamSink | None = None
        self._feeds: dict[str, Feed] = {}
        self._channel_lock = trio.Lock()
        self._fills_wanted: dict[str, None] = {}  # streams to fill, in request order
        self._fill_requested = trio.Event()
        self._progress: dict[str, trio.Event] = {}
        self._connected = trio.Event()
        self._scripts: dict[str, Any] = {}
        self.calls: dict[tuple[str, str], int] = {}
        """Calls to Redis by (operation, outcome): ok, error, timeout, rejected."""
        self.gap_fills = 0
        """Fills from history that found a skipped offset (or a lost stream)."""
        self.lost = 0
        """Streams handed back to the hub because Redis no longer covered their gap."""

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
            connect_timeout=self.timeout,
            retry_policy=NoRetryPolicy(),
            client_name=f"wshub:{self.node}",
        )
        async with client, trio.open_nursery() as nursery:
            self._client, self._sink, self._nursery = client, sink, nursery
            for name, script in (("publish", PUBLISH), ("read", READ), ("duplicate", DUPLICATE)):
                self._scripts[name] = client.register_script(script)
            nursery.start_soon(self._listen)
            nursery.start_soon(self._filler)
            # A node whose Redis is up starts ready; one whose Redis is down starts anyway,
            # unavailable (1013 to hellos, 503 to publishes) until Redis answers.
            with trio.move_on_after(self.timeout):
                await self._connected.wait()
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
                self._client = self._sink = self._nursery = self._pubsub = None

    # ------------------------------------------------------------------ keys

    def _key(self, stream: str, kind: str) -> str:
        return f"{self.prefix}:{{{stream}}}:{kind}"

    def _channel(self, stream: str) -> str:
        return f"{self.prefix}:{{{stream}}}"

    def _stream_of(self, channel: bytes) -> str:
        return channel.decode()[len(self.prefix) + 2 : -1]

    def _dedup_key(self, stream: str, publisher: str, mid: str) -> str:
        return self._key(stream, f"d:{len(publisher)}:{publisher}:{mid}")

    # ------------------------------------------------------------------ calls

    async def _call(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        """One Redis call under the breaker and the timeout; failures are BrokerUnavailable."""
        breaker = self._breakers.get(BREAKER)
        try:
            async with breaker:
                with trio.fail_after(self.timeout):
                    result = await call()
        except CircuitOpenError as error:
            self._count(op, "rejected")
            raise BrokerUnavailable(
                "the broker is unavailable (circuit open); retry later", error.retry_after
            ) from None
        except trio.TooSlowError:
            self._count(op, "timeout")
            raise BrokerUnavailable(f"redis did not answer {op} within {self.timeout:g}s") from None
        except Exception as error:
            self._count(op, "error")
            raise BrokerUnavailable(f"redis failed on {op}: {_describe(error)}") from None
        self._count(op, "ok")
        return result

    def _count(self, op: str, outcome: str) -> None:
        key = (op, outcome)
        self.calls[key] = self.calls.get(key, 0) + 1

    def _script(self, name: str, keys: list[str], args: list[Any]) -> Callable[[], Awaitable[Any]]:
        script = self._scripts[name]

        async def run() -> Any:
            return await script(keys=keys, args=args)

        return run

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
        keys = [
            self._key(stream, "m"),
            self._key(stream, "h"),
            self._dedup_key(stream, publisher, mid),
        ]
        args = [
            head,
            middle,
            self._channel(stream),
            self.history_size,
            self._history_ttl_ms,
            self._meta_ttl_ms,
            self._window_ms if deduplicate else 0,
            content,
            new_epoch(),
            mid,
        ]
        kind, offset, _epoch = await self._call("publish", self._script("publish", keys, args))
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
        keys = [self._key(stream, "m"), self._dedup_key(stream, publisher, key.id)]
        reply = await self._call("duplicate", self._script("duplicate", keys, [key.content]))
        if reply[0] == b"none":
            return None
        if reply[0] == b"conflict":
            raise IdConflict(stream, key.id, int(reply[1]))
        return PublishResult(stream, int(reply[1]), key.id, True)

    # ------------------------------------------------------------------ reading

    async def _read(self, stream: str, position: Position | None, op: str = "read") -> _Answer:
        """Where ``stream`` stands, and its entries from where ``position`` resumes."""
        epoch = "" if position is None else position.epoch
        seen = -1 if position is None else max(position.offset, 0)
        keys = [self._key(stream, "m"), self._key(stream, "h")]
        args = [
            epoch,
            seen,
            new_epoch(),
            self._history_ttl_ms,
            self._meta_ttl_ms,
            self.history_size,
        ]
        reply = await self._call(op, self._script("read", keys, args))
        read_epoch, top, first, entries = reply
        now, wall = self._clock(), time.time()
        messages = [_entry_message(stream, entry, now, wall) for entry in entries]
        return _Answer(read_epoch.decode(), int(top), None if first < 0 else int(first), messages)

    # ------------------------------------------------------------------ joining

    async def prepare(self, stream: str, position: Position | None) -> Prepared:
        """Subscribe the stream's channel (first joiner), then read its history.

        Raises BrokerUnavailable.
        """
        feed = self._feeds.get(stream)
        if feed is None:
            feed = self._feeds[stream] = Feed(stream, self._recent_size)
        feed.preparing += 1
        try:
            if not feed.subscribed:
                await self._subscribe(feed)
            answer = await self._read(stream, position)
            await self._catch_up(feed, answer)
        except BaseException:
            feed.preparing -= 1
            self._release_if_unused(feed)
            raise
        return Prepared(stream, position, (feed, answer))

    async def _subscribe(self, feed: Feed) -> None:
        if self._pubsub is None:  # reconnecting, perhaps: give it one timeout
            with trio.move_on_after(self.timeout):
                await self._connected.wait()
        async with self._channel_lock:
            pubsub = self._pubsub
            if feed.subscribed:
                return
            if pubsub is None:
                raise BrokerUnavailable("not connected to redis (pub/sub); retry later")
            await self._call("subscribe", lambda: pubsub.subscribe(self._channel(feed.stream)))
            if self._pubsub is pubsub:  # else a reconnect subscribed it with every other
                feed.subscribed = True

    async def _catch_up(self, feed: Feed, answer: _Answer) -> None:
        """Wait until this node has delivered up to the read's newest offset (same epoch)."""
        with trio.move_on_after(self.timeout) as waiting:
            while feed.started and feed.epoch == answer.epoch and feed.delivered < answer.top:
                # In flight on pub/sub or skipped by it: a fill settles both.
                feed.gap = True
                self._want_fill(feed)
                event = self._progress.setdefault(feed.stream, trio.Event())
                await event.wait()
        if waiting.cancelled_caught:
            self._count("catch_up", "timeout")
            raise BrokerUnavailable("this node fell behind redis; retry later")

    def join_nowait(self, prepared: Prepared) -> Replay:
        """Join: the read's replay plus what this node delivered since. Raises StaleRead."""
        feed, answer = prepared.state
        assert isinstance(feed, Feed) and isinstance(answer, _Answer)
        feed.preparing -= 1
        if not feed.started:
            self._deliver(feed, feed.start(answer.epoch, answer.top))
        elif feed.epoch != answer.epoch:
            self._lose(feed, answer.epoch, answer.top)
        extra = feed.since(answer.top)
        if extra is None or feed.delivered < answer.top or feed.epoch != answer.epoch:
            self._release_if_unused(feed)
            raise StaleRead(prepared.stream)
        held = answer.messages + extra
        first = answer.first if answer.first is not None else (held[0].offset if held else None)
        recovered, start = resume_plan(prepared.position, answer.epoch, feed.delivered, first)
        messages = [] if start is None else [m for m in held if m.offset >= start]
        feed.subscribers += 1
        return Replay(answer.epoch, feed.delivered, first, recovered, messages)

    def abandon(self, prepared: Prepared) -> None:
        """Give up a prepared join: the feed may be released."""
        feed, _ = prepared.state
        feed.preparing -= 1
        self._release_if_unused(feed)

    def leave(self, stream: str) -> None:
        """One subscriber of this node left; the last one unsubscribes the channel."""
        feed = self._feeds.get(stream)
        if feed is not None:
            feed.subscribers = max(0, feed.subscribers - 1)
            self._release_if_unused(feed)

    def _release_if_unused(self, feed: Feed) -> None:
        if feed.in_use or self._feeds.get(feed.stream) is not feed:
            return
        del self._feeds[feed.stream]
        self._fills_wanted.pop(feed.stream, None)
        if feed.subscribed and self._nursery is not None:
            self._nursery.start_soon(self._unsubscribe, feed.stream)

    async def _unsubscribe(self, stream: str) -> None:
        async with self._channel_lock:
            pubsub = self._pubsub
            if stream in self._feeds or pubsub is None:
                return  # joined again meanwhile, or the connection is gone (and with it)
            # On failure its messages find no feed and are dropped.
            with contextlib.suppress(BrokerUnavailable):
                await self._call("unsubscribe", lambda: pubsub.unsubscribe(self._channel(stream)))

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
        stream = self._stream_of(channel)
        feed = self._feeds.get(stream)
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
            _stored_at(ts_ms, self._clock(), time.time()),
        )
        self._deliver(feed, feed.receive(epoch.decode(), message))

    # ------------------------------------------------------------------ filling gaps

    def _want_fill(self, feed: Feed) -> None:
        if feed.started and feed.stream not in self._fills_wanted:
            self._fills_wanted[feed.stream] = None
            self._fill_requested.set()

    async def _filler(self) -> None:
        backoff = Backoff(base=min(0.05, self.timeout), cap=max(self.timeout, 0.05))
        failures = 0
        while True:
            await self._fill_requested.wait()
            self._fill_requested = trio.Event()
            while self._fills_wanted:
                stream = next(iter(self._fills_wanted))
                del self._fills_wanted[stream]
                feed = self._feeds.get(stream)
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
        answer = await self._read(feed.stream, position, "fill")
        if self._feeds.get(feed.stream) is not feed or feed.epoch != position.epoch:
            return  # released or restarted meanwhile
        recovered, _ = resume_plan(position, answer.epoch, answer.top, answer.first)
        if feed.diverged or (not recovered and feed.delivered == position.offset):
            self.gap_fills += 1
            self._lose(feed, answer.epoch, answer.top)
            return
        before = feed.delivered
        delivered = feed.fill(answer.top, answer.messages)
        if feed.delivered > before:
            self.gap_fills += 1
        self._deliver(feed, delivered)

    # ------------------------------------------------------------------ pub/sub

    async def _listen(self) -> None:
        """Keep one pub/sub connection subscribed to every feed's channel; reconnect."""
        backoff = Backoff(base=min(0.1, self.timeout), cap=max(5.0, self.timeout))
        failures = 0
        while True:
            wait: float | None = None
            try:
                await self._listen_once()
            except CircuitOpenError as error:
                wait = error.retry_after
            except Exception as error:
                if failures == 0:
                    logger.warning("redis pub/sub: %s", _describe(error))
            finally:
                if self._pubsub is not None:
                    failures = 0  # it was up: the next failure is a new outage
                    self._connected = trio.Event()
                self._pubsub = None
                for feed in self._feeds.values():
                    feed.subscribed = False
            failures += 1
            await trio.sleep(backoff.delay(failures - 1) if wait is None else max(wait, 0.01))

    async def _listen_once(self) -> None:
        """Connect and subscribe (one call under the breaker), then deliver until it drops."""
        client = self._client
        assert client is not None
        breaker = self._breakers.get(BREAKER)
        try:
            permit = breaker.acquire_nowait()
        except CircuitOpenError:
            self._count("connect", "rejected")
            raise
        try:
            with trio.CancelScope(deadline=trio.current_time() + self.timeout) as connecting:
                async with client.pubsub(
                    ignore_subscribe_messages=True,
                    retry_policy=None,
                    subscription_timeout=self.timeout,
                ) as pubsub:
                    await self._resubscribe(pubsub)
                    connecting.deadline = math.inf
                    self._count("connect", "ok")
                    breaker.release(permit)
                    while True:
                        message = await pubsub.get_message()
                        if message is not None and message["type"] == "message":
                            channel, data = message["channel"], message["data"]
                            assert isinstance(channel, bytes) and isinstance(data, bytes)
                            self._on_message(channel, data)
        except BaseException as error:
            if not permit.released:
                self._count("connect", "error")
                breaker.release(permit, error)
            raise
        if connecting.cancelled_caught:
            self._count("connect", "timeout")
            breaker.release(permit, trio.TooSlowError())
            raise BrokerUnavailable("redis pub/sub did not connect in time")

    async def _resubscribe(self, pubsub: PubSub[bytes]) -> None:
        async with self._channel_lock:
            feeds = list(self._feeds.values())
            if feeds:
                await pubsub.subscribe(*(self._channel(feed.stream) for feed in feeds))
            self._pubsub = pubsub
            self._connected.set()
            for feed in feeds:
                feed.subscribed = True
                if feed.started:  # whatever was published while away: fill from history
                    feed.gap = True
                    self._want_fill(feed)

    # ------------------------------------------------------------------ upkeep and reports

    def sweep(self) -> dict[str, int]:
        """Refresh the epochs of the streams served here (in the background)."""
        if self._feeds and self._nursery is not None:
            self._nursery.start_soon(self._touch, list(self._feeds))
        return {}

    async def _touch(self, streams: list[str]) -> None:
        client = self._client
        if client is None:
            return

        async def touch() -> None:
            async with client.pipeline(transaction=False) as pipe:
                for stream in streams:
                    pipe.pexpire(self._key(stream, "m"), self._meta_ttl_ms)

        with contextlib.suppress(BrokerUnavailable):  # the next sweep tries again
            await self._call("touch", touch)

    @property
    def connected(self) -> bool:
        """Whether the pub/sub connection is up and subscribed."""
        return self._pubsub is not None

    async def wait_connected(self) -> None:
        """Wait until the pub/sub connection is up (at once if it is)."""
        await self._connected.wait()

    def unavailable_reason(self) -> str | None:
        """``broker unavailable`` while pub/sub is down or the breaker is not closed."""
        if self._pubsub is None or self._breakers.get(BREAKER).state.value != "closed":
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
            "streams": {"served": len(self._feeds)},
            "calls": calls,
            "gap_fills": self.gap_fills,
            "lost": self.lost,
        }


def _entry_message(stream: str, entry: Any, now: float, wall: float) -> StoredMessage:
    identifier, fields = entry
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    ts = int(values[b"t"])
    return StoredMessage(
        stream,
        int(identifier.split(b"-", 1)[0]),
        values[b"i"].decode(),
        None,
        ts,
        values[b"f"].decode(),
        _stored_at(ts, now, wall),
    )


def _stored_at(ts_ms: int, now: float, wall: float) -> float:
    """The local clock's reading at publish time (never in the future)."""
    return now - max(0.0, wall - ts_ms / 1000)


def _describe(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        return _describe(error.exceptions[0])
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
