"""The public names are a contract (DESIGN.md "Public surface"): moving code must not lose one."""

from __future__ import annotations

import inspect

import wshub
import wshub.asgi
import wshub.client

WSHUB_NAMES = [
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
    "SUBPROTOCOL",
    "Transport",
    "TransportClosed",
    "asgi",
    "client",
    "message_id",
    "open_hub",
    "serve_websocket",
    "testing",
]

CLIENT_NAMES = [
    "Client",
    "ClientError",
    "ClientEvent",
    "ClientRejected",
    "ClientStatistics",
    "ClientTransport",
    "ConnectFailed",
    "Connector",
    "Gap",
    "MemoryPositionStore",
    "Message",
    "Position",
    "PositionStore",
    "PublishError",
    "SubscribeError",
    "open_client",
]


def test_wshub_exports_exactly_the_contracted_names() -> None:
    assert sorted(wshub.__all__) == WSHUB_NAMES
    missing = [name for name in WSHUB_NAMES if not hasattr(wshub, name)]
    assert missing == []


def test_wshub_client_exports_exactly_the_contracted_names() -> None:
    assert sorted(wshub.client.__all__) == CLIENT_NAMES
    missing = [name for name in CLIENT_NAMES if not hasattr(wshub.client, name)]
    assert missing == []


def test_the_asgi_entry_points_exist() -> None:
    # ``hypercorn wshub.asgi:app`` and ``wshub.asgi.create_app(config)`` are documented paths.
    assert callable(wshub.asgi.app)
    assert inspect.isfunction(wshub.asgi.create_app)
    assert list(inspect.signature(wshub.asgi.create_app).parameters)[:1] == ["config"]
