"""HubMetrics: exposition, sampling, latency histogram, breakers, client stats with TTL."""

from __future__ import annotations

import enum
import json
import tracemalloc
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from wshub.core.client_stats import ClientStats
from wshub.core.metrics import LATENCY_BUCKETS, PEER_CLOSED, HubMetrics


class FakeClock:
    """A settable clock for tests that do not need Trio."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@attrs.frozen
class FakeBreaker:
    name: str


def samples(metrics: HubMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse the text exposition back into {(sample name, labels): value}."""
    body, _ = metrics.exposition()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


NO_LABELS = labels()


def busy_metrics() -> HubMetrics:
    metrics = HubMetrics(clock=FakeClock())
    metrics.connections_active = 3
    metrics.connections_total = 7
    metrics.connections_failed = 1
    metrics.reconnections = 2
    metrics.record_disconnect(1000)
    metrics.record_disconnect(1000)
    metrics.record_disconnect(4002)
    metrics.record_disconnect(PEER_CLOSED)
    metrics.record_timeout("hello")
    metrics.record_timeout("heartbeat")
    metrics.record_timeout("heartbeat")
    metrics.published = 10
    metrics.delivered = 25
    metrics.deduplicated = 4
    metrics.expired = 5
    metrics.record_drop("slow_consumer", 3)
    metrics.record_drop("too_large")
    metrics.queue_depth = 6
    metrics.queue_overflows = 2
    metrics.record_queue_depth(40)
    metrics.record_queue_depth(12)  # the largest seen stays
    metrics.record_resume(recovered=True)
    metrics.record_resume(recovered=True)
    metrics.record_resume(recovered=False)
    metrics.replayed = 12
    metrics.record_retry("success")
    metrics.record_retry("retry")
    metrics.record_retry("retry")
    for outcome in ("recovered", "recovered", "recovered", "exhausted"):
        metrics.record_retry(outcome)
    metrics.on_breaker_transition(FakeBreaker("redis"), State.CLOSED, State.OPEN)
    metrics.record_cleanup({"history": 3, "dedup": 1})
    metrics.record_cleanup({"history": 2, "clients": 0})
    metrics.observe_latency(0.002)
    metrics.observe_latency(0.3)
    return metrics


# ------------------------------------------------------------------------------ exposition


def test_text_exposition_holds_every_design_name_with_values_and_labels() -> None:
    found = samples(busy_metrics())

    assert found[("wshub_connections_active", NO_LABELS)] == 3
    assert found[("wshub_connections_total", NO_LABELS)] == 7
    assert found[("wshub_connections_failed_total", NO_LABELS)] == 1
    assert found[("wshub_reconnections_total", NO_LABELS)] == 2
    assert found[("wshub_disconnects_total", labels(code="1000"))] == 2
    assert found[("wshub_disconnects_total", labels(code="4002"))] == 1
    assert found[("wshub_disconnects_total", labels(code="peer"))] == 1
    assert found[("wshub_connection_timeouts_total", labels(kind="hello"))] == 1
    assert found[("wshub_connection_timeouts_total", labels(kind="heartbeat"))] == 2
    assert found[("wshub_messages_published_total", NO_LABELS)] == 10
    assert found[("wshub_messages_delivered_total", NO_LABELS)] == 25
    assert found[("wshub_messages_deduplicated_total", NO_LABELS)] == 4
    assert found[("wshub_messages_expired_total", NO_LABELS)] == 5
    assert found[("wshub_messages_dropped_total", labels(reason="slow_consumer"))] == 3
    assert found[("wshub_messages_dropped_total", labels(reason="too_large"))] == 1
    assert found[("wshub_queue_depth", NO_LABELS)] == 6
    assert found[("wshub_queue_depth_max", NO_LABELS)] == 40
    assert found[("wshub_queue_overflows_total", NO_LABELS)] == 2
    assert found[("wshub_resumes_total", labels(recovered="true"))] == 2
    assert found[("wshub_resumes_total", labels(recovered="false"))] == 1
    assert found[("wshub_replayed_messages_total", NO_LABELS)] == 12
    assert found[("wshub_retry_attempts_total", labels(outcome="success"))] == 1
    assert found[("wshub_retry_attempts_total", labels(outcome="retry"))] == 2
    assert found[("wshub_breaker_state", labels(breaker="redis"))] == 1
    assert found[("wshub_breaker_transitions_total", labels(breaker="redis", to="open"))] == 1
    assert found[("wshub_breaker_transitions_total", labels(breaker="redis", to="closed"))] == 0
    assert found[("wshub_cleanup_runs_total", NO_LABELS)] == 2
    assert found[("wshub_cleanup_removed_total", labels(kind="history"))] == 5
    assert found[("wshub_cleanup_removed_total", labels(kind="dedup"))] == 1
    assert found[("wshub_cleanup_removed_total", labels(kind="clients"))] == 0
    assert found[("wshub_delivery_latency_seconds_count", NO_LABELS)] == 2
    assert found[("wshub_delivery_latency_seconds_sum", NO_LABELS)] == pytest.approx(0.302)
    assert found[("wshub_delivery_latency_seconds_bucket", labels(le="0.0025"))] == 1
    assert found[("wshub_delivery_latency_seconds_bucket", labels(le="+Inf"))] == 2


