"""Keeping a client connected: attempts, backoff, the connect breaker, heartbeat and reading.

Theory of operation:
- ``Reconnector.run`` loops forever: wait, ask the breaker, connect, send the ``hello`` its
  handler composes, wait for ``welcome``, serve the connection until it ends, decide the wait.
  The ``retry``-th consecutive retry waits ``Backoff.delay(retry)``; a welcome resets the count.
  A close with 1001 after a welcome reconnects at once (the node is going away, another is up),
  and so does 4005 (the token expired: the handler's next hello asks for a fresh one);
  1008 raises ClientRejected; ``max_attempts`` consecutive attempts without a welcome raise
  ConnectFailed. Everything else (1013 included) is a failed attempt or a drop: back off, retry.
- A welcomed connection is a ``Session``: a reader that hands every event to the handler in
  order, a heartbeat that sends ``ping`` every ``heartbeat`` seconds from the welcome and
  ends the session when nothing at all has arrived for ``heartbeat + heartbeat_timeout``, and
  the handler's ``keep_credential`` (token refreshes).
- The session's tasks never let "the connection is gone" escape into their nursery: it is
  recorded on the session, which ends, and the loop decides what follows.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Protocol

import attrs
import trio

from wshub.client.transport import ClientTransport, Connector
from wshub.core import protocol
from wshub.core.backoff import Backoff
from wshub.core.breaker import CircuitBreaker
from wshub.core.breaker_state import BreakerPermit, CircuitOpenError
from wshub.core.errors import TransportClosed
from wshub.core.protocol import SUBPROTOCOL, CloseCode

__all__ = [
    "ClientError",
    "ClientRejected",
    "ConnectFailed",
    "Counters",
    "Reconnector",
    "Session",
    "SessionHandler",
    "SessionOver",
]

logger = logging.getLogger("wshub.client")

# How long closing a connection may take before it is cut.
CLOSE_TIMEOUT = 2.0


class ClientError(Exception):
    """Base class of the client's own errors."""


class ClientRejected(ClientError):
    """The hub refused this client for good (close 1008: credential, origin or client id)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"the hub rejected the client (close {code}): {reason or 'no reason'}")
        self.code = code
        self.reason = reason


class ConnectFailed(ClientError):
    """``attempts`` consecutive connection attempts failed; ``last_error`` is the last cause."""

    def __init__(self, attempts: int, last_error: BaseException | None) -> None:
        super().__init__(f"gave up after {attempts} failed connection attempts: {last_error!r}")
        self.attempts = attempts
        self.last_error = last_error


class SessionOver(Exception):
    """Ends the current connection (the client reconnects); the message says why."""


# What ends a welcomed connection: a ClientError ends the client, the others make it reconnect.
_SESSION_ENDINGS = (TransportClosed, protocol.ProtocolError, SessionOver, ClientError)


@attrs.define
class Counters:
    """The connection side of a client's statistics."""

    attempts: int = 0
    failed_attempts: int = 0
    welcomes: int = 0
    last_error: str | None = None


@attrs.define(eq=False)
class Session:
    """One welcomed connection, and what is pending on it."""

    transport: ClientTransport
    heartbeat: float
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    last_received: float = attrs.field(factory=trio.current_time)
    confirmed: set[str] = attrs.field(factory=set)  # streams subscribed on this connection
    refused: dict[str, protocol.Error] = attrs.field(factory=dict)
    awaiting: deque[str] = attrs.field(factory=deque)  # subscriptions sent, not yet answered
    progress: trio.Event = attrs.field(factory=trio.Event)
    ended: bool = False
    error: BaseException | None = None

    def notify(self) -> None:
        """Wake the tasks waiting for an answer on this connection."""
        self.progress.set()
        self.progress = trio.Event()

    def end(self, error: BaseException) -> None:
        """End this connection because of ``error`` (the first reason given is kept)."""
        if not self.ended:
            self.error = self.error or error
            self.scope.cancel()

    async def send(self, frame: str) -> None:
        """Send ``frame``; a broken connection is not the caller's error (the reader sees it)."""
        try:
            await self.transport.send(frame)
        except TransportClosed:
            await trio.lowlevel.checkpoint()


class SessionHandler(Protocol):
    """What a Reconnector serves: the client's side of every connection."""

    async def hello(self) -> tuple[str, list[str]]:
        """The ``hello`` frame to send, and the streams it asks for, in order (made before
        connecting); raises SessionOver to fail the attempt."""
        ...

    async def keep_credential(self, session: Session) -> None:
        """Keep the connection's credential valid while it lasts (runs beside the reader)."""
        ...

    async def on_welcome(self, session: Session, welcome: protocol.Welcome) -> None:
        """Take a welcome into account before the events that follow it."""
        ...

    async def on_event(self, session: Session, event: protocol.ServerEvent) -> None:
        """Handle one event after the welcome; may raise SessionOver or a ClientError."""
        ...

    def on_session_end(self, session: Session) -> None:
        """The session is over: forget it and wake what waits on it."""
        ...


@attrs.define(eq=False, kw_only=True)
class _Outcome:
    """How one connection attempt ended."""

    welcomed: bool = False
    code: int | None = None
    reason: str = ""
    error: BaseException | None = None


