"""Who sent an HTTP request: the admin key, a verified token, or the 401 / 403 to answer.

The credential rules: ``POST /api/publish`` needs a Bearer credential: ``admin.api_key``
(publishing in the server API's de-duplication scope) or, with ``[auth]``, a JWT whose rights
allow that topic (publishing in its ``sub``'s scope, as that client's WebSocket publishes do);
it answers 503 while neither is configured. With ``admin.protect_monitoring`` the monitoring
endpoints (``/metrics``, ``/api/stats``) need the key or a token with the admin right, as a
Bearer header or an ``api_key`` query parameter. ``/dashboard`` is a page without figures,
served to anyone: its login form sends the credential with every request for them. A
credential that is neither the key nor a valid token is 401 (the reason names the failed
check, never the key); a valid token without the right is 403. The health endpoints stay open.
"""

from __future__ import annotations

from typing import Final, TypeAlias

import attrs

from wshub.hub.access import is_admin_key, monitoring_is_open
from wshub.hub.auth import Credential, TokenRejected
from wshub.hub.hub import Hub
from wshub.servers.http_messages import Request, Response, error_response

__all__ = ["AdminKey", "Caller", "monitoring_refusal", "request_caller"]


def _bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


_CHALLENGE: Final = ("www-authenticate", 'Bearer realm="wshub"')


@attrs.frozen
class AdminKey:
    """The credential was ``admin.api_key``."""


#: Who sent a request: the operator's key, or a client's verified token.
Caller: TypeAlias = AdminKey | Credential


def request_caller(hub: Hub, request: Request, *, allow_query: bool) -> Caller | Response:
    """Who sent ``request``: the admin key, a verified token, or the 401/403 to answer.

    The credential is the Bearer ``Authorization`` header or, with ``allow_query``, the
    ``api_key`` query parameter.
    """
    given = _bearer(request.header("authorization"))
    if given is None and allow_query:
        given = request.param("api_key")
    tokens = hub.tokens
    if given is None:
        where = "admin.api_key" + (" or a token" if tokens is not None else "")
        how = f"Authorization: Bearer <{where}>"
        return error_response(401, f"missing credential: send {how}", _CHALLENGE)
    if is_admin_key(hub.config, given):
        return AdminKey()
    if tokens is None:
        return error_response(403, "invalid API key")
    try:
        return tokens.verify(given)
    except TokenRejected as rejected:
        return error_response(
            401,
            f"invalid credential: {rejected.reason}",
            ("www-authenticate", 'Bearer realm="wshub", error="invalid_token"'),
        )


def monitoring_refusal(hub: Hub, request: Request) -> Response | None:
    """None when ``request`` may read the monitoring figures, else the answer."""
    if monitoring_is_open(hub.config):
        return None
    caller = request_caller(hub, request, allow_query=True)
    if isinstance(caller, Response):
        return caller
    if isinstance(caller, Credential) and not caller.admin:
        return error_response(403, "this token has no admin right")
    return None