def test_text_exposition_declares_the_design_types() -> None:
    body, content_type = busy_metrics().exposition()
    types = {f.name: f.type for f in text_string_to_metric_families(body.decode())}

    assert content_type.startswith("text/plain")
    assert types["wshub_connections_active"] == "gauge"
    assert types["wshub_queue_depth"] == "gauge"
    assert types["wshub_breaker_state"] == "gauge"
    assert types["wshub_delivery_latency_seconds"] == "histogram"
    # The parser strips "_total" from counter family names.
    assert types["wshub_messages_delivered"] == "counter"
    assert types["wshub_breaker_transitions"] == "counter"


def test_openmetrics_exposition_ends_with_eof_and_has_openmetrics_content_type() -> None:
    body, content_type = busy_metrics().exposition(openmetrics=True)

    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    assert b"wshub_messages_delivered_total 25.0" in body


def test_instances_keep_their_own_figures_and_registries() -> None:
    first, second = HubMetrics(), HubMetrics()
    first.delivered = 5
    first.record_drop("slow_consumer")

    assert first.registry is not second.registry
    assert samples(second)[("wshub_messages_delivered_total", NO_LABELS)] == 0
    assert second.dropped == {}
    assert REGISTRY.get_sample_value("wshub_messages_delivered_total") is None


def test_plain_attribute_updates_run_no_setattr_hook() -> None:
    # A generated __setattr__ (validators, frozen fields) would make every hot-path
    # `metrics.delivered += n` several times slower.
    assert HubMetrics.__setattr__ is object.__setattr__
    assert ClientStats.__setattr__ is object.__setattr__


def test_invalid_settings_raise_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        HubMetrics(sample_rate=1.5)
    with pytest.raises(ValueError, match="client_ttl"):
        HubMetrics(client_ttl=0.0)


# ------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize(
    ("rate", "sampled"), [(1.0, 1000), (0.0, 0), (0.25, 250), (0.05, 50), (0.3, 300)]
)
def test_should_sample_times_exactly_the_rate_of_deliveries(rate: float, sampled: int) -> None:
    metrics = HubMetrics(sample_rate=rate)

    assert sum(metrics.should_sample() for _ in range(1000)) == sampled


def test_quarter_sample_rate_times_every_fourth_delivery() -> None:
    metrics = HubMetrics(sample_rate=0.25)

    assert [metrics.should_sample() for _ in range(8)] == [False, False, False, True] * 2


# ------------------------------------------------------------------------------ latency


def test_latency_percentiles_interpolate_within_buckets() -> None:
    metrics = HubMetrics()
    for _ in range(50):
        metrics.observe_latency(0.0007)  # bucket (0.0005, 0.001]
    for _ in range(50):
        metrics.observe_latency(0.2)  # bucket (0.1, 0.25]

    assert metrics.latency_percentile(0.0) == pytest.approx(0.0005)
    assert metrics.latency_percentile(0.5) == pytest.approx(0.001)
    assert metrics.latency_percentile(0.99) == pytest.approx(0.1 + 0.15 * 49 / 50)
    assert metrics.latency_percentile(1.0) == pytest.approx(0.25)


def test_latency_percentile_is_none_without_observations() -> None:
    assert HubMetrics().latency_percentile(0.5) is None


def test_latency_percentile_beyond_last_bucket_reports_highest_bound() -> None:
    metrics = HubMetrics()
    metrics.observe_latency(30.0)

    assert metrics.latency_percentile(0.99) == LATENCY_BUCKETS[-1]


def test_latency_percentile_rejects_quantile_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="quantile"):
        HubMetrics().latency_percentile(1.5)