@attrs.define(eq=False, kw_only=True)
class Reconnector:
    """Connects ``handler`` to the hub at ``url`` again and again (see the module notes)."""

    url: str
    handler: SessionHandler
    connect: Connector
    backoff: Backoff
    max_attempts: int | None
    breaker: CircuitBreaker | None
    connect_timeout: float
    heartbeat_timeout: float
    counters: Counters = attrs.field(factory=Counters)

    async def run(self) -> None:
        """Keep connected until cancelled; raises ClientRejected, ConnectFailed or ClientError."""
        retry = 0  # consecutive retries since the last welcome
        failed = 0  # consecutive attempts that were not welcomed
        delay = 0.0
        while True:
            if delay > 0:
                await trio.sleep(delay)
            permit = await self._admit()
            outcome = await self._attempt(permit)
            if outcome.code == CloseCode.POLICY_VIOLATION:
                raise ClientRejected(outcome.code, outcome.reason)
            if outcome.welcomed:
                retry = failed = 0
                if outcome.code in (CloseCode.GOING_AWAY, CloseCode.CREDENTIAL_EXPIRED):
                    delay = 0.0  # the node is going away, or the token expired: at once
                    continue
            else:
                failed += 1
                self.counters.failed_attempts += 1
                if self.max_attempts is not None and failed >= self.max_attempts:
                    raise ConnectFailed(failed, outcome.error)
            delay = self.backoff.delay(retry)
            retry += 1

    async def _admit(self) -> BreakerPermit | None:
        # Waits while the breaker is open; a wait for the breaker is not an attempt.
        breaker = self.breaker
        while breaker is not None:
            try:
                return breaker.acquire_nowait()
            except CircuitOpenError as error:
                wait = self.backoff.cap if error.retry_after is None else error.retry_after
                await trio.sleep(max(wait, 1e-3))
        return None

    def _release(self, permit: BreakerPermit | None, error: BaseException | None) -> None:
        if self.breaker is not None and permit is not None and not permit.released:
            self.breaker.release(permit, error)

    async def _attempt(self, permit: BreakerPermit | None) -> _Outcome:
        self.counters.attempts += 1
        outcome = _Outcome()
        try:
            hello = await self.handler.hello()  # before connecting: a token may take a while
            async with self.connect(self.url, (SUBPROTOCOL,)) as transport:
                await self._serve(transport, hello, outcome, permit)
        except TransportClosed as closed:
            outcome.code, outcome.reason = closed.code, closed.reason
            outcome.error = outcome.error or closed
        except (OSError, SessionOver, protocol.ProtocolError) as error:
            outcome.error = error
        self._release(permit, outcome.error or ConnectionError("closed before welcome"))
        if outcome.error is not None:
            self.counters.last_error = repr(outcome.error)
            logger.info("connection to %s ended: %r", self.url, outcome.error)
        return outcome

    async def _serve(
        self,
        transport: ClientTransport,
        hello_and_asked: tuple[str, list[str]],
        outcome: _Outcome,
        permit: BreakerPermit | None,
    ) -> None:
        hello, asked = hello_and_asked
        await transport.send(hello)
        try:
            with trio.fail_after(self.connect_timeout):
                welcome, rest = await _receive_welcome(transport)
        except trio.TooSlowError:
            raise SessionOver(f"no welcome within {self.connect_timeout:g} s") from None
        outcome.welcomed = True
        self._release(permit, None)
        self.counters.welcomes += 1
        session = Session(transport, welcome.heartbeat)
        session.awaiting.extend(s for s in asked if s not in welcome.streams)  # refusals follow
        try:
            with session.scope:
                await self.handler.on_welcome(session, welcome)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeat, session)
                    nursery.start_soon(self.handler.keep_credential, session)
                    try:
                        await self._read(session, rest)
                    except _SESSION_ENDINGS as error:  # caught here: a nursery would wrap it
                        session.end(error)
                    nursery.cancel_scope.cancel()
        finally:
            session.ended = True
            self.handler.on_session_end(session)
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await transport.aclose()
        if session.error is not None:
            raise session.error

    async def _heartbeat(self, session: Session) -> None:
        # Hubs behind ASGI see no WebSocket pings, only frames: a ping every ``heartbeat``
        # seconds from the welcome keeps the connection alive there.
        interval = session.heartbeat if session.heartbeat > 0 else 25.0
        next_ping = trio.current_time() + interval
        while True:
            silent_until = session.last_received + interval + self.heartbeat_timeout
            await trio.sleep_until(min(next_ping, silent_until))
            now = trio.current_time()
            if now >= session.last_received + interval + self.heartbeat_timeout:
                session.end(SessionOver("the hub stopped answering pings"))
                return
            if now >= next_ping:
                next_ping += interval
                await session.send(protocol.encode_ping())

    async def _read(self, session: Session, events: list[protocol.ServerEvent]) -> None:
        while True:
            for event in events:
                await self.handler.on_event(session, event)
            raw = await session.transport.receive()
            session.last_received = trio.current_time()
            events = protocol.parse_server_frame(_text(raw))


async def _receive_welcome(
    transport: ClientTransport,
) -> tuple[protocol.Welcome, list[protocol.ServerEvent]]:
    """The welcome, and the events that came in the same frame after it."""
    while True:
        events = protocol.parse_server_frame(_text(await transport.receive()))
        if events:
            break
    first, *rest = events
    if not isinstance(first, protocol.Welcome):
        raise protocol.ProtocolError("bad_request", f"expected welcome, got {first!r}")
    return first, rest


def _text(raw: str | bytes) -> str:
    if isinstance(raw, bytes):
        raise protocol.ProtocolError("bad_request", "the hub sent a binary frame")
    return raw
