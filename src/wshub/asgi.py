"""The ASGI app for hypercorn: ``hypercorn --worker-class trio wshub.asgi:app``.

A stable public path; the code lives in ``wshub.servers.asgi``.
"""

from __future__ import annotations

from wshub.servers.asgi import ASGITransport, HubApp, app, create_app

__all__ = ["ASGITransport", "HubApp", "app", "create_app"]
