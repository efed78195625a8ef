"""What one fan-out costs: the flush tick writing one message to N subscribers, timed.

The fast server runs in this process, the clients are the end-to-end load generators
(``loadgen.py``, as in the sweep). One message is published every 100 ms, so the hub is quiet
and the tick writes each at once. A trio ``Instrument`` times the flush tick task's steps
(its write loop is one step), and every ``write(2)`` of the fast server is timed as well, so
the report says how much of a tick is the system call and how much the hub's own work::

    python benchmarks/tick_time.py               # 1000 subscribers, 40 messages
    python benchmarks/tick_time.py 100 20        # 100 subscribers, 20 messages
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import trio

import e2e
import servers
from wshub import open_hub
from wshub.servers import framewriter
from wshub.servers.fast import serve_fast


class TickTimer(trio.abc.Instrument):
    """Times each step of the flush tick task."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self._started = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("FlushTick.run"):
            self._started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("FlushTick.run"):
            self.steps.append(time.perf_counter() - self._started)


class WriteTimer:
    """Wraps ``FrameWriter._write_now`` (the one ``write(2)`` of a frame) to time it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._original = framewriter.FrameWriter._write_now

    def install(self) -> None:
        original, timer = self._original, self

        def timed(writer: Any, data: bytes) -> int:
            started = time.perf_counter()
            try:
                return original(writer, data)
            finally:
                timer.seconds += time.perf_counter() - started
                timer.calls += 1

        framewriter.FrameWriter._write_now = timed  # type: ignore[method-assign]

    def remove(self) -> None:
        framewriter.FrameWriter._write_now = self._original  # type: ignore[method-assign]


async def measure(subscribers: int, count: int) -> None:
    """Publish ``count`` messages 100 ms apart to ``subscribers`` clients; print the times."""
    async with open_hub(servers._wshub_config()) as hub, trio.open_nursery() as nursery:
        server = await nursery.start(serve_fast, hub, "127.0.0.1", 0)
        clients = await trio.to_thread.run_sync(e2e.start_clients, server.port, subscribers)
        await trio.sleep(2)
        ticks, writes = TickTimer(), WriteTimer()
        writes.install()
        trio.lowlevel.add_instrument(ticks)
        try:
            for n in range(count):
                await hub.publish(servers.STREAM, servers.payload(n))
                await trio.sleep(0.1)
        finally:
            trio.lowlevel.remove_instrument(ticks)
            writes.remove()
        flushes = sorted(step for step in ticks.steps if step > 0.0005)  # the write loops
        median = statistics.median(flushes)
        print(
            f"{subscribers} subscribers, {len(flushes)} ticks: median {median * 1e3:.2f} ms"
            f" ({median / subscribers * 1e6:.2f} us a connection), max {max(flushes) * 1e3:.2f}"
            f" ms; write(2): {writes.calls} calls, {writes.seconds / writes.calls * 1e6:.2f} us"
            f" each, {writes.seconds / sum(flushes):.0%} of the ticks' time"
        )
        await trio.to_thread.run_sync(e2e.stop_clients, clients)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(
        measure,
        int(sys.argv[1]) if len(sys.argv) > 1 else 1000,
        int(sys.argv[2]) if len(sys.argv) > 2 else 40,
    )
