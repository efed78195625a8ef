"""Micro-benchmarks of wshub's pure core, compared side by side in one run.

Run ``python benchmarks/micro.py`` (or ``nox -s bench``); ``--quick`` for fewer repeats,
``--markdown`` for the tables pasted into docs/benchmarks.md, ``--json PATH`` to keep the
numbers, ``--check`` to exit 1 when a target fails. Times are per operation: the best and the
median of several repeats. The variants of one comparison are interleaved repeat by repeat, so
a noisy neighbour slows them alike, and the garbage collector is paused while timing (as
``timeit`` does). Ratios and MB/s use the best times, the least disturbed by other tenants.
The targets live here, not in the unit tests; a row passes when its *median* meets its target.
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import json
import random
import statistics
import sys
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import orjson
import trio
import xxhash
from prometheus_client import CollectorRegistry, Counter, Histogram

from _harness import (
    FULL,
    MB,
    MS,
    QUICK,
    US,
    FakeClock,
    Row,
    Settings,
    Timed,
    compare,
    in_trio,
    machine,
    print_markdown,
    print_text,
    ratio,
    stmt,
)
from wshub.core.breaker import CircuitBreaker
from wshub.core.config import HubConfig
from wshub.core.dedup import Deduplicator, canonical_json, message_id, scoped_key
from wshub.core.history import HistoryStore, StoredMessage, StreamHistory
from wshub.core.metrics import LATENCY_BUCKETS, HubMetrics
from wshub.core.protocol import SUBPROTOCOL, encode_message
from wshub.hub.connection import Connection
from wshub.hub.hub import Hub, PublishResult
from wshub.hub.transport import RequestInfo
from wshub.testing import MemoryClient, MemoryTransport

Key = tuple[str, str, str]


# ---------------------------------------------------------------------------------- 1. hashing

HASHES = {
    "xxh3_64": "xxh3_64_intdigest({})",
    "xxh64": "xxh64_intdigest({})",
    "sha256": "sha256({}).digest()",
    "md5": "md5({}, usedforsecurity=False).digest()",
}
SIZES = {"100 B": 100, "1 KB": 1_000, "10 KB": 10_000, "100 KB": 100_000}
MID = "9f86d081884c7d65"  # a message id as message_id() makes them
NEWS = {"title": "Markets rally as rates hold", "symbol": "ACME", "price": 101.25, "up": True}


def realistic_value(size: int, rng: random.Random) -> dict[str, Any]:
    """An order event whose canonical JSON is ``size`` bytes or a little more."""
    value: dict[str, Any] = {"id": "ord-7f3a9c", "status": "paid", "items": []}
    while len(canonical_json(value)) < size:
        sku, qty, price = f"SKU-{len(value['items']):05d}", rng.randint(1, 9), rng.uniform(1, 500)
        value["items"].append({"sku": sku, "qty": qty, "price": round(price, 2)})
    return value


def hashing_rows(s: Settings) -> list[Row]:
    """Hashes of raw bytes, and of canonical JSON of a dict, each group vs xxh3_64."""
    group, rows, rng = "1. Key derivation and hashing", [], random.Random(1)
    names: dict[str, Any] = {"canonical_json": canonical_json, "sha256": hashlib.sha256}
    names |= {"xxh3_64_intdigest": xxhash.xxh3_64_intdigest, "md5": hashlib.md5}
    names |= {"xxh64_intdigest": xxhash.xxh64_intdigest, "message_id": message_id}
    for label, size in SIZES.items():
        names |= {"data": rng.randbytes(size), "value": realistic_value(size, rng)}
        json_size = len(canonical_json(names["value"]))
        raw, cooked = {}, {}
        for algo, code in HASHES.items():
            raw[f"{algo}, {label} raw bytes"] = stmt(code.format("data"), **names)
            cooked[f"canonical_json + {algo}, {label} dict ({json_size} B)"] = stmt(
                code.format("canonical_json(value)"), **names
            )
        cooked[f"canonical_json alone, {label} dict"] = stmt("canonical_json(value)", **names)
        for variants, nbytes in ((raw, size), (cooked, json_size)):
            results = compare(variants, s)
            baseline = next(iter(results.values()))[0]  # xxh3_64 comes first
            for name, (best, median) in results.items():
                rate = f"{nbytes / best * 1e3:,.0f} MB/s"
                rows.append(Row(group, name, best, median, "ns", rate, ratio(best, baseline)))
    names["d"] = NEWS
    size = len(canonical_json(["news", NEWS]))
    best, median = compare({"id": stmt("message_id('news', d)", **names)}, s)["id"]
    rows.append(Row(group, f"wshub.message_id('news', data), {size} B canonical", best, median))
    return rows


# ---------------------------------------------------------------------------------- 2. breaker


async def _noop() -> None:
    return None


def breaker_rows(s: Settings) -> list[Row]:
    """A closed breaker around a no-op, minus the same loop without it."""
    group, breaker = "2. Closed circuit breaker, per call", CircuitBreaker(name="bench")

    def loop(step: Callable[[], Awaitable[None]]) -> Timed:
        async def body(n: int) -> float:
            start = perf_counter_ns()
            for _ in range(n):
                await step()
            return perf_counter_ns() - start

        return in_trio(body)

    async def bare() -> None:  # each step is two coroutines deep, like breaker.call's
        await _noop()

    async def guarded() -> None:
        async with breaker:
            await _noop()

    called = functools.partial(breaker.call, _noop)
    r = compare({"bare": loop(bare), "with": loop(guarded), "call": loop(called)}, s)
    (b0, m0), (b1, m1), (b2, m2) = r["bare"], r["with"], r["call"]
    return [
        Row(group, "await noop() (the baseline loop)", b0, m0),
        Row(group, "async with breaker: await noop()", b1, m1, ratio=ratio(b1, b0)),
        Row(group, "overhead of async with breaker", b1 - b0, m1 - m0, target=2 * US),
        Row(group, "await breaker.call(noop)", b2, m2, ratio=ratio(b2, b0)),
        Row(group, "overhead of breaker.call", b2 - b0, m2 - m0, target=2 * US),
    ]


# ---------------------------------------------------------------------------------- 3. dedup


def make_keys(count: int, publisher: str) -> list[Key]:
    """Keys as the hub builds them: (stream, publisher, 16-hex-digit message id)."""
    ids = (f"{xxhash.xxh3_64_intdigest(i.to_bytes(8)):016x}" for i in range(count))
    return [scoped_key(f"orders.{i % 50}", f"{publisher}-{i % 997}", m) for i, m in enumerate(ids)]


def dedup_rows(s: Settings, keys: list[Key], other: list[Key]) -> list[Row]:
    """One check per key: new keys, repeated keys, a full table that evicts."""
    group, n = "3. De-duplication check, per key (default clock: trio.current_time)", s.batch

    def timed(prefill: list[Key], max_entries: int, hub_path: bool = False) -> Timed:
        async def body(count: int) -> float:
            dedup = Deduplicator(max_entries=max_entries)
            is_duplicate, get, record = dedup.is_duplicate, dedup.get, dedup.record
            for key in prefill:
                is_duplicate(key)
            batch = keys[:count]
            start = perf_counter_ns()
            if hub_path:
                for key in batch:
                    if get(key) is None:
                        record(key, "result")
            else:
                for key in batch:
                    is_duplicate(key)
            return perf_counter_ns() - start

        return in_trio(body)

    async def clock_only(count: int) -> float:
        return stmt("current_time()", current_time=trio.current_time)(count)

    variants = {
        f"is_duplicate, new key (the table grows to {n:,})": timed([], 2 * n),
        f"is_duplicate, repeated key ({n:,} held)": timed(keys[:n], 2 * n),
        f"is_duplicate, new key at a full table ({n:,}: evicts)": timed(other[:n], n),
        "get() miss + record(), as the hub publishes": timed([], 2 * n, hub_path=True),
    }
    results = compare(variants, s, n=n)
    rows = [Row(group, name, b, m, target=2 * US) for name, (b, m) in results.items()]
    best, median = compare({"clock": in_trio(clock_only)}, s, n=n)["clock"]
    return [*rows, Row(group, "trio.current_time() alone (read once per check)", best, median)]


# ---------------------------------------------------------------------------------- 4. sweeps

COUNTS = {"1k": 1_000, "10k": 10_000, "100k": 100_000}
LIVE, TTL, SWEEP_AT = 1_000, 60.0, 70.0


def schedule(count: int) -> list[float]:
    """Entry times: ``count`` over [0, 10) s, all expired at SWEEP_AT; LIVE more at 30 s, kept."""
    return [i * 10.0 / count for i in range(count)] + [30.0] * LIVE


def _sweep(fill: Callable[[FakeClock], Callable[[], int]], expected: int) -> Timed:
    def run(_n: int) -> float:
        clock = FakeClock()
        sweep = fill(clock)
        clock.now = SWEEP_AT
        start = perf_counter_ns()
        removed = sweep()
        elapsed = perf_counter_ns() - start
        assert removed == expected, (removed, expected)
        return elapsed

    return run


def sweep_variants(label: str, count: int, keys: list[Key], ids: list[str]) -> dict[str, Timed]:
    """Sweeps of ``count`` expired entries; ``keys`` and ``ids`` hold ``count + LIVE`` each."""
    times, streams = schedule(count), count // 100
    frame = encode_message("news", 1, MID, NEWS, 1_700_000_000_000)
    news = [StoredMessage("news", i + 1, MID, NEWS, 0, frame, t) for i, t in enumerate(times)]
    spread = [  # 100 messages in each stream, all expired
        StoredMessage(f"s{i // 100}", i % 100 + 1, MID, NEWS, 0, frame, t)
        for i, t in enumerate(times[:count])
    ]

    def dedup(clock: FakeClock) -> Callable[[], int]:
        table = Deduplicator(window=TTL, max_entries=len(keys), clock=clock)
        for key, at in zip(keys, times, strict=True):
            clock.now = at
            table.is_duplicate(key)
        return table.expire

    def history(clock: FakeClock) -> Callable[[], int]:
        held = StreamHistory("news", len(news), TTL, clock=clock)
        for message in news:
            held.append(message)
        return held.trim_expired

    def store(clock: FakeClock) -> Callable[[], int]:
        histories = HistoryStore(size=100, ttl=TTL, max_streams=streams, clock=clock)
        for message in spread:
            histories.get_or_create(message.stream).append(message)
        return histories.trim_expired

    def clients(clock: FakeClock) -> Callable[[], int]:
        metrics = HubMetrics(client_ttl=TTL, clock=clock)
        for client_id, at in zip(ids, times, strict=True):
            clock.now = at
            metrics.client(client_id)
        return metrics.expire_clients

    return {
        f"Deduplicator.expire(), {label} expired keys": _sweep(dedup, count),
        f"StreamHistory.trim_expired(), {label} expired messages": _sweep(history, count),
        f"HistoryStore.trim_expired(), {label} messages in {streams} streams": _sweep(store, count),
        f"HubMetrics.expire_clients(), {label} idle clients": _sweep(clients, count),
    }


def sweep_rows(s: Settings, keys: list[Key], other: list[Key]) -> list[Row]:
    """Every sweep of the sweeper, at 1k, 10k and 100k expired entries."""
    group, rows = f"4. Sweeping expired entries, per sweep ({LIVE} live entries stay)", []
    ids = [f"client-{i:06d}" for i in range(max(COUNTS.values()) + LIVE)]
    for label, count in COUNTS.items():
        variants = sweep_variants(label, count, keys[:count] + other[:LIVE], ids[: count + LIVE])
        for name, (b, m) in compare(variants, s, n=1, repeats=s.sweep_repeats).items():
            # The target is 100k in <= 100 ms; the smaller sweeps get the same 1 us per entry.
            rows.append(Row(group, name, b, m, "ns", f"{m / count:,.0f} ns/entry", "", count * US))
    return rows


# ---------------------------------------------------------------------------------- 5. metrics


def metrics_rows(s: Settings) -> list[Row]:
    """HubMetrics updates beside their prometheus_client equivalents."""
    group, metrics, registry = "5. Metric updates, per update", HubMetrics(), CollectorRegistry()
    counter = Counter("bench_delivered", "Delivered.", registry=registry)
    dropped = Counter("bench_dropped", "Dropped.", ["reason"], registry=registry)
    latency = Histogram("bench_latency", "Latency.", buckets=LATENCY_BUCKETS, registry=registry)
    names = {"m": metrics, "counter": counter, "dropped": dropped, "latency": latency}
    pairs = {  # ours: the prometheus_client equivalent, on a private registry
        "metrics.delivered += 1": "counter.inc()",
        "metrics.record_drop('slow_consumer')": "dropped.labels('slow_consumer').inc()",
        "metrics.observe_latency(0.0012)": "latency.observe(0.0012)",
    }
    codes = [code for pair in pairs.items() for code in pair]
    results = compare({code: stmt(code.replace("metrics.", "m."), **names) for code in codes}, s)
    rows = []
    for ours, theirs in pairs.items():
        (b0, m0), (b1, m1) = results[ours], results[theirs]
        rows.append(Row(group, ours, b0, m0, target=1 * US))
        ref = f"prometheus_client {type(names[theirs.split('.')[0]]).__name__}"
        rows.append(Row(group, f"{ref}: {theirs}", b1, m1, "ns", "reference", ratio(b1, b0)))
    return rows


# ---------------------------------------------------------------------------------- 6. memory


def memory_rows(_s: Settings) -> list[Row]:
    """Bytes allocated for 10k clients' ClientStats, fresh and after traffic."""
    group, count = "6. Memory of per-client stats (tracemalloc; ids allocated beforehand)", 10_000
    ids = [f"client-{i:05d}" for i in range(count)]
    metrics = HubMetrics(clock=FakeClock())
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for client_id in ids:
            metrics.client(client_id)
        created = tracemalloc.get_traced_memory()[0] - base
        for i, stats in enumerate(metrics.clients.values()):  # past the small-int cache
            stats.connects, stats.disconnects = 300 + i, 299 + i
            stats.messages_in, stats.messages_out = 1_000 + i, 50_000 + i
            stats.bytes_in, stats.bytes_out = 100_000 + i, 5_000_000 + i
        busy = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    labels = [
        "10k ClientStats via HubMetrics.client(id)",
        "the same after traffic (6 counters > 256)",
    ]
    return [
        Row(group, name, size, size, "B", f"{size / count:.0f} B/client", target=10 * MB)
        for name, size in zip(labels, (created, busy), strict=True)
    ]