def test_histogram_buckets_are_cumulative_with_inclusive_upper_bounds() -> None:
    metrics = HubMetrics()
    for seconds in (0.001, 0.001, 0.004, 7.0, 60.0):
        metrics.observe_latency(seconds)

    buckets = dict(metrics.latency_buckets())
    assert buckets[0.0005] == 0
    assert buckets[0.001] == 2  # a value equal to a bound falls in that bucket ("le")
    assert buckets[0.005] == 3
    assert buckets[5.0] == 3
    assert buckets[10.0] == 4
    assert buckets[float("inf")] == 5 == metrics.latency_count
    counts = [n for _, n in metrics.latency_buckets()]
    assert counts == sorted(counts)
    found = samples(metrics)
    assert found[("wshub_delivery_latency_seconds_bucket", labels(le="0.001"))] == 2
    assert found[("wshub_delivery_latency_seconds_bucket", labels(le="10.0"))] == 4
    assert found[("wshub_delivery_latency_seconds_sum", NO_LABELS)] == pytest.approx(67.006)


# ------------------------------------------------------------------------------ breakers


def test_breaker_listener_updates_state_gauge_and_transition_counts() -> None:
    metrics = HubMetrics()
    breaker = FakeBreaker("backend")

    metrics.on_breaker_transition(breaker, State.CLOSED, State.OPEN)
    assert samples(metrics)[("wshub_breaker_state", labels(breaker="backend"))] == 1
    metrics.on_breaker_transition(breaker, State.OPEN, State.HALF_OPEN)
    assert samples(metrics)[("wshub_breaker_state", labels(breaker="backend"))] == 2
    metrics.on_breaker_transition(breaker, State.HALF_OPEN, State.OPEN)
    metrics.on_breaker_transition(breaker, State.OPEN, State.HALF_OPEN)
    metrics.on_breaker_transition(breaker, State.HALF_OPEN, State.CLOSED)

    found = samples(metrics)
    assert found[("wshub_breaker_state", labels(breaker="backend"))] == 0
    assert found[("wshub_breaker_transitions_total", labels(breaker="backend", to="open"))] == 2
    assert (
        found[("wshub_breaker_transitions_total", labels(breaker="backend", to="half_open"))] == 2
    )
    assert found[("wshub_breaker_transitions_total", labels(breaker="backend", to="closed"))] == 1
    assert metrics.snapshot()["breakers"] == {
        "backend": {"state": "closed", "transitions": {"closed": 1, "open": 2, "half_open": 2}}
    }


def test_seeding_breaker_state_counts_no_transition() -> None:
    metrics = HubMetrics()
    metrics.set_breaker_state("redis", "open")

    assert samples(metrics)[("wshub_breaker_state", labels(breaker="redis"))] == 1
    assert metrics.snapshot()["breakers"]["redis"]["transitions"] == {
        "closed": 0,
        "open": 0,
        "half_open": 0,
    }


def test_breaker_figures_are_read_only_views_of_the_live_counts() -> None:
    metrics = HubMetrics()
    states, transitions = metrics.breaker_states, metrics.breaker_transitions
    metrics.on_breaker_transition(FakeBreaker("backend"), State.CLOSED, State.OPEN)

    assert states == {"backend": "open"}
    assert transitions == {"backend": {"closed": 0, "open": 1, "half_open": 0}}
    with pytest.raises(TypeError):
        states["backend"] = "closed"  # type: ignore[index]
    with pytest.raises(TypeError):
        del transitions["backend"]  # type: ignore[attr-defined]


def test_unknown_breaker_state_is_rejected() -> None:
    with pytest.raises(ValueError, match="breaker state"):
        HubMetrics().set_breaker_state("redis", "broken")


# ------------------------------------------------------------------------------ client TTL


async def test_client_stats_expire_exactly_at_client_ttl(autojump_clock: Any) -> None:
    metrics = HubMetrics(client_ttl=3600.0)
    metrics.client("alice")

    await trio.sleep_until(3599.999)
    assert trio.current_time() == 3599.999
    assert metrics.expire_clients() == 0
    assert "alice" in metrics.clients

    await trio.sleep_until(3600.0)
    assert trio.current_time() == 3600.0
    assert metrics.expire_clients() == 1
    assert "alice" not in metrics.clients


async def test_client_with_open_connection_is_never_removed(autojump_clock: Any) -> None:
    metrics = HubMetrics(client_ttl=3600.0)
    metrics.connection_opened("alice")

    for _ in range(30):
        await trio.sleep(600.0)
        assert metrics.expire_clients() == 0
    assert trio.current_time() == 18000.0
    assert "alice" in metrics.clients

    metrics.connection_closed("alice", 1000)
    await trio.sleep_until(18000.0 + 3599.999)
    assert metrics.expire_clients() == 0
    await trio.sleep_until(18000.0 + 3600.0)
    assert metrics.expire_clients() == 1


