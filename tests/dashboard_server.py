"""A hub for the dashboard test whose ``authenticate`` hook fails on demand.

Run as ``python tests/dashboard_server.py``: it serves ``wshub.asgi.create_app(config,
authenticate=...)`` with hypercorn's trio worker through ``wshub.cli_serve.serve`` (so it logs
the same "wshub listening on ..." line as ``wshub serve``), configured from the ``WSHUB_*``
variables like ``wshub serve --preset development``.

The hook stands for an auth service: a hello whose token is ``UNREACHABLE_TOKEN`` makes it raise
as a dead dependency would, which counts as a failure for the ``authenticate`` circuit breaker,
so a test trips the breaker from outside the process just by connecting. The admin key (as the
token) grants the admin right, as the hub itself does without a hook; any other hello is an
ordinary client.
"""

from __future__ import annotations

import logging
import sys

import trio

from wshub.cli_serve import build_serve_config, hypercorn_config, serve
from wshub.core.protocol import Hello
from wshub.hub.hooks import Identity
from wshub.hub.transport import RequestInfo
from wshub.servers.asgi import create_app

UNREACHABLE_TOKEN = "auth-service-down"


def main() -> int:
    config = build_serve_config(preset="development", host="127.0.0.1", port=0)
    api_key = config.admin.api_key

    async def authenticate(hello: Hello, request: RequestInfo) -> Identity:
        await trio.lowlevel.checkpoint()
        if hello.token == UNREACHABLE_TOKEN:
            raise ConnectionError("the auth service is unreachable")
        if api_key is not None and hello.token == api_key:
            return Identity(hello.client_id, admin=True, can_publish=True)
        return Identity(hello.client_id)

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(config, authenticate=authenticate)
    trio.run(serve, app, hypercorn_config(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
