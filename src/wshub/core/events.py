"""The events of the wshub wire protocol: what frames mean, as frozen attrs values.

Theory of operation: one class per frame type, both directions, plus the values they carry
(``Position``, ``StreamStatus``), :data:`NO_REF` (the marker of an absent ``ref``) and
:data:`ERROR_CODES` (what an ``error`` frame's code may be). They compare by value; those
holding a dict (``Hello.subscribe``, ``Welcome.streams``, JSON data) are not hashable.
``wshub.core.parsing`` parses text into these events, ``wshub.core.encoding`` encodes them,
and ``wshub.core.protocol`` re-exports them all; nothing here parses, encodes or does I/O, as in
wsproto's ``events`` module.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

import attrs

__all__ = [
    "ERROR_CODES",
    "NO_REF",
    "ClientEvent",
    "Error",
    "Hello",
    "Message",
    "NoRef",
    "Ping",
    "Pong",
    "Position",
    "Publish",
    "PublishResult",
    "Published",
    "Refresh",
    "Refreshed",
    "ServerEvent",
    "StreamStatus",
    "Subscribe",
    "Subscribed",
    "Unsubscribe",
    "Unsubscribed",
    "Welcome",
]


@attrs.frozen
class Position:
    """A client's position in a stream: it has seen every message up to ``offset`` of ``epoch``.

    ``epoch`` None (only with ``offset`` 0) means "before the first message of whatever epoch
    the stream is in": everything the history still holds is replayed.
    """

    offset: int
    epoch: str | None


class NoRef(enum.Enum):
    """The type of :data:`NO_REF`."""

    NO_REF = "NO_REF"


#: Marks an absent ``ref`` (a client that sent ``"ref": null`` gets ``null`` echoed back).
NO_REF: Final = NoRef.NO_REF


@attrs.frozen
class Hello:
    """``hello``: the first frame; ``subscribe`` maps streams to positions (None: from now on).

    ``token`` is a credential (a JWT, or the admin key): it never appears in ``repr``, so a hook
    or a test that prints the hello does not log it.
    """

    client_id: str
    token: str | None = attrs.field(repr=False)
    subscribe: Mapping[str, Position | None]


@attrs.frozen
class Subscribe:
    """``subscribe``: start receiving ``stream``, replaying after ``position`` when given."""

    stream: str
    position: Position | None


@attrs.frozen
class Unsubscribe:
    """``unsubscribe``: stop receiving ``stream``."""

    stream: str


@attrs.frozen
class Publish:
    """``publish``: append ``data`` to ``stream``; ``id`` is an idempotency key, ``ref`` an echo."""

    stream: str
    data: Any
    id: str | None
    ref: Any


@attrs.frozen
class Ping:
    """``ping``: answered by ``pong``."""


@attrs.frozen
class Refresh:
    """``refresh``: replace the connection's credential (same subject) before it expires;
    ``token`` never appears in ``repr``."""

    token: str = attrs.field(repr=False)


ClientEvent: TypeAlias = Hello | Subscribe | Unsubscribe | Publish | Ping | Refresh


@attrs.frozen
class StreamStatus:
    """A stream's state: ``offset`` is its newest message, ``first`` the oldest still held."""

    epoch: str
    offset: int
    first: int | None
    recovered: bool


@attrs.frozen
class Welcome:
    """``welcome``: answers ``hello`` with the status of every subscribed stream."""

    client_id: str
    session: str
    heartbeat: float
    streams: Mapping[str, StreamStatus]


@attrs.frozen
class Message:
    """``message``: one message of ``stream``; ``ts`` is Unix milliseconds at publish."""

    stream: str
    offset: int
    id: str
    data: Any
    ts: int


@attrs.frozen
class Subscribed:
    """``subscribed``: answers ``subscribe``, before its replay."""

    stream: str
    status: StreamStatus


@attrs.frozen
class Unsubscribed:
    """``unsubscribed``: answers ``unsubscribe``."""

    stream: str


@attrs.frozen
class Published:
    """``published``: answers ``publish``; ``ref`` is :data:`NO_REF` when none was sent."""

    ref: Any
    stream: str
    offset: int
    id: str
    duplicate: bool


@attrs.frozen
class Pong:
    """``pong``: answers ``ping``."""


#: Every error code an ``error`` frame may carry.
ERROR_CODES: Final = frozenset(
    {
        "bad_request",
        "unknown_type",
        "forbidden",
        "rate_limited",
        "unavailable",
        "too_large",
        "conflict",
        "limit_exceeded",
    }
)


@attrs.frozen
class Error:
    """``error``: a non-fatal error; ``ref`` is :data:`NO_REF` when none was echoed."""

    code: str
    message: str
    ref: Any


@attrs.frozen
class Refreshed:
    """``refreshed``: answers ``refresh``; ``expires`` is the new credential's ``exp``
    (Unix seconds)."""

    expires: float


ServerEvent: TypeAlias = (
    Welcome | Message | Subscribed | Unsubscribed | Published | Pong | Refreshed | Error
)


@attrs.frozen
class PublishResult:
    """The answer to a publish: where the message is, and whether it was a duplicate.

    Returned by ``Hub.publish`` and by the Trio client's ``Client.publish`` alike.
    """

    stream: str
    offset: int
    id: str
    duplicate: bool
