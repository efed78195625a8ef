"""A client's publishes: the message id, the frame, and sending it until the hub answers.

Theory of operation:
- A publish without an id is sent without one (``content_ids``, the default), as the
  JavaScript client sends it: the hub applies its own rule, the one ``hub.publish`` and HTTP
  follow. With the hub's ``dedup.content_ids`` on (its default) the message id is the content
  id, so identical data published twice within ``dedup.window`` is one message, and a resent
  frame is recognised by its content; with it off, two identical publishes are two messages
  there too. ``content_ids=False`` draws a random id per call instead, so that resends are
  recognised on a hub whose content ids are off.
- Each publish takes a fresh ``ref`` and waits in ``ClientState.publishes`` under it; the
  connection's reader hands it the ``published`` or ``error`` answer with that ``ref`` and
  wakes it, as it does when the session is lost.
- The frame is sent by the calling task on the current connection, and sent again, with the
  same id and ``ref``, on every new connection and after ``request_timeout`` without an
  answer, so the hub stores it once. An ``unavailable`` or ``rate_limited`` answer is retried
  after a full-jitter backoff; any other refusal ends the publish with ``PublishError``.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import attrs
import trio

from wshub.client.state import ClientState, PendingPublish, PublishError
from wshub.core import protocol
from wshub.core.backoff import Backoff
from wshub.core.events import PublishResult

__all__ = ["Publisher"]

#: The refusals a publish is sent again after: the hub may accept it a moment later.
_RETRIED = ("unavailable", "rate_limited")


@attrs.define(eq=False)
class Publisher:
    """Sends one client's publishes until each is answered; ``Client.publish`` calls it."""

    state: ClientState
    retry_backoff: Backoff
    request_timeout: float
    max_message_bytes: int
    content_ids: bool = True

    async def publish(self, stream: str, data: Any, *, id: str | None = None) -> PublishResult:
        """Publish ``data`` to topic ``stream`` and return the hub's answer.

        Raises as ``Client.publish`` documents: ValueError for an invalid stream or data,
        PublishError when refused (``too_large`` without sending), and the client's error if it
        fails for good meanwhile.
        """
        if protocol.stream_kind(stream) != "topic":
            raise ValueError(f"clients can publish to topics only, not {stream!r}")
        state = self.state
        ref = next(state.refs)
        try:
            # Without an id the hub gives the content id, by its own ``dedup.content_ids``.
            message_id = id if id is not None or self.content_ids else uuid.uuid4().hex
            frame = protocol.encode_publish(stream, data, id=message_id, ref=ref)
        except TypeError as error:
            raise ValueError(f"data is not JSON-serialisable: {error}") from None
        if len(frame.encode()) > self.max_message_bytes:
            raise PublishError(stream, "too_large", f"frame exceeds {self.max_message_bytes} B")
        pending = state.publishes[ref] = PendingPublish()
        try:
            for sends in itertools.count():
                pending.wake = trio.Event()
                session = await state.wait_for_session()
                state.counts["publish_retries"] += sends > 0
                await session.send(frame)
                with trio.move_on_after(self.request_timeout):
                    await pending.wake.wait()
                answer, pending.answer = pending.answer, None
                if isinstance(answer, protocol.Published):
                    state.counts["published"] += 1
                    return PublishResult(answer.stream, answer.offset, answer.id, answer.duplicate)
                if answer is not None:
                    if answer.code not in _RETRIED:
                        raise PublishError(stream, answer.code, answer.message)
                    await trio.sleep(self.retry_backoff.delay(min(sends, 10)))
            raise AssertionError("unreachable")
        finally:
            del state.publishes[ref]
