"""A connection's outbound side: its queue, its bounds, and the write path to its transport.

Theory of operation:
- ``OutboundQueue`` (``queue.py``) holds what the client is to be sent, in order, bounded. The
  hub's flush tick has the queue written itself where the transport allows (``write_now``:
  the fast server's sockets, one non-blocking write a frame, no task woken) or wakes the
  writer task, which sends it; either way up to ``limits.max_batch`` objects per frame to
  ``wshub.v1`` clients.
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
from typing import Protocol

import trio

from wshub.core.config import HubConfig
from wshub.core.errors import TransportClosed
from wshub.core.history import StoredMessage
from wshub.core.metrics import ClientStats, HubMetrics
from wshub.core.protocol import SUBPROTOCOL, CloseCode
from wshub.hub.flush import FlushTick
from wshub.hub.frames import QueueItem, frame_of
from wshub.hub.queue import OutboundQueue
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


class Outbox(OutboundQueue):
    """The queue and the writer of one connection; ``Connection`` is the rest of it."""

    # Slots, not a __dict__: a connection lives as long as its client, and a dict of this many
    # attributes cost each idle connection over a KiB (issue 14's idle-memory target).
    __slots__ = (
        "_direct",
        "_nursery",
        "_parked",
        "_step",
        "_woken",
        "aborted",
        "batching",
        "client_id",
        "close_code",
        "close_reason",
        "closing",
        "cut",
        "hub",
        "peer_close_code",
        "scope",
        "send_guard",
        "session",
        "stats",
        "transport",
        "writer_alive",
    )

    session: str
    client_id: str | None

    def __init__(self, hub: OutboxHost, transport: Transport) -> None:
        limits = hub.config.limits
        super().__init__(limits, hub.flush)
        self.hub = hub
        self.transport = transport
        self.batching = transport.subprotocol == SUBPROTOCOL
        self.stats: ClientStats | None = None
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
        self.cut = False  # a frame was interrupted: close without a close frame
        transport.on_blocked = self._waiting_for_peer
        self._direct = transport if isinstance(transport, DirectWrite) else None
        self._nursery: trio.Nursery | None = None  # where a writer starts (direct transports)
        self._step = limits.max_batch if self.batching else 1

    def _mark_dirty(self) -> None:
        self.dirty = True
        self._flush.mark_dirty(self)

    def _overflowed(self, count: int) -> None:
        # A slow consumer: cut it (the client resumes from history), counting it once.
        if not self.aborted:
            self.hub.record_overflow(count)
            self.abort(CloseCode.SLOW_CONSUMER, "outbound queue overflowed; resume from history")

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
                _, frame, length, delivered, _ = frames.frame(chunk, encode)  # once a tick
                if not direct.send_frame_nowait(frame):
                    break  # a frame of someone else's is unfinished: the writer waits for it
                sent = start + len(chunk)
                self._count_sent(stats, chunk, length, delivered)
                if direct.blocked:
                    break  # the socket is full
        except TransportClosed as error:
            self._stop_for(error)
            return True
        self.hub.metrics.record_queue_depth(len(items))
        if sent == len(items):
            self._take_queue()
        else:
            self._drop_sent(sent)
        if sent < len(items) or direct.blocked:
            # The socket is full: the writer finishes the frame once the peer reads, then
            # sends what is left. Even when the queue went out whole: the last frame's rest
            # must not wait for a next message that may never come.
            self.wake_writer()
        stats.last_activity = self._flush.now
        return True

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
