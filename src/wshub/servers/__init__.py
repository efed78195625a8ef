"""The servers: where sockets meet the hub.

The embedded trio-websocket server, the ASGI app for hypercorn, the HTTP endpoints, their
transport adapters, and ``wshub serve``. They may import ``wshub.hub`` and ``wshub.core``;
the hub never imports them.
"""
