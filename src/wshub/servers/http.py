"""HTTP/1.1 on the fast server's sockets: h11 parses, the ASGI endpoint code answers.

Theory of operation:
- ``HTTPConnection`` wraps one TCP stream and one ``h11.Connection``; ``next_event`` reads
  only when h11 needs data, so nothing is parsed by hand and nothing is read ahead of need.
- A plain request is answered by ``servers/endpoints.handle_http`` (the same code hypercorn
  serves) through a small ASGI bridge: ``receive`` turns h11 body events into
  ``http.request`` messages, ``send`` turns ``http.response.*`` messages into h11 events.
- After the answer the connection is kept for the next request only when both sides are
  done; an unread body is read and dropped first, bounded by ``DISCARD_BODY_BYTES``.
- Every wait for the client is bounded: ``HEAD_SECONDS`` for a request's head (and for the
  next one on a kept-alive connection); a body that stalls that long ends the connection.
"""

from __future__ import annotations

import h11
import trio

from wshub.hub.hub import Hub
from wshub.servers.endpoints import handle_http
from wshub.servers.http_messages import Message, Response, error_response

__all__ = ["DISCARD_BODY_BYTES", "HEAD_SECONDS", "ClientGone", "HTTPConnection"]

#: Seconds a client has to send a request's head, or to send more of its body.
HEAD_SECONDS = 10.0
#: At most this many bytes of an unread request body are dropped to keep the connection.
DISCARD_BODY_BYTES = 1024 * 1024
#: The longest request head (request line and headers) accepted.
MAX_HEAD_BYTES = 16 * 1024
_READ_SIZE = 65536


class ClientGone(Exception):
    """The client closed, broke the connection, or sent something h11 cannot parse."""


class HTTPConnection:
    """One client's HTTP/1.1 connection, until it is upgraded or closed."""

    def __init__(self, stream: trio.SocketStream, client: tuple[str, int] | None) -> None:
        self.stream = stream
        self.client = client
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        """The next h11 event, reading (bounded in time) when h11 needs more data.

        Raises ClientGone when the connection breaks, stalls or cannot be parsed.
        """
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as error:
                await self._answer_bad_request(error)
                raise ClientGone(str(error)) from None
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.ConnectionClosed):
                    raise ClientGone("the client closed the connection")
                return event  # type: ignore[return-value]
            with trio.move_on_after(HEAD_SECONDS) as waiting:
                try:
                    data = await self.stream.receive_some(_READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                    raise ClientGone(str(error)) from None
            if waiting.cancelled_caught:
                raise ClientGone("the client sent nothing in time")
            try:
                self.h11.receive_data(data)
            except RuntimeError as error:  # data after the client's own close
                raise ClientGone(str(error)) from None

    async def _answer_bad_request(self, error: h11.RemoteProtocolError) -> None:
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            status = error.error_status_hint
            await self.send_response(error_response(status, f"bad HTTP request: {error}"))

    async def _write(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                raise ClientGone(str(error)) from None

    async def send_response(self, response: Response) -> None:
        """Send a whole answer (a JSON error, mostly) and end the message."""
        headers = [
            (b"content-length", str(len(response.body)).encode()),
            (b"content-type", (response.content_type or "application/octet-stream").encode()),
        ]
        headers.extend((name.encode(), value.encode("latin-1")) for name, value in response.headers)
        await self._write(h11.Response(status_code=response.status, headers=headers))
        if response.body:
            await self._write(h11.Data(data=response.body))
        await self._write(h11.EndOfMessage())

    async def serve_endpoint(self, hub: Hub, request: h11.Request) -> None:
        """Answer ``request`` with the endpoint code, through an ASGI bridge."""
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        scope: Message = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": request.http_version.decode(),
            "method": request.method.decode("latin-1"),
            "scheme": "http",
            "path": path,
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": [(name, value) for name, value in request.headers],
            "client": self.client,
        }
        body_done = False

        async def receive() -> Message:
            nonlocal body_done
            if body_done:
                return {"type": "http.disconnect"}
            try:
                event = await self.next_event()
            except ClientGone:
                body_done = True
                return {"type": "http.disconnect"}
            if isinstance(event, h11.Data):
                return {"type": "http.request", "body": bytes(event.data), "more_body": True}
            body_done = True  # EndOfMessage (PAUSED cannot come before it)
            return {"type": "http.request", "body": b"", "more_body": False}

        status: list[int] = []
        headers: list[tuple[bytes, bytes]] = []

        async def send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                status.append(int(message["status"]))
                headers.extend(message.get("headers", ()))
            elif kind == "http.response.body":
                if self.h11.our_state is h11.SEND_RESPONSE:
                    await self._write(h11.Response(status_code=status[0], headers=headers))
                body = message.get("body", b"")
                if body:
                    await self._write(h11.Data(data=body))
                if not message.get("more_body", False):
                    await self._write(h11.EndOfMessage())

        await handle_http(hub, scope, receive, send)

    async def ready_for_next(self) -> bool:
        """After an answer: drop what is left of the request body (bounded), and say whether
        the connection can serve another request."""
        if self.h11.our_state is not h11.DONE:
            return False
        dropped = 0
        try:
            while self.h11.their_state is h11.SEND_BODY and dropped <= DISCARD_BODY_BYTES:
                event = await self.next_event()
                if isinstance(event, h11.Data):
                    dropped += len(event.data)
        except ClientGone:
            return False
        if self.h11.their_state is not h11.DONE:
            return False
        self.h11.start_next_cycle()
        return True
