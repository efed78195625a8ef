"""wshub: a resilient WebSocket hub for Trio.

Publish to streams, let clients resume without loss, de-duplicate by message id, guard every
dependency with a circuit breaker, and report health and metrics honestly.
"""

from __future__ import annotations

from wshub import (
    asgi,
    client,
    testing,
)
from wshub.breaker import (
    BreakerRegistry,
    BreakerState,
    BreakerStatistics,
    CircuitBreaker,
    CircuitOpenError,
)
from wshub.config import ConfigError, HubConfig
from wshub.dedup import Deduplicator, message_id
from wshub.hooks import AuthenticationError, HookUnavailable, Identity, PublishRejected
from wshub.hub import Hub, PublishResult, open_hub
from wshub.protocol import SUBPROTOCOL, CloseCode, Position
from wshub.server import serve_websocket
from wshub.transport import RequestInfo, Transport, TransportClosed

__version__ = "0.1.0"

__all__ = [
    "SUBPROTOCOL",
    "AuthenticationError",
    "BreakerRegistry",
    "BreakerState",
    "BreakerStatistics",
    "CircuitBreaker",
    "CircuitOpenError",
    "CloseCode",
    "ConfigError",
    "Deduplicator",
    "HookUnavailable",
    "Hub",
    "HubConfig",
    "Identity",
    "Position",
    "PublishRejected",
    "PublishResult",
    "RequestInfo",
    "Transport",
    "TransportClosed",
    "asgi",
    "client",
    "message_id",
    "open_hub",
    "serve_websocket",
    "testing",
]
