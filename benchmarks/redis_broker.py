"""The Redis broker measured beside the memory broker, in one bounded run.

Run ``python benchmarks/redis_broker.py`` on a quiet machine (Debian's ``redis-server`` must be
installed; the run starts its own on a free port of 127.0.0.1, without persistence): three
rounds, about six minutes. ``--markdown`` prints the tables pasted into docs/benchmarks.md,
``--json PATH`` chooses where the results go (default
``benchmarks/results/redis-broker-MODE.json``), ``--charts DIR`` where the chart goes (default
``docs/img`` in full mode, ``benchmarks/results/img`` otherwise), ``--report PATH`` measures
nothing and reports a results file again, ``--only PART`` runs one part (``fanout``,
``publish``, ``resume``; repeatable). ``--rounds``, ``--warmup``,
``--window``, ``--subscribers``, ``--workers``, ``--publishes`` and ``--resume`` shrink a run to
check the code (mode ``custom``: never the docs' numbers). What it measures, all on 127.0.0.1:

1. Fan-out: deliveries per second to ``--subscribers`` (1000) subscribers of one stream,
   published as fast as the publisher tasks can (``hub.publish`` in a loop), with the server
   processes of ``benchmarks/servers.py`` and the load generator of the end-to-end suite:
   ``wshub-fast`` on the memory broker (one process), then ``wshub-redis`` with 1, 2 and 4
   worker processes on one Redis, the subscribers spread over the workers and the publisher
   tasks in the first. A lone publisher on Redis waits one round trip per message, so the
   worker rows run 16 publisher tasks, whose publishes share round trips; the memory broker
   runs both ways, so that each Redis row has a memory row with the same publishers. The rows
   are interleaved within each round (Redis is flushed between rows) and the report takes the
   median over rounds. Per row: the server processes' CPU time per delivery in microseconds
   (user + system, from ``/proc``; what decides how N cores scale), Redis's own, and where
   the cores went while publishing.
2. Publish rate through Redis from one process: one task publishing in a loop (each publish is
   one round trip), and 32 tasks publishing at once, to one stream and spread over 8 streams
   (publishes that wait together share one script call per stream and one pipeline).
3. Resume: from ``hello`` to the last of 1,000 messages replayed from Redis, on a fresh
   in-memory connection (median of 5).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import trio

import _redis_report as report
from e2e import RESULTS, Child, delivered_rate, start_clients, stop_clients

HERE = Path(__file__).resolve().parent
PARTS = ("fanout", "publish", "resume")
PUBLISHERS = 16  # publisher tasks of the rows whose publishes share round trips


@dataclass(frozen=True)
class Settings:
    """How long and how big: ``FULL``, or shrunk by the command line (mode ``custom``)."""

    rounds: int
    warmup: float  # seconds of publishing before the measured window
    window: float  # seconds measured
    subscribers: int
    workers: tuple[int, ...]  # worker counts of the Redis rows with PUBLISHERS tasks
    publishes: int  # one task's publishes; each of the 32 tasks publishes a sixth of it
    resume: int  # messages replayed by each resume


FULL = Settings(3, 1.0, 3.0, 1000, (1, 2, 4), 3000, 1000)


@dataclass(frozen=True)
class Row:
    """One fan-out configuration: a server kind, its processes and its publisher tasks."""

    kind: str
    workers: int
    publishers: int

    @property
    def name(self) -> str:
        """``memory, 1 process, 16 publishers`` and the like (the key in the results)."""
        if self.kind == "wshub-fast":
            where = "memory, 1 process"
        else:
            where = f"redis, {self.workers} worker{'s' if self.workers > 1 else ''}"
        return f"{where}, {self.publishers} publisher{'s' if self.publishers > 1 else ''}"


def rows(settings: Settings) -> list[Row]:
    """The fan-out rows of a round, in the order they run."""
    out = [Row("wshub-fast", 1, 1), Row("wshub-fast", 1, PUBLISHERS), Row("wshub-redis", 1, 1)]
    out += [Row("wshub-redis", workers, PUBLISHERS) for workers in settings.workers]
    return out


# ---------------------------------------------------------------------------------- Redis


class Redis:
    """A redis-server on a free port of 127.0.0.1, no persistence."""

    def __init__(self, directory: str) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--dir", directory, "--appendonly", "no", "--loglevel", "warning"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.command("PING").startswith(b"+PONG"):
                    return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *words: str) -> bytes:
        """One command in the inline protocol; the raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as connection:
            connection.sendall(" ".join(words).encode() + b"\r\n")
            return connection.recv(65536)

    def close(self) -> None:
        """Kill it (nothing to keep)."""
        self.process.kill()
        self.process.wait()


