"""A client's ``publish``: rights, the ``on_publish`` hook, de-duplication, the answer frame.

Theory of operation: the message id is settled first (the client's, else the content id),
so an identical publish that arrives while one is waiting on the ``on_publish`` hook waits
for it (``_pending``) and is answered as its duplicate, never stored twice. With a hook, a
repeat is answered from the broker's de-duplication before the hook runs again, and the same
id with other content is a conflict. Every outcome is an answer frame (``published`` or an
``error`` with PROTOCOL.md's code); nothing here raises for a client's input.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from wshub.brokers.base import Broker, BrokerUnavailable, publish_key
from wshub.core.breaker_registry import BreakerRegistry
from wshub.core.config import HubConfig
from wshub.core.dedup import IdConflict
from wshub.core.events import PublishResult
from wshub.core.history import HistoryFull
from wshub.core.logcontext import log_context
from wshub.core.metrics import HubMetrics
from wshub.core.protocol import Publish, encode_error, encode_published
from wshub.hub.access import publish_refusal
from wshub.hub.connection import Connection
from wshub.hub.hooks import HookUnavailable, OnPublishHook, PublishRejected, call_guarded

__all__ = ["ClientPublishing"]


class ClientPublishing:
    """Serves clients' ``publish`` frames for one hub."""

    def __init__(
        self,
        config: HubConfig,
        *,
        broker: Broker,
        breakers: BreakerRegistry,
        metrics: HubMetrics,
        on_publish: OnPublishHook | None,
        count: Callable[[PublishResult], None],
    ) -> None:
        self.config = config
        self.broker = broker
        self.breakers = breakers
        self.metrics = metrics
        self.on_publish = on_publish
        self.count = count  # the hub's published / deduplicated counters
        self._pending: dict[tuple[str, str, str], trio.Event] = {}

    async def publish(self, connection: Connection, event: Publish) -> str:
        """Publish for a client; returns the frame to answer with (published or error)."""
        identity = connection.identity
        assert identity is not None and connection.client_id is not None
        refusal = publish_refusal(identity, event.stream, self.config)
        if refusal is not None:
            return encode_error("forbidden", refusal, event.ref)
        client_id = connection.client_id
        broker = self.broker
        try:
            key = publish_key(event.stream, event.data, event.id, content_ids=broker.content_ids)
        except ValueError as error:
            return encode_error("bad_request", f"publish.data cannot be hashed: {error}", event.ref)
        pending_key = (event.stream, client_id, key.id)
        while (pending := self._pending.get(pending_key)) is not None:
            await pending.wait()  # an identical publish is being stored: share its answer
        data = event.data
        try:
            if self.on_publish is not None:
                # A repeat is answered before the hook runs again; a conflict is refused.
                duplicate = await broker.find_duplicate(event.stream, publisher=client_id, key=key)
                if duplicate is not None:
                    self.count(duplicate)
                    return encode_published(event.ref, event.stream, duplicate.offset, key.id, True)
                done = self._pending[pending_key] = trio.Event()
                try:
                    with log_context(stream=event.stream):  # the hook's own records say which
                        data = await call_guarded(
                            "on_publish",
                            self.on_publish,
                            client_id,
                            event.stream,
                            data,
                            breakers=self.breakers,
                            config=self.config.breaker,
                            metrics=self.metrics,
                        )
                finally:
                    del self._pending[pending_key]
                    done.set()
            result = await broker.publish(
                event.stream, data, publisher=client_id, id=event.id, key=key
            )
        except PublishRejected as error:
            return encode_error("forbidden", str(error) or "publish rejected", event.ref)
        except HookUnavailable:
            return encode_error("unavailable", "publishing is unavailable; retry later", event.ref)
        except IdConflict as error:
            return encode_error("conflict", str(error), event.ref)
        except (BrokerUnavailable, HistoryFull) as error:
            return encode_error("unavailable", str(error), event.ref)
        except ValueError as error:
            return encode_error("bad_request", str(error), event.ref)
        self.count(result)
        return encode_published(event.ref, event.stream, result.offset, result.id, result.duplicate)
