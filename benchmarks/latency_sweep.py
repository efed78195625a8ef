"""The latency sweep (issue 14): publish-to-receive latency against the publish rate.

Run ``python benchmarks/latency_sweep.py`` (``nox -s bench`` runs it after ``e2e.py``);
``--quick`` for one short round (about 3 minutes), ``--markdown`` for the tables of
docs/benchmarks.md, ``--json PATH`` for the results (default
``benchmarks/results/latency-sweep-MODE.json``), ``--charts DIR`` for the chart (default
``docs/img`` in full mode, ``benchmarks/results/img`` with ``--quick``), ``--check`` to exit 1
when a target is not met, ``--report PATH`` to print a results file again without measuring.
``--subscribers``, ``--rates``, ``--small`` and ``--window`` shrink a run to check the code.

What it measures, on 127.0.0.1, with the servers of ``servers.py`` and the load generators of
``loadgen.py``, started and driven by ``e2e.py``'s helpers:

- At 1000 subscribers, for each rate of ``RATES`` messages per second, every server of
  ``SERVERS`` in turn publishes at that rate for ``warmup + window`` seconds. Timed on one
  connection in ``sample_every`` (one in ten, fewer at high rates so that the load
  generators time at most ``TIMED_PER_SECOND`` messages a second): the kernel's receive
  timestamp minus the time the message was due, for the messages due within the window.
  Then p50 and p99, and the delivered fraction: deliveries counted in the window's 50 ms
  buckets over ``rate * subscribers``.
- The same at 100 subscribers and 100 messages per second (``SMALL``).
- Every server runs all along with its clients connected (an idle server and its idle load
  generators cost no CPU), so the rounds interleave cheaply: for each rate, every server in
  turn. Each figure is the median of its rounds. After each window the sweep waits until no
  client has received anything for 0.3 s (at most ``drain`` seconds), so a late message
  still counts in the latency of its point and no backlog spills into the next one. A
  server that cut any client gets a fresh set of clients before its next point.

A point is *saturated* when fewer than 95% of the offered deliveries arrived within the
window, or its p50 is above 100 ms, or the server cut a client, or its backlog was still
arriving ``drain`` seconds after the window (its clients are then replaced, so the backlog
does not run on into the next point); a server *saturates* at the lowest swept rate whose
point is saturated.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

import _sweep_report as report
import e2e
from e2e import Child, ChildFailed

SERVERS = ("wshub-fast", "wshub-serve", "websockets", "websockets-batched", "raw-socket")
RATES = (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)  # messages per second
SUBSCRIBERS = 1000
SMALL = (100, 100.0)  # the second point of the targets: subscribers, rate
TIMED_PER_SECOND = 20_000  # at most this many timed messages a second, over the load generators


@dataclass(frozen=True)
class Settings:
    """How long and how often: ``FULL`` or ``QUICK``."""

    rounds: int
    warmup: float  # seconds of publishing before the measured window
    window: float  # seconds measured
    drain: float  # at most this long waiting for a backlog after a window


FULL = Settings(rounds=2, warmup=1.0, window=3.0, drain=10.0)
QUICK = Settings(rounds=1, warmup=0.5, window=1.5, drain=3.0)


def sample_every(rate: float, subscribers: int) -> int:
    """Time one connection in this many: one in ten, fewer past ``TIMED_PER_SECOND``."""
    return max(e2e.SAMPLE_EVERY, math.ceil(rate * subscribers / TIMED_PER_SECOND))


@dataclass
class Served:
    """A server process of the sweep and the load generators holding its subscribers."""

    kind: str
    server: Child | None = None
    port: int = 0
    clients: list[Child] = field(default_factory=list)

    def start(self, subscribers: int) -> None:
        """(Re)start whatever is missing: the server, then ``subscribers`` connections."""
        if self.server is None:
            self.server, self.port = e2e.start_server(self.kind)
        if not self.clients:
            self.clients = e2e.start_clients(self.port, subscribers)

    def drop_clients(self) -> None:
        """Disconnect the clients and wait until the server has let them go."""
        clients, self.clients = self.clients, []
        with contextlib.suppress(ChildFailed):  # their processes are closed regardless
            e2e.stop_clients(clients)
        if self.server is not None:
            try:
                e2e.wait_disconnected(self.server)
            except ChildFailed:
                self.close()

    def close(self) -> None:
        """Stop the clients and the server."""
        for client in self.clients:
            client.close()
        self.clients = []
        if self.server is not None:
            self.server.close()
            self.server = None


@dataclass
class Sweep:
    """Everything measured, as written to the JSON results (``points``: one entry per
    window: server, subscribers, rate, round and what was measured)."""

    mode: str
    settings: Settings
    subscribers: int
    rates: tuple[float, ...]
    small: tuple[int, float]
    points: list[dict[str, Any]] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)


def measure(sweep: Sweep, served: Served, subscribers: int, rate: float) -> dict[str, Any]:
    """One window of one server at one rate; returns the point (also kept in ``sweep``)."""
    s = sweep.settings
    point: dict[str, Any] = {"server": served.kind, "subscribers": subscribers, "rate": rate}
    try:
        served.start(subscribers)
        assert served.server is not None
        for client in served.clients:
            client.send("clear")
        every = sample_every(rate, subscribers)
        seconds = s.warmup + s.window
        timed = e2e.publish_timed(served.server, served.clients, rate, seconds, every)
        began = time.monotonic()
        e2e.wait_quiet(served.clients, timeout=s.drain)
        drained = time.monotonic() - began < s.drain
        results = e2e.collect(served.clients)
    except ChildFailed as error:
        point["error"] = str(error)[:500]
        sweep.disconnects.append(f"{served.kind} at {rate:g}/s, {subscribers} subs: {error}")
        served.close()  # started afresh for the next point
        sweep.points.append(point)
        return point
    start, end = timed["start"] + s.warmup, timed["end"]
    ms = sorted(e2e.window_latencies(results, start, end))
    point.update(
        published_per_second=timed["count"] / (timed["end"] - timed["start"]),
        delivered=e2e.delivered_rate(results, start, end) / (rate * subscribers),
        sample_every=every,
        samples=len(ms),
        p50=report.percentile(ms, 0.5) if ms else None,
        p99=report.percentile(ms, 0.99) if ms else None,
        max=ms[-1] if ms else None,
        closed=e2e.closes(results),
        drained=drained,
    )
    if point["closed"]:
        sweep.disconnects.append(
            f"{served.kind} at {rate:g}/s, {subscribers} subs: closed {point['closed']}"
        )
    if point["closed"] or not drained:  # fresh clients: nothing of it runs on into the next
        served.drop_clients()
    sweep.points.append(point)
    return point


def phase(
    sweep: Sweep, servers: dict[str, Served], subscribers: int, rates: tuple[float, ...]
) -> None:
    """Every rate at ``subscribers``, the servers interleaved, ``rounds`` times."""
    for served in servers.values():
        print(f"connecting {subscribers} subscribers to {served.kind}", flush=True)
        try:
            served.start(subscribers)
        except ChildFailed as error:  # measure() tries again, and records what fails
            print(f"{served.kind}: {error}", flush=True)
            served.close()
    for round_number in range(sweep.settings.rounds):
        for rate in rates:
            for served in servers.values():
                point = measure(sweep, served, subscribers, rate)
                print(
                    f"round {round_number + 1}/{sweep.settings.rounds}, {subscribers} subs, "
                    f"{rate:g}/s, {served.kind}: {report.point_text(point)}",
                    flush=True,
                )
    for served in servers.values():
        served.drop_clients()


def run(sweep: Sweep, kinds: tuple[str, ...]) -> None:
    """The small point, then the sweep; every server started once and kept."""
    servers = {kind: Served(kind) for kind in kinds}
    try:
        subscribers, rate = sweep.small
        phase(sweep, servers, subscribers, (rate,))
        phase(sweep, servers, sweep.subscribers, sweep.rates)
    finally:
        for served in servers.values():
            served.close()


def _rates(text: str) -> tuple[float, ...]:
    return tuple(float(rate) for rate in text.split(","))


def main(argv: list[str] | None = None) -> int:
    """Sweep, then print the report; 1 only with ``--check`` and a target not met."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="one short round (~3 minutes)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="where to write the results")
    parser.add_argument("--charts", type=Path, metavar="DIR", help="where to write the chart")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is not met")
    parser.add_argument(
        "--report", type=Path, metavar="PATH", help="measure nothing: report a results file"
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated kinds")
    parser.add_argument("--subscribers", type=int, default=SUBSCRIBERS, help="of the sweep")
    parser.add_argument("--rates", type=_rates, default=RATES, help="comma-separated, msg/s")
    parser.add_argument(
        "--small",
        type=_rates,
        default=(float(SMALL[0]), SMALL[1]),
        metavar="SUBS,RATE",
        help="the second point (default 100,100)",
    )
    parser.add_argument("--window", type=float, help="seconds measured (and the settings')")
    parser.add_argument("--rounds", type=int, help="rounds (default 2, --quick 1)")
    args = parser.parse_args(argv)
    if args.report:
        results = orjson.loads(args.report.read_bytes())
        results["targets"] = report.targets(results)  # judged by the targets of this version
        return report_results(results, args, quick=results["mode"] != "full")
    settings, mode = (QUICK, "quick") if args.quick else (FULL, "full")
    if args.window or args.rounds:  # a shrunken run, to check the code: never the docs' numbers
        window = args.window or settings.window
        settings = Settings(args.rounds or settings.rounds, window / 3, window, settings.drain)
        mode = "custom"
    small = (int(args.small[0]), args.small[1])
    sweep = Sweep(mode, settings, args.subscribers, args.rates, small)
    info = report.machine()
    began = time.monotonic()
    run(sweep, tuple(args.servers.split(",")))
    info["seconds"] = f"{time.monotonic() - began:.0f}"
    info["load"] = Path("/proc/loadavg").read_text().split()[0]
    results = report.results(sweep, info)
    path = args.json or e2e.RESULTS / f"latency-sweep-{mode}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"\nresults: {path}")
    return report_results(results, args, quick=mode != "full")


def report_results(results: dict[str, Any], args: argparse.Namespace, *, quick: bool) -> int:
    """Print the tables and targets, write the chart; 1 only with ``--check`` and a miss."""
    report.print_text(results)
    if args.markdown:
        report.print_markdown(results)
    charts = args.charts or (e2e.RESULTS / "img" if quick else e2e.HERE.parent / "docs" / "img")
    written = report.chart(results, charts)
    print(f"\nchart: {written or 'none (matplotlib is not installed)'}")
    missed = any(target["verdict"] == "not met" for target in results["targets"])
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
