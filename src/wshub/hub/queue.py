"""A connection's outbound queue and its bounds, kept without a cost on the fan-out.

Theory of operation:
- The hub appends synchronously (fan-out never awaits a client). The first append after the
  queue was last taken marks the connection dirty with the hub's flush tick, which has it
  sent (``Outbox``).
- Everything a client is sent goes through that one queue, so the order is exactly the order
  of appends: welcome, replay, then live messages, with replies and errors in between.
- A full queue means a slow consumer (``_overflowed``: ``Outbox`` closes with 4002 at once,
  and the client resumes from history). Replays may exceed ``limits.max_queue`` (they are
  bounded by the history); the limit applies to what arrives after them.
- Bytes are bounded as well as items (``limits.max_queue_bytes``), without a cost on the
  fan-out's hot path: every item counts as at least ``small_frame`` (``max_queue_bytes //
  max_queue``) characters, so a queue of small frames meets the item bound first and needs no
  counting; only a larger frame adds its excess to ``_bytes_over``. The fan-out appends a
  frame it knows is small with ``enqueue_message``; every other item goes through
  ``enqueue``, which measures it. ``_quiet_below`` folds both bounds into the one comparison
  the fast path makes.
"""

from __future__ import annotations

from collections.abc import Sequence

from wshub.core.history import StoredMessage
from wshub.core.sections import LimitsConfig
from wshub.hub.flush import FlushTick
from wshub.hub.frames import QueueItem, Replayed, item_size, small_frame

__all__ = ["OutboundQueue"]


class OutboundQueue:
    """The queue of one connection and its bounds; ``Outbox`` sends it."""

    # Slots, not a __dict__: a connection lives as long as its client (idle memory, issue 14).
    __slots__ = (
        "_bytes_over",
        "_empty_quiet_below",
        "_flush",
        "_limits",
        "_quiet_below",
        "bytes_limit",
        "dirty",
        "flush_tick",
        "queue",
        "queue_limit",
        "small_frame",
    )

    def __init__(self, limits: LimitsConfig, flush: FlushTick) -> None:
        self._limits = limits
        self._flush = flush
        self.queue: list[QueueItem] = []
        self.small_frame = small_frame(limits.max_queue_bytes, limits.max_queue)
        self.bytes_limit = limits.max_queue_bytes  # for: len(queue) * small_frame + _bytes_over
        self._bytes_over = 0  # characters of the queued frames beyond small_frame each
        self.queue_limit = self._quiet_below = 0
        self._set_queue_limit(limits.max_queue)
        self._empty_quiet_below = self._quiet_below  # what an emptied queue starts from
        self.dirty = False
        self.flush_tick: int | None = None  # the hub tick this writer was released by

    def _overflowed(self, count: int) -> None:
        """The queue would hold ``count`` items, past a bound: the subclass cuts the client."""
        raise NotImplementedError

    def enqueue_message(self, message: StoredMessage) -> None:
        """Append a published message whose frame is at most ``small_frame`` characters (the
        fan-out's hot path: the caller measured the frame once for every subscriber)."""
        queue = self.queue
        if len(queue) < self._quiet_below and self.dirty:
            queue.append(message)  # the common case: scheduled already, far from any limit
            return
        self._enqueue_slowly(message, 0)

    def enqueue(self, item: QueueItem) -> None:
        """Append one frame for this client without awaiting; overflow closes with 4002."""
        size = len(item) if item.__class__ is str else len(item.frame)  # type: ignore[union-attr]
        over = size - self.small_frame
        if over <= 0 and len(self.queue) < self._quiet_below and self.dirty:
            self.queue.append(item)
            return
        self._enqueue_slowly(item, max(over, 0))

    def _enqueue_slowly(self, item: QueueItem, over: int) -> None:
        queue = self.queue
        count = len(queue) + 1
        # One frame always fits an empty queue, however big: a client that reads is never cut.
        too_many_bytes = count * self.small_frame + self._bytes_over + over > self.bytes_limit
        if count > self.queue_limit or (too_many_bytes and queue):
            self._overflowed(count)
            return
        queue.append(item)
        if over:
            self._bytes_over += over
            self._set_queue_limit(self.queue_limit)
        if len(queue) == self._flush.high_water and self.flush_tick is None:
            self._flush.queues_high()
        if not self.dirty:
            self._mark_dirty()

    def enqueue_replay(self, messages: Sequence[StoredMessage]) -> None:
        """Append replayed messages; they are bounded by history, not by the queue limits."""
        self._extend_unbounded([Replayed(message.frame) for message in messages])

    def enqueue_answer(self, frames: Sequence[str]) -> None:
        """Append the errors answering a hello; they are bounded by the hello (at most
        ``limits.max_subscriptions`` and one), not by the queue limits."""
        self._extend_unbounded(frames)

    def _extend_unbounded(self, items: Sequence[QueueItem]) -> None:
        # The queue limits apply to what arrives after these items.
        if items:
            small = self.small_frame
            self._bytes_over += sum(max(item_size(item) - small, 0) for item in items)
            self.queue.extend(items)
            limits = self._limits
            self.bytes_limit = len(self.queue) * small + self._bytes_over + limits.max_queue_bytes
            self._set_queue_limit(len(self.queue) + limits.max_queue)
            if not self.dirty:
                self._mark_dirty()

    def _set_queue_limit(self, limit: int) -> None:
        # Below ``_quiet_below`` an append of a small frame into a dirty queue can neither
        # overflow (items or bytes) nor reach high water: ``enqueue_message`` then only
        # appends (it runs once per subscriber per publish).
        self.queue_limit = limit
        room = (self.bytes_limit - self._bytes_over) // self.small_frame
        self._quiet_below = min(limit, room, self._flush.high_water - 1)

    def _mark_dirty(self) -> None:
        """The queue was empty and is not now: the subclass schedules it with the tick."""
        raise NotImplementedError

    def _take_queue(self) -> list[QueueItem]:
        # The queue is being sent: empty it and reset its bounds.
        items, self.queue = self.queue, []
        limits = self._limits
        self.bytes_limit, self._bytes_over = limits.max_queue_bytes, 0
        self.queue_limit, self._quiet_below = limits.max_queue, self._empty_quiet_below
        self.dirty = False
        return items

    def _drop_sent(self, sent: int) -> None:
        # The first ``sent`` items went out; the rest stay, and the bounds follow.
        small = self.small_frame
        items = self.queue
        self._bytes_over -= sum(max(item_size(item) - small, 0) for item in items[:sent])
        del items[:sent]
        self._set_queue_limit(self.queue_limit)
