"""One client connection: admission, hello, then a reader that keeps the heartbeat.

Theory of operation:
- The outbound side (the queue, its bounds, the writer and the flush tick's direct writes,
  ``abort``) is ``Outbox`` in ``outbox.py``; a ``Connection`` is an ``Outbox`` plus who the
  client is and the reader.
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

import secrets
from typing import Any, Protocol

import attrs
import trio

from wshub.core.errors import TransportClosed
from wshub.core.logcontext import add_log_context
from wshub.core.protocol import (
    NO_REF,
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
from wshub.hub.frames import QueueItem, Replayed, small_frame
from wshub.hub.hooks import AuthenticationError, HookUnavailable, Identity
from wshub.hub.outbox import FINISH_FRAME_TIMEOUT, Outbox, OutboxHost
from wshub.hub.transport import RequestInfo, Transport

__all__ = [
    "CLOSE_TIMEOUT",
    "FINISH_FRAME_TIMEOUT",
    "Connection",
    "ConnectionHost",
    "QueueItem",
    "Replayed",
    "small_frame",
]

# How long closing a transport may take before we give up on the peer's close handshake.
CLOSE_TIMEOUT = 2.0

Request = Publish | Subscribe | Unsubscribe | Refresh


class ConnectionHost(OutboxHost, Protocol):
    """Everything a connection asks of the hub, and nothing more (``Hub`` is one).

    The connection owns its transport, queue, writer and heartbeat; the hub owns streams,
    identities and counters. They meet only here, so neither reaches into the other.
    """

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


class Connection(Outbox):
    """One client's connection to the hub. Created and run by ``Hub.serve_connection``."""

    __slots__ = (
        "bucket",
        "expiry",
        "identity",
        "request",
        "strikes",
        "subscriptions",
        "unregistered",
    )

    hub: ConnectionHost

    def __init__(self, hub: ConnectionHost, transport: Transport, request: RequestInfo) -> None:
        super().__init__(hub, transport)
        config = hub.config
        self.request = request
        self.session = secrets.token_urlsafe(9)
        self.client_id: str | None = None
        self.identity: Identity | None = None
        self.expiry: trio.CancelScope | None = None  # around the reader, when credentials expire
        self.subscriptions: set[str] = set()
        self.unregistered = False  # the hub has forgotten this connection
        self.bucket = TokenBucket(rate=config.limits.rate, burst=config.limits.burst)
        self.strikes = 0

    def renew(self, identity: Identity) -> None:
        """Take the identity of a refreshed credential, and its deadline (see the notes)."""
        self.identity = identity
        if self.expiry is not None and identity.deadline is not None:
            self.expiry.deadline = identity.deadline

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


def _ref_of(raw: str, max_depth: int) -> Any:
    """The ``ref`` of a frame that will not be served, so the client can tell which one."""
    try:
        event = parse_client_frame(raw, max_depth=max_depth)
    except ProtocolError as error:
        return error.ref
    return getattr(event, "ref", NO_REF)
