"""The hub's two JSON reports: ``/health/websocket`` and ``/api/stats``.

Health is honest: "degraded" names every reason (a circuit breaker that is not closed, a
connection whose outbound queue is nearly full, a queue that overflowed since the last
metrics flush, ``broker unavailable`` while Redis cannot be reached), and "shutting_down"
wins over them all once the hub drains. Both reports name the node they describe.
"""

from __future__ import annotations

import datetime
import heapq
import logging
import zoneinfo
from collections import deque
from typing import Any, Protocol

import attrs
import trio

from wshub.brokers.base import Broker
from wshub.core.breaker_registry import BreakerRegistry
from wshub.core.config import HubConfig
from wshub.core.dedup import Deduplicator
from wshub.core.history import HistoryStore
from wshub.core.metrics import HubMetrics

__all__ = [
    "SUMMARY_INTERVAL",
    "TOP_STREAMS",
    "ReportSource",
    "StatusLog",
    "health_report",
    "stats_report",
    "stream_rows",
]

logger = logging.getLogger("wshub.hub")

#: Seconds between the INFO summaries in the log (each metrics flush logs at DEBUG).
SUMMARY_INTERVAL = 60.0

#: How many streams ``/api/stats`` lists in ``top_streams``, the most subscribed first.
TOP_STREAMS = 20


class ReportSource(Protocol):
    """What the reports read of the hub (``Hub`` is one); they change nothing."""

    id: str
    servers: list[str]
    config: HubConfig
    metrics: HubMetrics
    breakers: BreakerRegistry
    broker: Broker
    node: str
    series: deque[dict[str, Any]]
    started_at: float

    @property
    def histories(self) -> HistoryStore:
        """This node's own histories."""
        ...

    @property
    def dedup(self) -> Deduplicator:
        """This node's own de-duplication table."""
        ...

    @property
    def draining(self) -> bool:
        """Whether the hub is shutting down."""
        ...

    @property
    def overflowing(self) -> bool:
        """Whether a queue overflowed since the last metrics flush."""
        ...

    @property
    def connection_count(self) -> int:
        """Connections that completed their hello."""
        ...

    def queue_depths(self) -> tuple[int, int]:
        """Total and largest outbound queue length."""
        ...

    def queued_by_client(self) -> dict[str, int]:
        """Messages waiting in outbound queues, per client id."""
        ...

    @property
    def stream_marks(self) -> dict[str, tuple[str, int, float]]:
        """Per stream listed at the last metrics flush: (epoch, offset, time)."""
        ...

    def subscriber_counts(self) -> dict[str, int]:
        """Subscribed connections per stream, for the streams that have any."""
        ...


def _timestamps(timezone: str) -> dict[str, str]:
    now = datetime.datetime.now(datetime.UTC)
    local = now.astimezone(zoneinfo.ZoneInfo(timezone))
    return {
        "timestamp_utc": now.isoformat(timespec="milliseconds"),
        "timestamp_local": local.isoformat(timespec="milliseconds"),
        "timezone": timezone,
    }


