"""The hub-wide flush tick: writers are released together, then publishers get a pause.

Theory of operation:
- A connection whose queue goes from empty to non-empty is marked dirty (``mark_dirty``). The
  tick takes every dirty connection at once. Where the transport allows (the fast server's
  sockets), the tick writes the connection's queue itself, in frames of up to
  ``limits.max_batch`` messages, each with one non-blocking write, and no task is woken
  (``write_now``); a socket that fills hands the rest to the connection's writer, which waits
  for the peer, and the tick does not wait for it. Elsewhere the tick wakes the writer, which
  sends the whole queue.
- The tick waits until all but 2% of the writers it released are done (``writer_flushed``).
  A writer whose transport has to wait for its peer (the socket is full: the client is not
  reading) reports done at that moment, so no tick ever waits on a socket that is not
  draining, whatever the number of writers; and a writer still busy from an earlier tick is
  not counted again. Where a transport cannot tell (ASGI), the idle rule decides: once no
  released writer has finished for ``idle`` seconds (ten times ``write_delay``, at least
  50 ms: under hypercorn a healthy flush of a thousand writers has shorter gaps)
  the rest are waiting on their peers, and the tick stops waiting. What the tick waits for
  is the writers' own work, never a peer; the time limit (``max(0.25, 50 * write_delay)``)
  only bounds that work.
- Then the publishers run alone for ``write_delay``, or up to ``flush_pause_ratio`` times as
  long as the flush took if that is longer, while queues fill into bigger batches: under a
  heavy fan-out publishers and writers share the time, and batches grow with the load.
  (Sleeping from the release instead is no pause at all when a thousand sends outlast it:
  the publisher would get one step per scheduler round, and frames would carry one message
  each.) Past ``write_delay`` the pause ends as soon as every task of the program is waiting
  (publishers idle between messages add nothing to the batches, and holding what they queued
  would only add to its latency), or when a waiting writer's queue reaches ``high_water``
  (a publisher that never waits cannot grow the queues until every client is cut with 4002).
- The first message after a quiet spell goes out at once; with ``write_delay`` 0 writers are
  released on every publish.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import trio
import trio.testing

from wshub.core.sections import LimitsConfig
from wshub.hub.frames import FrameCache

__all__ = ["FlushTick", "Writer"]


class Writer(Protocol):
    """What the tick needs of a connection's writer (``Connection`` is one)."""

    writer_alive: bool
    """Whether the writer task runs (a released dead writer would never report back)."""
    flush_tick: int | None
    """The tick this writer was released by and has not yet reported to, if any."""

    def write_now(self) -> bool:
        """Send what is queued from the tick itself if the transport can without waiting;
        True when there is nothing to wait for, False to wake the writer instead."""
        ...

    def wake_writer(self) -> None:
        """Let the writer send what is queued, then call ``writer_flushed``."""
        ...


