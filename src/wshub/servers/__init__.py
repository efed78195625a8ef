"""The servers: where sockets meet the hub.

The embedded trio-websocket server, the ASGI app for hypercorn, the HTTP endpoints, their
transport adapters, and what ``wshub serve`` runs (its arguments and logging are the top-level
``cli_serve.py``). They may import ``wshub.hub``, ``wshub.core`` and ``wshub.brokers`` (the
interface's ``BrokerUnavailable``); nothing below them imports them.
"""
