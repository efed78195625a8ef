"""The HTTP endpoints of both servers: health, metrics, stats, publish, and the static files.

Each endpoint is a small function from a parsed ``Request`` to a ``Response``
(``servers/http_messages.py``); ``handle_http`` routes by path, answers 404 / 405 / CORS
preflight, applies the credential rules (``servers/http_auth.py``), and sends the answer.
Every JSON body goes through orjson; every error is ``{"error": "..."}``.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, TypeAlias

import attrs
import trio
from prometheus_client.exposition import choose_encoder

from wshub.brokers.base import BrokerUnavailable
from wshub.core.dedup import IdConflict
from wshub.core.history import HistoryFull
from wshub.core.protocol import ProtocolError, parse_publish_body
from wshub.hub.auth import Credential
from wshub.hub.hub import Hub
from wshub.servers.http_auth import monitoring_refusal, request_caller
from wshub.servers.http_messages import (
    Receive,
    Request,
    Response,
    Scope,
    Send,
    error_response,
    json_response,
    upgrade_required,
)

__all__ = ["handle_http"]

_GET: Final = frozenset({"GET", "HEAD"})
_POST: Final = frozenset({"POST"})
_TRUE: Final = frozenset({"1", "true", "yes", "on"})


class _ClientGone(Exception):
    """The client disconnected before its request body was read: nobody to answer."""


# --------------------------------------------------------------------------- endpoints


async def _health(hub: Hub, request: Request, receive: Receive) -> Response:
    if hub.draining:
        return json_response(503, {"status": "shutting_down"})
    return json_response(200, {"status": "ok"})


async def _websocket_health(hub: Hub, request: Request, receive: Receive) -> Response:
    report = hub.health()
    return json_response(200 if report["status"] == "healthy" else 503, report)


async def _metrics(hub: Hub, request: Request, receive: Receive) -> Response:
    hub.queue_depths()  # refresh the queue depth gauge before the scrape reads it
    _, wanted = choose_encoder(request.header("accept") or "")
    openmetrics = wanted.startswith("application/openmetrics-text")
    body, content_type = hub.metrics.exposition(openmetrics=openmetrics)
    return Response(200, body, content_type)


async def _stats(hub: Hub, request: Request, receive: Receive) -> Response:
    series = (request.param("series") or "").lower() in _TRUE
    return json_response(200, hub.stats(series=series))


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None as soon as it grows past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None  # stop reading: the server discards the rest
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _publish(hub: Hub, request: Request, receive: Receive) -> Response:
    config = hub.config
    if config.admin.api_key is None and hub.tokens is None:
        return error_response(
            503, "publishing over HTTP is disabled: neither admin.api_key nor [auth] is configured"
        )
    caller = request_caller(hub, request, allow_query=False)
    if isinstance(caller, Response):
        return caller
    if hub.draining:
        return error_response(503, "the server is shutting down")
    limit = config.limits.max_message_bytes
    too_large = error_response(413, f"the body exceeds limits.max_message_bytes ({limit} bytes)")
    declared = request.header("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return too_large
    body = await _read_body(receive, limit)
    if body is None:
        return too_large
    try:
        event = parse_publish_body(body, max_depth=config.limits.max_depth)
        if isinstance(caller, Credential):
            if not caller.rights.may_publish(event.stream):
                return error_response(
                    403, f"{event.stream!r} is not among this token's publish rights"
                )
            result = await hub.publish_for(caller.subject, event.stream, event.data, id=event.id)
        else:
            result = await hub.publish(event.stream, event.data, id=event.id)
    except ProtocolError as error:
        return error_response(400, error.message)
    except ValueError as error:  # not a publishable stream, a bad id, data that is not JSON
        return error_response(400, str(error))
    except IdConflict as error:
        return error_response(409, str(error), status="conflict", offset=error.offset)
    except BrokerUnavailable as error:
        wait = error.retry_after
        retry = () if wait is None else (("retry-after", str(max(1, math.ceil(wait)))),)
        return error_response(503, str(error), *retry, status="unavailable")
    except HistoryFull as error:
        return error_response(503, str(error))
    return json_response(
        200,
        {
            "stream": result.stream,
            "offset": result.offset,
            "id": result.id,
            "duplicate": result.duplicate,
        },
    )


async def _static(request: Request, name: str, content_type: str) -> Response:
    resource = importlib.resources.files("wshub").joinpath("static", *name.split("/"))
    try:
        data = await trio.to_thread.run_sync(resource.read_bytes)
    except OSError:
        return error_response(404, f"static file {name} is not installed", path=request.path)
    return Response(200, data, content_type)


async def _dashboard(hub: Hub, request: Request, receive: Receive) -> Response:
    return await _static(request, "dashboard.html", "text/html; charset=utf-8")


async def _client_js(hub: Hub, request: Request, receive: Receive) -> Response:
    return await _static(request, "client.js", "application/javascript; charset=utf-8")


async def _uplot_js(hub: Hub, request: Request, receive: Receive) -> Response:
    # The dashboard's charts (static/vendor/uplot/README.md): public code, no key needed.
    name = "vendor/uplot/uPlot.iife.min.js"
    return await _static(request, name, "application/javascript; charset=utf-8")


async def _uplot_css(hub: Hub, request: Request, receive: Receive) -> Response:
    return await _static(request, "vendor/uplot/uPlot.min.css", "text/css; charset=utf-8")


_Handler: TypeAlias = Callable[[Hub, Request, Receive], Awaitable[Response]]


@attrs.frozen
class _Route:
    methods: frozenset[str]
    handler: _Handler
    monitoring: bool = False  # needs the key or an admin token (admin.protect_monitoring)


_ROUTES: Final[Mapping[str, _Route]] = {
    "/health": _Route(_GET, _health),
    "/health/websocket": _Route(_GET, _websocket_health),
    "/metrics": _Route(_GET, _metrics, monitoring=True),
    "/api/stats": _Route(_GET, _stats, monitoring=True),
    "/api/publish": _Route(_POST, _publish),
    "/dashboard": _Route(_GET, _dashboard),  # no figures: its login form asks for the key
    "/client.js": _Route(_GET, _client_js),
    "/static/uplot/uPlot.iife.min.js": _Route(_GET, _uplot_js),
    "/static/uplot/uPlot.min.css": _Route(_GET, _uplot_css),
}


# --------------------------------------------------------------------------- routing


def _allowed(route: _Route, cors: bool) -> list[str]:
    return sorted(route.methods | ({"OPTIONS"} if cors else set()))


async def _respond(hub: Hub | None, request: Request, receive: Receive) -> Response:
    route = _ROUTES.get(request.path)
    if route is None:
        if hub is not None and request.path == hub.config.server.path:
            return upgrade_required(request.path)
        return error_response(404, "not found", path=request.path)
    cors = hub is not None and hub.config.server.cors_origin is not None
    preflight = cors and request.path.startswith("/api/")
    if request.method == "OPTIONS" and preflight:
        return Response(
            204,
            content_type=None,
            headers=(
                ("access-control-allow-methods", ", ".join(_allowed(route, True))),
                ("access-control-allow-headers", "Authorization, Content-Type"),
                ("access-control-max-age", "600"),
            ),
        )
    if request.method not in route.methods:
        allowed = _allowed(route, preflight)
        return error_response(
            405,
            f"method {request.method} not allowed on {request.path}",
            ("allow", ", ".join(allowed)),
            allowed=allowed,
        )
    if hub is None:
        return error_response(503, "the hub is not running", status="not_running")
    if route.monitoring:
        refusal = monitoring_refusal(hub, request)
        if refusal is not None:
            return refusal
    return await route.handler(hub, request, receive)


async def handle_http(hub: Hub | None, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one ASGI ``http`` request; ``hub`` is None while the hub is not running."""
    request = Request.from_scope(scope)
    try:
        response = await _respond(hub, request, receive)
    except _ClientGone:
        return
    headers: list[tuple[bytes, bytes]] = []
    if response.status != 204:  # a 204 carries no body and no Content-Length
        headers.append((b"content-length", str(len(response.body)).encode()))
    if response.content_type is not None:
        headers.append((b"content-type", response.content_type.encode()))
        headers.append((b"cache-control", b"no-store"))
    cors_origin = hub.config.server.cors_origin if hub is not None else None
    if cors_origin is not None:
        headers.append((b"access-control-allow-origin", cors_origin.encode()))
    headers.extend((name.encode(), value.encode("latin-1")) for name, value in response.headers)
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    body = b"" if request.method == "HEAD" else response.body
    await send({"type": "http.response.body", "body": body})