async def test_touch_postpones_removal(autojump_clock: Any) -> None:
    metrics = HubMetrics(client_ttl=3600.0)
    metrics.client("alice")
    bob = metrics.client("bob")

    await trio.sleep_until(1000.0)
    metrics.client("alice")  # touch through the table
    bob.last_activity = trio.current_time()  # touch the way the hot path does

    await trio.sleep_until(3600.0)
    assert metrics.expire_clients() == 0
    await trio.sleep_until(4599.999)
    assert metrics.expire_clients() == 0
    await trio.sleep_until(4600.0)
    assert metrics.expire_clients() == 2
    assert len(metrics.clients) == 0


async def test_touched_client_expires_on_time_behind_newer_clients(autojump_clock: Any) -> None:
    # Re-queueing a touched entry behind newer ones (lazy move-to-end) would hide its
    # deadline behind theirs; the sweep must still find it on time.
    metrics = HubMetrics(client_ttl=3600.0)
    metrics.client("alice")
    await trio.sleep_until(50.0)
    metrics.client("alice")
    await trio.sleep_until(100.0)
    metrics.client("bob")

    await trio.sleep_until(3600.0)
    assert metrics.expire_clients() == 0
    await trio.sleep_until(3650.0)
    assert metrics.expire_clients() == 1
    assert set(metrics.clients) == {"bob"}
    await trio.sleep_until(3700.0)
    assert metrics.expire_clients() == 1


async def test_expire_clients_returns_number_removed(autojump_clock: Any) -> None:
    metrics = HubMetrics(client_ttl=3600.0)
    for i in range(5):
        metrics.client(f"early-{i}")
    await trio.sleep_until(10.0)
    for i in range(3):
        metrics.client(f"late-{i}")

    await trio.sleep_until(3600.0)
    assert metrics.expire_clients() == 5
    await trio.sleep_until(3610.0)
    assert metrics.expire_clients() == 3
    assert metrics.expire_clients() == 0
    assert metrics.snapshot()["clients"] == {"tracked": 0}


async def test_sweep_examines_only_due_entries(autojump_clock: Any) -> None:
    metrics = HubMetrics(client_ttl=3600.0)
    for i in range(100):
        metrics.client(f"old-{i}")
    await trio.sleep_until(1000.0)
    for i in range(1000):
        metrics.client(f"new-{i}")

    await trio.sleep_until(3600.0)
    assert metrics.expire_clients() == 100
    assert metrics.client_entries_examined == 100  # the 1000 live entries were not walked
    assert metrics.expire_clients() == 0
    assert metrics.client_entries_examined == 100

    await trio.sleep_until(4000.0)
    for i in range(10):
        metrics.clients[f"new-{i}"].last_activity = trio.current_time()
    await trio.sleep_until(4600.0)
    assert metrics.expire_clients() == 990
    assert metrics.client_entries_examined == 100 + 1000
    await trio.sleep_until(4000.0 + 3600.0)
    assert metrics.expire_clients() == 10
    assert metrics.client_entries_examined == 100 + 1000 + 10


async def test_connected_client_is_examined_at_most_once_per_ttl(autojump_clock: Any) -> None:
    metrics = HubMetrics(client_ttl=3600.0)
    metrics.connection_opened("alice")

    for _ in range(120):  # two hours of sweeps every minute
        await trio.sleep(60.0)
        metrics.expire_clients()

    assert trio.current_time() == 7200.0
    assert metrics.client_entries_examined == 2


@given(
    st.lists(
        st.tuples(
            st.integers(0, 4),  # seconds to wait first
            st.sampled_from(["touch", "touch_directly", "open", "close", "sweep", "sweep"]),
            st.integers(0, 3),  # which client
        ),
        max_size=60,
    )
)
def test_sweep_removes_exactly_the_clients_past_their_deadline(
    steps: list[tuple[int, str, int]],
) -> None:
    clock = FakeClock()
    metrics = HubMetrics(client_ttl=6.0, clock=clock)
    for wait, action, client in steps:
        clock.now += wait
        client_id = f"c{client}"
        stats = metrics.clients.get(client_id)
        if action == "touch":
            metrics.client(client_id)
        elif action == "touch_directly" and stats is not None:
            stats.last_activity = clock.now
        elif action == "open":
            metrics.connection_opened(client_id)
        elif action == "close" and stats is not None and stats.connections:
            metrics.connection_closed(client_id, 1000)
        elif action == "sweep":
            due = {
                due_id
                for due_id, due_stats in metrics.clients.items()
                if due_stats.connections == 0 and due_stats.last_activity + 6.0 <= clock.now
            }
            before = set(metrics.clients)
            assert metrics.expire_clients() == len(due)
            assert set(metrics.clients) == before - due


