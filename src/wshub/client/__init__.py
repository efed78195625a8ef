"""The resilient Trio client and its sans-IO state.

Connect, subscribe, resume without loss, publish idempotently (``open_client``). The client may
import only ``wshub.core``: never the hub or the servers, so it runs where no hub is installed
in spirit, and the two sides meet only on the wire protocol.
"""

from __future__ import annotations

from wshub.client.client import (
    Client,
    ClientError,
    ClientEvent,
    ClientRejected,
    ClientStatistics,
    ClientTransport,
    ConnectFailed,
    Connector,
    Gap,
    Message,
    PublishError,
    SubscribeError,
    open_client,
)
from wshub.client.resume import MemoryPositionStore, PositionStore
from wshub.core.protocol import Position

__all__ = [
    "Client",
    "ClientError",
    "ClientEvent",
    "ClientRejected",
    "ClientStatistics",
    "ClientTransport",
    "ConnectFailed",
    "Connector",
    "Gap",
    "MemoryPositionStore",
    "Message",
    "Position",
    "PositionStore",
    "PublishError",
    "SubscribeError",
    "open_client",
]
