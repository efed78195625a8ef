"""Brokers: where offsets, epochs, history and de-duplication live.

A broker owns what several nodes of one service must share. ``MemoryBroker`` keeps it in this
process (the default, with a synchronous fast path from de-duplication to fan-out). Brokers may
import only ``wshub.core``; the hub reaches them through the broker interface.
"""
