"""End-to-end benchmarks: wshub against its references, every server in its own process.

Run ``python benchmarks/e2e.py`` (or ``nox -s bench``); ``--quick`` for one short round (about
2 minutes), ``--markdown`` to print the tables pasted into docs/benchmarks.md, ``--json PATH``
to choose where the results go (default ``benchmarks/results/e2e-MODE.json``), ``--charts DIR``
for the PNG charts (default ``docs/img`` in full mode, ``benchmarks/results/img`` with
``--quick``), ``--check`` to exit 1 when a target fails, ``--no-profile`` to skip py-spy.

What it measures, all on 127.0.0.1 (servers in ``servers.py``, clients in ``loadgen.py``):

1. Fan-out throughput: messages delivered per second to 1, 100 and 1000 subscribers of one
   stream, each server publishing as fast as it can; counted by the clients (two processes,
   one for a single subscriber) over a window that starts after a warm-up. Full mode makes
   three rounds, the servers interleaved within each, and reports the median.
2. Latency, publish to receive, at 1000 subscribers and half of the rate the server reached in
   the same round, timed on one connection in ten with the kernel's receive timestamps. The
   two raw stacks are timed sending each message as its own frame at 10 messages per second:
   the floor that any server on them starts from; so is ``raw-socket``, one non-blocking
   ``send()`` per client from a single loop, the floor of any fan-out in Python on the machine.
3. Memory per idle connection at 5,000 connections (hello'd and subscribed): the growth of the
   server's RSS from before they connect (after 50 warm-up connections came and went) to after,
   divided by the connections.
4. Resume: from ``hello`` to the last of 1,000 replayed messages, on a fresh connection.
5. A py-spy profile of the wshub server under the 1000-subscriber load (a separate window, so
   the sampler's CPU does not count against the table).
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

import _e2e_report as report

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SUBSCRIBERS = (1, 100, 1000)
SERVERS = (
    "wshub",
    "wshub-fast",
    "wshub-serve",
    "wshub-hypercorn",
    "trio-websocket",
    "hypercorn",
    "websockets",
    "websockets-batched",
    "raw-socket",
)
LATENCY_SERVERS = ("wshub", "wshub-fast", "wshub-hypercorn", "websockets")  # at half their maximum
# The floors: the raw stacks sending each message as its own frame to every client, at a rate
# low enough for them to keep up. What one message costs to fan out to 1000 clients there
# bounds what any server built on that stack can reach.
FLOOR_SERVERS = ("trio-websocket", "hypercorn", "raw-socket")
FLOOR_RATE = 10.0
AT_WSHUB_RATE = "raw-socket@wshub-rate"  # raw-socket's latency at wshub's half-load rate
MEMORY_SERVERS = ("wshub", "wshub-fast", "wshub-serve", "trio-websocket", "websockets")
LOADGEN_PROCESSES = 2
SAMPLE_EVERY = 10  # time every message on one connection in ten


@dataclass(frozen=True)
class Settings:
    """How long and how often: ``FULL`` or ``QUICK``."""

    rounds: int
    warmup: float  # seconds of publishing before the measured window
    window: float  # seconds measured
    latency_window: float
    idle_connections: int
    resume_repeats: int
    profile_seconds: float


FULL = Settings(3, 1.0, 3.0, 3.0, 5000, 30, 5.0)
QUICK = Settings(1, 0.5, 1.5, 2.0, 5000, 10, 3.0)


class ChildFailed(RuntimeError):
    """A server or load-generator process died or did not answer in time."""


class Child:
    """A process of ours that reads commands and answers with JSON lines."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        # Its standard error, shown when it fails; closed in close().
        self.log = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=HERE
        )
        self.buffer = b""

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def send(self, line: str) -> None:
        """Write one command line."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line.encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise ChildFailed(f"{self.name} exited: {self.stderr()}") from None

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """Wait for the next answer, which must be ``event``."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ChildFailed(f"{self.name}: no {event!r} within {timeout:g} s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise ChildFailed(f"{self.name} exited: {self.stderr()}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        answer: dict[str, Any] = orjson.loads(line)
        if answer.get("event") != event:
            raise ChildFailed(f"{self.name}: expected {event!r}, got {line[:200]!r}")
        return answer

    def stderr(self) -> str:
        """The tail of its standard error."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        """Ask it to quit, and kill it if it does not within two seconds."""
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
                self.process.wait(2)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.log.close()


def start_server(kind: str) -> tuple[Child, int]:
    """Start a server process; returns it and its port."""
    server = Child(kind, [sys.executable, "servers.py", kind, "--lifetime", "900"])
    return server, int(server.expect("ready", 30)["port"])


def start_clients(port: int, count: int, *, processes: int = LOADGEN_PROCESSES) -> list[Child]:
    """Start load generators sharing ``count`` connections; returns once all are welcomed."""
    processes = min(processes, count)
    shares = [count // processes + (i < count % processes) for i in range(processes)]
    clients, first = [], 0
    try:
        for i, share in enumerate(shares):
            argv = [sys.executable, "loadgen.py", str(port), str(share), "--first", str(first)]
            clients.append(Child(f"loadgen-{i}", [*argv, "--lifetime", "300"]))
            first += share
        for client in clients:
            answer = client.expect("connected", 120)
            if answer["failed"]:
                raise ChildFailed(f"{answer['failed']} connections failed: {answer['errors']}")
    except BaseException:
        for client in clients:
            client.close()
        raise
    return clients


def stop_clients(clients: list[Child]) -> list[dict[str, Any]]:
    """Stop the load generators; returns their results."""
    try:
        for client in clients:
            client.send("stop")
        return [client.expect("result", 60) for client in clients]
    finally:
        for client in clients:
            client.close()


def wait_disconnected(server: Child, timeout: float = 20.0) -> None:
    """Wait until the server holds no connection (between points)."""
    deadline = time.monotonic() + timeout
    while True:
        server.send("connections")
        if server.expect("connections", 10)["count"] == 0 or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def delivered_rate(results: list[dict[str, Any]], start: float, end: float) -> float:
    """Deliveries per second over the whole buckets inside ``[start, end]``."""
    hz: int = results[0]["bucket_hz"]
    first, last = int(start * hz) + 1, int(end * hz)  # whole buckets only
    total: int = sum(
        count
        for result in results
        for bucket, count in result["buckets"].items()
        if first <= int(bucket) < last
    )
    return total * hz / max(1, last - first)


def wait_quiet(clients: list[Child], quiet: float = 0.3, timeout: float = 20.0) -> None:
    """Wait until no client has received anything for ``quiet`` seconds.

    After a point published as fast as it can, a server may still hold a backlog in its
    queues; the latency that follows is measured at half load, not behind that backlog.
    """
    previous = -1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for client in clients:
            client.send("report")
        results = [client.expect("result", 60) for client in clients]
        total = sum(sum(result["buckets"].values()) for result in results)
        if total == previous:
            return
        previous = total
        time.sleep(quiet)


def closes(results: list[dict[str, Any]]) -> dict[str, int]:
    """Connections the server closed (or lost) during a point, by close code."""
    merged: dict[str, int] = {}
    for result in results:
        for code, count in result["closed"].items():
            merged[code] = merged.get(code, 0) + count
    return merged


@dataclass
class Run:
    """Everything measured in one run, as written to the JSON results."""

    mode: str
    settings: Settings
    throughput: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    published: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    disconnects: list[str] = field(default_factory=list)
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)
    resume_ms: list[float] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)


def fanout(run: Run, kind: str, profile: bool) -> None:
    """One round of the fan-out points of one server (and its latency, at 1000)."""
    s = run.settings
    server, port = start_server(kind)
    try:
        for subscribers in SUBSCRIBERS:
            clients = start_clients(port, subscribers)
            try:
                time.sleep(0.2)
                server.send(f"publish 0 {s.warmup + s.window}")
                published = server.expect("published", s.warmup + s.window + 60)
                time.sleep(0.2)
                for client in clients:
                    client.send("report")
                counts = [client.expect("result", 60) for client in clients]
                start, end = published["start"] + s.warmup, published["end"]
                rate = delivered_rate(counts, start, end)
                table = run.throughput.setdefault(kind, {})
                table.setdefault(str(subscribers), []).append(rate)
                sent = run.published.setdefault(kind, {})
                sent.setdefault(str(subscribers), []).append(published["count"])
                if subscribers == 1000 and kind in LATENCY_SERVERS + FLOOR_SERVERS:
                    wait_quiet(clients)
                if subscribers == 1000 and kind in LATENCY_SERVERS:
                    measure_latency(run, kind, server, clients, rate / subscribers / 2)
                elif subscribers == 1000 and kind in FLOOR_SERVERS:
                    measure_latency(run, kind, server, clients, FLOOR_RATE)
                    if kind == "raw-socket" and "wshub" in run.latency:
                        # and at wshub's own half-load rate of this round: the target's floor
                        wshub_rate = run.latency["wshub"]["rates"][-1]
                        measure_latency(run, AT_WSHUB_RATE, server, clients, wshub_rate)
                if profile and subscribers == 1000 and kind == "wshub":
                    run.profile = profile_server(server, s.profile_seconds)
            finally:
                results = stop_clients(clients)
            lost = closes(results)
            if lost:
                run.disconnects.append(f"{kind} at {subscribers}: closed {lost}")
            wait_disconnected(server)
    finally:
        server.close()


def publish_timed(
    server: Child, clients: list[Child], rate: float, seconds: float, sample_every: int
) -> dict[str, Any]:
    """Publish at ``rate`` per second for ``seconds``, one connection in ``sample_every``
    timing every message it receives; returns the server's ``published`` answer."""
    for client in clients:
        client.send(f"sample {sample_every}")
    server.send(f"publish {rate:.3f} {seconds}")
    return server.expect("published", seconds + 60)


def collect(clients: list[Child]) -> list[dict[str, Any]]:
    """Stop timing messages; the load generators' results so far."""
    for client in clients:
        client.send("sample 0")
        client.send("report")
    return [client.expect("result", 60) for client in clients]


def window_latencies(results: list[dict[str, Any]], start: float, end: float) -> list[float]:
    """The latencies (ms) of the timed messages published within ``[start, end]`` (Unix s)."""
    first_ns, last_ns = int(start * 1e9), int(end * 1e9)
    return [
        latency / 1e6
        for result in results
        for published, latency in zip(result["published_at"], result["latencies"], strict=True)
        if first_ns <= published <= last_ns
    ]


def measure_latency(run: Run, kind: str, server: Child, clients: list[Child], rate: float) -> None:
    """Publish at ``rate`` per second and keep the latencies of the measured window."""
    s = run.settings
    timed = publish_timed(server, clients, rate, s.warmup + s.latency_window, SAMPLE_EVERY)
    time.sleep(0.3)
    results = collect(clients)
    entry = run.latency.setdefault(kind, {"rates": [], "ms": []})
    entry["rates"].append(rate)
    entry["ms"].extend(window_latencies(results, timed["start"] + s.warmup, timed["end"]))


def profile_server(server: Child, seconds: float) -> dict[str, Any]:
    """py-spy the server for ``seconds`` of publishing as fast as it can."""
    spy = shutil.which("py-spy")
    if spy is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    RESULTS.mkdir(exist_ok=True)
    output = RESULTS / "profile-wshub-1000.txt"
    argv = [spy, "record", "--pid", str(server.pid), "--duration", str(int(seconds))]
    argv += ["--rate", "200", "--format", "raw", "--function", "--nonblocking"]
    sampler = subprocess.Popen(
        [*argv, "--output", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(0.5)  # let it attach
    server.send(f"publish 0 {seconds + 0.5}")
    published = server.expect("published", seconds + 60)
    _, error = sampler.communicate(timeout=60)
    if sampler.returncode or not output.exists():
        return {"error": error.decode(errors="replace")[-500:]}
    profile = report.summarize_profile(output.read_text())
    profile["published_per_second"] = published["count"] / (published["end"] - published["start"])
    return profile


def idle_memory(run: Run, kind: str) -> None:
    """RSS growth per idle connection at ``settings.idle_connections``."""
    server, port = start_server(kind)
    try:
        stop_clients(start_clients(port, 50))  # warm up code paths and pools
        wait_disconnected(server)
        time.sleep(0.5)
        before = report.rss(server.pid)
        clients = start_clients(port, run.settings.idle_connections)
        time.sleep(1.0)
        after = report.rss(server.pid)
        results = stop_clients(clients)
        connected = sum(result["connections"] for result in results)
        run.memory[kind] = {
            "connections": connected,
            "before_bytes": before,
            "after_bytes": after,
            "per_connection_bytes": (after - before) / connected,
        }
    finally:
        server.close()


def resume(run: Run) -> None:
    """Time replays of 1,000 messages to a reconnecting client."""
    server, port = start_server("wshub")
    try:
        server.send("fill replay 1000")
        server.expect("filled", 60)
        argv = [sys.executable, "loadgen.py", str(port), "1", "--resume", "replay"]
        client = Child("resume", [*argv, "--repeats", str(run.settings.resume_repeats)])
        try:
            run.resume_ms = client.expect("resumed", 120)["milliseconds"]
        finally:
            client.close()
    finally:
        server.close()


def median(values: list[float]) -> float:
    """The median (of rounds)."""
    return statistics.median(values)


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark, print the report; 1 only with ``--check`` and a failed target."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--json", type=Path, metavar="PATH", help="where to write the results")
    parser.add_argument("--charts", type=Path, metavar="DIR", help="where to write the charts")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument(
        "--report", type=Path, metavar="PATH", help="measure nothing: report a results file"
    )
    args = parser.parse_args(argv)
    if args.report:
        results = orjson.loads(args.report.read_bytes())
        return report_results(results, args, quick=results["mode"] == "quick")
    settings, mode = (QUICK, "quick") if args.quick else (FULL, "full")
    run = Run(mode, settings)
    info = report.machine()
    began = time.monotonic()
    for round_number in range(settings.rounds):
        for kind in SERVERS:
            print(f"round {round_number + 1}/{settings.rounds}: fan-out, {kind}", flush=True)
            fanout(run, kind, profile=round_number == 0 and not args.no_profile)
    for kind in MEMORY_SERVERS:
        print(f"idle memory, {kind}", flush=True)
        idle_memory(run, kind)
    print("resume", flush=True)
    resume(run)
    info["seconds"] = f"{time.monotonic() - began:.0f}"
    info["load"] = Path("/proc/loadavg").read_text().split()[0]
    results = report.results(run, info)
    path = args.json or RESULTS / f"e2e-{mode}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"\nresults: {path}")
    return report_results(results, args, quick=args.quick)


def report_results(results: dict[str, Any], args: argparse.Namespace, *, quick: bool) -> int:
    """Print the tables, write the charts; 1 only with ``--check`` and a failed target."""
    report.print_text(results)
    if args.markdown:
        report.print_markdown(results)
    charts = args.charts or (RESULTS / "img" if quick else HERE.parent / "docs" / "img")
    written = report.charts(results, charts)
    print(f"\ncharts: {', '.join(map(str, written)) or 'none (matplotlib is not installed)'}")
    failed = any(target["verdict"] == "FAIL" for target in results["targets"])
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