# ---------------------------------------------------------------------------------- fan-out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores so far, from /proc/stat (idle and iowait not busy)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = float(sum(fields[:8]))
    return total - fields[3] - fields[4], total


def fanout(row: Row, settings: Settings, redis: Redis) -> dict[str, float]:
    """One fan-out point: deliveries/s, CPU per delivery, and where the cores went.

    CPU per delivery counts from the first publish to the last delivery (the load generators
    are asked only after the servers and Redis have gone quiet), over every delivery counted.
    """
    redis.command("FLUSHALL")  # each row starts from an empty Redis
    os.environ["WSHUB_BENCH_PUBLISHERS"] = str(row.publishers)  # the servers inherit it
    servers: list[Child] = []
    clients: list[Child] = []
    try:
        for number in range(row.workers):
            argv = [sys.executable, "servers.py", row.kind, "--lifetime", "600"]
            servers.append(Child(f"{row.kind}-{number}", argv))
        ports = [int(server.expect("ready", 30)["port"]) for server in servers]
        for index, port in enumerate(ports):
            share = settings.subscribers // row.workers
            share += index < settings.subscribers % row.workers
            clients += start_clients(port, share, processes=max(1, 2 // row.workers))
        time.sleep(0.3)
        groups = {
            "servers": [server.pid for server in servers],
            "loadgen": [client.pid for client in clients],
            "redis": [redis.process.pid] if row.kind == "wshub-redis" else [],
        }

        def group_cpu() -> dict[str, float]:
            return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}

        before, busy_before, wall_before = group_cpu(), machine_busy(), time.monotonic()
        seconds = settings.warmup + settings.window
        servers[0].send(f"publish 0 {seconds}")
        published = servers[0].expect("published", seconds + 60)
        during, busy_after, wall = group_cpu(), machine_busy(), time.monotonic() - wall_before
        quiet(groups["servers"] + groups["redis"])  # the tail reaches every subscriber
        after = group_cpu()
        for client in clients:
            client.send("report")
        counts = [client.expect("result", 60) for client in clients]
        start, end = published["start"] + settings.warmup, published["end"]
        total = sum(sum(result["buckets"].values()) for result in counts)
        return {
            "deliveries_per_s": delivered_rate(counts, start, end),
            "published": published["count"],
            "deliveries": total,
            "server_us_per_delivery": (after["servers"] - before["servers"]) / max(total, 1) * 1e6,
            "redis_us_per_delivery": (after["redis"] - before["redis"]) / max(total, 1) * 1e6,
            **{f"{name}_cores": (during[name] - before[name]) / wall for name in groups},
            "machine_busy": (busy_after[0] - busy_before[0]) / (busy_after[1] - busy_before[1]),
        }
    finally:
        if clients:
            stop_clients(clients)
        for server in servers:
            server.close()


def quiet(pids: list[int], step: float = 0.2, timeout: float = 20.0) -> None:
    """Wait until ``pids`` used almost no CPU for ``step`` seconds (the backlog is delivered)."""
    deadline = time.monotonic() + timeout
    previous = sum(cpu_seconds(pid) for pid in pids)
    while time.monotonic() < deadline:
        time.sleep(step)
        now = sum(cpu_seconds(pid) for pid in pids)
        if now - previous < 0.05 * step * len(pids):
            return
        previous = now


# ---------------------------------------------------------------------------------- one process


async def publish_and_resume(
    redis_url: str, settings: Settings, parts: tuple[str, ...]
) -> dict[str, float]:
    """Publish rates through Redis (1 and 32 tasks), and a resume from Redis."""
    from wshub import HubConfig, open_hub

    config = HubConfig.production().merged(
        {
            "server": {"allow_anonymous": True},
            "broker": {"kind": "redis", "url": redis_url},
            "metrics": {"log": False},
            "limits": {"max_queue": max(10_000, 2 * settings.resume)},
            "history": {"size": max(1000, settings.resume)},
        }
    )
    results: dict[str, float] = {}
    async with open_hub(config) as hub:
        if "publish" in parts:
            results.update(await publish_rates(hub, settings.publishes))
        if "resume" in parts:
            results["resume_ms_median"] = await resume_time(hub, settings.resume)
    return results


async def publish_rates(hub: Any, count: int) -> dict[str, float]:
    """Publishes/s through Redis: one task awaiting each, then 32 tasks at once."""
    results: dict[str, float] = {}
    started = trio.current_time()
    for n in range(count):
        await hub.publish("rate.one", {"n": n})
    results["publishes_per_s_one_task"] = count / (trio.current_time() - started)

    tasks, each = 32, max(1, count // 6)
    for streams, name in (
        (1, "publishes_per_s_32_tasks"),
        (8, "publishes_per_s_32_tasks_8_streams"),
    ):
        started = trio.current_time()

        async def publisher(task: int, stream: str) -> None:
            for n in range(each):
                await hub.publish(stream, {"task": task, "n": n})

        async with trio.open_nursery() as nursery:
            for task in range(tasks):
                nursery.start_soon(publisher, task, f"rate.many.{streams}.{task % streams}")
        results[name] = tasks * each / (trio.current_time() - started)
    return results


async def resume_time(hub: Any, count: int) -> float:
    """Median ms from ``hello`` to the last of ``count`` messages replayed from Redis (5 runs)."""
    from wshub import Position
    from wshub.testing import connect_memory

    for n in range(count):
        await hub.publish("resume", {"n": n, "text": "x" * 60})
    times = []
    for attempt in range(5):
        started = trio.current_time()
        client = await connect_memory(hub, f"r{attempt}", subscribe={"resume": Position(0, None)})
        await client.receive()  # welcome
        for _ in range(count):
            await client.receive()
        times.append(trio.current_time() - started)
        await client.aclose()
    return statistics.median(times) * 1000


# ---------------------------------------------------------------------------------- main


def measure(settings: Settings, parts: tuple[str, ...]) -> dict[str, Any]:
    """Every part once (the fan-out rows ``settings.rounds`` times, interleaved)."""
    fan: dict[str, list[dict[str, float]]] = {}
    one_process: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as directory:
        redis = Redis(directory)
        os.environ["WSHUB_BENCH_REDIS_URL"] = redis.url  # the servers inherit it
        try:
            if "fanout" in parts:
                for round_number in range(settings.rounds):
                    for row in rows(settings):
                        print(f"round {round_number + 1}/{settings.rounds}: {row.name}", flush=True)
                        fan.setdefault(row.name, []).append(fanout(row, settings, redis))
            if "publish" in parts or "resume" in parts:
                redis.command("FLUSHALL")
                print("one process: publish rates and resume", flush=True)
                one_process = trio.run(publish_and_resume, redis.url, settings, parts)
        finally:
            redis.close()
    return {"fanout": fan, "one_process": one_process}


def _workers(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split(","))


def main(argv: list[str] | None = None) -> int:
    """Measure (or ``--report`` a results file), print the tables, write the chart."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", type=Path, metavar="PATH", help="where to write the results")
    parser.add_argument("--charts", type=Path, metavar="DIR", help="where to write the chart")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument("--report", type=Path, metavar="PATH", help="measure nothing: report")
    parser.add_argument("--only", choices=PARTS, action="append", help="run this part only")
    parser.add_argument("--rounds", type=int, help=f"fan-out rounds (default {FULL.rounds})")
    parser.add_argument("--warmup", type=float, help=f"seconds (default {FULL.warmup:g})")
    parser.add_argument("--window", type=float, help=f"seconds (default {FULL.window:g})")
    parser.add_argument("--subscribers", type=int, help=f"default {FULL.subscribers}")
    parser.add_argument("--workers", type=_workers, help="Redis worker counts, e.g. 1,2,4")
    parser.add_argument("--publishes", type=int, help=f"one task's (default {FULL.publishes})")
    parser.add_argument("--resume", type=int, help=f"messages (default {FULL.resume})")
    args = parser.parse_args(argv)
    if args.report:
        results = orjson.loads(args.report.read_bytes())
    else:
        shrunk = {
            name: getattr(args, name)
            for name in ("rounds", "warmup", "window", "subscribers", "workers", "publishes")
            if getattr(args, name) is not None
        }
        if args.resume is not None:
            shrunk["resume"] = args.resume
        settings = replace(FULL, **shrunk)
        parts = tuple(args.only or PARTS)
        mode = "full" if settings == FULL and parts == PARTS else "custom"
        info = report.machine()
        began = time.monotonic()
        measured = measure(settings, parts)
        info["seconds"] = f"{time.monotonic() - began:.0f}"
        info["load"] = Path("/proc/loadavg").read_text().split()[0]
        results = report.results(mode, asdict(settings), measured, info)
        path = args.json or RESULTS / f"redis-broker-{mode}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        print(f"\nresults: {path}")
    report.print_text(results)
    if args.markdown:
        report.print_markdown(results)
    full = results["mode"] == "full"
    charts = args.charts or (HERE.parent / "docs" / "img" if full else RESULTS / "img")
    written = report.chart(results, charts)
    print(f"\nchart: {written or 'none (no fan-out rows, or matplotlib is not installed)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
