"""Parsing the text of wshub frames into events, version 1 (sans-IO), both directions.

Theory of operation: text in, frozen attrs events out. Nothing here touches a socket or Trio, so
it is tested with plain strings. ``parse_client_frame`` checks every field the protocol defines
(unknown fields are ignored) and raises :class:`ProtocolError` with a protocol error code; *who*
may subscribe or publish is the hub's business, not this module's. Each frame type has a spec
giving each field its rule; a rule returns the checked value or raises. An absent ``ref`` is
:data:`NO_REF`, distinct from ``null`` (``None``), so replies echo ``ref`` only when the client
sent one. A frame nesting deeper than ``max_depth`` is refused before any rule runs.
``wshub.core.protocol`` re-exports every public name here; it stays the protocol's one face.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias

import orjson

from wshub.core.encoding import split_batch
from wshub.core.events import (
    NO_REF,
    ClientEvent,
    Error,
    Hello,
    Message,
    Ping,
    Pong,
    Position,
    Publish,
    Published,
    Refresh,
    Refreshed,
    ServerEvent,
    StreamStatus,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
)
from wshub.core.names import is_valid_client_id, stream_kind

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "ProtocolError",
    "nests_deeper_than",
    "parse_client_frame",
    "parse_publish_body",
    "parse_server_frame",
]

#: How deep a client frame may nest arrays and objects (the frame object itself is level 1):
#: the default of ``limits.max_depth``. orjson cannot encode past 254 levels, so an unbounded
#: ``ref`` or ``data`` could not even be echoed or delivered.
DEFAULT_MAX_DEPTH: Final = 32


class ProtocolError(Exception):
    """A frame broke the protocol; ``code`` is an :data:`ERROR_CODES` member.

    ``ref`` is the frame's ``ref`` field when it had one (else :data:`NO_REF`), to be echoed in
    the ``error`` frame.
    """

    def __init__(self, code: str, message: str, ref: Any = NO_REF) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


# --- each frame type has a spec giving each field its rule --------------------------------------

_Object: TypeAlias = dict[str, Any]
_Rule: TypeAlias = Callable[[Any, str], Any]  # (value or _ABSENT, path) -> checked value; or raises
_Spec: TypeAlias = tuple[tuple[str, _Rule, str], ...]  # (field, its rule, its path)
_ABSENT: Final = object()  # what a rule receives for a field the frame does not have
_REQUIRED: Final = object()


def _describe(value: object) -> str:
    """A short rendering of a received value for error messages (bounded in length)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value)} characters)"
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "an array"
    return orjson.dumps(value).decode()  # null, true, false or a number