# ---------------------------------------------------------------------------------- 7. encoding


def encode_rows(s: Settings) -> list[Row]:
    """encode_message beside stdlib json.dumps and bare orjson, for one ~100 B payload."""
    group = "7. Encoding a message frame (each statement builds its dict)"
    names = {"encode_message": encode_message, "json": json, "orjson": orjson}
    names |= {"mid": MID, "data": NEWS, "ts": 1_700_000_000_000}
    frame = "{'type': 'message', 'stream': 'news', 'offset': 42, 'id': mid, 'data': data, 'ts': ts}"
    codes = [
        "encode_message('news', 42, mid, data, ts)",
        f"json.dumps({frame})",
        f"json.dumps({frame}, separators=(',', ':'))",
        f"orjson.dumps({frame})",
    ]
    results = compare({code.replace(frame, "frame"): stmt(code, **names) for code in codes}, s)
    sizes = len(canonical_json(NEWS)), len(encode_message("news", 42, MID, NEWS, 0))
    detail, baseline = f"data {sizes[0]} B, frame {sizes[1]} B", results[codes[0]][0]
    return [Row(group, k, b, m, "ns", detail, ratio(b, baseline)) for k, (b, m) in results.items()]


# ------------------------------------------------------------------ 8. fan-out and collector


def enqueue_rows(s: Settings) -> list[Row]:
    """Connection.enqueue_message, as the fan-out calls it: once per subscriber of each
    publish (of a frame within small_frame, as almost all are)."""
    group = "8. Fan-out and the garbage collector"
    count = 1_000
    message = StoredMessage("news", 1, MID, NEWS, 0, "frame", 0.0)

    async def fan_out(n: int) -> float:
        hub = Hub(HubConfig.production())
        connections = [
            Connection(hub, MemoryTransport(MemoryClient(), SUBPROTOCOL), RequestInfo())
            for _ in range(count)
        ]
        for connection in connections:
            connection.enqueue_message(message)  # scheduled (dirty), as after a publish
        rounds = max(1, n // count)
        elapsed = 0
        for done in range(0, rounds, 100):  # queues emptied every 100, as a flush would
            chunk = min(100, rounds - done)
            started = perf_counter_ns()
            for _ in range(chunk):
                for connection in connections:
                    connection.enqueue_message(message)
            elapsed += perf_counter_ns() - started
            for connection in connections:
                del connection.queue[1:]
        return elapsed / (rounds * count) * n

    ((best, median),) = compare({"enqueue": in_trio(fan_out)}, s).values()
    name = "Connection.enqueue_message into 1000 scheduled queues"
    return [Row(group, name, best, median, "ns", "per subscriber", target=150)]


def collector_rows(s: Settings) -> list[Row]:
    """One full collection with a full de-duplication window, as the hub keeps it and before."""
    group = "8. Fan-out and the garbage collector"
    entries = 100_000
    keys = [scoped_key("news", "", f"{i:016x}") for i in range(entries)]
    variants: dict[str, Callable[[int], object]] = {
        "no table (the process as it is)": lambda i: None,
        "100k entries as the hub keeps them (the offset)": lambda i: i,
        "100k entries holding a PublishResult (before)": lambda i: PublishResult(
            "news", i, keys[i][2], False
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(max(3, s.repeats // 3)):
        for name, value in variants.items():
            table = Deduplicator(window=300, max_entries=entries, clock=FakeClock())
            if value(0) is not None:
                for i, key in enumerate(keys):
                    table.record(key, value(i))
            gc.collect()  # the first pass untracks what it can, as a running hub's would
            started = perf_counter_ns()
            gc.collect()
            times[name].append(perf_counter_ns() - started)
            del table
    alone = times["no table (the process as it is)"]
    rows = []
    for name, samples in times.items():
        best, median = min(samples), statistics.median(samples)
        more = f"+{(median - statistics.median(alone)) / MS:.1f} ms" if samples is not alone else ""
        rows.append(Row(group, f"gc.collect(), {name}", best, median, "ns", more))
    added: dict[str, list[float]] = {}
    for label, name in (
        ("as kept", "100k entries as the hub keeps them (the offset)"),
        ("holding PublishResult", "100k entries holding a PublishResult (before)"),
    ):
        added[label] = [k - a for k, a in zip(times[name], alone, strict=True)]
    kept, before = added["as kept"], added["holding PublishResult"]
    rows.append(
        Row(
            group,
            "what 100k entries as kept add to a full collection",
            min(kept),
            statistics.median(kept),
            "ns",
            target=10 * MS,
        )
    )
    rows.append(
        Row(
            group,
            "what 100k entries holding PublishResult added (before)",
            min(before),
            statistics.median(before),
            "ns",
            "reference",
            ratio(statistics.median(before), statistics.median(kept)),
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run every section, print the report; 1 only with ``--check`` and a failed target."""
    parser = argparse.ArgumentParser(description="Micro-benchmarks of wshub's pure core.")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    args = parser.parse_args(argv)
    settings, mode = (QUICK, "quick") if args.quick else (FULL, "full")
    keys, other = (make_keys(max(COUNTS.values()), publisher) for publisher in ("client", "peer"))
    sections: list[Callable[[], list[Row]]] = [
        lambda: hashing_rows(settings),
        lambda: breaker_rows(settings),
        lambda: dedup_rows(settings, keys, other),
        lambda: sweep_rows(settings, keys, other),
        lambda: metrics_rows(settings),
        lambda: memory_rows(settings),
        lambda: encode_rows(settings),
        lambda: enqueue_rows(settings),
        lambda: collector_rows(settings),
    ]
    rows: list[Row] = []
    for number, section in enumerate(sections, 1):
        print(f"running section {number} of {len(sections)} ...", file=sys.stderr, flush=True)
        rows += section()
    info = machine()
    if args.markdown:
        print_markdown(rows, info, mode)
    else:
        print_text(rows)
    if args.json:
        results = [asdict(row) | {"verdict": row.verdict} for row in rows]
        document = {"mode": mode, "machine": info, "rows": results}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    failed = [row.name for row in rows if row.verdict == "FAIL"]
    if failed:
        print(f"\n{len(failed)} target(s) not met: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
