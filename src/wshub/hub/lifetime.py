"""The hub's lifetime: the connection tasks it runs, and the drain that ends them.

Theory of operation:
- Every connection task, whichever server accepted it, runs through ``Lifetime.run`` inside
  the hub's nursery, so the hub outlives each of them and knows how many are still running,
  closing handshake included.
- Draining is cancelling in order: refuse new connections (``draining``), ask every welcomed
  connection to close with 1001 once its queue is flushed (one not yet welcomed has nothing to
  flush and is closed at once), wait up to ``shutdown.grace``, then cut the rest without
  waiting for their frames, and wait for their closing handshakes (bounded by CLOSE_TIMEOUT).
- One hub-wide Event wakes the drain when the last task ends, not one per connection, so an
  idle connection costs nothing here. Drain is idempotent: a second call waits for the first.
- The hub's nursery (``running``) sits behind a shield: cancelling the caller cancels the body
  of ``open_hub``, which then drains, not the connections, writers and flush tick the drain
  needs to flush every queue and finish every closing handshake. The shield is cancelled only
  once the drain is over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from wshub.core.protocol import CloseCode
from wshub.hub.connection import CLOSE_TIMEOUT, Connection

__all__ = ["Lifetime", "every"]

_GOING_AWAY = "the server is shutting down"


class Lifetime:
    """The connection tasks of one hub, and its drain."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.draining = False
        self.connections: set[Connection] = set()
        self.nursery: trio.Nursery | None = None  # the hub's, while ``open_hub`` runs
        self._running = 0  # connection tasks not yet finished, closing handshake included
        self._all_finished: trio.Event | None = None  # made by drain, set at _running == 0
        self._drained = trio.Event()

    @asynccontextmanager
    async def running(self, last: Callable[[], object]) -> AsyncIterator[trio.Nursery]:
        """The hub's nursery, for the ``async with`` block; on leaving it, even when cancelled,
        drain (then ``last``) before the nursery's tasks are cancelled."""
        async with trio.open_nursery() as outer:
            nursery, shield = await outer.start(_shielded_nursery)
            self.nursery = nursery
            try:
                yield nursery
            finally:
                with trio.CancelScope(shield=True):
                    await self.drain(last)
                shield.cancel()

    def start_soon(self, function: Callable[..., Any], *args: Any) -> None:
        """Run a task in the hub's nursery, so that it ends no later than the hub."""
        if self.nursery is None:
            raise RuntimeError("the hub is not running; use open_hub()")
        self.nursery.start_soon(function, *args)

    async def run(self, connection: Connection) -> None:
        """Run one connection to its end, counted until its closing handshake is over."""
        self.connections.add(connection)
        self._running += 1
        try:
            await connection.run()
        finally:
            self._running -= 1
            if not self._running and self._all_finished is not None:
                self._all_finished.set()

    async def drain(self, last: Callable[[], object]) -> None:
        """Stop accepting, flush every queue and close each connection with 1001.

        Connections get ``grace`` seconds to flush before they are cut; then ``last`` runs
        (the hub's final metrics flush). Idempotent: a second call waits for the first.
        """
        if self._drained.is_set() or self.draining:
            await self._drained.wait()
            return
        self.draining = True
        for connection in list(self.connections):
            if connection.stats is None:  # still before its hello: nothing to flush
                connection.abort(CloseCode.GOING_AWAY, _GOING_AWAY)
            else:
                connection.start_closing(CloseCode.GOING_AWAY, _GOING_AWAY)
        with trio.move_on_after(self.grace):
            await self._wait_all_finished()
        for connection in list(self.connections):
            connection.abort(CloseCode.GOING_AWAY, _GOING_AWAY, finish_frame=False)
        with trio.move_on_after(CLOSE_TIMEOUT + 1):
            await self._wait_all_finished()
        last()
        self._drained.set()

    async def _wait_all_finished(self) -> None:
        while self._running:
            self._all_finished = trio.Event()
            await self._all_finished.wait()


async def every(interval: float, action: Callable[[], object]) -> None:
    """Call ``action`` every ``interval`` seconds until cancelled (the sweeper, the flusher)."""
    while True:
        await trio.sleep(interval)
        action()


async def _shielded_nursery(
    *, task_status: trio.TaskStatus[tuple[trio.Nursery, trio.CancelScope]]
) -> None:
    """A nursery behind a shield, and the shield's scope (see the notes on ``running``)."""
    with trio.CancelScope(shield=True) as shield:
        async with trio.open_nursery() as nursery:
            task_status.started((nursery, shield))
            await trio.sleep_forever()