def test_ten_thousand_clients_fit_in_ten_megabytes() -> None:
    clock = FakeClock()
    tracemalloc.start()
    try:
        metrics = HubMetrics(clock=clock)
        for i in range(10_000):
            stats = metrics.client(f"client-{i:05d}")
            stats.messages_out = 1_000_000 + i
            stats.bytes_out = 100_000_000 + i
            stats.last_activity = 1_000.0 + i
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(metrics.clients) == 10_000
    assert used <= 10_000_000


# ------------------------------------------------------------------------------ client rows


def test_connection_open_and_close_update_hub_and_client_figures() -> None:
    metrics = HubMetrics(clock=FakeClock())
    metrics.connection_opened("alice")
    metrics.connection_opened("alice")
    metrics.connection_closed("alice", 1001)

    stats = metrics.clients["alice"]
    assert (stats.connections, stats.connects, stats.disconnects) == (1, 2, 1)
    assert (metrics.connections_active, metrics.connections_total) == (1, 2)
    assert metrics.disconnects == {1001: 1}


def test_top_clients_orders_by_the_chosen_figure() -> None:
    clock = FakeClock()
    metrics = HubMetrics(clock=clock)
    for client_id, sent, received in [("a", 5, 100), ("b", 50, 1), ("c", 20, 20)]:
        stats = metrics.client(client_id)
        stats.messages_out, stats.messages_in = sent, received
    clock.now = 12.5

    assert [row["client_id"] for row in metrics.top_clients(2)] == ["b", "c"]
    assert [row["client_id"] for row in metrics.top_clients(3, key="messages_in")] == [
        "a",
        "c",
        "b",
    ]
    with pytest.raises(ValueError, match="ClientStats figure"):
        metrics.top_clients(key="client_id")


def test_client_snapshot_lists_busiest_clients_with_every_field() -> None:
    clock = FakeClock()
    metrics = HubMetrics(clock=clock)
    for client_id, sent, received in [("a", 5, 100), ("b", 50, 1), ("c", 1, 1)]:
        stats = metrics.client(client_id)
        stats.messages_out, stats.messages_in = sent, received
    clock.now = 12.5

    rows = metrics.client_snapshot(n=2)

    assert [row["client_id"] for row in rows] == ["a", "b"]
    assert set(rows[0]) == {f.name for f in attrs.fields(ClientStats)} | {"idle_seconds"}
    assert rows[0]["last_activity"] == 0.0
    assert rows[0]["idle_seconds"] == 12.5
    assert json.loads(json.dumps(rows)) == rows


# ------------------------------------------------------------------------------ snapshot


def test_snapshot_has_the_documented_shape_and_is_json_ready() -> None:
    snapshot = busy_metrics().snapshot()

    assert json.loads(json.dumps(snapshot)) == snapshot  # also proves every key is a str
    assert snapshot == {
        "connections": {
            "active": 3,
            "total": 7,
            "failed": 1,
            "reconnections": 2,
            "disconnects": {"1000": 2, "4002": 1, "peer": 1},
            "timeouts": {"hello": 1, "heartbeat": 2},
        },
        "messages": {
            "published": 10,
            "delivered": 25,
            "deduplicated": 4,
            "expired": 5,
            "replayed": 12,
            "dropped": {"slow_consumer": 3, "too_large": 1},
        },
        "queues": {"depth": 6, "depth_max": 40, "overflows": 2},
        "resumes": {"recovered": 2, "unrecovered": 1},
        "retries": {"success": 1, "retry": 2, "recovered": 3, "exhausted": 1},
        "retry_success_ratio": 0.75,
        "breakers": {
            "redis": {"state": "open", "transitions": {"closed": 0, "open": 1, "half_open": 0}}
        },
        "cleanup": {"runs": 2, "removed": {"history": 5, "dedup": 1, "clients": 0}},
        "latency": {
            "count": 2,
            "sum": pytest.approx(0.302),
            "mean": pytest.approx(0.151),
            "p50": pytest.approx(0.0025),
            "p99": pytest.approx(0.25 + 0.25 * 0.98),
        },
        "clients": {"tracked": 0},
    }


def test_snapshot_of_fresh_metrics_reports_no_latency_percentiles() -> None:
    snapshot = HubMetrics().snapshot()

    assert snapshot["latency"] == {
        "count": 0,
        "sum": 0.0,
        "mean": None,
        "p50": None,
        "p99": None,
    }
    assert snapshot["retry_success_ratio"] is None
    assert snapshot["queues"]["depth_max"] == 0
    assert json.dumps(snapshot)
