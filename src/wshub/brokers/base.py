"""The broker interface: what a hub asks of the place where streams are kept.

Theory of operation:
- A broker owns what all nodes of one service must agree on: each stream's epoch and offsets,
  its history (``history.size`` and ``history.ttl``), de-duplication (per stream and publisher
  within ``dedup.window``) and delivery of every published message to every node. The hub owns
  the rest: connections, subscriber sets, queues, access rules.
- Delivery goes through the hub's ``StreamSink``: ``deliver`` once per message, per stream in
  offset order without gaps; ``lose`` when a node cannot keep a stream contiguous (its epoch
  changed, or history no longer covers a gap), so that its subscribers reconnect and learn
  their exact gap by resuming.
- Joining a stream has two steps: ``prepare`` (async: whatever I/O it takes) and
  ``join_nowait`` (synchronous). The replay that ``join_nowait`` returns runs up to the last
  offset delivered on this node, so a caller that adds the subscriber in the same step (no
  checkpoint in between) gets every later offset from ``deliver``: nothing lost or repeated.
- Every failure of the shared store is ``BrokerUnavailable``; the same id with other content
  inside the window is ``IdConflict``. Both brokers follow the same rules, and the same tests.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, NamedTuple, Protocol

import attrs

from wshub.core.dedup import message_id
from wshub.core.events import Position, PublishResult
from wshub.core.history import Replay, StoredMessage

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "Prepared",
    "PublishKey",
    "StaleRead",
    "StreamSink",
    "publish_key",
]


class BrokerUnavailable(Exception):
    """The broker's shared store cannot be reached (down, slow, or its breaker is open).

    Raised by ``Hub.publish``; answered ``unavailable`` on WebSocket and 503 over HTTP.
    ``retry_after`` is the number of seconds until the next attempt may be admitted, when
    the circuit breaker knows it.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StreamSink(Protocol):
    """Where a broker delivers messages on this node: the hub's fan-out."""

    def deliver(self, message: StoredMessage) -> None:
        """Fan ``message`` out to this node's subscribers of its stream (never awaits)."""
        ...

    def lose(self, stream: str) -> None:
        """This node can no longer keep ``stream`` contiguous: its subscribers must resume."""
        ...


class PublishKey(NamedTuple):
    """Who published what: the message id, the content id, and whether to de-duplicate."""

    id: str
    """The message id: the publisher's id, else the content id."""
    content: str
    """The content id (XXH3 of the canonical ``[stream, data]``): tells a conflict apart."""
    deduplicate: bool
    """False for a publish without id when ``dedup.content_ids`` is off."""


_new_key = tuple.__new__


def publish_key(stream: str, data: Any, id: str | None, *, content_ids: bool) -> PublishKey:
    """The message id and content id of a publish, the one way both brokers make them.

    Raises ValueError when ``data`` cannot be encoded as canonical JSON.
    """
    try:
        content = message_id(stream, data)
    except TypeError as error:
        raise ValueError(f"data is not JSON-serialisable: {error}") from None
    # tuple.__new__ skips the NamedTuple constructor's Python-level __new__ (a third of the cost).
    if id is None:
        return _new_key(PublishKey, (content, content, content_ids))
    return _new_key(PublishKey, (id, content, True))


@attrs.define(eq=False)
class Prepared:
    """A join in progress: what ``prepare`` learnt, for ``join_nowait`` or ``abandon``."""

    stream: str
    position: Position | None
    state: Any = None
    """The broker's own: a read answer, the node's stream feed."""


class Broker(Protocol):
    """A place where streams live; ``MemoryBroker`` and ``RedisBroker`` are the two kinds."""

    node: str
    """This node's name, as the metrics and reports show it."""
    content_ids: bool
    """``dedup.content_ids``: whether a publish without id is de-duplicated by content."""

    @property
    def calls(self) -> dict[tuple[str, str], int]:
        """Calls to the shared store by (operation, outcome): ok, error, timeout, rejected."""
        ...

    @property
    def gap_fills(self) -> int:
        """Offsets skipped by pub/sub and read from history instead (or found lost)."""
        ...

    def open(self, sink: StreamSink) -> AbstractAsyncContextManager[None]:
        """Run the broker's tasks (connections, pub/sub reader) while the block runs."""
        ...

    async def publish(
        self,
        stream: str,
        data: Any,
        *,
        publisher: str,
        id: str | None,
        key: PublishKey | None = None,
    ) -> PublishResult:
        """Store and deliver one message, or answer the original of a duplicate.

        ``key`` defaults to ``publish_key(stream, data, id)``; a caller that changed ``data``
        (the ``on_publish`` hook) passes the key of what the client sent, so that a retry of
        the same request is the same publish. Raises IdConflict (same id, other content,
        within the window), BrokerUnavailable, HistoryFull (no room for another stream),
        ValueError (data not JSON).
        """
        ...

    async def find_duplicate(
        self, stream: str, *, publisher: str, key: PublishKey
    ) -> PublishResult | None:
        """The earlier publish that one with ``key`` repeats within the window, or None.

        Raises IdConflict, BrokerUnavailable as ``publish`` does.
        """
        ...

    async def prepare(self, stream: str, position: Position | None) -> Prepared:
        """Do the I/O a join needs. Raises BrokerUnavailable."""
        ...

    def join_nowait(self, prepared: Prepared) -> Replay:
        """Join this node's subscribers of the stream; the replay ends where delivery starts.

        Raises HistoryFull; raises ``StaleRead`` when ``prepare`` must be done again.
        """
        ...

    def abandon(self, prepared: Prepared) -> None:
        """Give up a prepared join (another stream of the same hello failed)."""
        ...

    def leave(self, stream: str) -> None:
        """One subscriber of this node left ``stream``."""
        ...

    def sweep(self) -> dict[str, int]:
        """Expire what is due; counts by kind (``history``, ``dedup``, ``streams``)."""
        ...

    def unavailable_reason(self) -> str | None:
        """Why the broker cannot serve now (for health), or None while it can."""
        ...

    def statistics(self) -> dict[str, Any]:
        """Figures for ``/api/stats``: streams, messages, dedup and broker calls."""
        ...


class StaleRead(Exception):
    """A prepared join fell behind this node's delivery; prepare it again."""
