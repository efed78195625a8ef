"""Encoding events into the text of wshub frames, version 1 (sans-IO), both directions.

Theory of operation: one function per frame type, keyword for keyword the frame's fields, each
returning the frame's text; nothing is validated except an ``error`` frame's code (the parser in
``wshub.core.parsing`` checks what arrives). A field set to :data:`NO_REF` is left out, so a
reply echoes ``ref`` only when the client sent one, and ``null`` stays ``null``. Fields keep the
order PROTOCOL.md gives them. JSON is ``orjson``, compact and never a raw newline, which is what
lets ``join_batch`` put several frames in one WebSocket message. ``wshub.core.protocol``
re-exports every name here; it stays the protocol's one public face.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import orjson

from wshub.core.events import ERROR_CODES, NO_REF, Position, StreamStatus

__all__ = [
    "encode_error",
    "encode_hello",
    "encode_message",
    "encode_message_parts",
    "encode_ping",
    "encode_pong",
    "encode_publish",
    "encode_published",
    "encode_refresh",
    "encode_refreshed",
    "encode_subscribe",
    "encode_subscribed",
    "encode_unsubscribe",
    "encode_unsubscribed",
    "encode_welcome",
    "join_batch",
    "split_batch",
]

_Object = dict[str, Any]

# --- server -> client ----------------------------------------------------------------------------

_dumps: Final = orjson.dumps


def _encode(kind: str, **fields: Any) -> str:
    """A frame: ``type``, then ``fields`` in order, leaving out those set to :data:`NO_REF`."""
    return _dumps({"type": kind, **{k: v for k, v in fields.items() if v is not NO_REF}}).decode()


def _status_object(status: StreamStatus) -> _Object:
    fields = {"epoch": status.epoch, "offset": status.offset, "first": status.first}
    if status.first is None:
        del fields["first"]
    fields["recovered"] = status.recovered
    return fields


def encode_welcome(
    client_id: str, session: str, heartbeat: float, streams: Mapping[str, StreamStatus]
) -> str:
    """Encode ``welcome``; an integral ``heartbeat`` (25 or 25.0) is written as an integer."""
    beat = int(heartbeat) if float(heartbeat).is_integer() else heartbeat
    statuses = {name: _status_object(status) for name, status in streams.items()}
    return _encode(
        "welcome", client_id=client_id, session=session, heartbeat=beat, streams=statuses
    )


def encode_message(stream: str, offset: int, id: str, data: Any, ts: int) -> str:
    """Encode ``message`` (the hot path: called once per publish).

    Raises ``orjson.JSONEncodeError`` (a ``TypeError``) when ``data`` is not JSON-serializable.
    """
    return _dumps(
        {"type": "message", "stream": stream, "offset": offset, "id": id, "data": data, "ts": ts}
    ).decode()


def encode_message_parts(stream: str, id: str, data: Any) -> tuple[bytes, bytes]:
    """``encode_message`` without its offset and ts, for a store that assigns them.

    ``head + offset + middle + ts + "}"`` (numbers in decimal) is exactly the frame that
    ``encode_message`` makes. Raises ``orjson.JSONEncodeError`` (a ``TypeError``) when ``data``
    is not JSON-serializable.
    """
    head = b'{"type":"message","stream":' + _dumps(stream) + b',"offset":'
    middle = b',"id":' + _dumps(id) + b',"data":' + _dumps(data) + b',"ts":'
    return head, middle


def encode_subscribed(stream: str, status: StreamStatus) -> str:
    """Encode ``subscribed``."""
    return _encode("subscribed", stream=stream, **_status_object(status))


def encode_unsubscribed(stream: str) -> str:
    """Encode ``unsubscribed``."""
    return _encode("unsubscribed", stream=stream)


def encode_published(ref: Any, stream: str, offset: int, id: str, duplicate: bool) -> str:
    """Encode ``published``; ``ref`` is left out when it is :data:`NO_REF`."""
    return _encode("published", ref=ref, stream=stream, offset=offset, id=id, duplicate=duplicate)


def encode_pong() -> str:
    """Encode ``pong`` (a constant)."""
    return '{"type":"pong"}'


def encode_refreshed(expires: float) -> str:
    """Encode ``refreshed``; an integral ``expires`` is written as an integer."""
    return _encode("refreshed", expires=int(expires) if float(expires).is_integer() else expires)


def encode_error(code: str, message: str, ref: Any = NO_REF) -> str:
    """Encode ``error``; ``ref`` is left out when it is :data:`NO_REF`.

    Raises ``ValueError`` when ``code`` is not one of :data:`ERROR_CODES`.
    """
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}; expected one of {sorted(ERROR_CODES)}")
    return _encode("error", code=code, message=message, ref=ref)


def join_batch(frames: Sequence[str]) -> str:
    """Join encoded frames into one batched frame (only for clients that offered ``wshub.v1``)."""
    return "\n".join(frames)


def split_batch(text: str) -> list[str]:
    """Split a batched frame into its JSON objects, skipping blank lines."""
    return [line for line in text.split("\n") if line and not line.isspace()]


# --- client -> server ----------------------------------------------------------------------------


def _absent_if_none(value: Any) -> Any:
    return NO_REF if value is None else value


def _position_object(position: Position | None) -> _Object | None:
    if position is None:
        return None
    if position.epoch is None:
        return {"offset": position.offset}
    return {"offset": position.offset, "epoch": position.epoch}


def encode_hello(
    client_id: str,
    *,
    token: str | None = None,
    subscribe: Mapping[str, Position | None] = MappingProxyType({}),
) -> str:
    """Encode ``hello`` (``token`` left out when None). Does not validate: the server does."""
    positions = {name: _position_object(position) for name, position in subscribe.items()}
    return _encode("hello", client_id=client_id, token=_absent_if_none(token), subscribe=positions)


def encode_subscribe(stream: str, position: Position | None = None) -> str:
    """Encode ``subscribe`` (``position`` left out when None)."""
    return _encode("subscribe", stream=stream, position=_absent_if_none(_position_object(position)))


def encode_unsubscribe(stream: str) -> str:
    """Encode ``unsubscribe``."""
    return _encode("unsubscribe", stream=stream)


def encode_publish(stream: str, data: Any, *, id: str | None = None, ref: Any = NO_REF) -> str:
    """Encode ``publish`` (``id`` left out when None, ``ref`` when :data:`NO_REF`)."""
    return _encode("publish", stream=stream, data=data, id=_absent_if_none(id), ref=ref)


def encode_ping() -> str:
    """Encode ``ping`` (a constant)."""
    return '{"type":"ping"}'


def encode_refresh(token: str) -> str:
    """Encode ``refresh``."""
    return _encode("refresh", token=token)
