"""The values a circuit breaker hands out: its states, its permits, its statistics, its error.

``CircuitBreaker`` (``wshub.core.breaker``) makes every one of them; they hold no behaviour,
so code that only reads a breaker's state or catches ``CircuitOpenError`` needs nothing else.
"""

from __future__ import annotations

import enum

import attrs

__all__ = ["BreakerPermit", "BreakerState", "BreakerStatistics", "CircuitOpenError"]


class BreakerState(enum.Enum):
    """Where a breaker is in its cycle; read it from ``CircuitBreaker.state``."""

    #: Calls flow; failures are counted, and enough of them trip the breaker OPEN.
    CLOSED = "closed"
    #: Every call is rejected with CircuitOpenError until the current open timeout has passed.
    OPEN = "open"
    #: Up to half_open_max_calls probes are admitted; their outcomes close or reopen the breaker.
    HALF_OPEN = "half_open"


class CircuitOpenError(Exception):
    """A call was rejected because the breaker called ``name`` is not admitting it.

    ``retry_after`` is the number of seconds until a call would be admitted (see
    ``CircuitBreaker.retry_after``), or None when the breaker was forced open.
    """

    def __init__(self, name: str, retry_after: float | None) -> None:
        super().__init__(name, retry_after)
        self.name = name
        self.retry_after = retry_after

    def __str__(self) -> str:
        if self.retry_after is None:
            return f"circuit {self.name!r} is forced open"
        return f"circuit {self.name!r} is open; retry after {self.retry_after:.3f}s"


@attrs.define(eq=False)
class BreakerPermit:
    """One admitted call, from ``CircuitBreaker.acquire_nowait`` to ``CircuitBreaker.release``.

    Made by the breaker only; ``released`` turns true when it is handed back.
    """

    generation: int
    released: bool = attrs.field(default=False, init=False)
    # The permit this task already held on the same breaker (nested ``async with``); the
    # breaker sets it on entering and restores it on leaving.
    _outer: BreakerPermit | None = attrs.field(default=None, init=False, repr=False)


@attrs.frozen
class BreakerStatistics:
    """A snapshot of one breaker. Totals count since creation; ``reset()`` does not clear them.

    ``calls`` counts admitted calls while not disabled; ``successes`` and ``failures`` count the
    outcomes that were recorded (a timed-out probe is a failure; neutral and stale outcomes are
    in neither); ``rejections`` counts CircuitOpenErrors raised.
    """

    name: str
    state: BreakerState
    consecutive_failures: int
    calls: int
    successes: int
    failures: int
    rejections: int
    open_timeout: float
    opened_count: int
    last_transition_time: float | None
    forced_open: bool
    disabled: bool
    active_calls: int
    active_probes: int
