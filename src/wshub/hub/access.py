"""Who may come in, who they are, and which streams they may read and write.

The hub asks these questions at three points: a hello (``authenticate``), a subscription
(``subscribe_refusal``) and a client's publish (``publish_refusal``). Answers are decisions
only; the hub turns a refusal into the protocol's close code or ``forbidden`` error. Personal
streams belong to their client alone, ``$sys.metrics`` needs the admin right, and clients
publish only to topics. An identity with ``rights`` (a JWT's ``wshub`` claim, or a hook's
answer) reaches only the topics its patterns match; one without reaches every topic, and
publishes when its identity or ``server.client_publish`` allows.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from wshub.core.breaker_registry import BreakerRegistry
from wshub.core.config import HubConfig
from wshub.core.metrics import HubMetrics
from wshub.core.protocol import (
    CloseCode,
    Hello,
    encode_error,
    encode_refreshed,
    encode_unsubscribed,
    personal_stream,
    stream_kind,
)
from wshub.hub.auth import Credential, TokenRejected, TokenVerifier
from wshub.hub.connection import Connection
from wshub.hub.hooks import AuthenticateHook, AuthenticationError, Identity, call_guarded
from wshub.hub.transport import RequestInfo

__all__ = [
    "SYS_METRICS",
    "authenticate",
    "identity_of",
    "is_admin_key",
    "monitoring_is_open",
    "publish_refusal",
    "refresh_credential",
    "subscribe_refusal",
    "verify_for",
]

SYS_METRICS = "$sys.metrics"

# Characters of a client id echoed in a close reason: a close frame carries at most 123 bytes
# of reason, and "refresh refused: client id '...' is not the token's subject ('sub')" must
# still say which check failed with the longest client id (128 characters).
_MAX_ID_ECHO = 48


async def authenticate(
    hello: Hello,
    request: RequestInfo,
    *,
    hook: AuthenticateHook | None,
    tokens: TokenVerifier | None,
    config: HubConfig,
    breakers: BreakerRegistry,
    metrics: HubMetrics,
) -> Identity:
    """Decide who a hello is: the application's hook; else the admin key, else a JWT (with
    ``[auth]``), else an anonymous client when ``server.allow_anonymous`` allows.

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
    if hello.token is not None and is_admin_key(config, hello.token):
        return Identity(hello.client_id, admin=True, can_publish=True)
    if tokens is not None and hello.token is not None:
        return identity_of(verify_for(tokens, hello.token, hello.client_id))
    if not config.server.allow_anonymous:
        raise AuthenticationError("anonymous clients are not allowed")
    return Identity(hello.client_id, admin=monitoring_is_open(config))


def is_admin_key(config: HubConfig, given: str) -> bool:
    """Whether ``given`` is ``admin.api_key`` (compared in constant time)."""
    key = config.admin.api_key
    return key is not None and hmac.compare_digest(given.encode(), key.encode())


def monitoring_is_open(config: HubConfig) -> bool:
    """Whether the monitoring surface (``$sys.metrics``, ``/metrics``, ``/api/stats``) is open
    to anyone: ``admin.protect_monitoring`` is off, or there is neither an admin key nor
    ``[auth]`` to protect it with."""
    admin = config.admin
    return not admin.protect_monitoring or (admin.api_key is None and not config.auth.enabled)


def verify_for(tokens: TokenVerifier, token: str, client_id: str) -> Credential:
    """The credential in ``token``, which must be ``client_id``'s (its ``sub``).

    Raises AuthenticationError saying which check failed (close 1008).
    """
    try:
        credential = tokens.verify(token)
    except TokenRejected as rejected:
        raise AuthenticationError(rejected.reason) from None
    if credential.subject != client_id:
        shown = client_id if len(client_id) <= _MAX_ID_ECHO else client_id[:_MAX_ID_ECHO] + "..."
        raise AuthenticationError(f"client id {shown!r} is not the token's subject ('sub')")
    return credential


def identity_of(credential: Credential) -> Identity:
    """The identity a verified token gives: its rights, its admin flag, its deadline."""
    return Identity(
        credential.subject,
        admin=credential.admin,
        rights=credential.rights,
        deadline=credential.deadline,
    )


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
    rights = identity.rights
    if kind == "topic" and rights is not None and not rights.may_subscribe(stream):
        return f"{stream!r} is not among this client's subscribe rights"
    return None


def publish_refusal(identity: Identity, stream: str, config: HubConfig) -> str | None:
    """Why ``identity`` may not publish to ``stream``, or None when it may."""
    if stream_kind(stream) != "topic":
        return f"clients cannot publish to {stream!r}"
    if identity.rights is not None:
        if identity.rights.may_publish(stream):
            return None
        return f"{stream!r} is not among this client's publish rights"
    allowed = identity.can_publish
    if allowed is None:
        allowed = config.server.client_publish
    if not allowed:
        return "this client may not publish"
    return None


def refresh_credential(
    connection: Connection,
    token: str,
    tokens: TokenVerifier | None,
    *,
    leave: Callable[[Connection, str], object],
) -> None:
    """Answer a ``refresh``: ``refreshed`` with the new expiry, an error, or close 1008.

    The new token must verify and carry the connection's client id; its rights replace the
    old ones, and streams they no longer allow are left (``leave``; ``unsubscribed`` names
    each).
    """
    identity = connection.identity
    assert identity is not None
    if identity.deadline is None:
        connection.enqueue(
            encode_error("bad_request", "this connection's credential has no expiry to refresh")
        )
        return
    if tokens is None:  # an authenticate hook's deadline: only [auth] verifies refresh tokens
        connection.enqueue(
            encode_error(
                "bad_request",
                "this connection's credential cannot be refreshed ([auth] is off); "
                "reconnect with a fresh one before it expires",
            )
        )
        return
    try:
        credential = verify_for(tokens, token, identity.client_id)
    except AuthenticationError as error:
        connection.abort(CloseCode.POLICY_VIOLATION, f"refresh refused: {error}")
        return
    renewed = identity_of(credential)
    connection.renew(renewed)
    for stream in sorted(connection.subscriptions):
        if subscribe_refusal(renewed, stream) is not None:
            leave(connection, stream)
            connection.enqueue(encode_unsubscribed(stream))
    connection.enqueue(encode_refreshed(credential.expires))
