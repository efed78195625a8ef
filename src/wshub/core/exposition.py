"""The Prometheus view of the hub's figures, built only when someone scrapes.

Theory of operation:
- The hot path never touches this module: it bumps plain attributes on ``HubMetrics``. Here a
  ``HubCollector``, registered in that instance's *own* ``CollectorRegistry``, turns those
  attributes into the DESIGN.md ``wshub_*`` families at scrape time, so nothing is converted
  until it is read and two hubs in one process never share a figure.
- Families are built from the tables below (name, attribute, help) and from the few figures the
  ``MetricFigures`` protocol names; per-client figures are never read here, so they never
  become labels (unbounded cardinality).
- ``render()`` writes a registry as Prometheus text or OpenMetrics with prometheus_client's
  own encoders; no exposition format is written by hand.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Protocol

from prometheus_client import exposition as text_exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["BREAKER_STATE_VALUES", "BrokerFigures", "HubCollector", "MetricFigures", "render"]

#: Value of the ``wshub_breaker_state`` gauge for each breaker state.
BREAKER_STATE_VALUES: Mapping[str, int] = MappingProxyType({"closed": 0, "open": 1, "half_open": 2})


class BrokerFigures(Protocol):
    """The broker's own counters (both brokers have them; the memory one makes no calls)."""

    @property
    def calls(self) -> Mapping[tuple[str, str], int]:
        """Calls to the shared store by (operation, outcome)."""

    @property
    def gap_fills(self) -> int:
        """Offsets skipped by pub/sub and filled from history (or found lost)."""


class MetricFigures(Protocol):
    """What the collector reads besides the attributes named in its tables (``HubMetrics``)."""

    @property
    def node(self) -> str:
        """The name of the node these figures describe."""

    @property
    def broker(self) -> BrokerFigures | None:
        """The hub's broker, once the hub has one."""

    @property
    def resumes_recovered(self) -> int:
        """Resumes that history covered."""

    @property
    def resumes_unrecovered(self) -> int:
        """Resumes that history no longer covered."""

    @property
    def latency_sum(self) -> float:
        """Sum of the sampled delivery latencies, in seconds."""

    @property
    def breaker_states(self) -> Mapping[str, str]:
        """Each breaker's current state value, by breaker name."""

    @property
    def breaker_transitions(self) -> Mapping[str, Mapping[str, int]]:
        """Per breaker name, transitions counted by the state entered."""

    def latency_buckets(self) -> list[tuple[float, int]]:
        """Cumulative histogram: ``(upper_bound, observations <= upper_bound)``, +inf last."""


# (Prometheus name, HubMetrics attribute, help) for the unlabelled families.
_GAUGES = (
    ("wshub_connections_active", "connections_active", "Open connections."),
    ("wshub_queue_depth", "queue_depth", "Messages waiting in outbound queues."),
    ("wshub_queue_depth_max", "queue_depth_max", "The longest outbound queue seen."),
)
_COUNTERS = (
    ("wshub_connections_total", "connections_total", "Connections accepted."),
    ("wshub_connections_failed_total", "connections_failed", "Connections failed before hello."),
    ("wshub_reconnections_total", "reconnections", "Clients that came back and resumed."),
    ("wshub_messages_published_total", "published", "Messages published."),
    ("wshub_messages_delivered_total", "delivered", "Messages sent to subscribers."),
    ("wshub_messages_deduplicated_total", "deduplicated", "Publishes dropped as duplicates."),
    ("wshub_messages_expired_total", "expired", "Messages expired from history."),
    ("wshub_queue_overflows_total", "queue_overflows", "Outbound queues found full."),
    ("wshub_replayed_messages_total", "replayed", "Messages replayed from history on resume."),
    ("wshub_cleanup_runs_total", "cleanup_runs", "Sweeper runs."),
)
# (Prometheus name, label, HubMetrics attribute holding {label value: count}, help).
_LABELLED_COUNTERS = (
    ("wshub_disconnects_total", "code", "disconnects", "Closed connections by close code."),
    (
        "wshub_connection_timeouts_total",
        "kind",
        "timeouts",
        "Connections closed for a missed hello or heartbeat.",
    ),
    ("wshub_messages_dropped_total", "reason", "dropped", "Messages dropped by reason."),
    ("wshub_retry_attempts_total", "outcome", "retry_attempts", "Retry attempts by outcome."),
    ("wshub_cleanup_removed_total", "kind", "cleanup_removed", "Sweeper removals by kind."),
)


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(bound)


