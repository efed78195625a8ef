"""Who may come in, who they are, and which streams they may read and write.

The hub asks these questions at three points: a hello (``authenticate``), a subscription
(``subscribe_refusal``) and a client's publish (``publish_refusal``). Answers are decisions
only; the hub turns a refusal into the protocol's close code or ``forbidden`` error. Personal
streams belong to their client alone, ``$sys.metrics`` needs the admin right, and clients
publish only to topics, when their identity or ``server.client_publish`` allows.
"""

from __future__ import annotations

from wshub.core.breaker import BreakerRegistry
from wshub.core.config import HubConfig
from wshub.core.metrics import HubMetrics
from wshub.core.protocol import Hello, personal_stream, stream_kind
from wshub.hub.hooks import AuthenticateHook, AuthenticationError, Identity, call_guarded
from wshub.hub.transport import RequestInfo

__all__ = ["SYS_METRICS", "authenticate", "publish_refusal", "subscribe_refusal"]

SYS_METRICS = "$sys.metrics"


async def authenticate(
    hello: Hello,
    request: RequestInfo,
    *,
    hook: AuthenticateHook | None,
    config: HubConfig,
    breakers: BreakerRegistry,
    metrics: HubMetrics,
) -> Identity:
    """Decide who a hello is: the application's hook, else the admin key, else anonymous.

    Raises AuthenticationError (close 1008) or HookUnavailable (close 1013).
    """
    if hook is not None:
        identity = await call_guarded(
            "authenticate",
            hook,
            hello,
            request,
            breakers=breakers,
            config=config.breaker,
            metrics=metrics,
        )
        if identity.client_id != hello.client_id:
            raise AuthenticationError(f"client id {hello.client_id!r} not allowed")
        return identity
    admin = config.admin
    if admin.api_key is not None and hello.token == admin.api_key:
        return Identity(hello.client_id, admin=True, can_publish=True)
    if not config.server.allow_anonymous:
        raise AuthenticationError("anonymous clients are not allowed")
    open_monitoring = admin.api_key is None or not admin.protect_monitoring
    return Identity(hello.client_id, admin=open_monitoring)


def subscribe_refusal(identity: Identity, stream: str) -> str | None:
    """Why ``identity`` may not subscribe to ``stream``, or None when it may."""
    kind = stream_kind(stream)
    if kind == "personal" and stream != personal_stream(identity.client_id):
        return f"{stream!r} is another client's personal stream"
    if kind == "system":
        if stream != SYS_METRICS:
            return f"unknown system stream {stream!r}"
        if not identity.admin:
            return f"{stream!r} needs the admin right"
    if kind is None:
        return f"invalid stream name {stream!r}"
    return None


def publish_refusal(identity: Identity, stream: str, config: HubConfig) -> str | None:
    """Why ``identity`` may not publish to ``stream``, or None when it may."""
    if stream_kind(stream) != "topic":
        return f"clients cannot publish to {stream!r}"
    allowed = identity.can_publish
    if allowed is None:
        allowed = config.server.client_publish
    if not allowed:
        return "this client may not publish"
    return None
