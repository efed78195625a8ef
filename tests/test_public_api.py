"""The public names are a contract (DESIGN.md "Public surface"): moving code must not lose one."""

from __future__ import annotations
import __future__

import importlib
import inspect

import pytest

import wshub
import wshub.asgi
import wshub.client
import wshub.core.parsing
import wshub.core.validators

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


def test_wshub_binds_no_public_name_it_does_not_list() -> None:
    # A name imported into wshub/__init__.py but left out of __all__ would be public without
    # this test knowing. Subpackages become attributes when imported; ``annotations`` is the
    # ``from __future__`` import.
    unlisted = [
        name
        for name, value in vars(wshub).items()
        if not name.startswith("_")
        and name not in wshub.__all__
        and not inspect.ismodule(value)
        and value is not __future__.annotations
    ]
    assert unlisted == []


#: Names whose code moved to a module of its own (issue 11's splits), at the paths that tests,
#: docs and users import them from.
MOVED = [
    ("wshub.core.protocol", "ProtocolError"),
    ("wshub.core.protocol", "DEFAULT_MAX_DEPTH"),
    ("wshub.core.protocol", "nests_deeper_than"),
    ("wshub.core.protocol", "parse_client_frame"),
    ("wshub.core.protocol", "parse_publish_body"),
    ("wshub.core.protocol", "parse_server_frame"),
    ("wshub.core.protocol", "is_valid_client_id"),
    ("wshub.core.protocol", "personal_stream"),
    ("wshub.core.protocol", "stream_kind"),
    ("wshub.core.sections", "ConfigError"),
    ("wshub.core.config", "ConfigError"),
    ("wshub.hub.hub", "Hub"),
    ("wshub.hub.hub", "open_hub"),
    ("wshub.hub.hub", "PublishResult"),
    ("wshub.hub.hub", "SYS_METRICS"),
]


@pytest.mark.parametrize(("module", "name"), MOVED)
def test_moved_names_keep_their_import_paths(module: str, name: str) -> None:
    assert name in importlib.import_module(module).__all__


def test_a_moved_class_is_one_class_at_every_path() -> None:
    # Two copies of an exception class would make ``except`` miss one of them.
    assert wshub.ConfigError is wshub.core.sections.ConfigError is wshub.core.validators.ConfigError
    assert wshub.core.protocol.ProtocolError is wshub.core.parsing.ProtocolError


def test_wshub_client_exports_exactly_the_contracted_names() -> None:
    assert sorted(wshub.client.__all__) == CLIENT_NAMES
    missing = [name for name in CLIENT_NAMES if not hasattr(wshub.client, name)]
    assert missing == []


def test_the_asgi_entry_points_exist() -> None:
    # ``hypercorn wshub.asgi:app`` and ``wshub.asgi.create_app(config)`` are documented paths.
    assert callable(wshub.asgi.app)
    assert inspect.isfunction(wshub.asgi.create_app)
    assert list(inspect.signature(wshub.asgi.create_app).parameters)[:1] == ["config"]
