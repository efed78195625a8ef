"""Brokers: where offsets, epochs, history and de-duplication live.

A broker owns what several nodes of one service must share. ``MemoryBroker`` keeps it in this
process (the default, with a synchronous fast path from de-duplication to fan-out);
``RedisBroker`` keeps it in Redis, so nodes and workers on one Redis are one service (the
``redis`` extra installs coredis, imported only then). Brokers may import only ``wshub.core``;
the hub reaches them through the ``Broker`` interface in ``base.py``.
"""
