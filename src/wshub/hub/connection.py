"""One client connection: hello, then a reader that keeps the heartbeat, and a batching writer.

Theory of operation:
- The hub appends to ``Connection.queue`` synchronously (fan-out never awaits a client). The
  first append after the writer has drained marks the connection dirty with the hub; the hub's
  flush tick wakes every dirty writer together, and each sends its whole queue, up to
  ``limits.max_batch`` objects per frame to ``wshub.v1`` clients.
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
- A connection ends by cancelling its scope after setting ``close_code``; the transport is
  closed with that code in ``finally``, shielded and bounded in time.
- A credential's expiry is a cancel scope's deadline around the reader, not a task: when it
  passes, the reader is cancelled and the connection closes with 4005 (queued frames are
  dropped: an expired credential receives nothing more). ``renew`` (a ``refresh``) moves it.
- The heartbeat is the reader's deadline, not a task of its own: after waiting
  ``heartbeat.interval`` for a frame the reader pings (where the transport can) and waits
  ``heartbeat.timeout`` for the pong; without ping frames it waits ``interval + timeout`` for
  the client's own frames.
  An idle connection costs two tasks (reader and writer) and no Event: the writer parks itself
  until the hub's flush tick reschedules it. On a ``DirectWrite`` transport (the fast server)
  it costs one: the tick writes the queue itself (``write_now``), and a writer task is started
  only for what the tick cannot do (a full socket to wait on, a close), ending after.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
import trio

from wshub.core.config import HubConfig
from wshub.core.errors import TransportClosed
from wshub.core.history import StoredMessage
from wshub.core.logcontext import add_log_context
from wshub.core.metrics import ClientStats, HubMetrics
from wshub.core.protocol import (
    NO_REF,
    SUBPROTOCOL,
    CloseCode,
    Hello,
    Ping,
    ProtocolError,
    Publish,
    Refresh,
    Subscribe,
    Unsubscribe,
    encode_error,
    encode_pong,
    parse_client_frame,
)
from wshub.core.ratelimit import TokenBucket
from wshub.hub.flush import FlushTick
from wshub.hub.hooks import AuthenticationError, HookUnavailable, Identity
from wshub.hub.transport import DirectWrite, RequestInfo, Transport

__all__ = ["Connection", "ConnectionHost", "small_frame"]

logger = logging.getLogger("wshub.connection")

# How long closing a transport may take before we give up on the peer's close handshake.
CLOSE_TIMEOUT = 2.0
# How long a frame being sent when the connection is aborted may take to finish, so that the
# close frame follows whole frames; past it the connection is cut without a close frame.
FINISH_FRAME_TIMEOUT = 0.5


class Replayed:
    """A message sent again from history: delivered, but not a live delivery, so the writer
    does not time it (a resume after an hour is not an hour of latency)."""

    __slots__ = ("frame",)

    def __init__(self, frame: str) -> None:
        self.frame = frame


QueueItem = StoredMessage | Replayed | str
Request = Publish | Subscribe | Unsubscribe | Refresh


class ConnectionHost(Protocol):
    """Everything a connection asks of the hub, and nothing more (``Hub`` is one).

    The connection owns its transport, queue, writer and heartbeat; the hub owns streams,
    identities and counters. They meet only here, so neither reaches into the other.
    """

    config: HubConfig
    metrics: HubMetrics
    flush: FlushTick

    def admission_refusal(self, request: RequestInfo) -> tuple[int, str] | None:
        """Why a new connection must be closed at once (code, reason), or None."""
        ...

    async def authenticate_hello(self, hello: Hello, request: RequestInfo) -> Identity:
        """Who the hello is; raises AuthenticationError or HookUnavailable."""
        ...

    async def register(self, connection: Connection, hello: Hello) -> bool:
        """Welcome a connection: subscribe it, queue its welcome and replays.

        False when it could not (the connection has been closed with the reason).
        """
        ...

    def unregister(self, connection: Connection) -> None:
        """Forget a connection that is ending (idempotent), and count how it ended."""
        ...

    async def handle_request(self, connection: Connection, request: Request) -> None:
        """Serve a publish, subscribe, unsubscribe or refresh; the answer goes to the queue."""
        ...

    def record_overflow(self, dropped: int) -> None:
        """Count a slow consumer whose queue overflowed."""
        ...


class Connection:
    """One client's connection to the hub. Created and run by ``Hub.serve_connection``."""

    def __init__(self, hub: ConnectionHost, transport: Transport, request: RequestInfo) -> None:
        config = hub.config
        self.hub = hub
        self._flush = hub.flush
        self.transport = transport
        self.request = request
        self.session = secrets.token_urlsafe(9)
        self.batching = transport.subprotocol == SUBPROTOCOL
        self.client_id: str | None = None
        self.identity: Identity | None = None
        self.expiry: trio.CancelScope | None = None  # around the reader, when credentials expire
        self.stats: ClientStats | None = None
        self.subscriptions: set[str] = set()
        self.queue: list[QueueItem] = []
        limits = config.limits
        self.small_frame = small_frame(limits.max_queue_bytes, limits.max_queue)
        self.bytes_limit = limits.max_queue_bytes  # for: len(queue) * small_frame + _bytes_over
        self._bytes_over = 0  # characters of the queued frames beyond small_frame each
        self.queue_limit = self._quiet_below = 0
        self._set_queue_limit(limits.max_queue)
        self.dirty = False
        self._parked: trio.lowlevel.Task | None = None  # the writer, waiting for a wake-up
        self._woken = False  # a wake-up came while the writer was busy
        self.closing: int | None = None  # close after the queue is flushed, with this code
        self.close_code: int = CloseCode.NORMAL
        self.close_reason = ""
        self.peer_close_code: int | None = None
        self.scope = trio.CancelScope()
        self.send_guard: trio.CancelScope | None = None  # shields the frame being sent
        self.writer_alive = False
        self.flush_tick: int | None = None  # the hub tick this writer was released by
        self.cut = False  # a frame was interrupted: close without a close frame
        self.unregistered = False  # the hub has forgotten this connection
        transport.on_blocked = self._waiting_for_peer
        self._direct = transport if isinstance(transport, DirectWrite) else None
        self._nursery: trio.Nursery | None = None  # where a writer starts (direct transports)
        self._step = limits.max_batch if self.batching else 1
        self.bucket = TokenBucket(rate=config.limits.rate, burst=config.limits.burst)
        self.strikes = 0

    # ------------------------------------------------------------------ used by the hub

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
            if self.scope.cancel_called:  # already being closed: count its overflow once
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
            for item in items:
                size = len(item) if item.__class__ is str else len(item.frame)  # type: ignore[union-attr]
                self._bytes_over += max(size - small, 0)
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

    def renew(self, identity: Identity) -> None:
        """Take the identity of a refreshed credential, and its deadline (see the notes)."""
        self.identity = identity
        if self.expiry is not None and identity.deadline is not None:
            self.expiry.deadline = identity.deadline

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
        if not self.scope.cancel_called:
            self.close_code = code
            self.close_reason = reason
            self.scope.cancel()
        guard = self.send_guard
        if guard is not None:
            timeout = FINISH_FRAME_TIMEOUT if finish_frame else 0.0
            guard.deadline = min(guard.deadline, trio.current_time() + timeout)

    # ------------------------------------------------------------------ lifetime

    async def run(self) -> None:
        """Serve this connection until it ends; never raises for a peer that goes away."""
        hub = self.hub
        try:
            with self.scope:
                refusal = hub.admission_refusal(self.request)
                if refusal is not None:
                    self.abort(*refusal)
                    return
                hello = await self._receive_hello()
                if hello is None or not await self._authenticate(hello):
                    return
                # Only the headers are dropped: hooks have seen them, nothing reads them later,
                # and they are the biggest part of an idle connection's own memory.
                self.request = attrs.evolve(self.request, headers=())
                if not await hub.register(self, hello):
                    return
                deadline = self.identity.deadline if self.identity is not None else None
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    if self._direct is None or self._woken:
                        self._start_writer()  # else the tick writes, and starts one if needed
                    try:  # the reader runs in this task: one coroutine frame less per client
                        if deadline is None:
                            await self._reader()
                        else:
                            self.expiry = trio.CancelScope(deadline=deadline)
                            with self.expiry:
                                await self._reader()
                            if self.expiry.cancelled_caught:
                                self.abort(
                                    CloseCode.CREDENTIAL_EXPIRED,
                                    "credential expired; reconnect with a fresh one",
                                )
                    except Exception as error:
                        self._stop_for(error)
                    finally:
                        # The hub forgets the connection as soon as it is decided to end, not
                        # when its writer is done: a writer stuck in a send nothing can cancel
                        # (hypercorn shields its writes) must not keep its subscriptions, its
                        # queue or its connection slot.
                        hub.unregister(self)
                        self._nursery = None  # ending: no writer starts any more
        except BaseException:  # re-raised; only chooses the close code
            # ``abort`` cancels ``self.scope``, which catches it: what escapes stopped this
            # connection from outside, e.g. hypercorn's deadline when nobody drained the hub.
            self.close_code, self.close_reason = CloseCode.GOING_AWAY, "the server is stopping"
            raise
        finally:
            hub.unregister(self)
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                if self.cut:
                    await self.transport.abort()
                else:
                    await self.transport.close(self.close_code, self.close_reason)

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

    async def _receive_hello(self) -> Hello | None:
        limits = self.hub.config.limits
        with trio.move_on_after(limits.hello_timeout):
            try:
                raw = await self.transport.receive()
            except TransportClosed as closed:
                self.peer_close_code = closed.code
                self.close_code = closed.code
                return None
            if isinstance(raw, bytes):
                self.abort(CloseCode.UNSUPPORTED_DATA, "binary frames are not accepted")
                return None
            try:
                event = parse_client_frame(raw, max_depth=limits.max_depth)
            except ProtocolError as error:
                self.abort(CloseCode.BAD_HELLO, f"bad hello: {error.message}")
                return None
            if not isinstance(event, Hello):
                self.abort(CloseCode.BAD_HELLO, "the first frame must be a hello")
                return None
            return event
        self.hub.metrics.record_timeout("hello")
        self.abort(CloseCode.BAD_HELLO, f"no hello within {limits.hello_timeout:g} seconds")
        return None

    async def _authenticate(self, hello: Hello) -> bool:
        try:
            self.identity = await self.hub.authenticate_hello(hello, self.request)
        except AuthenticationError as error:
            self.abort(CloseCode.POLICY_VIOLATION, str(error) or "authentication failed")
            return False
        except HookUnavailable:
            self.abort(CloseCode.TRY_AGAIN_LATER, "authentication is unavailable; retry later")
            return False
        self.client_id = self.identity.client_id
        add_log_context(client_id=self.client_id)  # in this task's records from now on
        return True

    # ------------------------------------------------------------------ the two tasks

    async def _reader(self) -> None:
        transport = self.transport
        receive = transport.receive
        limits = self.hub.config.limits
        heartbeat = self.hub.config.heartbeat
        # How long the reader waits for a frame before the client must show it is alive: with
        # ping frames a ping then has ``timeout`` to be answered; without them the client's
        # own pings (every ``welcome.heartbeat`` seconds) are the only sign of life. Counted
        # from when the reader starts waiting, so frames that arrived while it was busy (a
        # slow hook) count as life, and a ping is never stuck behind them.
        silence = (
            heartbeat.interval if transport.can_ping else heartbeat.interval + heartbeat.timeout
        )
        stats = self.stats
        assert stats is not None
        while True:
            with trio.move_on_after(silence) as waiting:
                raw = await receive()
            if waiting.cancelled_caught:
                if not await self._answers_ping(heartbeat.timeout):
                    self.hub.metrics.record_timeout("heartbeat")
                    self.abort(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
                    return
                continue
            if isinstance(raw, bytes):
                self.abort(CloseCode.UNSUPPORTED_DATA, "binary frames are not accepted")
                return
            stats.messages_in += 1
            stats.bytes_in += len(raw)
            stats.last_activity = trio.current_time()
            if not self.bucket.try_acquire():
                self.strikes += 1
                stats.errors += 1
                if self.strikes >= limits.rate_limit_strikes:
                    self.abort(CloseCode.RATE_LIMITED, "rate limit exceeded repeatedly")
                    return
                wait = self.bucket.retry_after()
                message = f"rate limit exceeded; retry in {wait:.3f} s"
                ref = _ref_of(raw, limits.max_depth)
                self.enqueue(encode_error("rate_limited", message, ref))
                continue
            self.strikes = 0
            try:
                event = parse_client_frame(raw, max_depth=limits.max_depth)
            except ProtocolError as error:
                stats.errors += 1
                self.enqueue(encode_error(error.code, error.message, error.ref))
                continue
            await self._handle(event)

    async def _handle(self, event: Any) -> None:
        if isinstance(event, Ping):
            self.enqueue(encode_pong())
        elif isinstance(event, Publish | Subscribe | Unsubscribe | Refresh):
            await self.hub.handle_request(self, event)
        elif isinstance(event, Hello):
            self.enqueue(encode_error("bad_request", "hello was already received"))

    async def _answers_ping(self, timeout: float) -> bool:
        """Ping and wait up to ``timeout`` for the pong; False without ping frames."""
        if not self.transport.can_ping:
            return False
        with trio.move_on_after(timeout):
            await self.transport.ping()
            return True
        return False

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
                if (self.queue or self._rest_pending()) and not await self._send_queued():
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

    def _rest_pending(self) -> bool:
        return self._direct is not None and self._direct.blocked

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
        wait for: all was written, or the socket filled and the writer (woken now) waits on
        the peer for the rest. False: release the writer as usual."""
        direct = self._direct
        if (
            direct is None
            or self.writer_alive
            or self.closing is not None
            or self.scope.cancel_called
            or direct.blocked
        ):
            return False
        items = self.queue
        stats = self.stats
        if not items or stats is None:
            return not items
        step = self._step
        sent = 0
        try:
            for start in range(0, len(items), step):
                chunk = items[start : start + step]
                text, delivered = _frame_of(chunk)
                if not direct.send_nowait(text):
                    break
                sent = start + len(chunk)
                self._count_sent(stats, chunk, text, delivered)
                if direct.blocked:
                    break
        except TransportClosed as error:
            self._stop_for(error)
            return True
        metrics = self.hub.metrics
        metrics.record_queue_depth(len(items))
        if sent == len(items):
            self._take_queue()
        else:  # the socket is full: the writer sends the rest once the peer reads
            small = self.small_frame
            for item in items[:sent]:
                size = len(item) if item.__class__ is str else len(item.frame)  # type: ignore[union-attr]
                self._bytes_over -= max(size - small, 0)
            del items[:sent]
            self._set_queue_limit(self.queue_limit)
            self.wake_writer()
        stats.last_activity = trio.current_time()
        return True

    def _take_queue(self) -> list[QueueItem]:
        # The queue is being sent: empty it and reset its bounds.
        items, self.queue = self.queue, []
        self.bytes_limit, self._bytes_over = self.hub.config.limits.max_queue_bytes, 0
        self._set_queue_limit(self.hub.config.limits.max_queue)
        self.dirty = False
        return items

    def _count_sent(
        self, stats: ClientStats, chunk: list[QueueItem], text: str, delivered: int
    ) -> None:
        # ``stats`` as the sender took it: the hub may forget a connection mid-send.
        metrics = self.hub.metrics
        stats.messages_out += delivered
        stats.bytes_out += len(text)
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
                if self.scope.cancel_called:
                    aborted = True
                    break
                chunk = items[start : start + step]
                text, delivered = _frame_of(chunk)
                await send(text)
                self._count_sent(stats, chunk, text, delivered)
        self.send_guard = None
        if guard.cancelled_caught:
            self.cut = True
            return False
        if aborted:
            return False
        stats.last_activity = trio.current_time()
        return True


def _frame_of(chunk: list[QueueItem]) -> tuple[str, int]:
    """One frame's text for ``chunk`` (newline-joined), and how many messages it delivers."""
    frames: list[str] = []
    delivered = 0
    for item in chunk:
        if item.__class__ is str:
            frames.append(item)
        else:
            frames.append(item.frame)  # type: ignore[union-attr]
            delivered += 1
    return (frames[0] if len(frames) == 1 else "\n".join(frames)), delivered


def small_frame(max_queue_bytes: int, max_queue: int) -> int:
    """The frame size, in characters, up to which a queued item needs no counting: at this
    size a full queue of ``max_queue`` items holds ``max_queue_bytes`` at most."""
    return max(1, max_queue_bytes // max_queue)


def _ref_of(raw: str, max_depth: int) -> Any:
    """The ``ref`` of a frame that will not be served, so the client can tell which one."""
    try:
        event = parse_client_frame(raw, max_depth=max_depth)
    except ProtocolError as error:
        return error.ref
    return getattr(event, "ref", NO_REF)
