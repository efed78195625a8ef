"""The hub: streams, subscriptions, connections, the flush tick, reports and hooks.

This is the server side of wshub without any server library: it serves clients through the
small ``Transport`` interface (``hub/transport.py``), which the servers adapt their WebSockets
to. It may import ``wshub.core`` and ``wshub.brokers``, never the servers or the client.
"""
