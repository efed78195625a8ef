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
from wshub.brokers.base import BrokerUnavailable
from wshub.core.breaker import CircuitBreaker
from wshub.core.breaker_registry import BreakerRegistry
from wshub.core.breaker_state import BreakerState, BreakerStatistics, CircuitOpenError
from wshub.core.config import ConfigError, HubConfig
from wshub.core.dedup import Deduplicator, IdConflict, message_id
from wshub.core.errors import TransportClosed
from wshub.core.events import PublishResult
from wshub.core.protocol import SUBPROTOCOL, CloseCode, Position
from wshub.hub.hooks import AuthenticationError, HookUnavailable, Identity, PublishRejected
from wshub.hub.hub import Hub, open_hub
from wshub.hub.transport import RequestInfo, Transport
from wshub.servers.websocket import serve_websocket

__version__ = "0.1.0"

__all__ = [
    "SUBPROTOCOL",
    "AuthenticationError",
    "BreakerRegistry",
    "BreakerState",
    "BreakerStatistics",
    "BrokerUnavailable",
    "CircuitBreaker",
    "CircuitOpenError",
    "CloseCode",
    "ConfigError",
    "Deduplicator",
    "HookUnavailable",
    "Hub",
    "HubConfig",
    "IdConflict",
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
