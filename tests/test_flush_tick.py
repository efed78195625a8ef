"""The flush tick's waiting rules at exact virtual times (autojump clock, fake writers).

With ``write_delay`` 0.01: ``idle`` is 0.1 s, the wait limit 0.5 s, and the pause after a
flush ``max(write_delay, flush time)`` (``flush_pause_ratio`` 1), cut short once every task
is blocked. Each test releases a first tick at t=0, then marks a probe writer dirty at
t=0.001; the time the second tick releases the probe shows how long the first one waited.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from wshub.core.sections import LimitsConfig
from wshub.hub.flush import FlushTick


class FakeWriter:
    """A writer that records when it is released and reports only when the test says."""

    def __init__(self, tick: FlushTick) -> None:
        self.tick = tick
        self.writer_alive = True
        self.flush_tick: int | None = None
        self.woken_at: list[float] = []

    def write_now(self) -> bool:
        return False  # a transport the tick cannot write to: the writer is woken

    def wake_writer(self) -> None:
        self.woken_at.append(trio.current_time())

    async def report_at(self, when: float) -> None:
        await trio.sleep_until(when)
        released_by, self.flush_tick = self.flush_tick, None
        assert released_by is not None
        self.tick.writer_flushed(released_by)


@asynccontextmanager
async def running_tick(write_delay: float = 0.01) -> AsyncIterator[FlushTick]:
    tick = FlushTick(LimitsConfig(write_delay=write_delay))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick.run)
        yield tick
        nursery.cancel_scope.cancel()


async def second_release(tick: FlushTick, first: list[FakeWriter]) -> float:
    """Release ``first`` at t=0 and a probe at t=0.001; when the probe's tick released it."""
    for writer in first:
        tick.mark_dirty(writer)
    await trio.sleep_until(0.001)
    probe = FakeWriter(tick)
    tick.mark_dirty(probe)
    await trio.sleep_until(5.0)
    assert [writer.woken_at for writer in first] == [[0.0]] * len(first)
    (released,) = probe.woken_at
    return released


async def test_the_times_follow_from_write_delay() -> None:
    tick = FlushTick(LimitsConfig(write_delay=0.01))
    assert tick.idle == pytest.approx(0.1)
    assert FlushTick(LimitsConfig(write_delay=0.001)).idle == 0.05


async def test_a_writer_that_never_reports_is_left_after_the_idle_gap(
    autojump_clock: trio.abc.Clock,
) -> None:
    # A and B report at 0.02 and 0.03; C (an ASGI peer not reading) never does. The tick
    # stops waiting 0.1 s after B, at 0.13, and takes the flush as over at 0.03: its pause is
    # then write_delay (0.01), so the probe goes out at 0.14, not at the 0.5 s limit.
    async with running_tick() as tick, trio.open_nursery() as nursery:
        a, b, c = FakeWriter(tick), FakeWriter(tick), FakeWriter(tick)
        nursery.start_soon(a.report_at, 0.02)
        nursery.start_soon(b.report_at, 0.03)
        assert await second_release(tick, [a, b, c]) == pytest.approx(0.14)


async def test_the_idle_gap_counts_from_the_last_report_not_the_first(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Reports 0.09 apart (each inside the idle gap) keep the tick waiting: A at 0.02, B at
    # 0.11, C at 0.20, D never. Idle ends at 0.30, the flush counts as over at 0.20, and the
    # pause is 0.20 (flush time x ratio 1) unless every task is blocked: here all are, so it
    # ends once write_delay (0.01) has passed, at 0.31.
    async with running_tick() as tick, trio.open_nursery() as nursery:
        writers = [FakeWriter(tick) for _ in range(4)]
        for writer, when in zip(writers[:3], (0.02, 0.11, 0.20), strict=True):
            nursery.start_soon(writer.report_at, when)
        assert await second_release(tick, writers) == pytest.approx(0.31)


async def test_the_idle_rule_waits_for_the_first_report(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Nobody reports for 0.3 s (three idle gaps): the writers are still at their own work,
    # not waiting on peers, so the tick keeps waiting. A reports at 0.30, B at 0.35: all done,
    # then the pause (write_delay; every task is blocked after it): the probe at 0.36.
    async with running_tick() as tick, trio.open_nursery() as nursery:
        a, b = FakeWriter(tick), FakeWriter(tick)
        nursery.start_soon(a.report_at, 0.30)
        nursery.start_soon(b.report_at, 0.35)
        assert await second_release(tick, [a, b]) == pytest.approx(0.36)


async def test_the_limit_bounds_a_flush_whose_writers_keep_reporting(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Ten writers report 0.09 apart from 0.09 on: the gap never reaches idle, so the wait
    # limit (0.5 s) ends the wait, with five reported; then write_delay: the probe at 0.51.
    async with running_tick() as tick, trio.open_nursery() as nursery:
        writers = [FakeWriter(tick) for _ in range(10)]
        for index, writer in enumerate(writers):
            nursery.start_soon(writer.report_at, 0.09 * (index + 1))
        assert await second_release(tick, writers) == pytest.approx(0.51)


async def test_a_writer_still_busy_from_an_earlier_tick_is_not_waited_for_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    # C was released by an earlier tick and has not reported: it is woken again (its queue
    # grew) but not counted, so the flush is over when A reports at 0.02; the probe at 0.03.
    async with running_tick() as tick, trio.open_nursery() as nursery:
        a, c = FakeWriter(tick), FakeWriter(tick)
        c.flush_tick = -1
        nursery.start_soon(a.report_at, 0.02)
        assert await second_release(tick, [a, c]) == pytest.approx(0.03)
