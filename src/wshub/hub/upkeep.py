"""The hub's periodic work: the sweeper and the metrics flusher (``open_hub`` runs both).

Theory of operation:
- The sweeper (every ``cleanup.interval``) expires what is due, in this node's own memory
  broker and in the shared one: history past ``history.ttl``, de-duplication keys past
  ``dedup.window``, idle streams nobody subscribes to; and the figures of clients idle past
  ``metrics.client_ttl``.
- The flusher (every ``metrics.flush_interval``, and once more after the drain) takes one
  snapshot, ``hub.stats()``, and keeps at most ``metrics.history_points`` of them (the
  dashboard's series). It posts the snapshot on ``$sys.metrics`` in this node's own broker;
  a full stream table logs a warning and never fails the flush.
- A flush marks where each listed stream was (epoch, offset, time), so the next snapshot's
  rates count from this one, and where the overflow count was: ``overflowing`` is true from a
  queue overflow until the next flush.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import trio

from wshub.brokers.base import Broker
from wshub.brokers.memory import MemoryBroker
from wshub.core.config import HubConfig
from wshub.core.dedup import message_id
from wshub.core.history import HistoryFull
from wshub.core.metrics import HubMetrics
from wshub.hub.access import SYS_METRICS
from wshub.hub.reports import StatusLog

__all__ = ["Upkeep"]

logger = logging.getLogger("wshub.hub")  # the hub's logger: this is the hub's own work


class Upkeep:
    """The sweeper's and the metrics flusher's work, and what the flusher keeps."""

    def __init__(
        self,
        config: HubConfig,
        *,
        local: MemoryBroker,
        broker: Broker,
        metrics: HubMetrics,
        started_at: float,
    ) -> None:
        self.config = config
        self.local = local
        self.broker = broker
        self.metrics = metrics
        #: The flushed snapshots, oldest first (the dashboard's charts).
        self.series: deque[dict[str, Any]] = deque(maxlen=config.metrics.history_points)
        #: Per stream listed at the last flush: (epoch, offset, time); the rates of
        #: ``top_streams`` count from there (reports.stream_rows).
        self.stream_marks: dict[str, tuple[str, int, float]] = {}
        self.status_log = StatusLog(started_at)
        self._overflows_at_last_flush = 0

    def sweep(self) -> dict[str, int]:
        """Expire history, dedup keys, idle client stats and forgotten streams."""
        removed = self.local.sweep()
        if self.broker is not self.local:
            for kind, count in self.broker.sweep().items():
                removed[kind] = removed.get(kind, 0) + count
        removed["clients"] = self.metrics.expire_clients()
        self.metrics.expired += removed["history"]
        self.metrics.record_cleanup(removed)
        return removed

    def flushed(self, point: dict[str, Any]) -> dict[str, Any]:
        """Keep the snapshot ``point``: in the series, on ``$sys.metrics``, in the log."""
        now = trio.current_time()
        self.stream_marks = {
            row["stream"]: (row["epoch"], row["offset"], now) for row in point["top_streams"]
        }
        self.series.append(point)
        self._overflows_at_last_flush = self.metrics.queue_overflows
        try:
            self.local.append(SYS_METRICS, point, message_id(SYS_METRICS, point))
        except HistoryFull:
            logger.warning(
                "cannot publish %s: stream limit reached",
                SYS_METRICS,
                extra={"stream": SYS_METRICS},
            )
        if self.config.metrics.log:
            self.status_log.flushed(point)
        return point

    @property
    def overflowing(self) -> bool:
        """Whether a queue overflowed since the last flush."""
        return self.metrics.queue_overflows > self._overflows_at_last_flush