class FlushTick:
    """Releases dirty connections' writers together; ``run`` is a task of the hub's nursery."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.write_delay = limits.write_delay
        self.pause_ratio = limits.flush_pause_ratio
        # A queue this long (of a writer not sending) ends the publishers' pause.
        self.high_water = max(limits.max_batch, limits.max_queue // 4)
        self._dirty: list[Writer] = []
        self._dirty_event = trio.Event()
        self._tick = 0  # ticks so far
        self._flushing = 0  # writers released by this tick that have not finished
        self._last_finished_at = 0.0  # when a released writer last reported (the idle rule)
        #: No writer finishing for this long: the rest wait on their peers (the idle rule).
        self.idle = max(0.05, 10 * limits.write_delay)
        self._stragglers = 0  # how many of them the tick does not wait for
        self._flushed = trio.Event()
        self._finished = trio.Event()  # a released writer reported since the tick last looked
        self._reported = 0  # writers released by this tick that have reported
        self._queues_high = trio.Event()  # a waiting writer's queue reached high_water
        #: The frames this tick encoded (``write_now`` encodes a frame once however many
        #: connections are sent it); empty between ticks.
        self.frames = FrameCache()
        #: When the current (or last) tick started writing: its writes take no time to speak of.
        self.now = 0.0

    def mark_dirty(self, connection: Writer) -> None:
        """Schedule a connection's writer for the next tick."""
        self._dirty.append(connection)
        self._dirty_event.set()

    def queues_high(self) -> None:
        """A waiting writer has ``high_water`` messages queued: end the publishers' pause."""
        self._queues_high.set()

    def writer_flushed(self, tick: int) -> None:
        """A writer released by tick ``tick`` has sent its queue."""
        if tick == self._tick:
            self._last_finished_at = trio.current_time()
            self._reported += 1
            self._finished.set()
            self._flushing -= 1
            if self._flushing <= self._stragglers:
                self._flushed.set()

    async def run(self) -> None:
        """Tick until cancelled: release, wait for the flush, pause."""
        delay = self.write_delay
        wait_limit = max(0.25, 50 * delay)
        while True:
            await self._dirty_event.wait()
            self._dirty_event = trio.Event()
            dirty, self._dirty = self._dirty, []
            self._tick += 1
            self._flushing = self._reported = 0
            self._flushed = trio.Event()
            # Made before the flush, so a queue reaching high water during it counts too.
            self._queues_high = trio.Event()
            started = self.now = trio.current_time()  # the tick's own writes are the flush
            for connection in dirty:
                if connection.write_now():
                    continue
                if delay and connection.writer_alive and connection.flush_tick is None:
                    connection.flush_tick = self._tick
                    self._flushing += 1
                connection.wake_writer()
            self.frames.clear()  # nothing outlives the tick: the items may be freed now
            self._stragglers = self._flushing // 50
            flushed_at = trio.current_time()  # after the tick's own writes: they are the flush
            if self._flushing:
                flushed_at = await self._wait_for_writers(started, wait_limit)
            if delay:
                flush_time = flushed_at - started
                with trio.move_on_after(delay):
                    await self._queues_high.wait()
                longer = flush_time * self.pause_ratio - delay
                if longer > 0 and not self._queues_high.is_set():
                    await self._pause(longer)

    async def _wait_for_writers(self, started: float, limit: float) -> float:
        # Until the flush is done, for at most ``limit``, and only while writers keep
        # finishing: ``idle`` seconds since the last one finished means the rest wait on
        # peers that do not read. Returns when the flush ended; after an idle gap, when the
        # last writer finished (a wait on a peer is no work of the flush, so the pause after
        # it must not grow with it).
        # The idle rule starts only once a writer has finished: before that every released
        # writer may still be at its own work (a flush of many writers that each yield before
        # reporting takes longer than ``idle`` with no peer involved), and the limit bounds it.
        with trio.move_on_at(started + limit):
            while not self._flushed.is_set():
                if not self._reported:
                    self._finished = trio.Event()
                    await self._finished.wait()
                    continue
                last = max(started, self._last_finished_at)
                with trio.move_on_at(last + self.idle):
                    await self._flushed.wait()
                if self._last_finished_at <= last and not self._flushed.is_set():
                    return last
        return trio.current_time()

    async def _pause(self, seconds: float) -> None:
        # The publishers' pause past write_delay: it ends after ``seconds``, at the valve, or
        # as soon as every task is blocked. ``wait_all_tasks_blocked`` lives in trio.testing
        # but is the run loop's own idle signal, the one Trio offers for "nothing else can
        # run"; a program that never idles simply gets the whole pause.
        async with trio.open_nursery() as nursery:
            nursery.cancel_scope.deadline = trio.current_time() + seconds

            async def end_on(wait: Callable[[], Awaitable[object]]) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(end_on, self._queues_high.wait)
            nursery.start_soon(end_on, trio.testing.wait_all_tasks_blocked)
