"""The in-memory broker: one process is the whole service (the default).

Theory of operation:
- A publish is synchronous from de-duplication to fan-out: the id is looked up, the message
  appended to its stream's history (which assigns the offset), encoded once, and handed to the
  sink, which appends the same frame to every subscriber's queue. Nothing awaits in between,
  so offsets are contiguous and every subscriber sees a stream in offset order.
- Joining reads the history and counts the subscriber in one synchronous step, so the replay
  ends exactly where the next delivery starts.
- A de-duplication entry holds the offset alone when the id is the content id (the content
  cannot differ), and ``(offset, content id)`` when the publisher chose the id, to tell a
  retry from a conflict. Entries of atoms only: the garbage collector stops tracking them.
- Epochs live as long as the process, and a stream with no message and no subscriber for
  ``history.ttl`` is forgotten (its next epoch is new).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from wshub.brokers.base import Prepared, PublishKey, StreamSink
from wshub.core.config import HubConfig
from wshub.core.dedup import Deduplicator, IdConflict, message_id, scoped_key
from wshub.core.encoding import encode_message
from wshub.core.events import Position, PublishResult
from wshub.core.history import HistoryStore, Replay, StoredMessage
from wshub.core.protocol import stream_kind

__all__ = ["MemoryBroker"]


class _NoSink:
    def deliver(self, message: StoredMessage) -> None:
        pass

    def lose(self, stream: str) -> None:
        pass


class MemoryBroker:
    """Streams, history and de-duplication in this process's memory."""

    def __init__(
        self,
        *,
        history_size: int,
        history_ttl: float,
        max_streams: int,
        max_subscribed_streams: int | None = None,
        dedup_window: float,
        dedup_max_entries: int,
        content_ids: bool = True,
        node: str = "",
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.node = node or secrets.token_hex(4)
        self.histories = HistoryStore(
            size=history_size,
            ttl=history_ttl,
            max_streams=max_streams,
            max_subscribed=max_subscribed_streams or max_streams,
            clock=clock,
        )
        self.dedup = Deduplicator(window=dedup_window, max_entries=dedup_max_entries, clock=clock)
        self.content_ids = content_ids
        self._clock = clock
        self._sink: StreamSink = _NoSink()
        self._subscribers: dict[str, int] = {}
        self.calls: dict[tuple[str, str], int] = {}
        """Calls to a shared store: none, everything is here (for the metrics' sake)."""
        self.gap_fills = 0
        """Always 0: nothing is delivered over a lossy channel."""

    @classmethod
    def from_config(cls, config: HubConfig, *, node: str) -> MemoryBroker:
        """The memory broker that ``config`` describes (its history and dedup sections)."""
        return cls(
            history_size=config.history.size,
            history_ttl=config.history.ttl,
            max_streams=config.history.max_streams,
            max_subscribed_streams=config.history.max_subscribed_streams,
            dedup_window=config.dedup.window,
            dedup_max_entries=config.dedup.max_entries,
            content_ids=config.dedup.content_ids,
            node=node,
        )

    @asynccontextmanager
    async def open(self, sink: StreamSink) -> AsyncIterator[None]:
        """Deliver to ``sink`` while the block runs; there is nothing else to run."""
        self._sink = sink
        try:
            yield
        finally:
            self._sink = _NoSink()

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
        """``publish_nowait`` (the broker interface is async; this one never waits)."""
        return self.publish_nowait(stream, data, publisher=publisher, id=id, key=key)

    def publish_nowait(
        self,
        stream: str,
        data: Any,
        *,
        publisher: str,
        id: str | None,
        key: PublishKey | None = None,
    ) -> PublishResult:
        """Store ``data`` and deliver it now, or answer the original of a duplicate.

        Raises IdConflict, HistoryFull, or ValueError (data not JSON).
        """
        if key is None:
            # publish_key's rule, inlined: this is the hub's hottest path (a call and a tuple
            # less per publish; the broker tests hold both brokers to the same answers).
            try:
                content = message_id(stream, data)
            except TypeError as error:
                raise ValueError(f"data is not JSON-serialisable: {error}") from None
            mid = content if id is None else id
            deduplicate = id is not None or self.content_ids
        else:
            mid, content, deduplicate = key
        if not deduplicate:
            return PublishResult(stream, self.append(stream, data, mid).offset, mid, False)
        scoped = scoped_key(stream, publisher, mid)
        previous = self.dedup.get(scoped)
        if previous is not None:
            return PublishResult(stream, _original(stream, mid, content, previous), mid, True)
        offset = self.append(stream, data, mid).offset
        # The offset alone when the id is the content id, else (offset, content id): entries
        # of atoms only, which the garbage collector stops tracking (docs/benchmarks.md).
        self.dedup.record(scoped, offset if mid == content else (offset, content))
        return PublishResult(stream, offset, mid, False)

    async def find_duplicate(
        self, stream: str, *, publisher: str, key: PublishKey
    ) -> PublishResult | None:
        """The earlier publish that one with ``key`` repeats within the window, or None."""
        await trio.lowlevel.checkpoint()
        if not key.deduplicate:
            return None
        previous = self.dedup.get(scoped_key(stream, publisher, key.id))
        if previous is None:
            return None
        return PublishResult(stream, _original(stream, key.id, key.content, previous), key.id, True)

    def append(self, stream: str, data: Any, mid: str) -> StoredMessage:
        """Append to the history (no de-duplication) and deliver; the hub's own reports.

        Raises HistoryFull, or ValueError when ``data`` is not JSON.
        """
        history = self.histories.get_or_create(stream)
        offset = history.next_offset
        ts = time.time_ns() // 1_000_000
        try:
            frame = encode_message(stream, offset, mid, data, ts)
        except TypeError as error:
            raise ValueError(f"data is not JSON-serialisable: {error}") from None
        message = StoredMessage(stream, offset, mid, data, ts, frame, self._clock())
        history.append(message)
        self._sink.deliver(message)
        return message

    # ------------------------------------------------------------------ subscribing

    async def prepare(self, stream: str, position: Position | None) -> Prepared:
        """Nothing to fetch: the history is read when joining.

        Does not checkpoint (nor does ``publish``): the memory broker never waits, so a hello
        is welcomed in one step, as it was before brokers existed.
        """
        return Prepared(stream, position)

    def join_nowait(self, prepared: Prepared) -> Replay:
        """Read the history from the position and count the subscriber. Raises HistoryFull.

        A topic nobody has published to yet is made in the pool of streams that exist only by
        subscription (``history.max_subscribed_streams``), so subscribing, which any client
        may do, cannot use up the streams that publishes and personal streams need.
        """
        stream = prepared.stream
        history = self.histories.get_or_create(
            stream, subscribing=stream_kind(stream) != "personal"
        )
        replay = history.read_from(prepared.position)
        self._subscribers[prepared.stream] = self._subscribers.get(prepared.stream, 0) + 1
        return replay

    def abandon(self, prepared: Prepared) -> None:
        """Nothing was held for a prepared join."""

    def leave(self, stream: str) -> None:
        """Count one subscriber less."""
        count = self._subscribers.get(stream, 0) - 1
        if count > 0:
            self._subscribers[stream] = count
        else:
            self._subscribers.pop(stream, None)

    # ------------------------------------------------------------------ upkeep

    def sweep(self) -> dict[str, int]:
        """Expire history and dedup keys; forget streams idle for ``history.ttl``."""
        return {
            "history": self.histories.trim_expired(),
            "dedup": self.dedup.expire(),
            "streams": self.histories.forget_idle(in_use=self._subscribers),
        }

    def unavailable_reason(self) -> str | None:
        """Memory is always there."""
        return None

    def statistics(self) -> dict[str, Any]:
        """Streams and messages held, and the de-duplication table."""
        return {
            "kind": "memory",
            "node": self.node,
            "streams": attrs.asdict(self.histories.statistics()),
            "dedup": attrs.asdict(self.dedup.statistics()),
        }


def _original(stream: str, mid: str, content: str, previous: object) -> int:
    """The offset of the publish that ``previous`` records; IdConflict when content differs."""
    if isinstance(previous, int):
        # Recorded with its content id as its id (``mid``): same content iff same id.
        if mid != content:
            raise IdConflict(stream, mid, previous)
        return previous
    assert isinstance(previous, tuple)
    offset: int = previous[0]
    if previous[1] != content:
        raise IdConflict(stream, mid, offset)
    return offset
