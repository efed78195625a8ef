"""Counters, gauges and a latency histogram for one hub, exported only when asked.

Theory of operation:
- The hot path (publish, fan-out, writers) bumps plain ints and floats on one ``HubMetrics``
  (``metrics.delivered += n``): tens of nanoseconds, no lock, no prometheus_client object.
  Everything runs in the hub's Trio thread, so nothing needs a lock.
- Nothing is converted until someone reads: a ``HubCollector`` (``wshub.core.exposition``)
  registered in the instance's *own* ``CollectorRegistry`` builds Prometheus families at scrape
  time, and ``snapshot()`` builds JSON-ready dicts. Two hubs in one process never share a figure.
- Per-client figures never become Prometheus labels (unbounded cardinality): they live in a
  ``ClientTable`` (``wshub.core.client_stats``), reach the JSON export only, and expire
  ``client_ttl`` seconds after their last activity once the client has no open connection.
- Time is read only through the injected ``clock`` (``trio.current_time`` by default), so a
  ``MockClock`` drives expiry exactly.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Mapping
from fractions import Fraction
from itertools import accumulate
from types import MappingProxyType
from typing import Any, Protocol

import attrs
import trio
from prometheus_client.registry import CollectorRegistry

from wshub.core.client_stats import ClientStats, ClientTable, client_rows
from wshub.core.exposition import BREAKER_STATE_VALUES, BrokerFigures, HubCollector, render

__all__ = ["LATENCY_BUCKETS", "PEER_CLOSED", "ClientStats", "HubMetrics"]

#: The ``code`` a disconnect is counted under when the client (or the network) ended the
#: connection and the server cannot say with which code: hypercorn reports 1006 to the app for
#: a client's clean 1000 and for a lost connection alike, so neither number would be true.
PEER_CLOSED = "peer"

#: Upper bounds (seconds) of the delivery-latency histogram buckets; +Inf is implied.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class _NamedBreaker(Protocol):
    @property
    def name(self) -> str: ...


class _BreakerStateLike(Protocol):
    @property
    def value(self) -> str: ...


def _fraction(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.alias} must be between 0 and 1, got {value!r}")


# No on_setattr hooks: any hook makes attrs generate a Python-level __setattr__, which would
# triple the cost of every ``metrics.delivered += n``. Validators therefore run at init only.
@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class HubMetrics:
    """Every figure the hub keeps, as plain attributes, plus their Prometheus and JSON exports.

    Counters and gauges are public fields the hub updates in place (``metrics.published += 1``);
    labelled families are dicts updated through the ``record_...`` methods. ``registry`` is
    this instance's own ``CollectorRegistry``, for ``exposition()`` or any other exporter.

    Raises ``ValueError`` if ``client_ttl <= 0`` or ``sample_rate`` is outside ``[0, 1]``
    (checked when built). ``sample_rate`` is read-only; ``client_ttl`` is read at each sweep.
    """

    client_ttl: float = attrs.field(default=3600.0, validator=attrs.validators.gt(0))
    _sample_rate: float = attrs.field(alias="sample_rate", default=1.0, validator=_fraction)
    clock: Callable[[], float] = attrs.field(default=trio.current_time, repr=False)
    node: str = ""
    """The node these figures describe (``wshub_node_info{node}``)."""
    broker: BrokerFigures | None = attrs.field(default=None, repr=False)
    """The hub's broker, whose calls and gap fills are exported with these figures."""

    connections_active: int = attrs.field(init=False, default=0)
    connections_total: int = attrs.field(init=False, default=0)
    connections_failed: int = attrs.field(init=False, default=0)
    reconnections: int = attrs.field(init=False, default=0)
    disconnects: dict[int | str, int] = attrs.field(init=False, factory=dict)
    #: Connections closed for a missed deadline, by kind: "hello" (4000), "heartbeat" (4004).
    timeouts: dict[str, int] = attrs.field(init=False, factory=dict)
    published: int = attrs.field(init=False, default=0)
    delivered: int = attrs.field(init=False, default=0)
    deduplicated: int = attrs.field(init=False, default=0)
    expired: int = attrs.field(init=False, default=0)
    dropped: dict[str, int] = attrs.field(init=False, factory=dict)
    queue_depth: int = attrs.field(init=False, default=0)
    #: The longest outbound queue seen since the start (a writer's batch, or an overflow).
    queue_depth_max: int = attrs.field(init=False, default=0)
    queue_overflows: int = attrs.field(init=False, default=0)
    resumes_recovered: int = attrs.field(init=False, default=0)
    resumes_unrecovered: int = attrs.field(init=False, default=0)
    replayed: int = attrs.field(init=False, default=0)
    retry_attempts: dict[str, int] = attrs.field(init=False, factory=dict)
    cleanup_runs: int = attrs.field(init=False, default=0)
    cleanup_removed: dict[str, int] = attrs.field(init=False, factory=dict)
    latency_sum: float = attrs.field(init=False, default=0.0)
    registry: CollectorRegistry = attrs.field(init=False, repr=False)

    _latency_counts: list[int] = attrs.field(
        init=False, repr=False, factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1)
    )
    _sample_step: int = attrs.field(init=False, repr=False, default=0)
    _sample_period: int = attrs.field(init=False, repr=False, default=1)
    _sample_credit: int = attrs.field(init=False, repr=False, default=0)
    _breaker_states: dict[str, str] = attrs.field(init=False, repr=False, factory=dict)
    _breaker_transitions: dict[str, dict[str, int]] = attrs.field(
        init=False, repr=False, factory=dict
    )
    _client_table: ClientTable = attrs.field(init=False, repr=False, factory=ClientTable)

    def __attrs_post_init__(self) -> None:
        rate = Fraction(self._sample_rate).limit_denominator(1_000_000)
        self._sample_step, self._sample_period = rate.numerator, rate.denominator
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(HubCollector(self))

    @property
    def sample_rate(self) -> float:
        """Fraction of deliveries whose latency is timed (see ``should_sample``); read-only."""
        return self._sample_rate

    # ---------------------------------------------------------------- labelled counters

    def record_disconnect(self, code: int | str) -> None:
        """Count one closed connection under its close code (or ``PEER_CLOSED``)."""
        self.disconnects[code] = self.disconnects.get(code, 0) + 1

    def record_timeout(self, kind: str) -> None:
        """Count a connection closed for a missed deadline ("hello" or "heartbeat")."""
        self.timeouts[kind] = self.timeouts.get(kind, 0) + 1

    def record_queue_depth(self, depth: int) -> None:
        """Note an outbound queue ``depth`` long; keeps the largest (``queue_depth_max``)."""
        if depth > self.queue_depth_max:
            self.queue_depth_max = depth

    def record_drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` messages dropped for ``reason`` (for example "slow_consumer")."""
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def record_resume(self, recovered: bool) -> None:
        """Count one resume attempt; ``recovered`` is False when history no longer held the gap."""
        if recovered:
            self.resumes_recovered += 1
        else:
            self.resumes_unrecovered += 1

    def record_retry(self, outcome: str) -> None:
        """Count one retry attempt by outcome ("success", "retry", "failure", ...)."""
        self.retry_attempts[outcome] = self.retry_attempts.get(outcome, 0) + 1

    def record_cleanup(self, removed: Mapping[str, int]) -> None:
        """Count one sweeper run and what it removed per kind ("history", "dedup", ...)."""
        self.cleanup_runs += 1
        for kind, n in removed.items():
            self.cleanup_removed[kind] = self.cleanup_removed.get(kind, 0) + n

    # ---------------------------------------------------------------- breakers

    def on_breaker_transition(
        self, breaker: _NamedBreaker, old: _BreakerStateLike, new: _BreakerStateLike
    ) -> None:
        """Breaker listener: record ``breaker.name`` entering ``new`` (``old`` is ignored).

        Duck-typed: any object with ``.name`` and states with ``.value`` in
        ``BREAKER_STATE_VALUES``. Raises ``ValueError`` for an unknown state value.
        """
        self.set_breaker_state(breaker.name, new.value)
        self._breaker_transitions[breaker.name][new.value] += 1

    def set_breaker_state(self, name: str, state_value: str) -> None:
        """Set breaker ``name``'s current state without counting a transition (seeding).

        ``wshub_breaker_state`` exports it as 0 closed, 1 open, 2 half_open. Raises
        ``ValueError`` if ``state_value`` is not one of those.
        """
        if state_value not in BREAKER_STATE_VALUES:
            allowed = ", ".join(BREAKER_STATE_VALUES)
            raise ValueError(f"breaker state must be one of {allowed}, got {state_value!r}")
        self._breaker_states[name] = state_value
        if name not in self._breaker_transitions:
            self._breaker_transitions[name] = dict.fromkeys(BREAKER_STATE_VALUES, 0)

    @property
    def breaker_states(self) -> Mapping[str, str]:
        """Read-only view: each breaker's current state value ("closed", "open", "half_open")."""
        return MappingProxyType(self._breaker_states)

    @property
    def breaker_transitions(self) -> Mapping[str, Mapping[str, int]]:
        """Read-only view: per breaker, transitions counted by the state entered."""
        return MappingProxyType(self._breaker_transitions)

    # ---------------------------------------------------------------- latency

    def should_sample(self) -> bool:
        """Whether to time this delivery: exactly ``sample_rate`` of calls, deterministically.

        Integer error diffusion over ``sample_rate`` as a fraction p/q (q <= 10**6): out of
        every q calls exactly p say True, evenly spread; 1.0 says True always, 0.0 never,
        0.25 on every fourth call.
        """
        credit = self._sample_credit + self._sample_step
        if credit >= self._sample_period:
            self._sample_credit = credit - self._sample_period
            return True
        self._sample_credit = credit
        return False

    def observe_latency(self, seconds: float) -> None:
        """Add one delivery latency (seconds, >= 0) to the histogram."""
        self._latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    @property
    def latency_count(self) -> int:
        """Number of latencies observed."""
        return sum(self._latency_counts)

    def latency_buckets(self) -> list[tuple[float, int]]:
        """Cumulative histogram: ``(upper_bound, observations <= upper_bound)``, +inf last."""
        bounds = (*LATENCY_BUCKETS, math.inf)
        return list(zip(bounds, accumulate(self._latency_counts), strict=True))

    def latency_percentile(self, q: float) -> float | None:
        """Estimate the ``q``-quantile (0 <= q <= 1) of latency, or None with no observations.

        Interpolates linearly inside the bucket holding the rank (the lowest bucket starts at
        0); a rank in the +Inf bucket reports the highest finite bound, as Prometheus'
        ``histogram_quantile`` does. Raises ``ValueError`` if ``q`` is outside [0, 1].
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be between 0 and 1, got {q!r}")
        rank = q * self.latency_count
        below = 0
        for index, n in enumerate(self._latency_counts):
            if n and below + n >= rank:
                if index == len(LATENCY_BUCKETS):
                    return LATENCY_BUCKETS[-1]
                lower = LATENCY_BUCKETS[index - 1] if index else 0.0
                upper = LATENCY_BUCKETS[index]
                return lower + (upper - lower) * (rank - below) / n
            below += n
        return None

    # ---------------------------------------------------------------- per-client stats

    @property
    def clients(self) -> Mapping[str, ClientStats]:
        """Read-only view of the tracked clients by id."""
        return self._client_table.clients

    @property
    def client_entries_examined(self) -> int:
        """ClientStats entries looked at by ``expire_clients()`` so far (the sweep's total work)."""
        return self._client_table.entries_examined

    def client(self, client_id: str) -> ClientStats:
        """Return ``client_id``'s stats, creating them if needed, and mark it active now."""
        return self._client_table.touch(client_id, self.clock())

    def connection_opened(self, client_id: str) -> ClientStats:
        """Count a connection opened by ``client_id``, hub-wide and per client; return its stats."""
        self.connections_active += 1
        self.connections_total += 1
        stats = self.client(client_id)
        stats.connections += 1
        stats.connects += 1
        return stats

    def connection_closed(self, client_id: str, code: int | str) -> None:
        """Count a connection of ``client_id`` closed with ``code``; its idle time starts now."""
        self.connections_active -= 1
        self.record_disconnect(code)
        stats = self.client(client_id)
        stats.connections -= 1
        stats.disconnects += 1

    def expire_clients(self) -> int:
        """Forget clients with no open connection idle for ``client_ttl``; return how many.

        A client expires when ``clock() >= last_activity + client_ttl``: exactly at its
        deadline. Touches cost nothing on the hot path, and a sweep visits only the entries
        that may be due (``ClientTable.expire``). Close through ``connection_closed()`` (it
        touches); lowering ``connections`` by hand counts the ttl from the sweep that last saw
        the connection open.
        """
        return self._client_table.expire(self.clock(), self.client_ttl)

    def top_clients(self, n: int = 20, key: str = "messages_out") -> list[dict[str, Any]]:
        """The ``n`` clients with the largest ``key`` figure, as ``client_snapshot`` rows.

        Raises ``ValueError`` if ``key`` is not a numeric ClientStats field.
        """
        return client_rows(self._client_table.top(n, key), self.clock())

    def client_snapshot(self, n: int = 20) -> list[dict[str, Any]]:
        """The ``n`` busiest clients (most messages in + out), busiest first.

        Each row holds every ClientStats field (``first_seen`` and ``last_activity`` as clock
        values) plus ``idle_seconds``: seconds since ``last_activity``.
        """
        return client_rows(self._client_table.busiest(n), self.clock())

    @property
    def retry_success_ratio(self) -> float | None:
        """Of the hook calls that needed a retry, the share a retry saved: recovered /
        (recovered + exhausted). None before any such call ended."""
        recovered = self.retry_attempts.get("recovered", 0)
        ended = recovered + self.retry_attempts.get("exhausted", 0)
        return recovered / ended if ended else None

    # ---------------------------------------------------------------- exports

    def snapshot(self) -> dict[str, Any]:
        """All hub-wide figures as a JSON-ready dict (str keys; ints, floats, str, None)."""
        return {
            "connections": {
                "active": self.connections_active,
                "total": self.connections_total,
                "failed": self.connections_failed,
                "reconnections": self.reconnections,
                "disconnects": {
                    str(code): n for code, n in sorted(self.disconnects.items(), key=_by_label)
                },
                "timeouts": dict(self.timeouts),
            },
            "messages": {
                "published": self.published,
                "delivered": self.delivered,
                "deduplicated": self.deduplicated,
                "expired": self.expired,
                "replayed": self.replayed,
                "dropped": dict(self.dropped),
            },
            "queues": {
                "depth": self.queue_depth,
                "depth_max": self.queue_depth_max,
                "overflows": self.queue_overflows,
            },
            "resumes": {
                "recovered": self.resumes_recovered,
                "unrecovered": self.resumes_unrecovered,
            },
            "retries": dict(self.retry_attempts),
            "retry_success_ratio": self.retry_success_ratio,
            "breakers": {
                name: {"state": state, "transitions": dict(self._breaker_transitions[name])}
                for name, state in self._breaker_states.items()
            },
            "cleanup": {"runs": self.cleanup_runs, "removed": dict(self.cleanup_removed)},
            "latency": {
                "count": self.latency_count,
                "sum": self.latency_sum,
                "mean": self.latency_sum / count if (count := self.latency_count) else None,
                "p50": self.latency_percentile(0.5),
                "p99": self.latency_percentile(0.99),
            },
            "clients": {"tracked": len(self._client_table.clients)},
        }

    def exposition(self, openmetrics: bool = False) -> tuple[bytes, str]:
        """Render ``registry`` for a scrape: ``(body, content_type)``.

        Prometheus text format (``text/plain; version=0.0.4``, the type prometheus_client
        itself pairs with this body) or, with ``openmetrics``, OpenMetrics 1.0 (ends ``# EOF``).
        """
        return render(self.registry, openmetrics)


def _by_label(item: tuple[int | str, int]) -> tuple[bool, str]:
    """Sort close codes as numbers would sort (all are four digits), ``PEER_CLOSED`` last."""
    return (isinstance(item[0], str), str(item[0]))
