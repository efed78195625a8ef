"""What the HTTP endpoints trade in: the parsed ``Request``, the whole ``Response``, ASGI's types.

``servers/endpoints.handle_http`` answers an ASGI ``http`` scope, hypercorn's
(``servers/asgi.py``) or the one the fast server's h11 bridge builds (``servers/http.py``); both
servers also send these responses themselves (a bad request, a refused upgrade). Every JSON
body goes through orjson; every error body is ``{"error": "..."}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Final, TypeAlias
from urllib.parse import parse_qs

import attrs
import orjson

__all__ = [
    "JSON",
    "Message",
    "Receive",
    "Request",
    "Response",
    "Scope",
    "Send",
    "error_response",
    "json_response",
    "upgrade_required",
]

#: An ASGI scope or event (a plain dict at run time).
Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]

#: The content type of every JSON answer.
JSON: Final = "application/json"


@attrs.frozen
class Request:
    """What an endpoint needs from an HTTP request (the body is read by the endpoint)."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: tuple[tuple[str, str], ...]  # lower-case names, in request order

    @classmethod
    def from_scope(cls, scope: Scope) -> Request:
        """Parse an ASGI ``http`` scope."""
        query = scope.get("query_string", b"").decode("latin-1")
        return cls(
            method=scope["method"],
            path=scope["path"],
            query=parse_qs(query),
            headers=tuple(
                (name.decode("latin-1").lower(), value.decode("latin-1"))
                for name, value in scope.get("headers", ())
            ),
        )

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def param(self, name: str) -> str | None:
        """The first value of query parameter ``name``, or None."""
        values = self.query.get(name)
        return values[0] if values else None


@attrs.frozen
class Response:
    """A whole HTTP answer."""

    status: int
    body: bytes = b""
    content_type: str | None = JSON
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, payload: Any, *headers: tuple[str, str]) -> Response:
    """``payload`` as a JSON answer."""
    return Response(status, orjson.dumps(payload), JSON, headers)


def error_response(
    status: int, message: str, /, *headers: tuple[str, str], **extra: Any
) -> Response:
    """``{"error": message, **extra}`` with ``status``."""
    return json_response(status, {"error": message, **extra}, *headers)


def upgrade_required(path: str) -> Response:
    """426 for the WebSocket endpoint asked for without an upgrade: says how to ask (RFC 9110)."""
    return error_response(
        426,
        f"{path} is the WebSocket endpoint: connect with a WebSocket client (Upgrade: websocket)",
        ("upgrade", "websocket"),
        path=path,
    )
