"""A connection's outbound side: its queue, its bounds, and the write path to its transport.

Theory of operation:
- The hub appends to ``Outbox.queue`` synchronously (fan-out never awaits a client). The
  first append after the queue was last taken marks the connection dirty with the hub's flush
  tick, which writes the queue itself where the transport allows (``write_now``: the fast
  server's sockets, one non-blocking write a frame, no task woken) or wakes the writer task,
  which sends it; either way up to ``limits.max_batch`` objects per frame to ``wshub.v1``
  clients.
- Everything a client is sent goes through that one queue, so the order is exactly the order
  of appends: welcome, replay, then live messages, with replies and errors in between.
- A full queue means a slow consumer: the connection is closed with 4002 at once and the
  client resumes from history. Replays may exceed ``limits.max_queue`` (they are bounded by
  the history); the limit applies to what arrives after them.
- Bytes are bounded as well as items (``limits.max_queue_bytes``), without a cost on the
  fan-out's hot path: every item counts as at least ``small_frame`` (``max_queue_bytes //
  max_queue``) characters, so a queue of small frames meets the item bound first and needs no
  counting; only a larger frame adds its excess to ``_bytes_over``. The fan-out appends a
  frame it knows is small with ``enqueue_message``; every other item goes through
  ``enqueue``, which measures it. ``_quiet_below`` folds both bounds into the one comparison
  the fast path makes.
- A frame is written whole or the connection is cut: the writer's sends run in one shielded
  scope that ``abort`` gives ``FINISH_FRAME_TIMEOUT`` to finish; the tick's writes never await.
- The writer parks itself (no Event) until the tick reschedules it. On a ``DirectWrite``
  transport it exists only while there is something the tick cannot do (a full socket to wait
  on, a close to make), so an idle client there costs no writer task.
- A connection ends by cancelling ``scope`` after setting ``close_code`` (``abort``);
  ``Connection.run`` closes the transport with that code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import trio

from wshub.core.config import HubConfig
from wshub.core.errors import TransportClosed
from wshub.core.history import StoredMessage
from wshub.core.metrics import ClientStats, HubMetrics
from wshub.core.protocol import SUBPROTOCOL, CloseCode
from wshub.hub.flush import FlushTick
from wshub.hub.frames import QueueItem, Replayed, frame_of, item_size, small_frame
from wshub.hub.transport import DirectWrite, Transport

__all__ = ["FINISH_FRAME_TIMEOUT", "Outbox", "OutboxHost"]

logger = logging.getLogger("wshub.connection")

# How long a frame being sent when the connection is aborted may take to finish, so that the
# close frame follows whole frames; past it the connection is cut without a close frame.
FINISH_FRAME_TIMEOUT = 0.5


class OutboxHost(Protocol):
    """What the outbound side asks of the hub (``Hub`` is one)."""

    config: HubConfig
    metrics: HubMetrics
    flush: FlushTick

    def record_overflow(self, dropped: int) -> None:
        """Count a slow consumer whose queue overflowed."""
        ...


class Outbox:
    """The queue and the writer of one connection; ``Connection`` is the rest of it."""

    # Slots, not a __dict__: a connection lives as long as its client, and a dict of this many
    # attributes cost each idle connection over a KiB (issue 14's idle-memory target).
    __slots__ = (
        "_bytes_over",
        "_direct",
        "_empty_quiet_below",
        "_flush",
        "_nursery",
        "_parked",
        "_quiet_below",
        "_step",
        "_woken",
        "aborted",
        "batching",
        "bytes_limit",
        "client_id",
        "close_code",
        "close_reason",
        "closing",
        "cut",
        "dirty",
        "flush_tick",
        "hub",
        "peer_close_code",
        "queue",
        "queue_limit",
        "scope",
        "send_guard",
        "session",
        "small_frame",
        "stats",
        "transport",
        "writer_alive",
    )

    session: str
    client_id: str | None

    def __init__(self, hub: OutboxHost, transport: Transport) -> None:
        limits = hub.config.limits
        self.hub = hub
        self._flush = hub.flush
        self.transport = transport
        self.batching = transport.subprotocol == SUBPROTOCOL
        self.stats: ClientStats | None = None
        self.queue: list[QueueItem] = []
        self.small_frame = small_frame(limits.max_queue_bytes, limits.max_queue)
        self.bytes_limit = limits.max_queue_bytes  # for: len(queue) * small_frame + _bytes_over
        self._bytes_over = 0  # characters of the queued frames beyond small_frame each
        self.queue_limit = self._quiet_below = 0
        self._set_queue_limit(limits.max_queue)
        self._empty_quiet_below = self._quiet_below  # what an emptied queue starts from
        self.dirty = False
        self._parked: trio.lowlevel.Task | None = None  # the writer, waiting for a wake-up
        self._woken = False  # a wake-up came while the writer was busy
        self.closing: int | None = None  # close after the queue is flushed, with this code
        self.close_code: int = CloseCode.NORMAL
        self.close_reason = ""
        self.peer_close_code: int | None = None
        self.scope = trio.CancelScope()
        # ``abort`` cancels ``scope`` and nothing else does: this says so without the cost of
        # ``scope.cancel_called`` (which reads the clock), on the tick's path for every client.
        self.aborted = False
        self.send_guard: trio.CancelScope | None = None  # shields the frame being sent
        self.writer_alive = False
        self.flush_tick: int | None = None  # the hub tick this writer was released by
        self.cut = False  # a frame was interrupted: close without a close frame
        transport.on_blocked = self._waiting_for_peer
        self._direct = transport if isinstance(transport, DirectWrite) else None
        self._nursery: trio.Nursery | None = None  # where a writer starts (direct transports)
        self._step = limits.max_batch if self.batching else 1

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
            if self.aborted:  # already being closed: count its overflow once
                return
            self.hub.record_overflow(count)
            self.abort(CloseCode.SLOW_CONSUMER, "outbound queue overflowed; resume from history")
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
            limits = self.hub.config.limits
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
        self.dirty = True
        self._flush.mark_dirty(self)

    def wake_writer(self) -> None:
        """Let the writer send what is queued (the hub's flush tick calls this)."""
        task = self._parked
        if task is None:
            self._woken = True
            if not self.writer_alive and self._direct is not None and self._nursery is not None:
                self._start_writer()  # no task until there is work the tick cannot do
        else:
            self._parked = None
            trio.lowlevel.reschedule(task)

    def start_closing(self, code: int, reason: str = "") -> None:
        """Close with ``code`` once everything already queued has been sent."""
        if self.closing is None:
            self.closing = code
            self.close_reason = reason
            self.wake_writer()

    def abort(self, code: int, reason: str = "", *, finish_frame: bool = True) -> None:
        """Close with ``code`` now, dropping whatever is still queued.

        A frame already being sent may finish within FINISH_FRAME_TIMEOUT (or not at all
        without ``finish_frame``); a frame that cannot finish is cut with the connection.
        """
        if not self.aborted:
            self.aborted = True
            self.close_code = code
            self.close_reason = reason
            self.scope.cancel()
        guard = self.send_guard
        if guard is not None:
            timeout = FINISH_FRAME_TIMEOUT if finish_frame else 0.0
            guard.deadline = min(guard.deadline, trio.current_time() + timeout)

    def _stop_for(self, error: Exception) -> None:
        # The reader and the writer each end the connection on their own terms; neither lets
        # an exception escape into the nursery, so the caller never sees an ExceptionGroup.
        # Called from their ``except`` clauses, so the log carries the traceback.
        if isinstance(error, TransportClosed):
            self.peer_close_code = error.code
            self.abort(error.code)
        else:
            logger.exception("connection %s (%s) failed", self.session, self.client_id)
            self.abort(CloseCode.INTERNAL_ERROR, "internal error")

    def _start_writer(self) -> None:
        # ``writer_alive`` from here, not from the task's first step: one writer at a time.
        self.writer_alive = True
        assert self._nursery is not None
        self._nursery.start_soon(self._writer)

    async def _writer(self) -> None:
        # Where the tick writes itself (``_direct``), this task exists only while there is
        # something the tick cannot do: a full socket to wait on, or a close to make.
        direct = self._direct
        try:
            while True:
                # Wait for the hub's flush tick (or a close request), never for one message:
                # between ticks the publishers run alone and the queue fills into bigger frames.
                await self._wait_for_wake()
                unfinished = direct is not None and direct.blocked  # the tick's last frame
                if (self.queue or unfinished) and not await self._send_queued():
                    return
                self._flushed()
                if not self.queue and self.closing is not None:
                    self.abort(self.closing, self.close_reason)
                    return
                if direct is not None and not self._woken and not direct.blocked:
                    return  # nothing the tick cannot write: no task for an idle client
        except Exception as error:
            self._stop_for(error)
        finally:
            self.writer_alive = False
            self._flushed()

    def _waiting_for_peer(self) -> None:
        # The transport waits for the peer to read: the tick stops waiting for this writer,
        # and no tick counts it until its flush is over (0 is no tick's number). A tick
        # never waits on a socket that is not draining, whatever the number of writers.
        tick, self.flush_tick = self.flush_tick, 0
        if tick:
            self._flush.writer_flushed(tick)

    def _flushed(self) -> None:
        # Tell the hub's tick this writer has sent what the tick released it for.
        if self.flush_tick is not None:
            tick, self.flush_tick = self.flush_tick, None
            self._flush.writer_flushed(tick)

    async def _wait_for_wake(self) -> None:
        # An Event per connection would cost a set and an object per idle client; the writer
        # parks itself instead, and ``wake_writer`` reschedules it (or leaves a note).
        if self._woken:
            self._woken = False
            await trio.lowlevel.checkpoint()
            return
        self._parked = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._unpark)

    def _unpark(self, _: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._parked = None
        return trio.lowlevel.Abort.SUCCEEDED

    def write_now(self) -> bool:
        """Send the queue from the flush tick itself, with no task woken, where the transport
        allows (``DirectWrite``) and the writer is parked. True when the tick has nothing to
        wait for: all was written, or the socket was full and the writer (woken now) waits on
        the peer for the rest. False: release the writer as usual.

        A frame is encoded once per tick however many connections are sent it (the tick's
        ``FrameCache``)."""
        direct = self._direct
        if direct is None or self.writer_alive or self.closing is not None or self.aborted:
            return False
        items = self.queue
        stats = self.stats
        if not items or stats is None:
            return not items
        step = self._step
        encode = direct.encode_frame
        frames = self._flush.frames
        sent = 0
        try:
            for start in range(0, len(items), step):
                chunk = items[start : start + step]
                known = frames.frame(chunk, encode)  # encoded once a tick (frames.py)
                if not direct.send_frame_nowait(known[1]):
                    break  # a frame of someone else's is unfinished: the writer waits for it
                sent = start + len(chunk)
                self._count_sent(stats, chunk, known[2], known[3])
                if direct.blocked:
                    break  # the socket is full
        except TransportClosed as error:
            self._stop_for(error)
            return True
        self.hub.metrics.record_queue_depth(len(items))
        if sent == len(items):
            self._take_queue()
        else:  # the writer sends the rest once the peer reads
            small = self.small_frame
            self._bytes_over -= sum(max(item_size(item) - small, 0) for item in items[:sent])
            del items[:sent]
            self._set_queue_limit(self.queue_limit)
            self.wake_writer()
        stats.last_activity = self._flush.now
        return True

    def _take_queue(self) -> list[QueueItem]:
        # The queue is being sent: empty it and reset its bounds.
        items, self.queue = self.queue, []
        limits = self.hub.config.limits
        self.bytes_limit, self._bytes_over = limits.max_queue_bytes, 0
        self.queue_limit, self._quiet_below = limits.max_queue, self._empty_quiet_below
        self.dirty = False
        return items

    def _count_sent(
        self, stats: ClientStats, chunk: list[QueueItem], length: int, delivered: int
    ) -> None:
        # ``stats`` as the sender took it: the hub may forget a connection mid-send.
        metrics = self.hub.metrics
        stats.messages_out += delivered
        stats.bytes_out += length
        metrics.delivered += delivered
        if delivered and metrics.should_sample():
            now = trio.current_time()
            for item in chunk:
                if item.__class__ is StoredMessage:  # live: not a str, not Replayed
                    metrics.observe_latency(now - item.stored_at)

    async def _send_queued(self) -> bool:
        """Send everything queued, batched; False once the connection is aborted or cut."""
        send = self.transport.send
        direct = self._direct
        stats = self.stats
        assert stats is not None
        self.hub.metrics.record_queue_depth(len(self.queue))
        items = self._take_queue()
        step = self._step
        aborted = False
        # A frame is sent whole or the connection is cut: cancelling a send part-way would
        # leave half a frame on the wire with the close frame inside it. One shielded scope
        # for the whole flush; ``abort`` gives the frame being sent a deadline through it,
        # and no frame starts once the connection is aborted.
        with trio.CancelScope(shield=True) as guard:
            self.send_guard = guard
            if direct is not None and direct.blocked:
                await direct.finish_frame()  # what the flush tick's write left unfinished
            for start in range(0, len(items), step):
                if self.aborted:
                    aborted = True
                    break
                chunk = items[start : start + step]
                text, delivered = frame_of(chunk)
                await send(text)
                self._count_sent(stats, chunk, len(text), delivered)
        self.send_guard = None
        if guard.cancelled_caught:
            self.cut = True
            return False
        if aborted:
            return False
        stats.last_activity = trio.current_time()
        return True
