"""Command-line helpers: follow streams as JSON lines, publish over the HTTP API.

``tail`` is the Trio client with a printer: it resumes through drops like any client, so its
output holds every retained message once, in order per stream, with gaps printed where messages
were lost. ``publish_http`` is one ``POST /api/publish`` through httpx.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

import orjson

from wshub.client.client import Gap, open_client
from wshub.client.resume import ANY_EPOCH, Position

__all__ = ["PublishHTTPError", "event_json", "publish_http", "tail"]


class PublishHTTPError(Exception):
    """A publish over HTTP failed: ``status`` is the HTTP status, None when unreachable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def event_json(event: Any) -> dict[str, Any]:
    """The JSON object ``tail`` prints for a client event (a Message or a Gap)."""
    if isinstance(event, Gap):
        return {
            "type": "gap",
            "stream": event.stream,
            "missing_from": event.missing_from,
            "missing_to": event.missing_to,
            "epoch_changed": event.epoch_changed,
            "old_epoch": event.old_epoch,
            "new_epoch": event.new_epoch,
        }
    return {
        "type": "message",
        "stream": event.stream,
        "offset": event.offset,
        "epoch": event.epoch,
        "id": event.id,
        "ts": event.ts,
        "data": event.data,
    }


async def tail(
    url: str,
    client_id: str,
    streams: Iterable[str],
    *,
    from_offset: int | None = None,
    out: TextIO = sys.stdout,
    **client_options: Any,
) -> None:
    """Print the messages of ``streams`` (and the personal stream) as JSON lines, until cancelled.

    Without ``from_offset`` it starts with the next message published; with it, after that
    offset of each stream's current epoch (0 for everything the hub still holds; a gap line
    says when some of it is gone). Gaps print as ``{"type": "gap", ...}``. Resumes through
    drops; raises what ``open_client`` raises (ClientRejected, ConnectFailed, ValueError).
    ``client_options`` go to ``open_client``.
    """
    if from_offset is not None and from_offset < 0:
        raise ValueError(f"from_offset must be >= 0, got {from_offset}")
    start: Position | None = None
    if from_offset == 0:
        start = Position(0, None)  # the protocol's "everything history still holds"
    elif from_offset is not None:
        start = Position(from_offset, ANY_EPOCH)
    subscribe = dict.fromkeys(streams, start)
    async with open_client(url, client_id, subscribe=subscribe, **client_options) as client:
        async for event in client:
            out.write(orjson.dumps(event_json(event)).decode() + "\n")
            out.flush()


async def publish_http(
    base_url: str,
    stream: str,
    data: Any,
    *,
    id: str | None = None,
    api_key: str | None = None,
    timeout: float = 10.0,
    transport: Any = None,
) -> dict[str, Any]:
    """``POST {base_url}/api/publish`` and return the answer (stream, offset, id, duplicate).

    Raises PublishHTTPError when the hub is unreachable (``status`` None) or answers with a
    status other than 2xx (the message holds the hub's reason). ``transport`` is an httpx
    transport for tests.
    """
    import httpx  # imported here: only the command line needs it

    body: dict[str, Any] = {"stream": stream, "data": data}
    if id is not None:
        body["id"] = id
    headers = {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}
    endpoint = base_url.rstrip("/") + "/api/publish"
    try:
        async with httpx.AsyncClient(timeout=timeout, transport=transport) as http:
            response = await http.post(endpoint, json=body, headers=headers)
    except httpx.HTTPError as error:
        raise PublishHTTPError(f"cannot reach the hub at {endpoint}: {error!r}") from error
    if not response.is_success:
        try:
            detail = response.json()
            reason = detail.get("message") or detail.get("error") or response.text
        except (ValueError, AttributeError):
            reason = response.text
        raise PublishHTTPError(
            f"{endpoint} answered {response.status_code}: {reason}".strip(), response.status_code
        )
    try:
        answer = response.json()
    except ValueError:
        raise PublishHTTPError(
            f"{endpoint} answered with invalid JSON", response.status_code
        ) from None
    if not isinstance(answer, dict):
        raise PublishHTTPError(f"{endpoint} answered {answer!r}, not an object")
    return answer