def health_report(
    hub: ReportSource,
    snapshot: dict[str, Any] | None = None,
    depths: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Status (healthy / degraded / shutting_down), reasons, and the figures behind them.

    ``snapshot`` and ``depths`` are ``hub.metrics.snapshot()`` and ``hub.queue_depths()``
    when the caller has taken them already (in that order: depths first, they set a gauge).
    """
    config = hub.config
    metrics = hub.metrics
    reasons: list[str] = []
    breakers: dict[str, Any] = {}
    for name, statistics in hub.breakers.statistics().items():
        state = statistics.state.value
        breakers[name] = {
            "state": state,
            "consecutive_failures": statistics.consecutive_failures,
            "failures": statistics.failures,
            "rejections": statistics.rejections,
        }
        if state != "closed":
            reasons.append(f"circuit breaker {name!r} is {state}")
    total, largest = depths if depths is not None else hub.queue_depths()
    threshold = config.health.queue_degraded_ratio * config.limits.max_queue
    if largest > threshold:
        reasons.append(f"an outbound queue holds {largest} of {config.limits.max_queue} messages")
    if hub.overflowing:
        reasons.append("outbound queues overflowed since the last metrics flush")
    unavailable = hub.broker.unavailable_reason()
    if unavailable is not None:
        reasons.append(unavailable)
    status = "shutting_down" if hub.draining else "degraded" if reasons else "healthy"
    if snapshot is None:
        snapshot = metrics.snapshot()
    return {
        "status": status,
        "reasons": reasons,
        "node": hub.node,
        **_timestamps(config.health.timezone),
        "uptime_seconds": round(trio.current_time() - hub.started_at, 3),
        "connections": snapshot["connections"],
        "messages": snapshot["messages"],
        "queues": {
            "depth": total,
            "largest": largest,
            "depth_max": metrics.queue_depth_max,
            "limit": config.limits.max_queue,
            "overflows": metrics.queue_overflows,
        },
        "retries": snapshot["retries"],
        "circuit_breakers": breakers,
        "cleanup": snapshot["cleanup"],
    }


def stream_rows(hub: ReportSource, limit: int = TOP_STREAMS) -> list[dict[str, Any]]:
    """The ``limit`` streams with the most subscribers (then the highest offset), one row each.

    A row holds ``stream``, ``subscribers`` (connections), ``epoch``, ``offset`` (the newest),
    ``first`` (the oldest offset history holds, None when it holds none), ``held`` (messages in
    history) and ``rate``: messages per second since the last metrics flush, None when that
    flush did not list the stream or its epoch has changed since. O(streams).
    """
    counts = hub.subscriber_counts()
    top = heapq.nlargest(
        limit, hub.histories, key=lambda h: (counts.get(h.stream, 0), h.last_offset)
    )
    now = trio.current_time()
    rows: list[dict[str, Any]] = []
    for history in top:
        offset = history.last_offset
        rate = None
        mark = hub.stream_marks.get(history.stream)
        if mark is not None and mark[0] == history.epoch and now > mark[2]:
            rate = (offset - mark[1]) / (now - mark[2])
        rows.append(
            {
                "stream": history.stream,
                "subscribers": counts.get(history.stream, 0),
                "epoch": history.epoch,
                "offset": offset,
                "first": history.first_offset,
                "held": len(history),
                "rate": rate,
            }
        )
    return rows


def stats_report(hub: ReportSource, *, series: bool = False) -> dict[str, Any]:
    """Every figure as JSON: metrics, streams, dedup, the busiest clients, health status."""
    depths = hub.queue_depths()  # refreshes the queue depth gauge before the snapshot
    report = hub.metrics.snapshot()
    health = health_report(hub, report, depths)
    report.update(
        hub=hub.id,
        server=", ".join(hub.servers) or None,
        time=health["timestamp_utc"],
        uptime_seconds=health["uptime_seconds"],
        status=health["status"],
        reasons=health["reasons"],
        streams=attrs.asdict(hub.histories.statistics()),
        dedup=attrs.asdict(hub.dedup.statistics()),
        broker=hub.broker.statistics(),
        node=hub.node,
        busiest_clients=hub.metrics.client_snapshot(10),
        top_streams=stream_rows(hub),
    )
    report["clients"]["connected"] = hub.connection_count
    queued = hub.queued_by_client()
    for row in report["busiest_clients"]:
        row["queue"] = queued.get(row["client_id"], 0)
    report["history_points"] = hub.config.metrics.history_points
    if series:
        report["series"] = list(hub.series)
    return report


class StatusLog:
    """The metrics flushes in the log: each one at DEBUG, and an INFO summary every minute.

    A line per flush at INFO (every second in development) drowns a log; the summary says what
    happened over the last ``SUMMARY_INTERVAL`` seconds, counted from the hub's start.
    """

    def __init__(self, started_at: float) -> None:
        self._since = started_at
        self._counts = (0, 0, 0, 0)  # opened, closed, published, delivered at the last summary

    def flushed(self, point: dict[str, Any]) -> None:
        """Log one flushed snapshot (``hub.stats()``)."""
        connections, messages = point["connections"], point["messages"]
        logger.debug(
            "status=%s connections=%d published=%d delivered=%d queue=%d",
            point["status"],
            connections["active"],
            messages["published"],
            messages["delivered"],
            point["queues"]["depth"],
        )
        now = trio.current_time()
        seconds = now - self._since
        if seconds < SUMMARY_INTERVAL:
            return
        counts = (
            connections["total"],
            sum(connections["disconnects"].values()),
            messages["published"],
            messages["delivered"],
        )
        opened, closed, published, delivered = (
            now - before for now, before in zip(counts, self._counts, strict=True)
        )
        logger.info(
            "last %.0f s: %s; %d connections open (%d opened, %d closed); %d published (%.1f/s), "
            "%d delivered (%.1f/s); %d queued",
            seconds,
            point["status"],
            connections["active"],
            opened,
            closed,
            published,
            published / seconds,
            delivered,
            delivered / seconds,
            point["queues"]["depth"],
        )
        self._since, self._counts = now, counts
