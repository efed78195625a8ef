# Theory of operation
#
# A StreamHistory numbers its stream's messages 1, 2, 3, ... within an epoch, a random string
# minted with the history: a new history (say after a restart) has a new epoch, so an old
# position is never read against the new numbering. The deque holds the contiguous offsets
# first..last, oldest on the left, so offset k sits at index k - first: reads are index
# arithmetic, never a scan. Messages leave only from the left (size bound on append, age
# bound in trim_expired); stored_at never decreases along the deque, so the expired messages
# are always a prefix. last_offset outlives trimming: an empty history still knows where its
# stream stands, and a client at last_offset has missed nothing.
#
# A HistoryStore keeps two pools. A stream that has been published to, or is a personal
# stream, counts towards max_streams. A topic that exists only because a client subscribed
# to it (nothing published yet) counts towards max_subscribed instead, until its first
# publish moves it over. So subscribing, which any client may do, can never use up the
# streams that publishing and personal streams need.
"""Per-stream bounded history: offsets, epochs, size and age bounds, resume reads."""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Container, Iterator
from itertools import islice
from typing import Any

import attrs
import trio

from wshub.core.protocol import Position

__all__ = [
    "HistoryFull",
    "HistoryStatistics",
    "HistoryStore",
    "Replay",
    "StoredMessage",
    "StreamHistory",
    "new_epoch",
    "resume_plan",
]


def resume_plan(
    position: Position | None, epoch: str, last: int, first: int | None
) -> tuple[bool, int | None]:
    """The one rule of resuming (PROTOCOL.md): ``(recovered, first offset to replay)``.

    ``epoch``, ``last`` and ``first`` describe the stream (``first`` None: nothing held); the
    offset to replay from is None when nothing is to be replayed, else every held message from
    it on is. See ``StreamHistory.read_from`` for the cases; brokers that keep history
    elsewhere answer with this same rule.
    """
    if position is None:
        return True, None
    seen = max(position.offset, 0)
    # No epoch (``{"offset": 0}``): read against the current epoch.
    if (position.epoch is not None and position.epoch != epoch) or seen > last:
        return False, first
    if seen == last:
        return True, None
    if first is None or seen + 1 < first:
        return False, first
    return True, seen + 1


def new_epoch() -> str:
    """Return a fresh random epoch: 8 URL-safe characters (48 random bits)."""
    return secrets.token_urlsafe(6)


@attrs.frozen
class StoredMessage:
    """One published message as history keeps it for replay."""

    stream: str
    offset: int
    id: str
    data: Any
    ts: int
    """Unix milliseconds at publish."""
    frame: str
    """The already-encoded server ``message`` frame: the hub encodes once, replay resends it."""
    stored_at: float
    """The history's clock at append; the age bound counts from here."""


@attrs.frozen
class Replay:
    """The answer to a resume: where the stream stands and what the client must be sent."""

    epoch: str
    offset: int
    """The newest offset in this epoch (0 when nothing was ever published)."""
    first: int | None
    """The oldest offset still held; None when the history is empty."""
    recovered: bool
    """True when ``messages`` holds every message after the client's position."""
    messages: list[StoredMessage]
    """Oldest first."""


