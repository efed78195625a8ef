"""The Redis broker measured beside the memory broker, in one bounded run (about two minutes).

Run ``python benchmarks/redis_broker.py`` (Debian's ``redis-server`` must be installed; the run
starts its own on a free port of 127.0.0.1, without persistence). ``--json PATH`` keeps the
numbers; ``--only publish`` runs part 2 alone (``--only fanout``, ``--only resume`` the
others). What it measures, on this machine, all on 127.0.0.1:

1. Fan-out: deliveries per second to 1000 subscribers of one stream, published as fast as one
   publisher task can (``hub.publish`` in a loop), with the server processes of
   ``benchmarks/servers.py`` and the load generator of the end-to-end suite (two processes):
   ``wshub-fast`` on the memory broker (one process), then ``wshub-redis`` with 1 and with 2
   worker processes on one Redis, the subscribers spread over the workers and the publisher in
   the first; a lone publisher waits one Redis round trip per message, so the Redis rows are
   also run with 16 publisher tasks in the first worker, whose publishes share round trips.
   Also the server processes' CPU seconds per million deliveries (user + system, from
   ``/proc``), which is what decides how N cores scale.
2. Publish rate through Redis from one process: one task publishing in a loop (each publish is
   one round trip), and 32 tasks publishing at once, to one stream and spread over 8 streams
   (publishes that wait together share one script call per stream and one pipeline).
3. Resume: from ``hello`` to the last of 1,000 messages replayed from Redis, on a fresh
   in-memory connection (median of 5).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from e2e import QUICK, Child, delivered_rate, start_clients, stop_clients

HERE = Path(__file__).resolve().parent
SUBSCRIBERS = 1000


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server on a free port, no persistence; returns it and its URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory]
    argv += ["--appendonly", "no", "--loglevel", "warning"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores so far, from /proc/stat (idle and iowait not busy)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = float(sum(fields[:8]))
    return total - fields[3] - fields[4], total


def fanout(
    kind: str, workers: int, publishers: int = 1, redis_pid: int | None = None
) -> dict[str, float]:
    """Deliveries/s at SUBSCRIBERS over ``workers`` server processes of ``kind``.

    Also where the machine's cores went during the publishing: the servers', the load
    generators' and Redis's CPU seconds per second of wall time, and how busy all cores were.
    """
    settings = QUICK
    os.environ["WSHUB_BENCH_PUBLISHERS"] = str(publishers)
    servers: list[Child] = []
    clients: list[Child] = []
    try:
        for number in range(workers):
            argv = [sys.executable, "servers.py", kind, "--lifetime", "300"]
            servers.append(Child(f"{kind}-{number}", argv))
        ports = [int(server.expect("ready", 30)["port"]) for server in servers]
        share = SUBSCRIBERS // workers
        for port in ports:
            clients += start_clients(port, share, processes=max(1, 2 // workers))
        time.sleep(0.3)
        groups = {
            "servers": [server.pid for server in servers],
            "loadgen": [client.pid for client in clients],
            "redis": [redis_pid] if redis_pid is not None else [],
        }

        def group_cpu() -> dict[str, float]:
            return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}

        before, busy_before, wall_before = group_cpu(), machine_busy(), time.monotonic()
        servers[0].send(f"publish 0 {settings.warmup + settings.window}")
        published = servers[0].expect("published", settings.warmup + settings.window + 60)
        after, busy_after, wall = group_cpu(), machine_busy(), time.monotonic() - wall_before
        time.sleep(0.5)  # the last messages reach the other workers through Redis
        cpu = sum(cpu_seconds(server.pid) for server in servers) - before["servers"]
        for client in clients:
            client.send("report")
        counts = [client.expect("result", 60) for client in clients]
        start, end = published["start"] + settings.warmup, published["end"]
        rate = delivered_rate(counts, start, end)
        total = sum(sum(result["buckets"].values()) for result in counts)
        return {
            "deliveries_per_s": rate,
            "published": published["count"],
            "cpu_s_per_million": cpu / max(total, 1) * 1e6,
            **{f"{name}_cores": (after[name] - before[name]) / wall for name in groups},
            "machine_busy": (busy_after[0] - busy_before[0]) / (busy_after[1] - busy_before[1]),
        }
    finally:
        if clients:
            stop_clients(clients)
        for server in servers:
            server.close()


PARTS = ("fanout", "publish", "resume")


async def publish_and_resume(redis_url: str, parts: tuple[str, ...] = PARTS) -> dict[str, float]:
    """Publish rates through Redis (1 and 32 tasks), and a 1000-message resume from Redis."""
    from wshub import HubConfig, open_hub

    config = HubConfig.production().merged(
        {
            "server": {"allow_anonymous": True},
            "broker": {"kind": "redis", "url": redis_url},
            "metrics": {"log": False},
            "limits": {"max_queue": 10_000},
        }
    )
    results: dict[str, float] = {}
    async with open_hub(config) as hub:
        if "publish" in parts:
            results.update(await publish_rates(hub))
        if "resume" in parts:
            results["resume_1000_ms_median"] = await resume_time(hub)
    return results


async def publish_rates(hub: Any) -> dict[str, float]:
    """Publishes/s through Redis: one task awaiting each, then 32 tasks at once."""
    results: dict[str, float] = {}
    count = 3000
    started = trio.current_time()
    for n in range(count):
        await hub.publish("rate.one", {"n": n})
    results["publishes_per_s_one_task"] = count / (trio.current_time() - started)

    tasks, each = 32, 500
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


async def resume_time(hub: Any) -> float:
    """Median ms from ``hello`` to the last of 1000 messages replayed from Redis (5 runs)."""
    from wshub import Position
    from wshub.testing import connect_memory

    for n in range(1000):
        await hub.publish("resume", {"n": n, "text": "x" * 60})
    times = []
    for attempt in range(5):
        started = trio.current_time()
        client = await connect_memory(hub, f"r{attempt}", subscribe={"resume": Position(0, None)})
        await client.receive()  # welcome
        for _ in range(1000):
            await client.receive()
        times.append(trio.current_time() - started)
        await client.aclose()
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    """Run everything once; print a table; ``--json`` writes the numbers too."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument(
        "--only", choices=PARTS, action="append", help="run this part only (repeatable)"
    )
    args = parser.parse_args(argv)
    parts = tuple(args.only or PARTS)
    with tempfile.TemporaryDirectory() as directory:
        redis, url = start_redis(directory)
        os.environ["WSHUB_BENCH_REDIS_URL"] = url  # the servers inherit it
        try:
            results: dict[str, Any] = {}
            if "fanout" in parts:
                pid = redis.pid
                results["memory, 1 process"] = fanout("wshub-fast", 1, redis_pid=pid)
                results["redis, 1 worker"] = fanout("wshub-redis", 1, redis_pid=pid)
                results["redis, 1 worker, 16 publishers"] = fanout("wshub-redis", 1, 16, pid)
                results["redis, 2 workers, 16 publishers"] = fanout("wshub-redis", 2, 16, pid)
            if "publish" in parts or "resume" in parts:
                results["publish and resume"] = trio.run(publish_and_resume, url, parts)
        finally:
            redis.kill()
            redis.wait()
    for name, figures in results.items():
        line = ", ".join(f"{key} {value:,.1f}" for key, value in figures.items())
        print(f"{name}: {line}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