class HubCollector(Collector):
    """Builds the DESIGN.md families from one ``HubMetrics`` (any ``MetricFigures``) per scrape."""

    def __init__(self, metrics: MetricFigures) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        """Yield every ``wshub_*`` family with the figures as they are now."""
        m = self._metrics
        for name, attribute, documentation in _GAUGES:
            yield GaugeMetricFamily(name, documentation, getattr(m, attribute))
        for name, attribute, documentation in _COUNTERS:
            yield CounterMetricFamily(name, documentation, getattr(m, attribute))
        for name, label, attribute, documentation in _LABELLED_COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=[label])
            counts = getattr(m, attribute).items()  # labels may be ints (close codes) and str
            for label_value, n in sorted((str(value), n) for value, n in counts):
                family.add_metric([label_value], n)
            yield family
        resumes = CounterMetricFamily(
            "wshub_resumes_total",
            "Resumes by whether history covered the gap.",
            labels=["recovered"],
        )
        resumes.add_metric(["true"], m.resumes_recovered)
        resumes.add_metric(["false"], m.resumes_unrecovered)
        yield resumes
        states = GaugeMetricFamily(
            "wshub_breaker_state", "0 closed, 1 open, 2 half_open.", labels=["breaker"]
        )
        transitions = CounterMetricFamily(
            "wshub_breaker_transitions_total",
            "Breaker transitions by new state.",
            labels=["breaker", "to"],
        )
        breaker_transitions = m.breaker_transitions
        for breaker, state in m.breaker_states.items():
            states.add_metric([breaker], BREAKER_STATE_VALUES[state])
            for to, n in breaker_transitions[breaker].items():
                transitions.add_metric([breaker, to], n)
        yield states
        yield transitions
        node = GaugeMetricFamily(
            "wshub_node_info", "The node these figures describe (always 1).", labels=["node"]
        )
        node.add_metric([m.node], 1)
        yield node
        calls = CounterMetricFamily(
            "wshub_broker_calls_total",
            "Calls to the broker's shared store (Redis) by operation and outcome.",
            labels=["op", "outcome"],
        )
        fills = CounterMetricFamily(
            "wshub_broker_gap_fills_total", "Offsets skipped by pub/sub, read from history."
        )
        broker = m.broker
        if broker is not None:
            for (op, outcome), n in sorted(broker.calls.items()):
                calls.add_metric([op, outcome], n)
            fills.add_metric([], broker.gap_fills)
        else:
            fills.add_metric([], 0)
        yield calls
        yield fills
        yield HistogramMetricFamily(
            "wshub_delivery_latency_seconds",
            "Publish-to-send latency of sampled deliveries.",
            buckets=[(_bucket_label(bound), n) for bound, n in m.latency_buckets()],
            sum_value=m.latency_sum,
        )


def render(registry: CollectorRegistry, openmetrics: bool = False) -> tuple[bytes, str]:
    """Render ``registry`` for a scrape: ``(body, content_type)``.

    Prometheus text format (``text/plain; version=0.0.4``, the type prometheus_client itself
    pairs with this body) or, with ``openmetrics``, OpenMetrics 1.0 (ends ``# EOF``).
    """
    if openmetrics:
        generate = openmetrics_exposition.generate_latest
        body: bytes = generate(registry)  # type: ignore[no-untyped-call]
        return body, openmetrics_exposition.CONTENT_TYPE_LATEST
    body = text_exposition.generate_latest(registry)
    return body, text_exposition.CONTENT_TYPE_PLAIN_0_0_4