@attrs.define
class StreamHistory:
    """The most recent messages of one stream: at most ``size``, none older than ``ttl``."""

    stream: str = attrs.field(on_setattr=attrs.setters.frozen)
    size: int = attrs.field(
        validator=[attrs.validators.instance_of(int), attrs.validators.gt(0)],
        on_setattr=attrs.setters.frozen,
    )
    ttl: float = attrs.field(
        validator=[attrs.validators.instance_of((int, float)), attrs.validators.gt(0.0)],
        on_setattr=attrs.setters.frozen,
    )
    clock: Callable[[], float] = attrs.field(
        default=trio.current_time, on_setattr=attrs.setters.frozen
    )
    epoch: str = attrs.field(factory=new_epoch, on_setattr=attrs.setters.frozen)
    # The deque is made by the first append and dropped when trimmed empty: an empty
    # ``deque(maxlen=...)`` is about 600 bytes, and most personal streams hold nothing.
    _messages: deque[StoredMessage] | tuple[()] = attrs.field(init=False, default=())
    _last_offset: int = attrs.field(init=False, default=0)

    @property
    def last_offset(self) -> int:
        """The newest offset published in this epoch; 0 before the first message."""
        return self._last_offset

    @property
    def next_offset(self) -> int:
        """The offset the next appended message must carry."""
        return self._last_offset + 1

    @property
    def first_offset(self) -> int | None:
        """The oldest offset still held; None when the history is empty."""
        return self._messages[0].offset if self._messages else None

    def append(self, message: StoredMessage) -> None:
        """Add the next message, dropping the oldest when ``size`` are already held.

        ``message.stored_at`` should be ``clock()`` at the time of the call.

        Raises:
            ValueError: ``message`` belongs to another stream, its offset is not
                ``next_offset``, or its ``stored_at`` is older than the newest message's.
        """
        if message.stream != self.stream:
            raise ValueError(
                f"message for stream {message.stream!r} appended to history of {self.stream!r}"
            )
        if message.offset != self._last_offset + 1:
            raise ValueError(
                f"stream {self.stream!r}: appended offset {message.offset}, "
                f"expected {self._last_offset + 1}"
            )
        if self._messages and message.stored_at < self._messages[-1].stored_at:
            raise ValueError(
                f"stream {self.stream!r}: stored_at {message.stored_at} is older than the "
                f"newest message's {self._messages[-1].stored_at}"
            )
        held = self._messages
        if not isinstance(held, deque):
            held = self._messages = deque(maxlen=self.size)
        held.append(message)  # the deque's maxlen drops the oldest, in O(1)
        self._last_offset = message.offset

    def read_from(self, position: Position | None) -> Replay:
        """Answer a client resuming from ``position`` (None means "from now on").

        - None: recovered, nothing to send.
        - Same epoch, every offset after ``position.offset`` still held (including "already up
          to date"): recovered, those messages.
        - Same epoch but offset ``position.offset + 1`` is gone (trimmed by size or age):
          not recovered, everything held; the client missed ``offset + 1`` to ``first - 1``
          (all of them when ``first`` is None).
        - Another epoch: not recovered, everything held.
        - Same epoch but an offset beyond ``last_offset``: no honest client can hold one, so
          the position is treated like one from another epoch: not recovered, everything held.
        - No epoch (``{"offset": 0}``): "everything history still holds", read as offset 0 of
          the current epoch: recovered when offset 1 is still held (or nothing was ever
          published), else not recovered with everything held (the gap is 1 to ``first - 1``).
        - A negative offset (the protocol layer rejects them) is read as 0.
        """
        last = self._last_offset
        held = self._messages
        first = held[0].offset if held else None
        recovered, start = resume_plan(position, self.epoch, last, first)
        if start is None:
            return Replay(self.epoch, last, first, recovered, messages=[])
        # Offsets are contiguous, so the messages from ``start`` are the last ``last - start + 1``.
        missing = list(islice(reversed(held), last - start + 1))
        missing.reverse()
        return Replay(self.epoch, last, first, recovered, messages=missing)

    def trim_expired(self) -> int:
        """Drop the messages stored ``ttl`` or more seconds ago; return how many.

        A message stored at ``t`` is dropped once ``clock() >= t + ttl``. Costs O(dropped).
        """
        now = self.clock()
        ttl = self.ttl
        held = self._messages
        dropped = 0
        if not held:
            return 0
        assert isinstance(held, deque)
        while held and held[0].stored_at + ttl <= now:
            held.popleft()
            dropped += 1
        if not held:
            self._messages = ()
        return dropped

    def __len__(self) -> int:
        """The number of messages held."""
        return len(self._messages)


class HistoryFull(Exception):
    """A new stream's history was asked for while its pool is full: ``max_streams`` streams
    held, or (``subscribing``) ``max_subscribed`` topics that exist only by subscription."""

    def __init__(self, stream: str, max_streams: int, *, subscribing: bool = False) -> None:
        if subscribing:
            message = (
                f"cannot create stream {stream!r} by subscribing: already {max_streams} "
                "streams exist only because clients subscribed to them "
                "(history.max_subscribed_streams)"
            )
        else:
            message = (
                f"cannot keep history for stream {stream!r}: "
                f"already holding the maximum of {max_streams} streams"
            )
        super().__init__(message)
        self.stream = stream
        self.max_streams = max_streams
        self.subscribing = subscribing


@attrs.frozen
class HistoryStatistics:
    """A snapshot of a ``HistoryStore``."""

    streams: int
    messages: int
    subscribed_only: int = 0  # of ``streams``: topics with subscribers but no publish yet


