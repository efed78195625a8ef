"""Application hooks and the guard around them.

Hooks usually call other services (an auth server, a database), so each runs under its own
named circuit breaker from the hub's registry, with a per-call timeout and retries with
exponential backoff for transient errors. A hook that *answers* "no" (AuthenticationError,
PublishRejected) is a healthy dependency: that answer passes straight through and counts as a
success for the breaker. Anything else (an exception, a timeout) is a failure, retried while
retries remain; once they are spent, or while the breaker is open, the caller gets
HookUnavailable and answers the client with 1013 or an ``unavailable`` error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import trio

from wshub.core.breaker import CircuitOpenError
from wshub.core.breaker_registry import BreakerRegistry
from wshub.core.metrics import HubMetrics
from wshub.core.protocol import Hello
from wshub.core.sections import BreakerConfig
from wshub.hub.auth import Rights
from wshub.hub.transport import RequestInfo

__all__ = [
    "AuthenticateHook",
    "AuthenticationError",
    "HookUnavailable",
    "Identity",
    "OnPublishHook",
    "PublishRejected",
    "call_guarded",
]

T = TypeVar("T")


@attrs.frozen
class Identity:
    """Who a connection is, as decided by a token, the ``authenticate`` hook or the config.

    ``admin`` grants the ``$sys.metrics`` stream. ``rights`` None means any topic may be
    subscribed to and publishing is as ``can_publish`` says (None: as
    ``server.client_publish`` says); with ``rights`` only the topics its patterns match may be
    subscribed to or published to (``can_publish`` is not consulted), as for a JWT's ``wshub``
    claim. The personal stream ``@<client_id>`` is always allowed. ``deadline`` (trio time)
    is when the credential expires: the hub then closes the connection with 4005. A JWT's
    deadline moves with each ``refresh``; a hook's is final (refresh tokens are verified by
    ``[auth]``, which a hook excludes), so its client reconnects with a fresh credential.
    """

    client_id: str
    admin: bool = False
    can_publish: bool | None = None
    rights: Rights | None = None
    deadline: float | None = None


class AuthenticationError(Exception):
    """Raised by an ``authenticate`` hook to refuse a client: the hub closes with 1008."""


class PublishRejected(Exception):
    """Raised by an ``on_publish`` hook to refuse a message: the client gets ``forbidden``."""


class HookUnavailable(Exception):
    """A hook's dependency is down: its breaker is open or its retries are spent."""

    def __init__(self, hook: str, retry_after: float | None = None) -> None:
        super().__init__(f"{hook} is unavailable")
        self.hook = hook
        self.retry_after = retry_after


AuthenticateHook = Callable[[Hello, RequestInfo], Awaitable[Identity]]
OnPublishHook = Callable[[str, str, Any], Awaitable[Any]]

_ANSWERS = (AuthenticationError, PublishRejected)


async def call_guarded(
    name: str,
    function: Callable[..., Awaitable[T]],
    *args: Any,
    breakers: BreakerRegistry,
    config: BreakerConfig,
    metrics: HubMetrics,
) -> T:
    """Await ``function(*args)`` under breaker ``name`` with timeout and retries.

    Raises the hook's own AuthenticationError / PublishRejected unchanged, and
    HookUnavailable when the breaker is open or every attempt failed.
    """
    breaker = breakers.get(name)
    attempt = 0
    while True:
        answer: BaseException | None = None
        try:
            async with breaker:
                with trio.fail_after(config.call_timeout):
                    try:
                        result = await function(*args)
                    except _ANSWERS as error:
                        answer = error  # a "no" is a healthy answer for the breaker
        except CircuitOpenError as error:
            raise HookUnavailable(name, error.retry_after) from error
        except Exception as error:  # the dependency failed or timed out
            if attempt >= config.retries:
                if attempt:
                    metrics.record_retry("exhausted")
                raise HookUnavailable(name) from error
            attempt += 1
            metrics.record_retry("retry")
            await trio.sleep(config.retry_backoff * 2 ** (attempt - 1))
            continue
        if attempt:
            metrics.record_retry("recovered")
        if answer is not None:
            raise answer
        return result
