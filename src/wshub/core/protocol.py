"""The wshub wire protocol, version 1 (sans-IO): its one public face.

Import the protocol from here. This module holds the subprotocol name and the close codes, and
re-exports the rest from the modules that define it:

- ``wshub.core.events``: the frozen attrs events of both directions, ``NO_REF``, ``ERROR_CODES``;
- ``wshub.core.names``: client ids and stream names (topic, ``@personal``, ``$system``);
- ``wshub.core.parsing``: text into events, ``ProtocolError``, the nesting bound;
- ``wshub.core.encoding``: events into text, and newline batching.

None of them touches a socket or Trio, so the protocol is tested with plain strings.
"""

from __future__ import annotations

import enum

from wshub.core.encoding import (
    encode_error,
    encode_hello,
    encode_message,
    encode_message_parts,
    encode_ping,
    encode_pong,
    encode_publish,
    encode_published,
    encode_refresh,
    encode_refreshed,
    encode_subscribe,
    encode_subscribed,
    encode_unsubscribe,
    encode_unsubscribed,
    encode_welcome,
    join_batch,
    split_batch,
)
from wshub.core.events import (
    ERROR_CODES,
    NO_REF,
    ClientEvent,
    Error,
    Hello,
    Message,
    NoRef,
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
from wshub.core.names import is_valid_client_id, personal_stream, stream_kind
from wshub.core.parsing import (
    DEFAULT_MAX_DEPTH,
    ProtocolError,
    nests_deeper_than,
    parse_client_frame,
    parse_publish_body,
    parse_server_frame,
)

__all__ = [  # all but SUBPROTOCOL and CloseCode are defined elsewhere and re-exported here
    "DEFAULT_MAX_DEPTH",
    "ERROR_CODES",
    "NO_REF",
    "SUBPROTOCOL",
    "ClientEvent",
    "CloseCode",
    "Error",
    "Hello",
    "Message",
    "NoRef",
    "Ping",
    "Pong",
    "Position",
    "ProtocolError",
    "Publish",
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
    "is_valid_client_id",
    "join_batch",
    "nests_deeper_than",
    "parse_client_frame",
    "parse_publish_body",
    "parse_server_frame",
    "personal_stream",
    "split_batch",
    "stream_kind",
]

SUBPROTOCOL = "wshub.v1"


class CloseCode(enum.IntEnum):
    """WebSocket close codes used by wshub."""

    NORMAL = 1000  #: Normal close.
    GOING_AWAY = 1001  #: The server is shutting down; reconnect (to another node) and resume.
    PROTOCOL_ERROR = 1002  #: A frame broke RFC 6455, e.g. its fragmentation rules.
    UNSUPPORTED_DATA = 1003  #: A binary frame was received.
    INVALID_PAYLOAD = 1007  #: A text frame that is not valid UTF-8.
    POLICY_VIOLATION = 1008  #: Authentication failed, origin refused or client id not allowed.
    MESSAGE_TOO_BIG = 1009  #: A frame was larger than ``limits.max_message_bytes``.
    INTERNAL_ERROR = 1011  #: Internal server error.
    TRY_AGAIN_LATER = 1013  #: Try again later: the server is at its connection limit or overloaded.
    BAD_HELLO = 4000  #: Bad hello: the first frame was missing, late, or invalid.
    SLOW_CONSUMER = 4002  #: Slow consumer: the outbound queue overflowed; reconnect and resume.
    RATE_LIMITED = 4003  #: The rate limit was exceeded repeatedly.
    HEARTBEAT_TIMEOUT = 4004  #: No frame or pong arrived within the heartbeat timeout.
    CREDENTIAL_EXPIRED = 4005  #: The credential expired without a ``refresh``; reconnect.