@attrs.define
class HistoryStore:
    """The histories of all streams, created on demand: at most ``max_streams`` published to
    (or personal), and apart from them at most ``max_subscribed`` topics that only have
    subscribers so far (``max_streams`` when not given).

    Empty histories are kept, not dropped: their epoch and last offset still let a resuming
    client learn that it missed nothing. Whoever knows a stream is unused calls ``remove``.
    """

    size: int = attrs.field(
        validator=[attrs.validators.instance_of(int), attrs.validators.gt(0)],
        on_setattr=attrs.setters.frozen,
    )
    ttl: float = attrs.field(
        validator=[attrs.validators.instance_of((int, float)), attrs.validators.gt(0.0)],
        on_setattr=attrs.setters.frozen,
    )
    max_streams: int = attrs.field(
        validator=[attrs.validators.instance_of(int), attrs.validators.gt(0)],
        on_setattr=attrs.setters.frozen,
    )
    clock: Callable[[], float] = attrs.field(
        default=trio.current_time, on_setattr=attrs.setters.frozen
    )
    max_subscribed: int = attrs.field(
        validator=[attrs.validators.instance_of(int), attrs.validators.gt(0)],
        on_setattr=attrs.setters.frozen,
        kw_only=True,
    )
    _streams: dict[str, StreamHistory] = attrs.field(init=False, factory=dict)
    _idle_since: dict[str, float] = attrs.field(init=False, factory=dict)
    _subscribed_only: set[str] = attrs.field(init=False, factory=set)

    @max_subscribed.default
    def _max_subscribed_default(self) -> int:
        return self.max_streams

    def get(self, stream: str) -> StreamHistory | None:
        """Return the history of ``stream``, or None if there is none."""
        return self._streams.get(stream)

    def get_or_create(self, stream: str, *, subscribing: bool = False) -> StreamHistory:
        """Return the history of ``stream``, creating an empty one in a new epoch if needed.

        With ``subscribing`` a new stream is created in the pool of streams that exist only by
        subscription; without it, a stream from that pool moves to the main one (the first
        publish to a subscribed topic).

        Raises:
            HistoryFull: the stream would need room in a pool that is full.
        """
        history = self._streams.get(stream)
        if history is None:
            if subscribing:
                if len(self._subscribed_only) >= self.max_subscribed:
                    raise HistoryFull(stream, self.max_subscribed, subscribing=True)
                self._subscribed_only.add(stream)
            elif self._held() >= self.max_streams:
                raise HistoryFull(stream, self.max_streams)
            history = StreamHistory(stream, self.size, self.ttl, clock=self.clock)
            self._streams[stream] = history
        elif not subscribing and stream in self._subscribed_only:
            if self._held() >= self.max_streams:
                raise HistoryFull(stream, self.max_streams)
            self._subscribed_only.discard(stream)
        return history

    def _held(self) -> int:
        """Streams in the main pool."""
        return len(self._streams) - len(self._subscribed_only)

    def remove(self, stream: str) -> StreamHistory | None:
        """Forget the history of ``stream`` (a later one gets a new epoch); return it if held."""
        self._idle_since.pop(stream, None)
        self._subscribed_only.discard(stream)
        return self._streams.pop(stream, None)

    def trim_expired(self) -> int:
        """Drop expired messages from every stream; return how many.

        Costs O(streams + dropped): each stream checks its oldest message.
        """
        return sum(history.trim_expired() for history in self._streams.values())

    def forget_idle(self, in_use: Container[str]) -> int:
        """Forget streams that held no message and were not ``in_use`` for ``ttl``; how many.

        A forgotten stream is resumed later with recovered false in a new epoch, the
        conservative answer, and memory stays bounded by live streams. O(streams).
        """
        now = self.clock()
        forgotten = 0
        for name, history in list(self._streams.items()):
            if len(history) or name in in_use:
                self._idle_since.pop(name, None)
                continue
            since = self._idle_since.setdefault(name, now)
            if now - since >= self.ttl:
                del self._streams[name], self._idle_since[name]
                self._subscribed_only.discard(name)
                forgotten += 1
        return forgotten

    def statistics(self) -> HistoryStatistics:
        """Count streams (both pools) and messages held; O(streams)."""
        return HistoryStatistics(
            streams=len(self._streams),
            messages=sum(len(history) for history in self._streams.values()),
            subscribed_only=len(self._subscribed_only),
        )

    def __contains__(self, stream: object) -> bool:
        """Whether a history for the stream named ``stream`` is held."""
        return stream in self._streams

    def __iter__(self) -> Iterator[StreamHistory]:
        """Iterate over a snapshot of the held histories (each knows its ``stream``)."""
        return iter(list(self._streams.values()))

    def __len__(self) -> int:
        """The number of streams with a history."""
        return len(self._streams)