def _rule(expected: str, check: Callable[[Any], bool], when_absent: Any = _REQUIRED) -> _Rule:
    """A rule accepting what ``check`` accepts (described by ``expected``)."""

    def apply(value: Any, path: str) -> Any:
        if value is _ABSENT:
            if when_absent is _REQUIRED:
                raise ProtocolError("bad_request", f"{path} is required")
            return when_absent
        if check(value):
            return value
        raise ProtocolError("bad_request", f"{path} must be {expected}, got {_describe(value)}")

    return apply


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_ANY = _rule("any JSON value", lambda value: True)
_REF = _rule("any JSON value", lambda value: True, NO_REF)
_STRING = _rule("a string", lambda value: isinstance(value, str))
_COUNT = _rule("an integer >= 0", _is_count)
_BOOLEAN = _rule("a boolean", lambda value: isinstance(value, bool))
_NUMBER = _rule("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool))
_OBJECT = _rule("an object", lambda value: isinstance(value, dict))
_OBJECT_OR_NULL = _rule("an object or null", lambda v: v is None or isinstance(v, dict), None)
_CLIENT_ID_RULE = _rule(
    "a string matching [A-Za-z0-9_.:-]{1,128}",
    lambda value: isinstance(value, str) and is_valid_client_id(value),
)
_TOKEN = _rule("a string or null", lambda value: value is None or isinstance(value, str), None)
_MESSAGE_ID = _rule(
    "a string of 1 to 200 characters or null",
    lambda value: value is None or (isinstance(value, str) and 1 <= len(value) <= 200),
    None,
)
_SUBSCRIBE_SHAPE = _rule(
    "an object mapping stream names to positions or null",
    lambda value: value is None or isinstance(value, dict),
    None,
)
_EPOCH = _rule("a non-empty string", lambda value: isinstance(value, str) and value != "")
_FIRST = _rule("an integer >= 0", _is_count, None)
_STATUS_RULES: Final = dict(epoch=_STRING, offset=_COUNT, first=_FIRST, recovered=_BOOLEAN)


def _spec(path: str, **rules: _Rule) -> _Spec:
    """The spec of an object at ``path`` whose fields follow ``rules``."""
    return tuple((name, rule, f"{path}.{name}") for name, rule in rules.items())


def _build(cls: Callable[..., Any], spec: _Spec, obj: _Object) -> Any:
    """``cls(**fields)``, each field of ``spec`` taken from ``obj`` and checked by its rule."""
    return cls(**{name: rule(obj.get(name, _ABSENT), path) for name, rule, path in spec})


def _stream(value: Any, path: str) -> str:
    """A valid stream name, with a reason fitted to its kind when it is not."""
    name: str = _STRING(value, path)
    if stream_kind(name) is not None:
        return name
    if name[:1] == "@":
        rule = "a personal stream '@' + a client id matching [A-Za-z0-9_.:-]{1,128}"
    elif name[:1] == "$":
        rule = "a system stream '$' + a name matching [A-Za-z0-9_.:-]{1,200}"
    else:
        rule = "a topic matching [A-Za-z0-9_.:-]{1,200}, '@<client_id>' or '$<name>'"
    raise ProtocolError("bad_request", f"{path} must be {rule}, got {_describe(name)}")


def _position(value: Any, path: str) -> Position | None:
    if _OBJECT_OR_NULL(value, path) is None:
        return None
    offset: int = _COUNT(value.get("offset", _ABSENT), f"{path}.offset")
    epoch = value.get("epoch", _ABSENT)
    if epoch is _ABSENT:  # "everything history still holds": only meaningful before offset 1
        if offset != 0:
            raise ProtocolError(
                "bad_request", f"{path}.epoch is required (it may be left out only at offset 0)"
            )
        return Position(0, None)
    return Position(offset, _EPOCH(epoch, f"{path}.epoch"))


def _subscriptions(value: Any, path: str) -> dict[str, Position | None]:
    return {
        _stream(name, f"{path} key"): _position(position, f"{path}[{name!r}]")
        for name, position in (_SUBSCRIBE_SHAPE(value, path) or {}).items()
    }


_CLIENT_FRAMES: Final[Mapping[str, tuple[Callable[..., ClientEvent], _Spec]]] = {
    "hello": (
        Hello,
        _spec("hello", client_id=_CLIENT_ID_RULE, token=_TOKEN, subscribe=_subscriptions),
    ),
    "subscribe": (Subscribe, _spec("subscribe", stream=_stream, position=_position)),
    "unsubscribe": (Unsubscribe, _spec("unsubscribe", stream=_stream)),
    "publish": (Publish, _spec("publish", stream=_stream, data=_ANY, id=_MESSAGE_ID, ref=_REF)),
    "ping": (Ping, ()),
    "refresh": (Refresh, _spec("refresh", token=_rule("a non-empty string", _is_text))),
}


def nests_deeper_than(value: Any, max_depth: int) -> bool:
    """Whether ``value`` nests arrays and objects more than ``max_depth`` levels deep.

    ``value`` itself is level 1 when it is an array or an object (a scalar is level 0). The
    walk visits containers only and stops at the first one past the limit.
    """
    level: list[tuple[Any, int]] = [(value, 1)]
    while level:
        item, depth = level.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return True
        level.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _decode(text: str | bytes, max_depth: int | None, what: str) -> _Object:
    """Decode one JSON object (``what`` names it in errors) nesting at most ``max_depth`` levels
    (None: as deep as orjson decodes, 1024).

    Counting brackets costs a C-speed scan of the text and bounds the depth from above
    (brackets inside strings only add to the count), so the walk over the decoded object
    runs only for a text with more brackets than the limit.
    """
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise ProtocolError("bad_request", f"invalid JSON: {error}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", f"{what} must be a JSON object, got {_describe(obj)}")
    if max_depth is not None and _brackets(text) > max_depth and nests_deeper_than(obj, max_depth):
        ref = obj.get("ref", NO_REF)
        raise ProtocolError(
            "bad_request",
            f"{what} nests deeper than limits.max_depth ({max_depth} levels)",
            # Echoed only when the error frame can carry it (it nests ref one level down).
            NO_REF if nests_deeper_than(ref, max_depth - 1) else ref,
        )
    return obj


def _brackets(text: str | bytes) -> int:
    if isinstance(text, str):
        return text.count("{") + text.count("[")
    return text.count(b"{") + text.count(b"[")


def _event(obj: _Object, frames: Mapping[str, tuple[Callable[..., Any], _Spec]]) -> Any:
    """Build the event ``obj["type"]`` names; errors carry the object's ``ref``."""
    try:
        if "type" not in obj:
            raise ProtocolError("bad_request", "a frame must have a string field 'type'")
        kind = _STRING(obj["type"], "type")
        if kind not in frames:
            known = ", ".join(frames)
            message = f"unknown frame type {_describe(kind)}; expected one of {known}"
            raise ProtocolError("unknown_type", message)
        cls, spec = frames[kind]
        return _build(cls, spec, obj)
    except ProtocolError as error:
        error.ref = obj.get("ref", NO_REF)
        raise


def parse_client_frame(text: str | bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> ClientEvent:
    """Parse one client frame (a JSON object) into an event.

    ``hello.token``, ``hello.subscribe``, ``subscribe.position`` and ``publish.id`` may be absent
    or ``null``; a position's ``epoch`` may be absent only at offset 0 (``Position(0, None)``:
    everything history still holds); ``publish.data`` is required (``null`` is allowed).
    Raises :class:`ProtocolError` with code ``bad_request`` (invalid JSON, not an object, nesting
    deeper than ``max_depth``, missing or ill-typed field, invalid name) or ``unknown_type``; its
    ``ref`` is the frame's ``ref`` when it had one (and it nests within the limit).
    """
    event: ClientEvent = _event(_decode(text, max_depth, "a frame"), _CLIENT_FRAMES)
    return event


def parse_publish_body(body: str | bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Publish:
    """Parse the body of ``POST /api/publish`` (``stream``, ``data``, ``id``) by the rules of
    the ``publish`` frame; raises :class:`ProtocolError` (``bad_request``) as
    :func:`parse_client_frame` does."""
    obj = _decode(body, max_depth, "the body")
    obj["type"] = "publish"
    event: Publish = _event(obj, _CLIENT_FRAMES)
    return event


# --- server frames, parsed on the client's side --------------------------------------------------


def _statuses(value: Any, path: str) -> dict[str, StreamStatus]:
    statuses = {}
    for name, status in _OBJECT(value, path).items():
        where = f"{path}[{name!r}]"
        statuses[name] = _build(StreamStatus, _spec(where, **_STATUS_RULES), _OBJECT(status, where))
    return statuses


def _subscribed(stream: str, **status: Any) -> Subscribed:
    return Subscribed(stream, StreamStatus(**status))


_SERVER_FRAMES: Final[Mapping[str, tuple[Callable[..., ServerEvent], _Spec]]] = {
    "welcome": (
        Welcome,
        _spec("welcome", client_id=_STRING, session=_STRING, heartbeat=_NUMBER, streams=_statuses),
    ),
    "message": (
        Message,
        _spec("message", stream=_STRING, offset=_COUNT, id=_STRING, data=_ANY, ts=_COUNT),
    ),
    "subscribed": (_subscribed, _spec("subscribed", stream=_STRING, **_STATUS_RULES)),
    "unsubscribed": (Unsubscribed, _spec("unsubscribed", stream=_STRING)),
    "published": (
        Published,
        _spec("published", ref=_REF, stream=_STRING, offset=_COUNT, id=_STRING, duplicate=_BOOLEAN),
    ),
    "pong": (Pong, ()),
    "refreshed": (Refreshed, _spec("refreshed", expires=_NUMBER)),
    "error": (Error, _spec("error", code=_STRING, message=_STRING, ref=_REF)),
}


def parse_server_frame(text: str) -> list[ServerEvent]:
    """Parse one server frame (possibly a newline-separated batch) into events, in order.

    Raises :class:`ProtocolError` (``bad_request`` or ``unknown_type``) on malformed input.
    """
    return [_event(_decode(line, None, "a frame"), _SERVER_FRAMES) for line in split_batch(text)]
