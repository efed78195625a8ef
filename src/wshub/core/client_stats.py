"""Per-client figures: one ``ClientStats`` per client id, kept until it has been idle too long.

Theory of operation:
- Per-client figures never become Prometheus labels (unbounded cardinality). They live in
  ``ClientStats`` objects held by one ``ClientTable``, reach the JSON export only, and expire
  ``client_ttl`` seconds after their last activity once the client has no open connection.
- The hub touches a client by setting ``stats.last_activity`` directly, which costs nothing and
  tells the table nothing. So the table keeps, per client, a *lower bound* of its last activity
  in one-second buckets: bucket k holds ``(bound, client_id)`` with ``floor(bound) == k``. A
  sweep takes whole buckets that are due, checks the one partly due bucket entry by entry, and
  re-keys a touched entry to its ``last_activity`` and a connected one to the sweep's time.
  Each sweep costs O(removed + touched + seconds since the last sweep); untouched live entries
  are never visited.
- The table reads no clock: every call that needs the time is given ``now`` by its caller
  (``HubMetrics``, which owns the injected clock), so a ``MockClock`` drives expiry exactly.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from operator import attrgetter
from types import MappingProxyType
from typing import Any

import attrs

__all__ = ["CLIENT_FIGURES", "ClientStats", "ClientTable", "client_rows"]


@attrs.define(slots=True, eq=False)
class ClientStats:
    """Figures for one client id, across all its connections.

    ``last_activity`` and ``first_seen`` are ``clock()`` values. The hub updates the counters
    and ``last_activity`` directly; ``connections`` counts the connections open right now.
    """

    client_id: str
    first_seen: float
    last_activity: float
    connections: int = 0
    connects: int = 0
    disconnects: int = 0
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors: int = 0


#: The numeric ClientStats fields: what ``ClientTable.top`` may rank clients by.
CLIENT_FIGURES = frozenset(f.name for f in attrs.fields(ClientStats) if f.name != "client_id")


@attrs.define(eq=False)
class ClientTable:
    """Every tracked client's ``ClientStats`` by id, with the idle timers that expire them.

    ``entries_examined`` counts the entries ``expire()`` has looked at so far (the sweeps'
    total work).
    """

    entries_examined: int = attrs.field(init=False, default=0)
    _clients: dict[str, ClientStats] = attrs.field(init=False, repr=False, factory=dict)
    # Idle timers in one-second buckets: bucket k holds (bound, client_id) with
    # floor(bound) == k, where bound is a lower bound of the client's last activity.
    _idle_buckets: dict[int, list[tuple[float, str]]] = attrs.field(
        init=False, repr=False, factory=dict
    )
    _next_bucket: int | None = attrs.field(init=False, repr=False, default=None)

    @property
    def clients(self) -> Mapping[str, ClientStats]:
        """Read-only view of the tracked clients by id."""
        return MappingProxyType(self._clients)

    def touch(self, client_id: str, now: float) -> ClientStats:
        """Return ``client_id``'s stats, creating them if needed, and mark it active at ``now``."""
        stats = self._clients.get(client_id)
        if stats is None:
            stats = self._clients[client_id] = ClientStats(client_id, now, now)
            self._schedule_idle_check(now, client_id)
        else:
            stats.last_activity = now
        return stats

    def expire(self, now: float, ttl: float) -> int:
        """Forget clients with no open connection idle for ``ttl`` at ``now``; return how many.

        A client expires when ``now >= last_activity + ttl``: exactly at its deadline. An entry
        with an open connection is re-keyed to ``now``, so lowering ``connections`` by hand
        (rather than touching) counts the ttl from the sweep that last saw it open.
        """
        buckets = self._idle_buckets
        if self._next_bucket is None:
            return 0
        limit = math.floor(now - ttl)  # buckets below it are due whole; it is partly due
        again: list[tuple[float, str]] = []
        removed = 0
        index = self._next_bucket
        if index > limit:
            return 0
        while index <= limit:
            entries = buckets.pop(index, None)
            if entries:
                for entry in entries:
                    if entry[0] + ttl > now:  # only possible in the partly due bucket
                        again.append(entry)
                    elif self._expire_or_rekey(entry[1], now, ttl, again):
                        removed += 1
            index += 1
        # The partly due bucket may still hold and receive entries: start there next time.
        self._next_bucket = limit if buckets or again else None
        for bound, client_id in again:
            self._schedule_idle_check(bound, client_id)
        return removed

    def _expire_or_rekey(
        self, client_id: str, now: float, ttl: float, again: list[tuple[float, str]]
    ) -> bool:
        stats = self._clients[client_id]
        self.entries_examined += 1
        if stats.connections > 0:
            again.append((now, client_id))
        elif stats.last_activity + ttl > now:
            again.append((stats.last_activity, client_id))
        else:
            del self._clients[client_id]
            return True
        return False

    def _schedule_idle_check(self, bound: float, client_id: str) -> None:
        index = math.floor(bound)
        self._idle_buckets.setdefault(index, []).append((bound, client_id))
        if self._next_bucket is None or index < self._next_bucket:
            self._next_bucket = index

    def top(self, n: int, key: str) -> list[ClientStats]:
        """The ``n`` clients with the largest ``key`` figure, largest first.

        Raises ``ValueError`` if ``key`` is not in ``CLIENT_FIGURES``.
        """
        if key not in CLIENT_FIGURES:
            raise ValueError(f"key must be a ClientStats figure, got {key!r}")
        return heapq.nlargest(n, self._clients.values(), key=attrgetter(key))

    def busiest(self, n: int) -> list[ClientStats]:
        """The ``n`` busiest clients (most messages in + out), busiest first."""
        return heapq.nlargest(
            n, self._clients.values(), key=lambda s: s.messages_in + s.messages_out
        )


def client_rows(stats: Iterable[ClientStats], now: float) -> list[dict[str, Any]]:
    """JSON-ready rows: every ClientStats field, plus ``idle_seconds`` since ``last_activity``."""
    return [attrs.asdict(s) | {"idle_seconds": now - s.last_activity} for s in stats]
